#!/usr/bin/env python3
"""Generate text with flashring's LLaMA engine on tensor x sequence-parallel thread ranks, streaming the reply.

    python examples/python/generate.py [-p "The capital of France is"] [--tp 2] [--sp 1] [-n 64]
    python examples/python/generate.py --chat -p "What is 2+2?" --comm int8 --temp 0.7 --seed 1

The model is the default one (SmolLM2-135M-Instruct Q4_1, fetched by `make deps`) unless -m names a GGUF file.
The ranks are threads of this process, one persistent worker per rank; --comm picks the TP all-reduce (exact,
int8, int4, int4-refined, ...), --attn the SP attention. The same prompt and flags give the same text as
`flashring run` (greedy by default). Run it under mpirun with --mpi to use one MPI process per rank instead.
"""

import argparse
import sys
import time

import flashring as fr


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-m", "--model", default=None, help="GGUF model (default: flashring.default_model_path(), where `make deps` puts SmolLM2-135M)")
    ap.add_argument("-p", "--prompt", default="The capital of France is", help="prompt (with --chat: the user message)")
    ap.add_argument("-n", "--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    ap.add_argument("--tp", type=int, default=2, help="tensor-parallel ranks (default 2)")
    ap.add_argument("--sp", type=int, default=1, help="sequence-parallel ranks (default 1)")
    ap.add_argument("--comm", default="exact", help="TP all-reduce: exact, bf16, int8, int4, int4-refined, ...")
    ap.add_argument("--attn", default="auto", help="SP attention: auto, tokenring, ring-kv, ulysses, allgather-kv")
    ap.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold (1: off)")
    ap.add_argument("--seed", type=int, default=fr.DEFAULT_SEED, help="sampling seed")
    ap.add_argument("--chat", action="store_true", help="render the prompt with the model's chat template")
    ap.add_argument("--stop", action="append", default=None, help="stop before this text (repeatable)")
    ap.add_argument("--mpi", action="store_true", help="one rank per MPI process (mpirun -n tp*sp ...)")
    a = ap.parse_args()

    transport = "mpi" if a.mpi else "threads"
    try:
        llm = fr.Llama(a.model, tp=a.tp, sp=a.sp, comm=a.comm, attn=a.attn, transport=transport)
    except FileNotFoundError as e:
        print(f"generate.py: {e}", file=sys.stderr)
        return 1
    with llm:
        root = llm.rank == 0
        if root:
            print(f"{llm.config['description']}\nplan: tp {a.tp} x sp {a.sp} ({llm.transport}), comm {a.comm}, "
                  f"attention {a.attn}\n", file=sys.stderr)  # fmt: skip
        t0 = time.perf_counter()
        for piece in llm.generate(a.prompt, a.max_tokens, temperature=a.temp, top_p=a.top_p, seed=a.seed,
                                  stop=a.stop, chat=a.chat, stream=True):  # fmt: skip
            if root:
                print(piece, end="", flush=True)
        wall = time.perf_counter() - t0
        s = llm.last_stats
        if root:
            print()
            print(f"\n{s['prompt_tokens']} prompt tokens, {s['generated_tokens']} generated (stop: {s['stop']}); "
                  f"TTFT {s['ttft_ms']:.1f} ms, decode {s['decode_tok_s']:.1f} tok/s, {wall:.2f} s in all; "
                  f"wire {s['wire_bytes_with_decode'] / 1e6:.2f} MB", file=sys.stderr)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

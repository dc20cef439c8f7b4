#!/usr/bin/env python3
"""`flashring run --chat` and `run --interactive` end to end (CTest cli.chat, cli.chat.tiny).

  test_cli_chat.py FLASHRING_BINARY FIXTURE_DIR WORK_DIR [--tiny] [--mpiexec MPIEXEC]

The model is the default one (FLASHRING_MODEL, or SmolLM2-135M-Instruct.Q4_1.gguf where flashring looks for
it) when present, else (and with --tiny) the tiny fixture model tiny-f32 with --chat-template chatml; exits 77
when neither is there. Checks:
  - --chat renders the conversation with the template and stops (end of turn or -n), the reply streamed;
  - --interactive with 3 turns on stdin keeps the KV cache: each turn appends only the tokens the rendered
    conversation adds (turn 2 is a multi-line message), and each reply equals that of a fresh `run --chat`
    of the conversation so far (greedy), whose prompt is the same number of tokens; the same under --tp 2
    --sp 2 thread ranks and, with --mpiexec, under 2 MPI ranks; end of input at once ends every rank;
  - a template that renders earlier turns differently falls back to a fresh prefill and says so;
  - seeded sampling gives the same reply twice and under --tp 2 (fp32 products, see below);
  - bad input fails with a clear message and a non-zero exit, without hanging: an unknown --chat-template,
    a model without a template, a conversation beyond --ctx-size (also on 4 ranks).
"""
import json, os, subprocess, sys

TIMEOUT = 300


def default_model():
    if os.environ.get("FLASHRING_MODEL"):
        return os.environ["FLASHRING_MODEL"]
    d = os.environ.get("FLASHRING_MODEL_DIR")
    if not d:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.path.join(cache, "flashring", "models")
    return os.path.join(d, "SmolLM2-135M-Instruct.Q4_1.gguf")


def fail(msg):
    sys.exit("FAILED: " + msg)


def main():
    args = sys.argv[1:]
    tiny_only = "--tiny" in args
    mpiexec = None
    if "--mpiexec" in args:
        mpiexec = args[args.index("--mpiexec") + 1]
    exe, fixtures, work = [a for i, a in enumerate(args) if not a.startswith("--") and
                           (i == 0 or args[i - 1] != "--mpiexec")][:3]
    os.makedirs(work, exist_ok=True)
    tiny = os.path.join(fixtures, "tiny-f32.gguf")
    model = default_model()
    if tiny_only or not os.path.exists(model):
        if not os.path.exists(tiny):
            print(f"skipped: neither the default model ({model}) nor the fixture {tiny} is there (run `make deps`, "
                  "or let the fixtures.models step write the fixture)")
            return 77
        model, base, real = tiny, ["--chat-template", "chatml"], False
        # A random model's replies are random bytes, and a reply that is not valid UTF-8 (or that BPE merges
        # differently when it is encoded again) rightly makes the next turn a fresh prefill: these messages
        # give replies that re-tokenize as generated, so that the cache is kept.
        questions = ["you and i", "of the\\", "in", "and"]
        n_predict = 4
    else:
        base, real = [], True
        questions = ["What is 2+2?", "And 3+3? Answer in one\\", "sentence.", "Tell me a joke."]
        n_predict = 64
    print(f"model: {model}{' ' + ' '.join(base) if base else ''}")
    counter = [0]

    def run(*flags, stdin=None, ok=True, cmd_prefix=(), name=None, template=True):
        counter[0] += 1
        out = os.path.join(work, f"{name or 'run'}{counter[0]}.json")
        if os.path.exists(out):
            os.remove(out)
        cmd = [*cmd_prefix, exe, "run", "-m", model, *(base if template else []), "--json", out, *flags]
        try:
            p = subprocess.run(cmd, input=stdin, capture_output=True, timeout=TIMEOUT,
                               env=dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                                        OMPI_MCA_rmaps_base_oversubscribe="1"))
        except subprocess.TimeoutExpired:
            fail(f"hung (no exit in {TIMEOUT} s): {' '.join(cmd)}")
        stdout, stderr = p.stdout.decode(errors="replace"), p.stderr.decode(errors="replace")
        if ok and p.returncode != 0:
            fail(f"exit {p.returncode}: {' '.join(cmd)}\n{stdout}\n{stderr}")
        if not ok:
            if p.returncode == 0:
                fail(f"expected a failure: {' '.join(cmd)}\n{stdout}\n{stderr}")
            return None, p.stdout, stderr
        with open(out) as f:
            return json.load(f), p.stdout, stderr

    def reply_bytes(turn):
        return bytes.fromhex(turn["reply_hex"])

    # --chat: the rendering, the stop, the stream.
    q0 = questions[0]
    j, out, err = run("--chat", "-p", q0, "-n", str(n_predict), "--verbose-prompt")
    if f"<|im_start|>user\n{q0}<|im_end|>\n<|im_start|>assistant\n" not in err:
        fail("--verbose-prompt did not show the ChatML rendering:\n" + err)
    t = j["turns"][0]
    if t["stop"] not in ("eog", "n_predict") or t["generated_tokens"] > n_predict:
        fail(f"--chat stop: {t}")
    if real and t["stop"] != "eog":
        fail(f"the default model did not end its turn within {n_predict} tokens: {t}")
    if b"<|im_end|>" in reply_bytes(t):
        fail("the end-of-turn marker was printed")
    if not out.startswith(reply_bytes(t)):
        fail(f"stdout does not start with the streamed reply:\n{out!r}\n{reply_bytes(t)!r}")
    if j["prompt_tokens"] != t["conversation_tokens"] or not t["fresh_prefill"]:
        fail(f"--chat prompt tokens: {j}")

    # --interactive, 3 turns (the second spans two lines), against fresh --chat runs of the same conversation.
    stdin = ("\n".join(questions) + "\n").encode()
    users = [questions[0], questions[1][:-1] + "\n" + questions[2], questions[3]]

    def check_interactive(j, err, what):
        turns = j["turns"]
        if [t["user"] for t in turns] != users:
            fail(f"{what}: the turns read were {[t['user'] for t in turns]}, expected {users}")
        for k, t in enumerate(turns):
            if k == 0:
                if not (t["fresh_prefill"] and t["appended_tokens"] == t["conversation_tokens"]):
                    fail(f"{what}: turn 1 {t}")
                continue
            prev = turns[k - 1]
            if t["fresh_prefill"]:
                fail(f"{what}: turn {k + 1} prefilled the whole conversation again:\n{t}\n{err}")
            if t["cache_before"] != prev["cache_after"]:
                fail(f"{what}: turn {k + 1} cache {t['cache_before']} after turn {k} left {prev['cache_after']}")
            if t["appended_tokens"] != t["conversation_tokens"] - prev["cache_after"] or t["appended_tokens"] <= 0:
                fail(f"{what}: turn {k + 1} appended {t['appended_tokens']} tokens; the conversation is "
                     f"{t['conversation_tokens']} and the cache held {prev['cache_after']}")
            if f"[turn {k + 1}: appended {t['appended_tokens']} prompt tokens" not in err:
                fail(f"{what}: no per-turn report for turn {k + 1} in:\n{err}")
            if t["generated_tokens"] and t["decode_tok_s"] <= 0 and t["generated_tokens"] > 1:
                fail(f"{what}: decode rate {t}")
        return turns

    # The replies are compared under --gemm-threshold 1 (fp32 products on the dequantized weights at every batch
    # size): by default decode runs integer dots on 8-bit activations and a prefill sgemm, so the cached reply
    # tokens of an interactive session and the same tokens prefilled by a fresh run differ at the quantization
    # level, and a greedy reply can drift after a dozen tokens. In fp32 they differ by rounding only.
    j, out, err = run("--interactive", "-n", str(n_predict), stdin=stdin)
    check_interactive(j, err, "interactive (integer decode path)")
    fp32 = ["--gemm-threshold", "1"]
    j, out, err = run("--interactive", "-n", str(n_predict), *fp32, stdin=stdin)
    turns = check_interactive(j, err, "interactive")
    conv = []
    for k, t in enumerate(turns):
        mfile = os.path.join(work, f"conv{k}.json")
        with open(mfile, "w") as f:
            json.dump(conv, f)
        jf, _, _ = run("--chat", "--messages", mfile, "-p", users[k], "-n", str(n_predict), *fp32)
        fresh = jf["turns"][0]
        if fresh["conversation_tokens"] != t["conversation_tokens"]:
            fail(f"turn {k + 1}: the fresh run's prompt is {fresh['conversation_tokens']} tokens, the "
                 f"interactive conversation {t['conversation_tokens']}")
        if reply_bytes(fresh) != reply_bytes(t):
            fail(f"turn {k + 1}: interactive reply {reply_bytes(t)!r} != fresh --chat reply {reply_bytes(fresh)!r}")
        conv += [{"role": "user", "content": users[k]}, {"role": "assistant", "content_hex": t["reply_hex"]}]
    print(f"ok: interactive, 3 turns appended {[t['appended_tokens'] for t in turns]} of "
          f"{[t['conversation_tokens'] for t in turns]} tokens; replies equal fresh --chat runs")

    # The same conversation on a 2 x 2 grid of thread ranks, and on 2 MPI ranks: the cache is kept the same way.
    j4, _, err4 = run("--interactive", "-n", str(n_predict), "--tp", "2", "--sp", "2", *fp32, stdin=stdin)
    turns4 = check_interactive(j4, err4, "interactive --tp 2 --sp 2")
    same4 = [reply_bytes(a) == reply_bytes(b) for a, b in zip(turns, turns4)]
    print(f"ok: --tp 2 --sp 2 keeps the cache; replies equal to one rank's: {same4}")
    if mpiexec:
        mpi = [mpiexec, "-n", "2", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "self,vader,tcp"]
        jm, _, errm = run("--interactive", "-n", str(n_predict), "--tp", "2", "--transport", "mpi", stdin=stdin,
                          cmd_prefix=mpi)
        check_interactive(jm, errm, "interactive under MPI")
        je, _, _ = run("--interactive", "--tp", "2", "--transport", "mpi", stdin=b"", cmd_prefix=mpi, name="eof")
        if je is not None and je.get("turns"):
            fail(f"MPI: empty input ran turns: {je}")
        print("ok: under 2 MPI ranks; end of input ends every rank")
    # End of input at once (and /exit) ends every thread rank without a turn.
    for stdin_eof in (b"", b"/exit\nnot read\n"):
        counter[0] += 1
        p = subprocess.run([exe, "run", "-m", model, *base, "--interactive", "--tp", "2", "--sp", "2"],
                           input=stdin_eof, capture_output=True, timeout=TIMEOUT)
        if p.returncode != 0 or p.stdout.strip():
            fail(f"input {stdin_eof!r}: exit {p.returncode}, stdout {p.stdout!r}\n{p.stderr.decode()}")

    # A template that renders earlier turns differently (the message count in every header): a fresh prefill.
    tmpl = os.path.join(work, "counting.jinja")
    with open(tmpl, "w") as f:
        f.write("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ messages|length }}\n{{ m['content'] }}"
                "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    jc, _, errc = run("--interactive", "-n", "4", "--chat-template", tmpl, stdin=b"one\ntwo\n", template=False)
    tc = jc["turns"]
    if len(tc) != 2 or not tc[1]["fresh_prefill"] or tc[1]["appended_tokens"] != tc[1]["conversation_tokens"]:
        fail(f"changing template: {tc}")
    if "not a prefix" not in errc:
        fail("changing template: no note on stderr:\n" + errc)
    print("ok: a template that rewrites earlier turns falls back to a fresh prefill")

    # Seeded sampling: the same reply twice, and under --tp 2 with fp32 products (with the integer decode path
    # the TP all-reduce's rounding can move an 8-bit activation code, so the logits of two TP degrees agree to
    # the quantization level only and a draw near a boundary may differ); another seed differs somewhere.
    samp = ["--chat", "-p", q0, "-n", "24", "--temp", "0.9", "--top-p", "0.95", "--seed", "42"]
    ra, rb = (reply_bytes(run(*samp)[0]["turns"][0]) for _ in range(2))
    if ra != rb:
        fail(f"seeded sampling differs from run to run: {ra!r} / {rb!r}")
    rc1, rc2 = (reply_bytes(run(*samp, *fp32, "--tp", tp)[0]["turns"][0]) for tp in ("1", "2"))
    if rc1 != rc2:
        fail(f"seeded sampling differs under --tp 2: {rc1!r} / {rc2!r}")
    others = [reply_bytes(run(*samp[:-1], s)[0]["turns"][0]) for s in ("7", "8")]
    if all(o == ra for o in others):
        fail(f"seeds 42, 7 and 8 all gave {ra!r}: is the sampling on?")
    print(f"ok: seeded sampling is reproducible and the same under --tp 2 ({ra[:40]!r}...)")

    # Bad input: a clear message, a non-zero exit, no hang.
    _, _, e = run("--chat", "--chat-template", "no-such-template", ok=False, template=False)
    if "--chat-template" not in e or "chatml" not in e:
        fail("unknown --chat-template: unclear message:\n" + e)
    _, _, e = run("--interactive", "--tp", "2", "--chat-template", "no-such-template", stdin=b"hi\n", ok=False,
                  template=False)
    if "--chat-template" not in e:
        fail("unknown --chat-template on 2 ranks:\n" + e)
    if os.path.exists(tiny):
        p = subprocess.run([exe, "run", "-m", tiny, "--chat", "-p", "hi"], capture_output=True, timeout=TIMEOUT)
        e = p.stderr.decode(errors="replace")
        if p.returncode == 0 or "chat_template" not in e or "--chat-template" not in e:
            fail(f"a model without a template: exit {p.returncode}:\n{e}")
        p = subprocess.run([exe, "run", "-m", tiny, "--interactive", "--tp", "2", "--sp", "2"], input=b"hi\n",
                           capture_output=True, timeout=TIMEOUT)
        if p.returncode == 0 or "--chat-template" not in p.stderr.decode(errors="replace"):
            fail(f"a model without a template on 4 ranks: exit {p.returncode}:\n{p.stderr.decode()}")
    for grid in ([], ["--tp", "2", "--sp", "2"]):
        _, _, e = run("--interactive", "-c", "12", *grid, stdin=b"hello\n", ok=False)
        if "context limit" not in e or "--ctx-size 12" not in e:
            fail(f"a conversation beyond --ctx-size {grid}: unclear message:\n{e}")
    # The context also ends a reply: a second turn that no longer fits is an error naming the limit.
    limit = turns[0]["conversation_tokens"] + 3
    _, _, e = run("--interactive", "-c", str(limit), "-n", "8", stdin=(questions[0] + "\nmore\n").encode(), ok=False)
    if "cut at the context limit" not in e or "context limit" not in e:
        fail(f"context limit during a reply: {e}")
    print("ok: bad input fails clearly (unknown template, no template, context limit), no hang")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The LLaMA engine: :class:`Llama` loads a GGUF model onto tp x sp ranks and generates, scores and tokenizes.

The ranks are threads of this process (``transport="threads"``, the default: one persistent worker thread
per rank) or one rank per process of a caller's communicator (``transport=`` a :class:`flashring.Communicator`,
e.g. from :func:`flashring.from_mpi4py`, or a thread rank of :func:`flashring.run_threads`; ``"mpi"`` wraps
MPI.COMM_WORLD). With a communicator every rank constructs its own :class:`Llama` and makes the same calls in
the same order (they are collective); every rank gets the same results.

This is the library behind ``flashring run`` and ``flashring perplexity``: greedy generation gives the CLI's
text for the same prompt, plan and options, and :meth:`Llama.perplexity` its ``--json`` figures.
"""

from __future__ import annotations

import codecs
import errno
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from . import _core
from .comm import Communicator

__all__ = ["Llama", "GenerationStream", "DEFAULT_SEED", "default_model_path"]

#: The sampling seed used when none is given (flashring/sampling.h's kDefaultSamplingSeed, as the CLI's --seed).
DEFAULT_SEED: int = int(_core.DEFAULT_SAMPLING_SEED)

Message = Dict[str, str]
Prompt = Union[str, Sequence[int], Sequence[Message]]


def default_model_path() -> str:
    """The model used when none is named, as ``flashring run`` finds it: ``$FLASHRING_MODEL``, else
    SmolLM2-135M-Instruct.Q4_1.gguf in ``$FLASHRING_MODEL_DIR``, ``$XDG_CACHE_HOME/flashring/models`` or
    ``~/.cache/flashring/models`` (where ``make deps`` puts it). The file need not exist."""
    return _core.default_model_path()


def _check_model_file(path: str, defaulted: bool, comm: Optional[Communicator]) -> None:
    # Missing files are OSErrors in Python. With a communicator the ranks agree first, so that one rank
    # without the file does not leave the others waiting in the collective constructor.
    problem: Optional[OSError] = None
    if not os.path.exists(path):
        hint = " (run `make deps`, which fetches the default model, or pass model=PATH)" if defaulted else ""
        problem = FileNotFoundError(errno.ENOENT, f"model file not found{hint}", path)
    elif os.path.isdir(path):
        problem = IsADirectoryError(errno.EISDIR, "the model path is a directory, not a GGUF file", path)
    if comm is not None and comm.size > 1:
        anyone = comm._h.allreduce_max(1.0 if problem is not None else 0.0)
        if problem is None and anyone > 0:
            raise _core.InvalidArgument(
                f"rank {comm.rank}: another rank cannot open its model file (see its error; this rank has '{path}')"
            )
    if problem is not None:
        raise problem


class GenerationStream:
    """The text of a :meth:`Llama.generate` call with ``stream=True``, piece by piece (an iterator of str).

    The prompt has already run when the stream is returned; each ``next()`` decodes tokens until it has text
    to give (a token can end inside a UTF-8 character, and text that may begin a stop string is held back
    until it is known not to). When it ends, :attr:`stats` holds the figures of the generation (also
    :attr:`Llama.last_stats`). A later ``generate()`` or ``perplexity()`` on the same model supersedes it:
    its next ``next()`` raises :class:`flashring.Error`. With a communicator, every rank iterates alike.
    """

    def __init__(self, llama: "Llama", first: Optional[int], stop: Sequence[str], gen_id: int):
        self._llama = llama
        self._first = first
        self._first_pending = True
        self._stop = [s for s in stop if s]
        self._hold = max((len(s) for s in self._stop), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._buf = ""
        self._text: List[str] = []
        self._id = gen_id
        self._done = False
        self.stats: Optional[Dict[str, Any]] = None

    def __iter__(self) -> "GenerationStream":
        return self

    def _finish(self, reason: str) -> None:
        self._done = True
        stats = self._llama._core.end(reason)
        if reason == "stop":  # a stop string in the text: whatever the tokens did
            stats["stop"] = "stop"
        stats["text"] = "".join(self._text)
        self.stats = stats
        self._llama._last = stats

    def _emit(self, text: str) -> str:
        self._text.append(text)
        return text

    def __next__(self) -> str:
        while True:
            if self._done:
                raise StopIteration
            if self._llama._gen != self._id:
                self._done = True
                raise _core.Error("this generation stream was superseded by a later generate() or perplexity() call")
            core = self._llama._core
            if self._first_pending:
                self._first_pending = False
                tok = self._first
            else:
                tok = core.next()
            if tok is None:
                self._buf += self._decoder.decode(b"", final=True)
                out = self._buf
                self._buf = ""
                cut = self._find_stop(out)
                if cut is not None:
                    out = out[:cut]
                if out:
                    self._text.append(out)
                self._finish("stop" if cut is not None else "cancelled")
                if out:
                    return out
                raise StopIteration
            self._buf += self._decoder.decode(core.token_bytes(tok))
            cut = self._find_stop(self._buf)
            if cut is not None:
                out = self._buf[:cut]
                self._buf = ""
                if out:
                    self._text.append(out)
                self._finish("stop")
                if out:
                    return out
                raise StopIteration
            keep = self._held_back(self._buf)
            out = self._buf[: len(self._buf) - keep]
            self._buf = self._buf[len(self._buf) - keep :]
            if out:
                return self._emit(out)

    def _find_stop(self, text: str) -> Optional[int]:
        hits = [i for i in (text.find(s) for s in self._stop) if i >= 0]
        return min(hits) if hits else None

    def _held_back(self, text: str) -> int:
        # The longest suffix of `text` that begins some stop string.
        for n in range(min(self._hold - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self._stop):
                return n
        return 0

    def close(self) -> None:
        """End the generation now (stop reason "cancelled"); collective with a communicator."""
        if not self._done and self._llama._gen == self._id and not self._llama.closed:
            self._finish("cancelled")
        self._done = True


class Llama:
    """A GGUF LLaMA-family model on ``tp x sp`` ranks: tensor parallelism (heads, FFN units and vocabulary split
    over ``tp`` ranks, whose all-reduces run with ``comm``) times sequence parallelism (the prompt split over
    ``sp`` ranks, attention by ``attn``).

    Args:
        model: the GGUF file; None: :func:`default_model_path` (as ``flashring run`` finds it).
        tp, sp: the parallel plan (ranks = tp * sp). tp may not exceed the model's query heads.
        comm: the TP all-reduce, a name ``flashring --comm`` takes: exact, bf16, int8, int6, int5, int4,
            int4-int8, int8-int4, int4-refined, auto, or an all-reduce name (``flashring.ALGORITHMS``).
        attn: SP attention: auto, tokenring, ring-kv, ulysses, allgather-kv.
        transport: "threads" (ranks as threads of this process), a :class:`flashring.Communicator` of size
            tp * sp (this process is its rank; every rank constructs a Llama and calls it alike), or "mpi"
            (:func:`flashring.from_mpi4py` of MPI.COMM_WORLD, closed with this object).
        threads: kernel threads of the process (None: all cores for one rank, else 1, as the CLI).
        ctx: context limit in tokens (None: the model's training context): generation stops there and a longer
            prompt is an error.
        seed, temperature, top_k, top_p, min_p: default sampling of :meth:`generate` (greedy by default).
        group_size, spikes, error_feedback, rotate, clip, refine_layers, oneshot: the low-bit all-reduce's
            settings, as the CLI's flags of the same names (error_feedback None: on for codecs of 8 bits and
            below).
        layout: "zigzag" or "contiguous" (the prompt's layout over the SP ranks).
        append_attn: how decoded tokens attend to the SP-sharded cache: "pass-q" (the queries travel),
            "pass-kv" (the caches travel; same results) or "auto" (the cost model decides per call).
        weights: "quant" (the file's types) or "f32" (dequantized at load; the reference).
        timeout: seconds every wait of the thread ranks may take (None: 120 s or FLASHRING_TIMEOUT_MS).
        chat_template: the builtin template that ``chat=True`` uses instead of the model's (e.g. "chatml").

    Raises:
        FileNotFoundError: the model file does not exist (IsADirectoryError for a directory).
        flashring.FormatError: the file is not a valid GGUF model (the message names the path).
        flashring.InvalidArgument: a bad option (an unknown comm or attn name, tp above the heads, ...).

    A failure on one rank aborts them all and is raised with its root cause; the object then refuses further
    calls (create a new one). Every call releases the GIL. Use as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        model: Optional[str] = None,
        *,
        tp: int = 1,
        sp: int = 1,
        comm: str = "exact",
        attn: str = "auto",
        transport: Union[str, Communicator] = "threads",
        threads: Optional[int] = None,
        ctx: Optional[int] = None,
        seed: int = DEFAULT_SEED,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        min_p: float = 0.0,
        group_size: int = 128,
        spikes: int = 2,
        error_feedback: Optional[bool] = None,
        rotate: bool = False,
        clip: bool = False,
        refine_layers: int = 0,
        oneshot: str = "auto",
        layout: str = "zigzag",
        append_attn: str = "auto",
        weights: str = "quant",
        timeout: Optional[float] = None,
        chat_template: Optional[str] = None,
    ):
        self._core: Any = None
        self._gen = 0
        self._last: Optional[Dict[str, Any]] = None
        self._owned_comm: Optional[Communicator] = None
        self._comm: Optional[Communicator] = None
        for name, v in (("tp", tp), ("sp", sp)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise _core.InvalidArgument(f"{name} must be a positive int, got {v!r}")
        if isinstance(transport, Communicator):
            self._comm = transport
        elif transport == "mpi":
            from .comm import from_mpi4py

            try:
                from mpi4py import MPI
            except ImportError as e:
                raise ImportError("transport='mpi' needs mpi4py (pip install mpi4py)") from e
            self._comm = self._owned_comm = from_mpi4py(MPI.COMM_WORLD)
        elif transport not in ("threads", "thread"):
            raise _core.InvalidArgument(
                f"transport {transport!r}: use 'threads', 'mpi' or a flashring.Communicator of tp * sp ranks"
            )
        path = default_model_path() if model is None else os.fspath(model)
        try:
            _check_model_file(path, model is None, self._comm)
            self._core = _core.LlamaSession(
                path,
                tp,
                sp,
                str(comm),
                int(group_size),
                int(spikes),
                -1 if error_feedback is None else int(bool(error_feedback)),
                bool(rotate),
                bool(clip),
                int(refine_layers),
                str(oneshot),
                str(attn),
                str(append_attn),
                str(layout),
                str(weights),
                0 if threads is None else int(threads),
                0 if ctx is None else int(ctx),
                0.0 if timeout is None else float(timeout),
                0,
                None if self._comm is None else self._comm._h,
            )
        except BaseException:
            if self._owned_comm is not None:
                self._owned_comm.close()
            raise
        self._sampling = dict(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                              min_p=float(min_p), seed=int(seed))
        self._chat_template = chat_template or ""
        self._tp, self._sp = tp, sp
        self._attn = str(attn)
        self._append_attn = str(append_attn)
        self._layout = str(layout)

    # --- properties -------------------------------------------------------------------------------------

    @property
    def model_path(self) -> str:
        """The GGUF file this model was loaded from."""
        return self._core.model_path

    @property
    def config(self) -> Dict[str, Any]:
        """The model's shape: arch, name, n_layer, n_embd, n_head, n_head_kv, head_dim, n_ff, n_vocab, rope_dim,
        n_ctx_train, rope_base, rms_eps, tied_output, description."""
        return dict(self._core.config)

    @property
    def tp(self) -> int:
        """Tensor-parallel degree."""
        return self._tp

    @property
    def sp(self) -> int:
        """Sequence-parallel degree."""
        return self._sp

    @property
    def ranks(self) -> int:
        """tp * sp."""
        return self._tp * self._sp

    @property
    def rank(self) -> int:
        """This process's rank with a communicator; 0 with thread ranks."""
        return self._core.rank

    @property
    def ctx(self) -> int:
        """The context limit in tokens (the ``ctx`` given, or the model's training context)."""
        return self._core.ctx

    @property
    def transport(self) -> str:
        """'thread' (thread ranks, or a thread-world communicator) or 'mpi'."""
        return self._core.transport

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._core is None or self._core.closed

    @property
    def last_stats(self) -> Optional[Dict[str, Any]]:
        """The figures of the last finished generation, as ``flashring run --json`` names them: text, tokens
        (the generated ids), prompt_tokens, generated_tokens, stop ("eog", "n_predict", "context", "stop" for a
        stop string, "cancelled"), ttft_ms, prefill_tok_s, decode_tok_s, comm_ms, quant_ms, compute_ms, attn_ms,
        wire_bytes (prefill, all ranks), wire_bytes_with_decode, attn_scheme. None before the first."""
        return None if self._last is None else dict(self._last)

    def _plan(self) -> Dict[str, Any]:
        # The fields every `flashring` model subcommand writes to --json (model and plan).
        c = self._core.comm_setting
        return {
            "model": self.model_path,
            "tp": self._tp,
            "sp": self._sp,
            "comm": c["comm"],
            "group_size": c["group_size"],
            "spikes": c["spikes"],
            "error_feedback": c["error_feedback"],
            "rotate": c["rotate"],
            "clip": c["clip"],
            "refine_layers": c["refine_layers"],
            "attn": self._attn,
            "append_attn": self._append_attn,
            "layout": self._layout,
            "transport": self.transport,
            "ranks": self.ranks,
        }

    # --- tokens -------------------------------------------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = True) -> List[int]:
        """Token ids of `text` (UTF-8). add_bos: BOS first when the vocabulary asks for it; special: control
        tokens such as ``<|im_start|>`` in the text are parsed as such."""
        if not isinstance(text, str):
            raise _core.InvalidArgument(f"tokenize: expected str, got {type(text).__name__}")
        return self._core.tokenize(text, bool(add_bos), bool(special))

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of token ids (bytes that are not valid UTF-8 become U+FFFD)."""
        return self.detokenize_bytes(ids).decode("utf-8", "replace")

    def detokenize_bytes(self, ids: Sequence[int]) -> bytes:
        """The bytes of token ids."""
        return self._core.detokenize([int(i) for i in ids])

    def _prompt_ids(self, prompt: Prompt, chat: bool, system: Optional[str]) -> Tuple[List[int], List[int]]:
        if chat:
            if isinstance(prompt, str):
                messages: List[Message] = [{"role": "user", "content": prompt}]
            else:
                messages = list(prompt)  # type: ignore[arg-type]
            if system is not None:
                messages = [{"role": "system", "content": system}] + messages
            pairs = []
            for i, m in enumerate(messages):
                if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                    raise _core.InvalidArgument(
                        f"generate(chat=True): message {i} must be a dict with str 'role' and 'content', got {m!r}"
                    )
                pairs.append((m["role"], m["content"]))
            ids, stops = self._core.chat_tokens(pairs, self._chat_template)
            return ids, stops
        if system is not None:
            raise _core.InvalidArgument("generate: system= needs chat=True")
        if isinstance(prompt, str):
            return self.tokenize(prompt, add_bos=True, special=True), []
        if isinstance(prompt, (bytes, bytearray)):
            raise _core.InvalidArgument("generate: the prompt must be str or a list of token ids, not bytes")
        ids = [int(i) for i in prompt]  # type: ignore[union-attr]
        return ids, []

    # --- generation ---------------------------------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt,
        max_tokens: int = 128,
        *,
        temperature: Optional[float] = None,
        top_k: Optional[int] = None,
        top_p: Optional[float] = None,
        min_p: Optional[float] = None,
        seed: Optional[int] = None,
        stop: Union[None, str, Sequence[str]] = None,
        stream: bool = False,
        chat: bool = False,
        system: Optional[str] = None,
    ) -> Union[str, GenerationStream]:
        """Generates up to `max_tokens` tokens after `prompt` and returns the text (``stream=True``: a
        :class:`GenerationStream`, an iterator of text pieces as they are decoded).

        prompt: text (tokenized with BOS, special tokens parsed, as ``flashring run -p``), a list of token ids,
        or with ``chat=True`` a user message (str) or a list of ``{"role", "content"}`` messages, rendered with
        the model's chat template (``flashring run --chat``); ``system`` puts a system message first.
        Generation stops at an end-of-generation token (and the template's end-of-turn token with chat), after
        max_tokens, at the context limit, or before the first occurrence of a `stop` string (not included).
        Sampling: greedy unless temperature > 0 (defaults from the constructor); top_k / top_p / min_p filter
        as llama.cpp's samplers; the same seed gives the same tokens on every plan and run.
        The figures of the generation are :attr:`last_stats` afterwards. Collective with a communicator.
        """
        if self.closed:
            raise _core.InvalidArgument("the Llama session is closed")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 0:
            raise _core.InvalidArgument(f"generate: max_tokens must be an int >= 0, got {max_tokens!r}")
        stops: List[str] = []
        if stop is not None:
            stops = [stop] if isinstance(stop, str) else list(stop)
            for s in stops:
                if not isinstance(s, str):
                    raise _core.InvalidArgument(f"generate: stop strings must be str, got {s!r}")
        ids, stop_tokens = self._prompt_ids(prompt, chat, system)
        d = self._sampling
        first = self._core.begin(
            ids,
            max_tokens,
            float(d["temperature"] if temperature is None else temperature),
            int(d["top_k"] if top_k is None else top_k),
            float(d["top_p"] if top_p is None else top_p),
            float(d["min_p"] if min_p is None else min_p),
            int(d["seed"] if seed is None else seed) & 0xFFFFFFFFFFFFFFFF,
            stop_tokens,
            True,
        )
        self._gen += 1
        it = GenerationStream(self, first, stops, self._gen)
        if stream:
            return it
        return "".join(it)

    # --- perplexity ---------------------------------------------------------------------------------------

    def perplexity(self, text: str, ctx: int = 512, chunks: int = 0, kl_divergence: bool = False) -> Dict[str, Any]:
        """Perplexity of the model on `text` as ``flashring perplexity`` (and llama-perplexity) computes it:
        windows of `ctx` tokens from an empty cache with BOS first, the second half of each scored; at most
        `chunks` windows (0: all). kl_divergence: also run every window with exact communication and compare
        token by token (``--kl-divergence``).

        Returns the fields of ``flashring perplexity --json`` (but "file"): model, tp, sp, comm, group_size,
        spikes, error_feedback, rotate, clip, refine_layers, attn, layout, transport, ranks, ppl, ppl_err,
        tokens (scored), text_tokens, chunks, ctx, seconds, comm_ms, quant_ms, wire_bytes; with kl_divergence
        also exact_ppl, kl_divergence, ln_ppl_ratio, ln_ppl_ratio_err, same_top1. Collective with a
        communicator.
        """
        if self.closed:
            raise _core.InvalidArgument("the Llama session is closed")
        if not isinstance(text, str):
            raise _core.InvalidArgument(f"perplexity: expected str, got {type(text).__name__}")
        self._gen += 1  # supersedes an open stream
        r = self._core.perplexity(text, int(ctx), int(chunks), bool(kl_divergence))
        out = self._plan()
        out.update(r)
        return out

    # --- lifetime -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the rank threads and release the model. Idempotent. With transport="mpi" it also frees the
        MPI communicator (collective)."""
        if self._core is not None:
            self._core.close()
        if self._owned_comm is not None:
            self._owned_comm.close()
            self._owned_comm = None

    def __enter__(self) -> "Llama":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        if self.closed:
            return "<flashring.Llama (closed)>"
        return (
            f"<flashring.Llama {os.path.basename(self.model_path)}: tp {self._tp} x sp {self._sp} "
            f"({self.transport}), comm {self._core.comm_setting['comm']}>"
        )

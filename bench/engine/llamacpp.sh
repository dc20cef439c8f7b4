#!/usr/bin/env bash
# flashring's engine beside llama.cpp on one model file, text and thread counts (CPU, one rank).
#   bench/engine/llamacpp.sh [--model GGUF] [--threads "1 2"] [--decode-tokens 128] [--prompt-tokens 512]
#                            [--reps 3] [--skip-ppl] [--ppl-chunks N] [--json FILE] [--out DIR]
#                            [--timeout S] [--flashring BIN] [--build-only]
# Builds llama.cpp (llama-bench, llama-perplexity) once, CPU only, from the source vendored in the PyPI
# llama-cpp-python==0.3.36 sdist, into ~/.cache/flashring/llama.cpp-0.3.36/ (outside the repository; about
# 6 minutes on 2 cores, niced; skipped when the two binaries are there). Then, per thread count T:
#   llama.cpp:  llama-bench -m M -p P -n N -t T -r R -o json                  (pp P and tg N, empty context)
#   flashring:  flashring run -m M -t T -f PROMPT(P tokens) -n 1 --json ...   (prefill tok/s, R times)
#               flashring run -m M -t T -p "Once upon a time" -n N --json ... (decode tok/s, R times)
# each under /usr/bin/time -v for its peak RSS, and, unless --skip-ppl, with the largest T:
#   llama-perplexity -m M -f /usr/share/common-licenses/GPL-3 -c 512 -t T  beside
#   flashring perplexity -m M -f (same) -c 512 -t T
# Prints one table (metric, llama.cpp, flashring, ratio = flashring / llama.cpp) and, with --json, writes its
# rows (one object each: bench "engine_vs_llamacpp", metric, threads, unit, llama_cpp, flashring, ratio) plus
# the raw figures of every run under OUT (default: a temporary directory, kept and printed).
# The P-token prompt is the start of the GPL-3 text cut to P tokens with tests/tools/tokenizer_reference.py
# (Hugging Face `tokenizers` on the model's own vocabulary; smollm-style pre-tokenizers); for other
# tokenizers it falls back to about 4 bytes a token. The table says how many tokens flashring actually saw.
# Env: FLASHRING_CACHE (default ~/.cache/flashring), LLAMACPP_JOBS (build jobs, default 2).
set -euo pipefail

die() { echo "llamacpp.sh: $*" >&2; exit 1; }
note() { echo "llamacpp.sh: $*" >&2; }

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${FLASHRING_CACHE:-$HOME/.cache/flashring}
ver=0.3.36
lcp=$cache/llama.cpp-$ver
model=$cache/models/SmolLM2-135M-Instruct.Q4_1.gguf
threads="1 2"
decode_tokens=128
prompt_tokens=512
reps=3
skip_ppl=0
ppl_chunks=0
json=""
out=""
timeout_s=3600
flashring=$root/build/bin/flashring
build_only=0
text=/usr/share/common-licenses/GPL-3

while [ $# -gt 0 ]; do
  case "$1" in
    --model) model=${2:?--model needs a file}; shift 2 ;;
    --threads) threads=${2:?--threads needs a list}; shift 2 ;;
    --decode-tokens) decode_tokens=${2:?}; shift 2 ;;
    --prompt-tokens) prompt_tokens=${2:?}; shift 2 ;;
    --reps) reps=${2:?}; shift 2 ;;
    --skip-ppl) skip_ppl=1; shift ;;
    --ppl-chunks) ppl_chunks=${2:?}; shift 2 ;;
    --json) json=${2:?--json needs a file}; shift 2 ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    --timeout) timeout_s=${2:?}; shift 2 ;;
    --flashring) flashring=${2:?}; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done
for v in decode_tokens prompt_tokens reps ppl_chunks timeout_s; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v//_/-} must be a non-negative integer, not '${!v}'"
done
[ "$reps" -ge 1 ] || die "--reps must be >= 1"
[ "$decode_tokens" -ge 2 ] || die "--decode-tokens must be >= 2"
read -r -a tlist <<<"$threads"
[ ${#tlist[@]} -gt 0 ] || die "--threads is empty"
for t in "${tlist[@]}"; do [[ $t =~ ^[1-9][0-9]*$ ]] || die "--threads: '$t' is not a thread count"; done

need() { command -v "$1" >/dev/null 2>&1 || die "'$1' is missing ($2)"; }
need python3 "install python3"
need timeout "coreutils"

# ---------------------------------------------------------------- llama.cpp build (cached)
lbench=$lcp/build/bin/llama-bench
lppl=$lcp/build/bin/llama-perplexity
build_llamacpp() {
  need cmake "apt-get install cmake (scripts/install-deps.sh)"
  need c++ "apt-get install build-essential"
  need tar "apt-get install tar"
  mkdir -p "$lcp"
  local sdist=$lcp/llama_cpp_python-$ver.tar.gz
  if [ ! -s "$sdist" ]; then
    python3 -m pip --version >/dev/null 2>&1 || die "pip is missing (apt-get install python3-pip); needed once to fetch the sdist"
    note "downloading the llama-cpp-python==$ver sdist (about 75 MB)"
    local dl=$lcp/dl.$$
    rm -rf "$dl" && mkdir -p "$dl"
    timeout 900 python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$ver" -d "$dl" ||
      die "pip download of llama-cpp-python==$ver failed"
    mv "$dl"/llama_cpp_python-$ver.tar.gz "$sdist" || die "no llama_cpp_python-$ver.tar.gz in the download"
    rm -rf "$dl"
  fi
  if [ ! -f "$lcp/src/.extracted" ]; then
    note "extracting vendor/llama.cpp"
    rm -rf "$lcp/src" "$lcp/x.$$"
    mkdir -p "$lcp/x.$$"
    tar xzf "$sdist" -C "$lcp/x.$$" "llama_cpp_python-$ver/vendor/llama.cpp" ||
      die "$sdist has no vendor/llama.cpp"
    mv "$lcp/x.$$/llama_cpp_python-$ver/vendor/llama.cpp" "$lcp/src"
    rm -rf "$lcp/x.$$"
    touch "$lcp/src/.extracted"
  fi
  note "building llama.cpp $ver (CPU, AVX2/FMA/F16C; log: $lcp/build.log)"
  cmake -S "$lcp/src" -B "$lcp/build" -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
    -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF >"$lcp/build.log" 2>&1 || { tail -20 "$lcp/build.log" >&2; die "llama.cpp configure failed"; }
  nice -n 10 cmake --build "$lcp/build" -j "${LLAMACPP_JOBS:-2}" --target llama-bench llama-perplexity \
    >>"$lcp/build.log" 2>&1 || { tail -20 "$lcp/build.log" >&2; die "llama.cpp build failed"; }
}
if [ ! -x "$lbench" ] || [ ! -x "$lppl" ]; then build_llamacpp; fi
[ -x "$lbench" ] && [ -x "$lppl" ] || die "llama.cpp build did not produce llama-bench and llama-perplexity"
note "llama.cpp: $lbench"
[ "$build_only" = 1 ] && exit 0

# ---------------------------------------------------------------- checks
[ -x "$flashring" ] || die "$flashring is missing: build it (cmake --build build --target flashring_cli)"
[ -f "$model" ] || die "model $model not found"
[ -f "$text" ] || die "$text not found (Debian package base-files)"
gtime=/usr/bin/time
if ! "$gtime" -v true >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    note "installing GNU time (apt-get install time)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null || die "apt-get install time failed"
  fi
  "$gtime" -v true >/dev/null 2>&1 || die "GNU time (/usr/bin/time -v) is missing: apt-get install time"
fi
if [ -z "$out" ]; then out=$(mktemp -d "${TMPDIR:-/tmp}/llamacpp-bench.XXXXXX"); fi
mkdir -p "$out"
note "model $model; threads ${tlist[*]}; raw results in $out"
cut -d' ' -f1-3 /proc/loadavg >"$out/loadavg_start" 2>/dev/null || : >"$out/loadavg_start"

# run NAME CMD...: CMD under timeout and GNU time; stdout -> OUT/NAME.out, stderr -> OUT/NAME.err, peak RSS
# (KiB) -> OUT/NAME.rss.
run() {
  local name=$1
  shift
  local rc=0
  timeout --kill-after=10 "$timeout_s" "$gtime" -v -o "$out/$name.time" "$@" >"$out/$name.out" 2>"$out/$name.err" || rc=$?
  if [ $rc -ne 0 ]; then
    tail -5 "$out/$name.out" >&2
    tail -15 "$out/$name.err" >&2
    [ $rc -eq 124 ] && die "$name: timed out after ${timeout_s}s ($*)"
    die "$name failed with status $rc ($*); logs: $out/$name.out, $out/$name.err"
  fi
  sed -n 's/.*Maximum resident set size (kbytes): *//p' "$out/$name.time" >"$out/$name.rss"
}

# ---------------------------------------------------------------- the P-token prompt
prompt=$out/prompt.txt
python3 - "$root" "$model" "$text" "$prompt_tokens" "$prompt" <<'EOF' >&2
import sys
root, model, text_path, n, out = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
text = open(text_path, encoding="utf-8").read()
how = None
try:
    sys.path.insert(0, f"{root}/tests/tools")
    from tokenizer_reference import build_tokenizer
    tok, _ = build_tokenizer(model)
    ids = tok.encode(text, add_special_tokens=False).ids
    if len(ids) < n:
        text = text * (n // max(1, len(ids)) + 1)
        ids = tok.encode(text, add_special_tokens=False).ids
    k = n
    for _ in range(8):  # decoding a cut and encoding it again can shift the count at the cut by a token or two
        s = tok.decode(ids[:k])
        m = len(tok.encode(s, add_special_tokens=False).ids)
        if m == n:
            break
        k += n - m
    how = f"{m} tokens by tokenizers"
except BaseException as e:  # ImportError, or SystemExit from an unsupported pre-tokenizer
    s = text[: 4 * n]
    how = f"{len(s)} characters, about 4 a token ({type(e).__name__}: {e})"
open(out, "w", encoding="utf-8").write(s)
print(f"llamacpp.sh: prompt: the start of {text_path}, {how}")
EOF

# ---------------------------------------------------------------- the runs
for t in "${tlist[@]}"; do
  note "t=$t: llama-bench (pp$prompt_tokens, tg$decode_tokens, $reps reps)"
  run "lcpp_bench_t$t" "$lbench" -m "$model" -p "$prompt_tokens" -n "$decode_tokens" -t "$t" -r "$reps" -o json
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$out/lcpp_bench_t$t.out" 2>/dev/null ||
    die "llama-bench wrote no JSON to stdout (see $out/lcpp_bench_t$t.out)"
  for r in $(seq 1 "$reps"); do
    note "t=$t: flashring prefill ($r/$reps), decode ($r/$reps)"
    run "fr_prefill_t${t}_r$r" "$flashring" run -m "$model" -t "$t" -f "$prompt" -n 1 --json "$out/fr_prefill_t${t}_r$r.json"
    run "fr_decode_t${t}_r$r" "$flashring" run -m "$model" -t "$t" -p "Once upon a time" -n "$decode_tokens" \
      --json "$out/fr_decode_t${t}_r$r.json"
  done
done
tppl=${tlist[-1]}
for t in "${tlist[@]}"; do [ "$t" -gt "$tppl" ] && tppl=$t; done
if [ "$skip_ppl" = 0 ]; then
  chunk_args=()
  [ "$ppl_chunks" -gt 0 ] && chunk_args=(--chunks "$ppl_chunks")
  note "t=$tppl: llama-perplexity -c 512"
  run lcpp_ppl "$lppl" -m "$model" -f "$text" -c 512 -t "$tppl" "${chunk_args[@]}"
  note "t=$tppl: flashring perplexity -c 512"
  run fr_ppl "$flashring" perplexity -m "$model" -f "$text" -c 512 -t "$tppl" "${chunk_args[@]}" \
    --json "$out/fr_ppl.json"
fi

# ---------------------------------------------------------------- table and JSON
cut -d' ' -f1-3 /proc/loadavg >"$out/loadavg_end" 2>/dev/null || : >"$out/loadavg_end"
python3 - "$out" "$model" "$prompt_tokens" "$decode_tokens" "$reps" "$skip_ppl" "$tppl" "$json" "${tlist[@]}" <<'EOF'
import glob, json, os, re, statistics, sys

out, model, P, N, reps, skip_ppl, tppl, json_path = sys.argv[1:9]
P, N, reps, tppl = int(P), int(N), int(reps), int(tppl)
threads = [int(t) for t in sys.argv[9:]]
rows = []


def rss_mib(name):
    with open(f"{out}/{name}.rss") as f:
        return int(f.read().strip()) / 1024


load = [open(f"{out}/loadavg_{k}").read().strip() for k in ("start", "end")]


def add(metric, t, unit, lc, fr, note="", lc_samples=None, fr_samples=None):
    ratio = fr / lc if lc and fr is not None and lc is not None else None
    rows.append({"bench": "engine_vs_llamacpp", "metric": metric, "threads": t, "unit": unit, "llama_cpp": lc,
                 "flashring": fr, "ratio": ratio, "note": note, "model": model, "llama_cpp_samples": lc_samples,
                 "flashring_samples": fr_samples, "loadavg_start": load[0], "loadavg_end": load[1]})


def mean(xs):
    return statistics.mean(xs) if xs else None


for t in threads:
    lb = json.load(open(f"{out}/lcpp_bench_t{t}.out"))
    pp = next((r for r in lb if r.get("n_prompt") == P and r.get("n_gen") == 0), None)
    tg = next((r for r in lb if r.get("n_gen") == N and r.get("n_prompt") == 0), None)
    pre = [json.load(open(f"{out}/fr_prefill_t{t}_r{r}.json")) for r in range(1, reps + 1)]
    dec = [json.load(open(f"{out}/fr_decode_t{t}_r{r}.json")) for r in range(1, reps + 1)]
    seen = sorted({j["prompt_tokens"] for j in pre})
    gen = sorted({j["generated_tokens"] for j in dec})
    frp, frd = [j["prefill_tok_s"] for j in pre], [j["decode_tok_s"] for j in dec]
    add(f"prefill pp{P} tok/s", t, "tok/s", pp and pp["avg_ts"], mean(frp),
        f"flashring prompt {'/'.join(map(str, seen))} tokens", pp and pp.get("samples_ts"), frp)
    add(f"decode tg{N} tok/s", t, "tok/s", tg and tg["avg_ts"], mean(frd),
        f"flashring generated {'/'.join(map(str, gen))}" + ("" if gen == [N] else f" (< {N}: end of generation)"),
        tg and tg.get("samples_ts"), frd)
    fr_rss = max(rss_mib(f"fr_{k}_t{t}_r{r}") for k in ("prefill", "decode") for r in range(1, reps + 1))
    add("peak RSS MiB (bench)", t, "MiB", rss_mib(f"lcpp_bench_t{t}"), fr_rss,
        "llama-bench: whole run (mmapped weights count); flashring: max over its runs")

if skip_ppl == "0":
    log = "".join(open(f"{out}/lcpp_ppl.{x}", errors="replace").read() for x in ("out", "err"))
    m = re.search(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)", log)
    lc_ppl = float(m.group(1)) if m else None
    # Its log lines start with a timestamp (minutes.seconds.ms.us): the evaluation runs from "calculating
    # perplexity over N chunks" to "Final estimate".
    ts = r"(\d+)\.(\d+)\.(\d+)\.(\d+) I "
    m0 = re.search(ts + r"perplexity: calculating perplexity over (\d+) chunks, n_ctx=(\d+)", log)
    m1 = re.search(ts + r"Final estimate", log)
    sec = lambda m: int(m.group(1)) * 60 + int(m.group(2)) + int(m.group(3)) / 1e3 + int(m.group(4)) / 1e6
    lc_tps = int(m0.group(5)) * int(m0.group(6)) / (sec(m1) - sec(m0)) if m0 and m1 and sec(m1) > sec(m0) else None
    fr = json.load(open(f"{out}/fr_ppl.json"))
    add("perplexity (GPL-3, c 512)", tppl, "ppl", lc_ppl, fr["ppl"], f"flashring {fr['chunks']} windows")
    add("perplexity eval tok/s", tppl, "tok/s", lc_tps, fr["chunks"] * fr["ctx"] / fr["seconds"])
    add("peak RSS MiB (perplexity)", tppl, "MiB", rss_mib("lcpp_ppl"), rss_mib("fr_ppl"))

lb0 = json.load(open(f"{out}/lcpp_bench_t{threads[0]}.out"))[0]
print(f"\nmodel: {model} ({lb0.get('model_type', '?')}, {lb0.get('model_size', 0) / 2**20:.0f} MiB); "
      f"llama.cpp of llama-cpp-python 0.3.36 ({lb0.get('cpu_info', '?')}); {reps} reps, means")
w = max(len(f"{r['metric']} t={r['threads']}") for r in rows)


def f(x):
    return "-" if x is None else f"{x:.2f}" if abs(x) < 1000 else f"{x:.0f}"


print(f"{'metric':<{w}}  {'llama.cpp':>10}  {'flashring':>10}  {'ratio':>6}")
for r in rows:
    print(f"{r['metric'] + ' t=' + str(r['threads']):<{w}}  {f(r['llama_cpp']):>10}  {f(r['flashring']):>10}  "
          f"{'-' if r['ratio'] is None else format(r['ratio'], '.3f'):>6}" + (f"  ({r['note']})" if r["note"] and "RSS" not in r["metric"] else ""))
print(f"(ratio = flashring / llama.cpp; load average {load[0]} at the start, {load[1]} at the end; "
      f"raw results in {out})")
if json_path:
    json.dump(rows, open(json_path, "w"), indent=1)
    print(f"wrote {json_path}")
EOF

#!/usr/bin/env bash
# Perplexity of the default model with exact vs low-bit tensor-parallel all-reduces, on in-process ranks.
#   bench/engine/ppl_sweep.sh OUTDIR [TP...]           (default TP 3 4)
# Env: CHUNKS (windows of 512 for the group-size curve, default 4; the headline rows use the whole text),
#      HEADLINE (0 skips the whole-text rows), HEADLINE_SPIKES (spikes of the headline rows, default 0),
#      CURVE (0 skips the group-size curve),
#      SPIKES (spike-reserving values per group for the curve, default "0"), EF (1: every low-bit row with
#      --error-feedback, names suffixed _ef), ROTCLIP (1: every low-bit row with --rotate --clip, names suffixed
#      _rc), REFINE (N: every low-bit row with --refine-layers N, names suffixed _rN), FLASHRING (the binary).
# Writes OUTDIR/ppl_*.json (one `flashring perplexity --json` object each) and OUTDIR/ppl_sweep.txt;
# `python3 bench/plot.py OUTDIR/ppl_*.json` draws perplexity vs group size.
set -euo pipefail
out=${1:?usage: ppl_sweep.sh OUTDIR [TP...]}
shift
if [ $# -gt 0 ]; then tps=("$@"); else tps=(3 4); fi
bin=${FLASHRING:-build/bin/flashring}
chunks=${CHUNKS:-4}
mkdir -p "$out"
log="$out/ppl_sweep.txt"
: >"$log"
ef=()
[ "${EF:-0}" = 1 ] && ef=(--error-feedback)
rc=()
[ "${ROTCLIP:-0}" = 1 ] && rc=(--rotate --clip)
rf=()
[ "${REFINE:-0}" != 0 ] && rf=(--refine-layers "$REFINE")
run() {  # name, args...
  local name=$1
  shift
  local extra=()
  if [ ${#ef[@]} -gt 0 ] && [[ "$name" != *exact* ]]; then
    extra=("${ef[@]}")
    name="${name}_ef"
  fi
  if [ ${#rc[@]} -gt 0 ] && [[ "$name" != *exact* ]]; then
    extra+=("${rc[@]}")
    name="${name}_rc"
  fi
  if [ ${#rf[@]} -gt 0 ] && [[ "$name" != *exact* ]]; then
    extra+=("${rf[@]}")
    name="${name}_r${REFINE}"
  fi
  local line
  line=$("$bin" perplexity -c 512 --json "$out/ppl_$name.json" "$@" "${extra[@]}" | grep "Final estimate")
  echo "$name: $line ($* ${extra[*]})" | tee -a "$log"
}
for tp in "${tps[@]}"; do
  # Headline rows: the whole text.
  if [ "${HEADLINE:-1}" != 0 ]; then
    hs=${HEADLINE_SPIKES:-0}
    run "tp${tp}_exact_full" --tp "$tp" --comm exact
    for c in int8 int6 int5 int4 int4-int8; do
      run "tp${tp}_${c}_g128_s${hs}_full" --tp "$tp" --comm $c --group-size 128 --spikes "$hs"
    done
  fi
  # Group-size curve on the first CHUNKS windows (paired: the same tokens for every codec).
  [ "${CURVE:-1}" = 0 ] && continue
  run "tp${tp}_exact_c$chunks" --tp "$tp" --comm exact --chunks "$chunks"
  for s in ${SPIKES:-0}; do
    for g in 32 64 128 256 512 1024; do
      run "tp${tp}_int4_g${g}_s${s}_c$chunks" --tp "$tp" --comm int4 --group-size "$g" --chunks "$chunks" --spikes "$s"
      run "tp${tp}_int8_g${g}_s${s}_c$chunks" --tp "$tp" --comm int8 --group-size "$g" --chunks "$chunks" --spikes "$s"
      run "tp${tp}_int6_g${g}_s${s}_c$chunks" --tp "$tp" --comm int6 --group-size "$g" --chunks "$chunks" --spikes "$s"
    done
  done
done

#!/usr/bin/env bash
# AQUA on the d = 64 model (kjv64, issue 22): reference checks, calibration on calib.txt,
# perplexity of dense and AQUA attention on literature.txt (held out) and en_pud sentences
# 501-1000 (out of domain), and retention per layer. Prints Markdown tables on stdout; every
# aqua_llama / aqua_calibrate command it runs is appended to WORK/commands.log.
#
#   experiments/llama2c_policies/kjv64.sh [BUILD_DIR [WORK_DIR [SECTIONS]]]
#       defaults: build, /tmp/aqua_kjv64, "ref cal main trunc energy variants h2o retention"
#   TAUS="0.6 0.8" experiments/llama2c_policies/kjv64.sh ...   energy thresholds of the energy section
#
# Needs the aqua_llama and aqua_calibrate targets built and the data directory (AQUA_DATA_DIR or
# ../shared/data): kjv64/{model.bin,calib.txt,literature.txt}, stories260K/tok512.bin,
# text/en_pud.txt. Single-threaded. "single" = the first 512-token window of a text (the reference
# set-up), "pooled" = every 512-token window of it (--windows 0), NLL pooled over all predicted
# tokens. Group selection is decode-only, so its runs go token by token (slower).
set -euo pipefail

BUILD=${1:-build}
WORK=${2:-/tmp/aqua_kjv64}
SECTIONS=${3:-ref cal main trunc energy variants h2o retention}
LLAMA="$BUILD/examples/aqua_llama"
CALIBRATE="$BUILD/examples/aqua_calibrate"
DATA=${AQUA_DATA_DIR:-../shared/data}
[[ -d $DATA ]] || { echo "kjv64.sh: data directory '$DATA' not found (set AQUA_DATA_DIR)" >&2; exit 1; }
for f in kjv64/model.bin kjv64/calib.txt kjv64/literature.txt stories260K/tok512.bin text/en_pud.txt; do
  [[ -r $DATA/$f ]] || { echo "kjv64.sh: $DATA/$f missing" >&2; exit 1; }
done
for b in "$LLAMA" "$CALIBRATE"; do
  [[ -x $b ]] || { echo "kjv64.sh: $b not built (cmake --build $BUILD --target aqua_llama aqua_calibrate)" >&2; exit 1; }
done
mkdir -p "$WORK"
LOG="$WORK/commands.log"
MODEL=(--model "$DATA/kjv64/model.bin" --tokenizer "$DATA/stories260K/tok512.bin")
LIT=(--ppl "$DATA/kjv64/literature.txt")
PUD=(--ppl "$DATA/text/en_pud.txt" --lines 501-1000)
CAL=(--ppl "$DATA/kjv64/calib.txt")
P_REF="$WORK/cal.safetensors"     # queries, positions 0-510 of calib.txt's first window, no centering
P_ALL="$WORK/cal_all.safetensors" # queries, every 512-token window of calib.txt, no centering
has() { [[ " $SECTIONS " == *" $1 "* ]]; }
logged() {
  echo "$*" >>"$LOG"
  "$@"
}

# ppl TEXT(lit|pud) single|pooled [aqua_llama flags...] -> the JSON line's perplexity (and mean k
# with --energy); exits on a failed run.
ppl() {
  local text=$1 scope=$2
  shift 2
  local -a t
  if [[ $text == lit ]]; then t=("${LIT[@]}"); else t=("${PUD[@]}"); fi
  [[ $scope == pooled ]] && t+=(--windows 0)
  local line
  line=$(logged "$LLAMA" "${MODEL[@]}" "${t[@]}" --json "$@" 2>>"$WORK/stderr.log" | tail -1)
  local p mk e
  p=$(sed -n 's/.*"perplexity": \([0-9.]*\).*/\1/p' <<<"$line")
  e=$(sed -n 's/.*"energy": \([0-9.e-]*\).*/\1/p' <<<"$line")
  mk=$(sed -n 's/.*"mean_k": \([0-9.]*\).*/\1/p' <<<"$line")
  [[ -n $p ]] || { echo "kjv64.sh: no perplexity from: $LLAMA ${t[*]} $*" >&2; exit 1; }
  if [[ $e != 0 ]]; then printf '%.4f (k %.2f)' "$p" "$mk"; else printf '%.4f' "$p"; fi
}
# Relative change against a baseline, as "+1.00%".
rel() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f%%", (a / b - 1) * 100 }'; }
# The dense baselines, computed once here (cells run in subshells, so no lazy caching).
declare -A DENSE
dense() { echo "${DENSE[$1 $2]}"; }
# cell TEXT SCOPE FLAGS... -> "15.4020 (+0.26%)"
cell() {
  local text=$1 scope=$2
  shift 2
  local d p
  d=$(dense "$text" "$scope")
  p=$(ppl "$text" "$scope" "$@")
  echo "$p ($(rel "${p%% *}" "$d"))"
}

KS=(8 16 24 32 48 64)
if has main || has trunc || has energy || has variants || has h2o; then
  for text in lit pud; do for scope in single pooled; do DENSE[$text $scope]=$(ppl $text $scope); done; done
fi

if has ref; then
  echo "## Reference checks"
  echo
  echo '```'
  logged "$LLAMA" "${MODEL[@]}" 2>&1
  logged "$LLAMA" "${MODEL[@]}" "${LIT[@]}" 2>&1
  logged "$LLAMA" "${MODEL[@]}" "${PUD[@]}" 2>&1
  echo '```'
  echo
fi

if has cal; then
  echo "## Calibration (dumps and projections in $WORK)" >&2
  # Positions 0-510 of the first window (the 511 that predict a token): a causal 511-token run.
  logged "$LLAMA" "${MODEL[@]}" "${CAL[@]}" --max-tokens 511 --dump-qk "$WORK/cal_dump" >/dev/null 2>&1
  logged "$CALIBRATE" --dumps "$WORK/cal_dump" --out "$P_REF" >/dev/null 2>&1
  logged "$LLAMA" "${MODEL[@]}" "${CAL[@]}" --windows 0 --dump-qk "$WORK/cal_all_dump" >/dev/null 2>&1
  logged "$CALIBRATE" --dumps "$WORK/cal_all_dump" --out "$P_ALL" >/dev/null 2>&1
fi

if has main; then
  echo "## Perplexity: dense and AQUA (calib.txt projection, reference set-up)"
  echo
  echo "tile T = 32 is aqua's default tile; a tile selection reads ceil(k / T) whole tiles (ceil(k / T) * T dims),"
  echo "chosen per KV group by the summed query energy. group and tile run token by token (decode)."
  for text in lit pud; do
    for scope in single pooled; do
      echo
      echo "### $text, $scope: dense $(dense $text $scope)"
      echo
      echo "| selection | k=8 | k=16 | k=24 | k=32 | k=48 | k=64 |"
      echo "|---|---|---|---|---|---|---|"
      for sel in per-head group "tile T=32" "tile T=16" "tile T=8"; do
        local_flags=(--select "${sel%% *}")
        # Tile and group selection are decode modes (one set per KV group); a prefill picks tiles
        # per query head, so both run token by token here.
        [[ $sel == tile* ]] && local_flags+=(--tile "${sel##*=}" --block 1)
        row="| $sel |"
        for k in "${KS[@]}"; do row+=" $(cell $text $scope --projection "$P_REF" --k "$k" "${local_flags[@]}") |"; done
        echo "$row"
      done
    done
  done
  echo
fi

if has trunc; then
  echo "## Truncation: keys keep only the first r projected dims (per-head selection)"
  for text in lit pud; do
    echo
    echo "### $text: single / pooled"
    echo
    echo "| r | k | single | pooled |"
    echo "|---|---|---|---|"
    for r in 32 48; do
      for k in 8 16 24 32 48; do
        ((k > r)) && continue
        echo "| $r | $k | $(cell $text single --projection "$P_REF" --r $r --k $k) | $(cell $text pooled --projection "$P_REF" --r $r --k $k) |"
      done
    done
  done
  echo
fi

if has energy; then
  echo "## Energy thresholds (per-head, calib.txt projection): the fewest dims holding tau of |q~|^2"
  for text in lit pud; do
    echo
    echo "### $text: single / pooled (mean k per query head and token in brackets)"
    echo
    echo "| tau | single | pooled |"
    echo "|---|---|---|"
    for tau in ${TAUS:-0.60 0.81 0.91 0.96 0.995}; do
      echo "| $tau | $(cell $text single --projection "$P_REF" --energy $tau) | $(cell $text pooled --projection "$P_REF" --energy $tau) |"
    done
  done
  echo
fi

if has variants; then
  echo "## Variants (per-head selection)"
  for text in lit pud; do
    echo
    echo "### $text: single / pooled"
    echo
    echo "| variant | k | single | pooled |"
    echo "|---|---|---|---|"
    for k in 16 32; do
      echo "| identity bases (no calibration) | $k | $(cell $text single --identity --k $k) | $(cell $text pooled --identity --k $k) |"
    done
    for k in 8 16 24 32 48; do
      echo "| queries of all windows of calib.txt | $k | $(cell $text single --projection "$P_ALL" --k $k) | $(cell $text pooled --projection "$P_ALL" --k $k) |"
    done
  done
  echo
fi

if has h2o; then
  echo "## H2O eviction under AQUA (per-head selection, calib.txt projection, token by token)"
  echo
  echo "Budget B tokens per KV head out of the 512-token window, B / 2 of them the most recent; evicted after every"
  echo "decode step, so each query attends over at most B + 1 tokens. k = 64 is exact attention plus eviction."
  for text in lit pud; do
    echo
    echo "### $text: single / pooled"
    echo
    echo "| budget | k | single | pooled |"
    echo "|---|---|---|---|"
    for k in 64 32; do
      echo "| none | $k | $(cell $text single --projection "$P_REF" --k $k --block 1) | $(cell $text pooled --projection "$P_REF" --k $k --block 1) |"
      for b in 256 128 64; do
        echo "| $b ($(awk -v b=$b 'BEGIN { printf "%g%%", b * 100 / 512 }')) | $k | $(cell $text single --projection "$P_REF" --k $k --h2o-budget $b) | $(cell $text pooled --projection "$P_REF" --k $k --h2o-budget $b) |"
      done
    done
  done
  echo
fi

if has retention; then
  echo "## Retention on literature.txt (calib.txt projection, reference set-up)"
  echo
  logged "$LLAMA" "${MODEL[@]}" "${LIT[@]}" --dump-qk "$WORK/lit_dump" >/dev/null 2>&1
  logged "$LLAMA" "${MODEL[@]}" "${LIT[@]}" --windows 0 --dump-qk "$WORK/lit_all_dump" >/dev/null 2>&1
  for dump in lit_dump lit_all_dump; do
    echo "### $dump"
    echo
    echo '```'
    logged "$CALIBRATE" --projection "$P_REF" --eval "$WORK/$dump" 2>/dev/null
    echo '```'
    echo
  done
fi

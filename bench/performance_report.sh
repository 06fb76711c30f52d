#!/usr/bin/env bash
# Reproduces the docs/performance.md tables and plot, unattended (a few minutes on 2 cores):
#   bench/performance_report.sh BUILD_DIR OUT_DIR
# BUILD_DIR must hold (or be able to build) bench/aqua_compare and bench/aqua_perf_report
# (configure with -DCMAKE_BUILD_TYPE=Release). OUT_DIR receives:
#   machine.txt             lscpu summary, load, commit, the commands run
#   decode.jsonl            aqua_compare --json, Llama-3.1-8B layer shape (Hq 32, Hkv 8, d 128),
#                           N in {1k, 4k, 16k, 32k}, k in {32, 64, 96}, per-head/group/tile, 1 and 2 threads
#   sweep.jsonl             aqua_compare --sweep-break-even --json (k 96 and 32, tile and group,
#                           1 and 2 threads, dense baseline "plain")
#   sweep_projected.jsonl   the same sweep, 1 thread, tile, against dense over the projected cache
#   decode_avx2.jsonl       decode at N = 32k, 1 thread, both sides forced onto the AVX2 kernels
#                           (aqua_compare --isa avx2; on a CPU without AVX-512 it equals the default)
#   decode_16bit.jsonl      decode at N = 32k over bf16 and over f16 KV storage (--kv-type), k 32 and
#                           96, group and tile, with the f32 rows of decode.jsonl for comparison
#   performance.md          the markdown tables (machine, decode table with bandwidth fractions,
#                           measured vs modelled break-even)
#   measured_speedup.svg    measured speedup against N beside the model (docs/performance.md shows it)
# Every measurement runs AQUA_REPORT_RUNS times (default 2): the tables give the median and the
# range over the runs, the plot the median curve.
# Environment: AQUA_REPORT_THREADS (default "1 2"), AQUA_REPORT_REPS (decode pairs, default 10),
# AQUA_REPORT_SWEEP_REPS (default 15), AQUA_REPORT_CLOCK (cpu|wall, default cpu: robust when
# other jobs share the cores), AQUA_REPORT_BASIS (random|identity, default random), AQUA_REPORT_PNG=1
# (also render the SVG to PNG with rsvg-convert, to look at it).
set -euo pipefail
if [ "$#" -ne 2 ]; then
  echo "usage: $0 BUILD_DIR OUT_DIR" >&2
  exit 2
fi
build=$1
out=$2
threads=${AQUA_REPORT_THREADS:-1 2}
runs=${AQUA_REPORT_RUNS:-2}
reps=${AQUA_REPORT_REPS:-10}
sweep_reps=${AQUA_REPORT_SWEEP_REPS:-15}
clock=${AQUA_REPORT_CLOCK:-cpu}
basis=${AQUA_REPORT_BASIS:-random}
compare=$build/bench/aqua_compare
report=$build/bench/aqua_perf_report
if [ ! -x "$compare" ] || [ ! -x "$report" ]; then
  cmake --build "$build" -j "${AQUA_JOBS:-1}" --target aqua_compare aqua_perf_report
fi
mkdir -p "$out"
: >"$out/decode.jsonl"
: >"$out/decode_avx2.jsonl"
: >"$out/decode_16bit.jsonl"
: >"$out/sweep.jsonl"
log=$out/machine.txt
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "commit: $(git -C "$(dirname "$0")" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  if command -v lscpu >/dev/null; then
    lscpu | grep -E '^(Model name|Architecture|CPU\(s\)|Thread\(s\) per core|Core\(s\) per socket|L1d|L2|L3|Flags)' |
      sed -E 's/^(Flags:[[:space:]]*).*/\1(avx2: '"$(grep -qw avx2 /proc/cpuinfo && echo yes || echo no)"', fma: '"$(grep -qw fma /proc/cpuinfo && echo yes || echo no)"', avx512f: '"$(grep -qw avx512f /proc/cpuinfo && echo yes || echo no)"')/'
  fi
  echo "load before: $(uptime | sed 's/.*load average/load average/')"
} >"$log"

run() {
  echo "+ $*" >>"$log"
  echo "+ $*" >&2
  "$@"
}

start=$(date +%s)
for r in $(seq "$runs"); do
  for t in $threads; do
    run "$compare" --mode decode --n 1024,4096,16384,32768 --k 32,64,96 --hq 32 --hkv 8 --d 128 \
      --select per-head,group,tile --threads "$t" --reps "$reps" --clock "$clock" --basis "$basis" --baseline plain \
      --json >>"$out/decode.jsonl"
    for kv in bf16 f16; do
      run "$compare" --mode decode --n 32768 --k 32,96 --hq 32 --hkv 8 --d 128 --select group,tile \
        --threads "$t" --reps "$reps" --clock "$clock" --basis "$basis" --baseline plain --kv-type "$kv" \
        --json >>"$out/decode_16bit.jsonl"
    done
    run "$compare" --sweep-break-even --k 96,32 --select tile,group --hq 32 --hkv 8 --d 128 --sweep-n 64:32768 \
      --threads "$t" --reps "$sweep_reps" --clock "$clock" --basis "$basis" --json >>"$out/sweep.jsonl"
  done
  run "$compare" --mode decode --n 32768 --k 32,64,96 --hq 32 --hkv 8 --d 128 --select per-head,group,tile \
    --threads 1 --reps "$reps" --clock "$clock" --basis "$basis" --baseline plain --isa avx2 \
    --json >>"$out/decode_avx2.jsonl"
  echo "load after run $r: $(uptime | sed 's/.*load average/load average/')" >>"$log"
done
run "$compare" --sweep-break-even --k 96,32 --select tile --hq 32 --hkv 8 --d 128 --sweep-n 16:32768 \
  --baseline projected --threads 1 --reps "$sweep_reps" --clock "$clock" --basis "$basis" --json \
  >"$out/sweep_projected.jsonl"
echo "elapsed: $(($(date +%s) - start)) s" >>"$log"

run "$report" --table "$out/decode.jsonl" --sweep "$out/sweep.jsonl" --sweep "$out/sweep_projected.jsonl" \
  --markdown "$out/tables.md"
run "$report" --table "$out/decode_avx2.jsonl" --markdown "$out/tables_avx2.md"
grep '"n":32768' "$out/decode.jsonl" | grep -E '"select":"(group|tile)"' | grep -E '"k":(32|96),' \
  >"$out/decode_32k_f32.jsonl" || true
cat "$out/decode_32k_f32.jsonl" "$out/decode_16bit.jsonl" >"$out/decode_storage.jsonl"
run "$report" --table "$out/decode_storage.jsonl" --markdown "$out/tables_16bit.md"
run "$report" --sweep "$out/sweep.jsonl" --plot "$out/measured_speedup.svg"
{
  echo "### Machine and run"
  echo
  echo '```'
  cat "$log"
  echo '```'
  echo
  cat "$out/tables.md"
  echo
  echo "#### Decode at N = 32k with the AVX2 kernels (--isa avx2), same runs"
  sed '0,/^#### Decode, dense against AQUA/d' "$out/tables_avx2.md"
  echo
  echo "#### Decode at N = 32k over 16-bit KV storage (--kv-type bf16 / f16) beside f32, same runs"
  sed '0,/^#### Decode, dense against AQUA/d' "$out/tables_16bit.md"
} >"$out/performance.md"
rm -f "$out/tables.md" "$out/tables_avx2.md" "$out/tables_16bit.md" "$out/decode_32k_f32.jsonl" "$out/decode_storage.jsonl"
if [ "${AQUA_REPORT_PNG:-0}" = 1 ] && command -v rsvg-convert >/dev/null; then
  rsvg-convert -o "$out/measured_speedup.png" "$out/measured_speedup.svg"
fi
echo "wrote $out/performance.md and $out/measured_speedup.svg" >&2

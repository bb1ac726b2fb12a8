#!/usr/bin/env bash
# The GPU checks, as one script for a lent CUDA machine (docs/benchmarks.md, section "GPU").
#
#   OUT=<folder> bash scripts/gpu_run.sh [stage ...]        stages: tests bench listops (default: tests bench)
#
# tests:   the CUDA tests (-m cuda): flex executor, CUDA bench, the bf16/fp16/autocast precision sweep.
# bench:   attnzoo bench --full on CUDA at N up to 64k with the peers (wheels in .whl/, if carried).
# listops: the softmax row of docs/results.md (preset nystromformer); generates its data first (minutes).
# Each stage has its own time limit (TESTS_S, BENCH_S, LISTOPS_S seconds); everything a stage wrote is packed
# into $OUT/gpu-run.tgz at the end (the device tool returns at most 8 files), the log into $OUT/gpu-run.log.
set -u
out="${OUT:-gpu-run}"
work="$(mktemp -d)"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$work/site" .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:$work/site"
fi
attnzoo() { python3 -c 'import sys; from attnzoo.cli import main; sys.exit(main(sys.argv[1:]))' "$@"; }
pack() { tar czf "$out/gpu-run.tgz" -C "$work" --exclude site . ; }
trap pack EXIT

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(tests bench)
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())'
  git log -1 --format='commit %H' 2>/dev/null
} > "$work/device.txt" 2>&1
cat "$work/device.txt"
for stage in "${stages[@]}"; do
  echo "== $stage"
  case "$stage" in
    tests)
      timeout "${TESTS_S:-240}" python3 -m pytest -q -o addopts="" -m cuda -p no:cacheprovider \
        tests/sparse/test_flex_cuda.py tests/bench/test_bench_cuda.py tests/mechanisms/test_precision.py \
        > "$work/tests.txt" 2>&1
      tail -3 "$work/tests.txt" ;;
    bench)
      timeout "${BENCH_S:-360}" bash -c "$(declare -f attnzoo); attnzoo bench --full --device cuda --peers \
        --lengths 1024 4096 16384 65536 --time-budget-s 30 --out-dir '$work/bench'" > "$work/bench.txt" 2>&1
      tail -3 "$work/bench.txt" ;;
    listops)
      timeout "${LISTOPS_S:-1500}" bash -c "$(declare -f attnzoo); attnzoo train --preset nystromformer \
        --task listops --attention softmax --device cuda --eval-every 250 --seed 0 --progress false \
        --cache-dir '$work/cache' --out-dir '$work/listops-softmax'" > "$work/listops.txt" 2>&1
      rm -rf "$work/cache" "$work/listops-softmax"/*.pt
      tail -3 "$work/listops.txt" ;;
    *) echo "unknown stage $stage (tests, bench, listops)"; exit 2 ;;
  esac
done 2>&1 | tee "$out/gpu-run.log"

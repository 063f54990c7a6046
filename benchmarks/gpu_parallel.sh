#!/usr/bin/env bash
# The depth-parallel routes on an accelerator, in at most 8 minutes: the stage recursion against
# the parallel route (associative scans) and the dense solve on the core network, L = 64 … 16384,
# and the digits Gauss-Newton step. Every part has its own time limit, so one that fails or
# overruns leaves the others' results. Run from the repository root:
#     OUT=/some/dir bash benchmarks/gpu_parallel.sh
# Results (JSON + PNG) and one log land in $OUT; every JSON records jax.devices().
# What to compare: parallel ihvp against the CPU figures in results/parallel_cpu.json, and
# against the accelerator's own sequential recursion and dense solve (n ≈ 5000 is L = 256).
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:?set OUT to the results folder}
LOG=$OUT/log.txt
# shellcheck source=benchmarks/gpu_parts.sh
. "$(dirname "$0")/gpu_parts.sh"

{ nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv 2>/dev/null; nproc;
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee -a "$LOG"

# Every depth with the end-to-end ihvp too (the dense route where n <= 6000: L = 64 and 256, n = 5140).
part parallel 380 python3 -m benchmarks.parallel --depth 64 256 1024 4096 16384 --ihvp --repeats 3
cp benchmarks/results/parallel_*.json "$OUT"/ 2>/dev/null
part digits_gauss_newton 470 python3 benchmarks/newton_vs_adam.py --out "$OUT" \
  --second-order gauss_newton_lm --adam-lrs 1e-2 --sgd-lrs --seeds 0 \
  --first-order-seconds 4 --second-order-seconds 8 --second-order-steps 100
ls -la "$OUT" | tee -a "$LOG"

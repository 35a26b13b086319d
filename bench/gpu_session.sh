#!/usr/bin/env bash
# One GPU session's checks and timings, in the order that matters: the CUDA tests (graph replay
# equals the eager step; fused trials equal solo ones; the wide net equals each trial's own net
# with cuDNN's kernels), the lecture-grid benchmark, the step bench
# (the framework's step eager and graphed, and the fused trials' step per trial for 1, 3 and 6 trials),
# then the trials' convolution three ways (grouped, unfold + bmm, a loop) and the fused step's kernel table.
#
#     OUT=gpu-out bash bench/gpu_session.sh      # on a machine with a CUDA GPU; logs land in $OUT
#     BENCH_ARGS="--ways fused,naive,fused_bf16 --naive-runs 1" bash bench/gpu_session.sh   # a shorter session
#
# Every stage has its own time limit, so one stuck stage cannot take the others' results with it.
set -u
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(), 'cpus', __import__('os').cpu_count())" | tee -a "$OUT/gpu.txt"
timeout "${TESTS_S:-120}" python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda_graph.py tests/test_fused.py tests/test_stacked.py 2>&1 | tail -25 | tee "$OUT/tests.txt"
# shellcheck disable=SC2086  # BENCH_ARGS holds several arguments, e.g. "--ways fused,pool --naive-runs 1"
timeout "${BENCH_S:-400}" python3 bench/bench_train.py --size gpu ${BENCH_ARGS:-} --log "$OUT/bench_train.log" 2>&1 | tee "$OUT/bench_train.txt"
[ "${STEP_S:-90}" -gt 0 ] && timeout "${STEP_S:-90}" python3 bench/bench_layout.py --steps 100 2>&1 | tee "$OUT/bench_layout.txt"
[ "${CONV_S:-60}" -gt 0 ] && timeout "${CONV_S:-60}" python3 bench/bench_trial_conv.py --profile 2>&1 | tee "$OUT/bench_trial_conv.txt"

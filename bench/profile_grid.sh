#!/usr/bin/env bash
# Where the lecture grid's wall time goes, fused as one command (experiment=lecture_lr,lecture_lr2):
# start-up parts timed in a bare process, then the sweep under cProfile, with the time between
# epochs (the records) read from its metrics.jsonl. Prints a summary and the top of the profile.
#
#     OUT=prof-out bash bench/profile_grid.sh     # 6 protocols x 50 epochs, CIFAR-shaped synthetic data
#     N_TRAIN=300 N_TEST=100 ARGS="model.channels=4" OUT=prof-out bash bench/profile_grid.sh   # small, on a CPU
#
# cProfile slows Python (the per-step loop most): read the shares, not the absolute times.
set -u
OUT=${OUT:-prof-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
N_TRAIN=${N_TRAIN:-50000}
N_TEST=${N_TEST:-10000}
CACHE=$(mktemp -d)
SWEEP=$(mktemp -d)
python3 -c "
import time; t = time.perf_counter(); import torch; t1 = time.perf_counter()
import hydra, sweeper.train, sweeper.fused; t2 = time.perf_counter()
if torch.cuda.is_available(): torch.zeros(1, device='cuda'); torch.cuda.synchronize()
t3 = time.perf_counter(); torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1); t4 = time.perf_counter()
print(f'start-up: import torch {t1 - t:.2f} s, hydra + sweeper {t2 - t1:.2f} s, CUDA init {t3 - t2:.2f} s, '
      f'first torch.optim construction (imports torch._dynamo) {t4 - t3:.2f} s')" | tee "$OUT/profile.txt"
python3 -c "from sweeper import data; data.synthetic_cached($N_TRAIN, $N_TEST, 0, 0.1, '$CACHE')"  # as a second sweep finds it
t0=$(date +%s.%N)
# shellcheck disable=SC2086  # ARGS holds several overrides
python3 -m cProfile -o "$OUT/grid.prof" -m sweeper -m experiment=lecture_lr,lecture_lr2 hydra/launcher=pool \
  hydra.launcher.fuse=true data=synthetic data.generated_train="$N_TRAIN" data.generated_test="$N_TEST" data.cache_dir="$CACHE" \
  trainer.keep_sample_losses=false ${ARGS:-} hydra.sweep.dir="$SWEEP" > "$OUT/sweep.log" 2>&1
t1=$(date +%s.%N)
python3 - "$SWEEP" "$OUT/grid.prof" "$t0" "$t1" <<'PY' 2>&1 | tee -a "$OUT/profile.txt"
import json, pstats, sys
from pathlib import Path

sweep, prof, t0, t1 = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(line) for line in (sweep / "0" / "metrics.jsonl").read_text().splitlines()]
epochs = [r["epoch_time_s"] for r in rows]
between = [rows[i]["time_s"] - rows[i - 1]["time_s"] - epochs[i] for i in range(1, len(rows))]
summary = json.loads((sweep / "0" / "summary.json").read_text())
print(f"sweep under cProfile: {t1 - t0:.1f} s wall; {summary['status']}, {summary.get('fused_trials')} fused trials, "
      f"cuda_graph {summary.get('cuda_graph')}")
print(f"epochs: {sum(epochs):.2f} s (first {epochs[0]:.2f} s, median {sorted(epochs)[len(epochs) // 2]:.3f} s); "
      f"records between epochs: {sum(between):.2f} s (median {sorted(between)[len(between) // 2]:.4f} s); "
      f"the rest (start-up, the end): {t1 - t0 - rows[-1]['time_s']:.1f} s")
stats = pstats.Stats(prof)
stats.sort_stats("cumulative").print_stats(40)
stats.sort_stats("tottime").print_stats(20)
PY
rm -rf "$CACHE" "$SWEEP"

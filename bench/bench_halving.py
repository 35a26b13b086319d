"""Successive halving against the full grid, on the lecture's capacity grid (12 configurations).

    python bench/bench_halving.py [--n-train 800] [--n-test 500] [--epochs 9] [--eta 3] [--keep DIR]

Runs `experiment=lecture_capacity` (model.channels 8,16,32,64 x model.units [50],[200],[800]) on
the synthetic data set on the CPU twice, as a user would: the full grid (hydra/sweeper=grid), then
hydra/sweeper=halving (eta, min_epochs=1: rungs at epochs 1, 3, 9 of 12, 4, 2 configurations).
For each it prints the configuration picked and its test_acc at the last epoch, the epochs
trained (the metrics lines written: a paused run resumed trains no epoch twice) and the wall
time; then the ratios. Targets: halving's epochs <= 35% of the grid's, and its pick tied with the
grid's best: the grid's test_acc of the two differs by no more than the best one's binomial
standard error over the test images (one seed: the seed-to-seed noise is not measured here).
Both sweeps run with the same threads, so a configuration computes the same numbers in both.
A script, not a test: the timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CAPACITY = ("model.channels", "model.units")  # the knobs lecture_capacity sweeps


def sweep(sweep_dir: Path, args: list[str]) -> float:
    """Run one sweep with `python -m sweeper -m`; its wall time in seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "sweeper", "-m", *args, f"hydra.sweep.dir={sweep_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep {sweep_dir} failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return elapsed


def records(sweep_dir: Path) -> list[dict]:
    """Each job of the sweep: its overrides, epochs trained and last test_acc."""
    listed = json.loads((sweep_dir / "sweep.json").read_text())
    out = []
    for job in listed["jobs"]:
        run = sweep_dir / job["dir"]
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        knobs = " ".join(o for o in job["overrides"] if o.split("=")[0] in CAPACITY)
        out.append(
            {"num": job["num"], "config": knobs, "epochs": len(rows), "test_acc": rows[-1]["test_acc"]}
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--eta", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="write the sweeps here instead of a temp dir")
    a = parser.parse_args()
    common = [
        "experiment=lecture_capacity",
        "data=synthetic",
        f"data.generated_train={a.n_train}",
        f"data.generated_test={a.n_test}",
        "data.cache_dir=null",
        f"trainer.epochs={a.epochs}",
    ]
    base = a.keep or Path(tempfile.mkdtemp(prefix="bench_halving_"))
    print(f"lecture_capacity, 12 configurations, synthetic data: {a.n_train} train / {a.n_test} test images, "
          f"{a.epochs} epochs, eta={a.eta}, min_epochs=1; CPU, {os.cpu_count()} cores; sweeps in {base}")  # fmt: skip
    grid_s = sweep(base / "grid", common)
    halving_s = sweep(base / "halving", [*common, "hydra/sweeper=halving", f"hydra.sweeper.eta={a.eta}"])

    grid = records(base / "grid")
    best = max(grid, key=lambda r: (r["test_acc"], -r["num"]))
    halving = json.loads((base / "halving" / "sweep.json").read_text())["halving"]
    picked = halving["rungs"][-1]["picked"]
    trained = records(base / "halving")
    pick = trained[picked]
    grid_epochs, halving_epochs = sum(r["epochs"] for r in grid), sum(r["epochs"] for r in trained)
    noise = math.sqrt(best["test_acc"] * (1 - best["test_acc"]) / a.n_test)
    gap = best["test_acc"] - grid[picked]["test_acc"]  # the grid's own run of halving's pick

    print(f"\n{'sweep':<8} {'picked':<38} {'test_acc':>8} {'epochs':>7} {'wall s':>8}")
    print(f"{'grid':<8} {best['config']:<38} {best['test_acc']:>8.4f} {grid_epochs:>7} {grid_s:>8.1f}")
    print(
        f"{'halving':<8} {pick['config']:<38} {pick['test_acc']:>8.4f} {halving_epochs:>7} {halving_s:>8.1f}"
    )
    print("rungs: " + "; ".join(f"{len(r['jobs'])} to epoch {r['epoch']}" for r in halving["rungs"]))
    ratio = halving_epochs / grid_epochs
    print(f"\nepochs: halving / grid = {ratio:.3f} (target <= 0.35: {'met' if ratio <= 0.35 else 'NOT met'})")
    print(f"wall time: halving / grid = {halving_s / grid_s:.3f}")
    tied = gap <= noise
    print(
        f"pick: the grid's test_acc of halving's pick is {gap:+.4f} below the grid's best "
        f"(noise: binomial SE {noise:.4f} over {a.n_test} images): {'tied' if tied else 'NOT tied'}"
    )


if __name__ == "__main__":
    main()

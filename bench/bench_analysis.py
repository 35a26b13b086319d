"""Time the analysis on a synthetic sweep: 1,000 runs x 50 epochs, with per-sample loss histograms.

    python bench/bench_analysis.py [--runs 1000] [--epochs 50] [--keep DIR]

Builds the sweep in a temp dir (or DIR with --keep) with tests/fake_runs.py, then times
  first load     load_sweep on a cold cache (parses every record, writes .analysis_cache/)
  cached reload  load_sweep again (stats the record files, reads the parquet cache)
  draw           the standard figures of the report, rendered to PNG in memory
and prints each time with its ratio to the target (<= 5 s per load, <= 10 s draw, 2-core machine).
A script, not a test: timings depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import io
import resource
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the analysis package and tests/fake_runs.py, without an install

from analysis import load_sweep, standard_figures  # noqa: E402
from tests.fake_runs import make_sweep  # noqa: E402

TARGETS_S = {"first load": 5.0, "cached reload": 5.0, "draw": 10.0}
SCHEDULES = ["constant", ("step", 15, 0.01), ("step", 15, 0.001), ("step", 30, 0.01), ("step", 30, 0.001)]


def grid_for(n_runs: int) -> tuple[dict, list[int]]:
    """lr x channels x schedule x seeds; 5 x 4 x 5 x 10 = 1,000 runs."""
    grid = {"lr": [0.4, 0.2, 0.1, 0.05, 0.02], "model.channels": [8, 16, 32, 64], "schedule": SCHEDULES}
    points = 5 * 4 * len(SCHEDULES)
    return grid, list(range(max(1, round(n_runs / points))))


def timed(label: str, fn, times: dict):
    start = time.perf_counter()
    result = fn()
    times[label] = time.perf_counter() - start
    return result


def draw_all(sweep) -> int:
    n = 0
    for drawn in standard_figures(sweep):
        if drawn.figure is not None:
            drawn.figure.savefig(io.BytesIO(), format="png", dpi=110)
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--keep", type=Path, help="build the sweep here and keep it")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        sweep_dir = args.keep or Path(tmp) / "sweep"
        grid, seeds = grid_for(args.runs)
        times: dict[str, float] = {}
        n_jobs = len(seeds) * 5 * 4 * len(SCHEDULES)
        # A few of every kind of mess, so the timing includes the slow paths.
        timed(
            "build (not timed against a target)",
            lambda: make_sweep(
                sweep_dir,
                grid,
                seeds=seeds,
                epochs=args.epochs,
                n_train=10000,
                n_test=10000,
                diverge=range(0, n_jobs, 97),
                fail=range(5, n_jobs, 211),
                running=range(7, n_jobs, 331),
            ),
            times,
        )
        sweep = timed("first load", lambda: load_sweep(sweep_dir), times)
        sweep = timed("cached reload", lambda: load_sweep(sweep_dir), times)
        n_figures = timed("draw", lambda: draw_all(sweep), times)

    print(
        f"{len(sweep.runs)} runs x {args.epochs} epochs, {len(sweep.curves)} curve rows, "
        f"{len(sweep.varied)} varied keys, {n_figures} figures"
    )
    for label, seconds in times.items():
        target = TARGETS_S.get(label)
        ratio = f"  {seconds / target:5.2f} of the {target:.0f} s target" if target else ""
        print(f"{label:>36}: {seconds:6.2f} s{ratio}")
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'peak memory':>36}: {peak_mib:6.0f} MiB")


if __name__ == "__main__":
    main()

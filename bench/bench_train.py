"""Side-by-side wall times of one grid trained several ways, in one invocation on one machine:

  (a) naive      the common recipe: torchvision Dataset + per-sample transforms + DataLoader,
                 one process per run (bench/naive_train.py)                        --ways naive
  (b) bare       a hand-written device-resident loop, all runs in one process (bench/bare_train.py)
  (c) framework  `python -m sweeper -m ...` on the same grid, writing its full run records
  (c0)           the same with trainer.cuda_graph=false (GPU size only)            --ways nograph
  (e) pool       `hydra/launcher=pool`, a slot per job on the GPU (GPU size only)
  (d) fused      `hydra/launcher=pool hydra.launcher.fuse=true`: the grid's jobs trained as one
                 program (one wide net), each still writing its own record; at the GPU size one
                 command, `experiment=lecture_lr,lecture_lr2`, runs the 6 protocols as one group
  (d2)           the same, the lr and lr2 sub-grids as two commands at once (GPU size only)  --ways fused2
  (d-bf16)       (d) with trainer.precision=bf16 (autocast), not the lecture's fp32  --ways fused_bf16

    python bench/bench_train.py                 # CPU size: 3 runs x 4 epochs, 10k synthetic images (about 4 min on 2 cores)
    python bench/bench_train.py --size gpu      # the lecture grid: 6 protocols x 50 epochs, CIFAR-shaped
    python bench/bench_train.py --runs 2 --epochs 1 --n-train 2000   # smaller
    python bench/bench_train.py --size gpu --ways fused,pool,naive --naive-runs 1   # some ways only
    python bench/bench_train.py --ways bare,framework --repeat 3    # medians of 3, the ways in turn

The grid is the lecture's: lr in {0.2, 0.1, 0.01} (CPU size), plus "0.1 then lr2 in {0.07, 0.05,
0.02}" at the GPU size. Data: real CIFAR-10 when $SWEEPER_DATA points at it (GPU size),
otherwise the synthetic set at the requested size. It prints times and ratios; it asserts nothing.

At the GPU size the slow ways (naive, bare, the framework's jobs one after another, with and
without CUDA graphs) train `--short-epochs` epochs per run, and their full-grid time is
extrapolated from it: the measured wall plus the measured epochs' time scaled to all epochs
(start-up is counted once, as it happens). The fast ways -- the pool launcher with a slot per
job, and fused trials -- train the whole grid, the lr and the lr2 sub-grids' commands at once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sweeper import data as data_module  # noqa: E402

# The repo first on the path, keeping any path already set (a --target install of the deps, say).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
WAYS = ("naive", "bare", "nograph", "framework", "pool", "fused", "fused2", "fused_bf16")
LR_GRID = [(0.2, None), (0.1, None), (0.01, None)]
LR2_GRID = [(0.1, 0.07), (0.1, 0.05), (0.1, 0.02)]


def grid(size: str, runs: int):
    protocols = LR_GRID + (LR2_GRID if size == "gpu" else [])
    return protocols[:runs]


def load_arrays(size: str, n_train: int, n_test: int, cache: Path):
    """The grid's data, decoded or generated once before any timing, as the framework's cache
    holds it (the naive and bare loops read the same arrays from .npz files)."""
    if size == "gpu" and os.environ.get("SWEEPER_DATA"):
        tx, ty, vx, vy = data_module.cifar10(os.environ["SWEEPER_DATA"], False, str(cache))
        return tx, ty, vx, vy, ["data=cifar10", f"data.cache_dir={cache}"]
    tx, ty, vx, vy = data_module.synthetic_cached(n_train, n_test, 0, 0.1, str(cache))
    return (
        tx,
        ty,
        vx,
        vy,
        [
            "data=synthetic",
            f"data.generated_train={n_train}",
            f"data.generated_test={n_test}",
            f"data.cache_dir={cache}",
        ],
    )


def _run(cmd, log) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=log, text=True)


def _epochs_s(stdout: str) -> float:
    return float(stdout.rsplit("epochs_s=", 1)[1])


def run_naive(folder: Path, protocols, epochs: int, workers: int, log) -> tuple[float, float]:
    t0, epochs_s = time.perf_counter(), 0.0
    for lr, lr2 in protocols:
        cmd = [sys.executable, str(REPO / "bench" / "naive_train.py"), "--data", str(folder), "--lr", str(lr),
               "--epochs", str(epochs), "--workers", str(workers)]  # fmt: skip
        if lr2 is not None:
            cmd += ["--lr2", str(lr2), "--switch", str(epochs // 2)]
        epochs_s += _epochs_s(_run(cmd, log).stdout)
    return time.perf_counter() - t0, epochs_s


def run_bare(folder: Path, protocols, epochs: int, log) -> tuple[float, float]:
    lrs = ",".join(str(lr) for lr, lr2 in protocols if lr2 is None)
    lr2s = ",".join(str(lr2) for lr, lr2 in protocols if lr2 is not None)
    cmd = [sys.executable, str(REPO / "bench" / "bare_train.py"), "--data", str(folder), "--lrs", lrs, "--lr2s", lr2s,
           "--switch", str(epochs // 2), "--epochs", str(epochs)]  # fmt: skip
    t0 = time.perf_counter()
    done = _run(cmd, log)
    return time.perf_counter() - t0, _epochs_s(done.stdout)


def run_framework(
    protocols, epochs, data_args, out: Path, log, launcher=(), fused=False, at_once=False, one=False
):
    """The grid through `python -m sweeper -m`: one command for the lr sub-grid, one for lr2.

    at_once: both commands run at the same time (on a GPU they share it), else one after the other.
    one: the lecture's whole grid (its 6 protocols, 50 epochs) as one command of both experiments.
    Returns the wall time and the runs' own epoch times (training + evaluation) summed.
    """
    plain = [lr for lr, lr2 in protocols if lr2 is None]
    stepped = [lr2 for lr, lr2 in protocols if lr2 is not None]
    common = [*launcher, *data_args, f"trainer.epochs={epochs}", "trainer.checkpoint=true"]
    cmds = []
    if one and protocols == LR_GRID + LR2_GRID and epochs == 50:  # the experiments' own grids
        cmds.append([sys.executable, "-m", "sweeper", "-m", "experiment=lecture_lr,lecture_lr2", *common,
                     "trainer.keep_sample_losses=false", f"hydra.sweep.dir={out}/all"])  # fmt: skip
        plain = stepped = []  # as the two commands below, lecture_lr's raw losses are not kept
    if plain:
        cmds.append([sys.executable, "-m", "sweeper", "-m", *common, "lr=" + ",".join(map(str, plain)),
                     f"hydra.sweep.dir={out}/plain"])  # fmt: skip
    if stepped:
        cmds.append([sys.executable, "-m", "sweeper", "-m", *common, "schedule=step", f"schedule.switch_epoch={max(1, epochs // 2)}",
                     "lr=0.1", "schedule.lr2=" + ",".join(map(str, stepped)), f"hydra.sweep.dir={out}/stepped"])  # fmt: skip
    t0 = time.perf_counter()
    if at_once:
        procs = [subprocess.Popen(c, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=log) for c in cmds]
        if any(proc.wait() != 0 for proc in procs):
            raise RuntimeError("a sweep command failed (see the log)")
    else:
        for c in cmds:
            subprocess.run(c, check=True, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=log)
    wall = time.perf_counter() - t0
    runs = sorted(out.glob("*/*/summary.json"))
    failed = [str(f.parent) for f in runs if json.loads(f.read_text())["status"] != "completed"]
    if len(runs) != len(protocols) or failed:
        raise RuntimeError(f"{len(runs)} of {len(protocols)} runs finished; not completed: {failed}")
    # The runs' own per-epoch times (training + evaluation): what remains without start-up costs.
    # Fused trials share each epoch (each records the group's time): count it once per sub-grid.
    per_epoch = {}
    for f in out.glob("*/*/metrics.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            key = (
                (f.parent.parent.name, row["epoch"], row["epoch_time_s"]) if fused else (str(f), row["epoch"])
            )
            per_epoch[key] = row["epoch_time_s"]
    return wall, sum(per_epoch.values())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--runs", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--short-epochs", type=int, help="epochs of the slow ways at the GPU size (default 2)")
    p.add_argument("--n-train", type=int)
    p.add_argument(
        "--ways", help="comma-separated ways to run, in this order (default: all): " + ",".join(WAYS)
    )
    p.add_argument("--naive-runs", type=int, help="time naive on this many runs and scale to the grid")
    p.add_argument(
        "--repeat", type=int, default=1, help="run every way this many times, in turn; ratios of the medians"
    )
    p.add_argument("--log", help="append the commands' stderr to this file (default: discard it)")
    args = p.parse_args()
    gpu = args.size == "gpu"
    runs = args.runs or (6 if gpu else 3)
    epochs = args.epochs or (50 if gpu else 4)
    short = min(epochs, max(2, args.short_epochs or (2 if gpu else epochs)))  # lr2 switches after epoch 1
    n_train = args.n_train or (50_000 if gpu else 10_000)
    n_test = 10_000 if gpu else 2_000
    protocols = grid(args.size, runs)
    ways = (
        args.ways.split(",")
        if args.ways
        else [w for w in WAYS if w != "fused_bf16" and (gpu or w not in ("nograph", "pool", "fused2"))]
    )
    unknown = set(ways) - set(WAYS)
    if unknown:
        p.error(f"--ways: unknown {sorted(unknown)}; allowed values are {', '.join(WAYS)}")
    log = open(args.log, "a") if args.log else subprocess.DEVNULL  # noqa: SIM115
    full_runs = {}  # way -> wall times of the whole grid (s), measured or extrapolated, one per repeat
    epochs_runs = {}  # way -> the runs' own epoch times, summed over the epochs it ran, one per repeat

    def measure(name, label, fn, n_epochs, scale=1.0):
        try:
            wall, alone = fn()
        except (subprocess.CalledProcessError, RuntimeError) as e:
            print(f"{name:<28} failed: {e}", flush=True)
            return
        wall, alone = wall * scale, alone * scale
        epochs_runs.setdefault(name, []).append(alone)
        full_runs.setdefault(name, []).append(wall + alone * (epochs / n_epochs - 1))
        shown = f"{wall:8.1f} s measured ({n_epochs} epochs)" if n_epochs < epochs else f"{wall:8.1f} s"
        extra = f" -> {full_runs[name][-1]:.1f} s for {epochs} epochs" if n_epochs < epochs else ""
        print(f"{name:<28} {shown}{extra}   (epochs alone {alone:.1f} s)  {label}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        tx, ty, vx, vy, data_args = load_arrays(args.size, n_train, n_test, folder / "cache")
        device = (
            torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
        )
        print(
            f"grid: {len(protocols)} runs x {epochs} epochs, {len(ty)} train / {len(vy)} test images, on {device}"
            + (f"; slow ways measured on {short} epochs per run and extrapolated" if short < epochs else "")
        )
        for split, x, y in (("train", tx, ty), ("test", vx, vy)):
            np.savez(folder / f"{split}.npz", x=x.permute(0, 2, 3, 1).numpy(), y=y.numpy())
        both = ", both commands at once" if gpu else ""
        # Repeats go round the ways in turn, so that a slow spell of a shared machine falls on
        # all of them; the ratios below are of the medians.
        for way, r in ((w, r) for r in range(args.repeat) for w in ways):
            if way == "naive":
                workers, some = 4 if gpu else 2, protocols[: args.naive_runs or len(protocols)]
                label = f"Dataset + DataLoader({workers} workers), a process per run" + (
                    f"; timed on {len(some)} runs, scaled to {len(protocols)}"
                    if len(some) < len(protocols)
                    else ""
                )
                measure("(a) naive", label, partial(run_naive, folder, some, short, workers, log), short,
                        scale=len(protocols) / len(some))  # fmt: skip
            elif way == "bare":
                measure("(b) bare", "hand-written device-resident loop, one process",
                        partial(run_bare, folder, protocols, short, log), short)  # fmt: skip
            elif way == "nograph":
                measure("(c0) framework, no graph", "jobs one after another, trainer.cuda_graph=false",
                        partial(run_framework, protocols, short, [*data_args, "trainer.cuda_graph=false"],
                                folder / f"nograph{r}", log), short)  # fmt: skip
            elif way == "framework":
                measure("(c) framework", "Hydra's basic launcher, jobs one after another (defaults)",
                        partial(run_framework, protocols, short, data_args, folder / f"sweeps{r}", log), short)  # fmt: skip
            elif way == "pool":
                pool = ["hydra/launcher=pool", f"hydra.launcher.slots_per_device={len(protocols)}"]
                measure("(e) pool", f"hydra/launcher=pool, {len(protocols)} slots on the GPU{both}",
                        partial(run_framework, protocols, epochs, data_args, folder / f"pool{r}", log, pool, at_once=gpu),
                        epochs)  # fmt: skip
            elif way in ("fused", "fused2", "fused_bf16"):
                fuse = ["hydra/launcher=pool", "hydra.launcher.fuse=true"]
                bf16 = ["trainer.precision=bf16"] if way == "fused_bf16" else []
                one = way != "fused2" and protocols == LR_GRID + LR2_GRID and epochs == 50
                how = ", one command: experiment=lecture_lr,lecture_lr2" if one else both
                name = {"fused": "(d) fused", "fused2": "(d2) fused", "fused_bf16": "(d-bf16) fused, bf16"}[
                    way
                ]
                measure(name, " ".join(["hydra/launcher=pool hydra.launcher.fuse=true", *bf16]) + how,
                        partial(run_framework, protocols, epochs, [*data_args, *bf16], folder / f"{way}{r}", log, fuse,
                                fused=True, at_once=gpu, one=one), epochs)  # fmt: skip

    full = {k: statistics.median(v) for k, v in full_runs.items()}
    epochs_s = {k: statistics.median(v) for k, v in epochs_runs.items()}
    print(f"\nratios of the medians of {args.repeat} repeats" if args.repeat > 1 else "")
    fast = [k for k in full if k.startswith(("(c)", "(d", "(e)"))]
    best = min(fast, key=full.get) if fast else None
    if "(a) naive" in full and best:
        for k in fast:
            print(
                f"{k} speed-up over naive: {full['(a) naive'] / full[k]:.2f}x"
                + ("  (target: >= 1.5x CPU, >= 40x GPU)" if k == best else "")
            )
    if "(b) bare" in full:
        for k in fast:
            print(
                f"{k} / bare loop:           {full[k] / full['(b) bare']:.2f}"
                + ("   (CPU target: <= 1.10)" if k == "(c) framework" else "")
            )
    if "(c) framework" in epochs_s and "(b) bare" in epochs_s:
        print(
            f"epochs alone, framework / bare: {epochs_s['(c) framework'] / epochs_s['(b) bare']:.2f}"
            "   (the rest: start-up -- imports, Hydra, validating every job, generating or reading the data --"
            " and the records written after each epoch: metrics, loss histograms, checkpoint)"
        )
    if "(c0) framework, no graph" in epochs_s and "(c) framework" in epochs_s:
        print(
            f"CUDA graph, epochs alone:      {epochs_s['(c0) framework, no graph'] / epochs_s['(c) framework']:.2f}x faster"
        )
    if best:
        per_run_epoch = full[best] / (len(protocols) * epochs)
        print(f"fastest way {best}: grid end to end {full[best]:.1f} s, {per_run_epoch:.3f} s per run-epoch"
              + ("  (target: <= 15 s)" if gpu else ""))  # fmt: skip


if __name__ == "__main__":
    main()

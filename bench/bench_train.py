"""Side-by-side wall times of one grid trained three ways, in one invocation on one machine:

  (a) naive      the common recipe: torchvision Dataset + per-sample transforms + DataLoader,
                 one process per run (bench/naive_train.py)
  (b) bare       a hand-written device-resident loop, all runs in one process (bench/bare_train.py)
  (c) framework  `python -m sweeper -m ...` on the same grid, writing its full run records
  (d) fused      the same, with `hydra/launcher=pool hydra.launcher.fuse=true`: the jobs of each
                 sub-grid trained as one vmapped program, each still writing its own record

    python bench/bench_train.py                 # CPU size: 3 runs x 4 epochs, 10k synthetic images (about 4 min on 2 cores)
    python bench/bench_train.py --size gpu      # the lecture grid: 6 protocols x 50 epochs, CIFAR-shaped
    python bench/bench_train.py --runs 2 --epochs 1 --n-train 2000   # smaller

The grid is the lecture's: lr in {0.2, 0.1, 0.01} (CPU size), plus "0.1 then lr2 in {0.07, 0.05,
0.02}" at the GPU size. Data: real CIFAR-10 when $SWEEPER_DATA points at it (GPU size),
otherwise the synthetic set at the requested size. It prints times and ratios; it asserts nothing.
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

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from sweeper import data as data_module  # noqa: E402

LR_GRID = [(0.2, None), (0.1, None), (0.01, None)]
LR2_GRID = [(0.1, 0.07), (0.1, 0.05), (0.1, 0.02)]


def grid(size: str, runs: int):
    protocols = LR_GRID + (LR2_GRID if size == "gpu" else [])
    return protocols[:runs]


def load_arrays(size: str, n_train: int, n_test: int):
    if size == "gpu" and os.environ.get("SWEEPER_DATA"):
        tx, ty, vx, vy = data_module.cifar10(os.environ["SWEEPER_DATA"], False, "~/.cache/sweeper")
        return tx, ty, vx, vy, ["data=cifar10"]
    tx, ty, vx, vy = data_module.synthetic(n_train, n_test, seed=0, label_noise=0.1)
    return tx, ty, vx, vy, ["data=synthetic", f"data.n_train={n_train}", f"data.n_test={n_test}"]


def run_naive(folder: Path, protocols, epochs: int) -> float:
    t0 = time.perf_counter()
    for lr, lr2 in protocols:
        cmd = [
            sys.executable,
            str(REPO / "bench" / "naive_train.py"),
            "--data",
            str(folder),
            "--lr",
            str(lr),
            "--epochs",
            str(epochs),
        ]
        if lr2 is not None:
            cmd += ["--lr2", str(lr2), "--switch", str(epochs // 2)]
        subprocess.run(
            cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL
        )
    return time.perf_counter() - t0


def run_bare(folder: Path, protocols, epochs: int) -> tuple[float, float]:
    lrs = ",".join(str(lr) for lr, lr2 in protocols if lr2 is None)
    lr2s = ",".join(str(lr2) for lr, lr2 in protocols if lr2 is not None)
    cmd = [sys.executable, str(REPO / "bench" / "bare_train.py"), "--data", str(folder), "--lrs", lrs, "--lr2s", lr2s,
           "--switch", str(epochs // 2), "--epochs", str(epochs)]  # fmt: skip
    t0 = time.perf_counter()
    done = subprocess.run(
        cmd, check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True
    )
    wall = time.perf_counter() - t0
    return wall, float(done.stdout.rsplit("epochs_s=", 1)[1])


def run_framework(protocols, epochs: int, data_args: list[str], out: Path, launcher=(), fused=False):
    plain = [lr for lr, lr2 in protocols if lr2 is None]
    stepped = [lr2 for lr, lr2 in protocols if lr2 is not None]
    common = [*launcher, *data_args, f"trainer.epochs={epochs}", "trainer.checkpoint=true"]
    t0 = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if plain:
        cmd = [
            sys.executable,
            "-m",
            "sweeper",
            "-m",
            *common,
            "lr=" + ",".join(map(str, plain)),
            f"hydra.sweep.dir={out}/plain",
        ]
        subprocess.run(
            cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    if stepped:
        cmd = [sys.executable, "-m", "sweeper", "-m", *common, "schedule=step", f"schedule.epoch={epochs // 2}", "lr=0.1",
               "schedule.lr2=" + ",".join(map(str, stepped)), f"hydra.sweep.dir={out}/stepped"]  # fmt: skip
        subprocess.run(
            cmd, check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    wall = time.perf_counter() - t0
    # The runs' own per-epoch times (training + evaluation): what remains without start-up costs.
    # Fused trials share each epoch (each records the group's time): count it once per sub-grid.
    per_epoch = {}
    for f in out.glob("*/*/metrics.jsonl"):
        for line in f.read_text().splitlines():
            row = json.loads(line)
            # the trials of one fused group record the same epoch time: count each value once
            key = (f.parent.parent.name, row["epoch"], row["epoch_time_s"]) if fused else (str(f), row["epoch"])
            per_epoch[key] = row["epoch_time_s"]
    return wall, sum(per_epoch.values())


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--runs", type=int)
    p.add_argument("--epochs", type=int)
    p.add_argument("--n-train", type=int)
    p.add_argument("--skip-naive", action="store_true")
    args = p.parse_args()
    gpu = args.size == "gpu"
    runs = args.runs or (6 if gpu else 3)
    epochs = args.epochs or (50 if gpu else 4)
    n_train = args.n_train or (50_000 if gpu else 10_000)
    n_test = 10_000 if gpu else 2_000
    protocols = grid(args.size, runs)
    tx, ty, vx, vy, data_args = load_arrays(args.size, n_train, n_test)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    print(
        f"grid: {len(protocols)} runs x {epochs} epochs, {len(ty)} train / {len(vy)} test images, on {device}"
    )

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for split, x, y in (("train", tx, ty), ("test", vx, vy)):
            np.savez(folder / f"{split}.npz", x=x.permute(0, 2, 3, 1).numpy(), y=y.numpy())
        times = {}
        if not args.skip_naive:
            times["naive"] = run_naive(folder, protocols, epochs)
            print(f"(a) naive      {times['naive']:8.1f} s", flush=True)
        epochs_s = {}
        times["bare"], epochs_s["bare"] = run_bare(folder, protocols, epochs)
        print(f"(b) bare       {times['bare']:8.1f} s   (epochs alone {epochs_s['bare']:.1f} s)", flush=True)
        times["framework"], epochs_s["framework"] = run_framework(protocols, epochs, data_args, folder / "sweeps")
        print(
            f"(c) framework  {times['framework']:8.1f} s   (epochs alone {epochs_s['framework']:.1f} s)"
            "  Hydra's basic launcher, jobs one after another in one process",
            flush=True,
        )
        fused = ["hydra/launcher=pool", "hydra.launcher.fuse=true"]
        times["fused"], epochs_s["fused"] = run_framework(protocols, epochs, data_args, folder / "fused", fused, fused=True)
        print(
            f"(d) fused      {times['fused']:8.1f} s   (epochs alone {epochs_s['fused']:.1f} s)"
            "  hydra/launcher=pool hydra.launcher.fuse=true",
            flush=True,
        )

    print()
    if "naive" in times:
        print(
            f"framework speed-up over naive: {times['naive'] / times['framework']:.2f}x  (target: >= 1.5x CPU, >= 40x GPU)"
        )
        print(f"fused speed-up over naive:     {times['naive'] / times['fused']:.2f}x")
    print(f"framework / bare loop:         {times['framework'] / times['bare']:.2f}   (target: <= 1.10)")
    print(f"fused / bare loop:             {times['fused'] / times['bare']:.2f}")
    print(
        f"epochs alone, framework / bare: {epochs_s['framework'] / epochs_s['bare']:.2f}"
        "   (the rest: start-up -- imports, Hydra, validating every job, generating or reading the data --"
        " and the records written after each epoch: metrics, loss histograms, checkpoint)"
    )
    per_run_epoch = times["framework"] / (len(protocols) * epochs)
    print(
        f"framework per run-epoch:       {per_run_epoch:.2f} s;  grid end to end {times['framework']:.1f} s"
        + ("  (target: <= 15 s)" if gpu else "")
    )
    assert math.isfinite(per_run_epoch)


if __name__ == "__main__":
    main()

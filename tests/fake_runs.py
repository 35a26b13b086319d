"""Write run records by hand, exactly as docs/run-record.md describes them.

Used by the analysis tests (hand-built runs with known answers) and by bench/bench_analysis.py
(`make_sweep`: a synthetic sweep of any size with plausible curves and loss histograms).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

BIN_EDGES = np.logspace(-8, 3, 111)  # 10 bins per decade, 1e-8 ... 1e3 (K = 110)
QUANTILE_LEVELS = np.array([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
METRIC_KEYS = (
    "epoch",
    "step",
    "epoch_lr",
    "train_loss",
    "train_acc",
    "test_loss",
    "test_acc",
    "samples",
    "time_s",
    "epoch_time_s",
)


def base_config(**overrides) -> dict:
    """A resolved task config shaped like conf/config.yaml's, with dotted overrides applied.

    The constant schedule has no `epoch`/`lr2`: set schedule.name="step" with them for a step schedule.
    """
    config = {
        "lr": 0.1,
        "model": {
            "_target_": "sweeper.models.ConvNet",
            "name": "convnet",
            "conv_layers": 2,
            "channels": 32,
            "growth": 2.0,
            "kernel_size": 5,
            "pool": [3, 2],
            "padding": "valid",
            "units": [200],
            "dropout": 0.0,
            "batch_norm": False,
            "l1": 0.0,
        },
        "optim": {
            "_target_": "torch.optim.SGD",
            "name": "sgd",
            "momentum": 0.0,
            "nesterov": False,
            "weight_decay": 0.0,
        },
        "schedule": {"_target_": "sweeper.schedules.constant", "name": "constant", "warmup_epochs": 0},
        "data": {
            "name": "synthetic",
            "n_train": 5000,
            "n_test": 1000,
            "label_noise": 0.1,
            "train_size": None,
            "seed": 0,
            "normalize": True,
            "augment": False,
        },
        "trainer": {
            "epochs": 10,
            "batch_size": 100,
            "eval_batch_size": 1000,
            "seed": 0,
            "device": "auto",
            "precision": "fp32",
            "channels_last": "auto",
            "sample_loss_epochs": [1, 2, 3, 5, 10],
            "keep_sample_losses": False,
            "checkpoint": True,
            "resume": True,
        },
    }
    for dotted, value in overrides.items():
        node = config
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config


def job_record(overrides: Sequence[str] = (), job_num: int | None = 0, **extra) -> dict:
    job = {
        "host": "node-test",
        "pid": 4242,
        "slurm_job_id": None,
        "slurm_array_job_id": None,
        "slurm_array_task_id": None,
        "overrides": list(overrides),
        "job_num": job_num,
        "started_at": "2026-11-26T23:59:01",
        "restarts": 0,
    }
    job.update(extra)
    return job


def metric_rows(
    train_loss: Sequence[float],
    test_loss: Sequence[float],
    train_acc: Sequence[float],
    test_acc: Sequence[float],
    lr: float | Sequence[float] = 0.1,
    steps_per_epoch: int = 100,
    batch_size: int = 100,
    epoch_time_s: float = 2.0,
) -> list[dict]:
    """One metrics.jsonl object per epoch (1-based); NaN becomes null when written."""
    n = len(train_loss)
    lrs = [lr] * n if isinstance(lr, (int, float)) else list(lr)
    return [
        {
            "epoch": e + 1,
            "step": (e + 1) * steps_per_epoch,
            "epoch_lr": lrs[e],
            "train_loss": train_loss[e],
            "train_acc": train_acc[e],
            "test_loss": test_loss[e],
            "test_acc": test_acc[e],
            "samples": (e + 1) * steps_per_epoch * batch_size,
            "time_s": (e + 1) * epoch_time_s,
            "epoch_time_s": epoch_time_s,
        }
        for e in range(n)
    ]


def _json_value(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None  # the spec writes non-finite numbers as null
    return value


def summary_record(
    rows: Sequence[dict],
    status: str = "completed",
    epochs: int | None = None,
    error: str | None = None,
    **extra,
) -> dict:
    """summary.json for these metric rows, computed the way the trainer does."""

    def pick(metric, best):
        finite = [(r[metric], r["epoch"]) for r in rows if r[metric] is not None and math.isfinite(r[metric])]
        if not finite:
            return None, None
        value = best(v for v, _ in finite)
        return value, next(e for v, e in finite if v == value)

    last = rows[-1] if rows else {}
    best_acc, best_acc_epoch = pick("test_acc", max)
    min_test, min_test_epoch = pick("test_loss", min)
    min_train, min_train_epoch = pick("train_loss", min)
    summary = {
        "status": status,
        "epochs_done": len(rows),
        "epochs": epochs if epochs is not None else len(rows),
        "final_train_loss": last.get("train_loss"),
        "final_train_acc": last.get("train_acc"),
        "final_test_loss": last.get("test_loss"),
        "final_test_acc": last.get("test_acc"),
        "best_test_acc": best_acc,
        "best_test_acc_epoch": best_acc_epoch,
        "min_test_loss": min_test,
        "min_test_loss_epoch": min_test_epoch,
        "min_train_loss": min_train,
        "min_train_loss_epoch": min_train_epoch,
        "n_params": 107114,
        "receptive_field_px": 22,
        "time_s": last.get("time_s", 0.0),
        "host": "node-test",
        "slurm_job_id": None,
        "versions": {"python": "3.11.7", "torch": "2.14.0", "sweeper": "0.1.0"},
        "device": "cpu",
        "error": error,
        "traceback": None if error is None else f"Traceback ...\n{error}",
        "finished_at": "2026-11-27T00:10:00",
    }
    summary.update(extra)
    return {k: _json_value(v) for k, v in summary.items()}


def bin_losses(losses: np.ndarray) -> dict[str, np.ndarray | int | float]:
    """Per-sample losses of one split at one epoch -> the losses.npz fields for it."""
    losses = np.asarray(losses, dtype=np.float64)
    finite = losses[np.isfinite(losses)]
    zero = int(np.sum(losses == 0.0))
    under = int(np.sum((losses > 0) & (losses < BIN_EDGES[0])))
    over = int(np.sum(finite >= BIN_EDGES[-1])) + int(
        np.sum(~np.isfinite(losses))
    )  # non-finite counts as over
    in_range = finite[(finite >= BIN_EDGES[0]) & (finite < BIN_EDGES[-1])]
    # Left-closed bins: searchsorted(side="right") - 1 puts a value equal to an edge in the bin it opens.
    idx = np.searchsorted(BIN_EDGES, in_range, side="right") - 1
    hist = np.bincount(idx, minlength=len(BIN_EDGES) - 1).astype(np.int64)
    return {
        "hist": hist,
        "zero": zero,
        "under": under,
        "over": over,
        "quantiles": np.quantile(finite, QUANTILE_LEVELS) if len(finite) else np.full(7, np.nan),
        "mean": float(finite.mean()) if len(finite) else math.nan,
    }


def losses_arrays(epochs: Sequence[int], train: Sequence[np.ndarray], test: Sequence[np.ndarray]) -> dict:
    """losses.npz arrays from raw per-sample losses at each kept epoch."""
    arrays = {
        "epochs": np.asarray(epochs, dtype=np.int64),
        "bin_edges": BIN_EDGES,
        "quantile_levels": QUANTILE_LEVELS,
    }
    for split, per_epoch in (("train", train), ("test", test)):
        binned = [bin_losses(x) for x in per_epoch]
        arrays[f"{split}_hist"] = np.stack([b["hist"] for b in binned])
        for field in ("zero", "under", "over"):
            arrays[f"{split}_{field}"] = np.array([b[field] for b in binned], dtype=np.int64)
        arrays[f"{split}_quantiles"] = np.stack([b["quantiles"] for b in binned])
        arrays[f"{split}_mean"] = np.array([b["mean"] for b in binned], dtype=np.float64)
    return arrays


def write_run(
    run_dir: Path,
    config: dict | None,
    rows: Sequence[dict] = (),
    summary: dict | None = None,
    job: dict | None = None,
    losses: dict | None = None,
    partial_line: str | None = None,
) -> Path:
    """Write a run dir. None for config/job/summary leaves that file out (summary None = running).

    `partial_line` is appended to metrics.jsonl without a newline: a crash mid-write.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ".hydra").mkdir(exist_ok=True)
    if config is not None:
        (run_dir / "config.json").write_text(json.dumps(config))
    if job is not None:
        (run_dir / "job.json").write_text(json.dumps(job))
    if rows or partial_line is not None:
        lines = "".join(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n" for row in rows)
        (run_dir / "metrics.jsonl").write_text(lines + (partial_line or ""))
    if losses is not None:
        np.savez(run_dir / "losses.npz", **losses)
    if summary is not None:
        (run_dir / "summary.json").write_text(json.dumps(summary))
    return run_dir


def write_sweep_json(
    sweep_dir: Path, jobs: Sequence[Sequence[str]], launcher: str = "basic", argv: Sequence[str] | None = None
) -> None:
    """sweep.json plus a minimal Hydra multirun.yaml, as `python -m sweeper -m ...` leaves them.
    `argv` is the command line typed (default: every job's overrides, as a typed grid gives them)."""
    sweep_dir = Path(sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    argv = list(argv) if argv is not None else ["-m", *sorted({o for job in jobs for o in job})]
    record = {
        "argv": argv,
        "created_at": "2026-11-26T23:59:00",
        "launcher": launcher,
        "jobs": [{"num": i, "dir": str(i), "overrides": list(job)} for i, job in enumerate(jobs)],
    }
    (sweep_dir / "sweep.json").write_text(json.dumps(record))
    (sweep_dir / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")


# --------------------------------------------------------------------------- validation split, more metrics

SPLITS = ("train", "val", "test")


def split_rows(
    columns: dict[str, Sequence[float]],
    lr: float = 0.1,
    steps_per_epoch: int = 100,
    epoch_time_s: float = 2.0,
) -> list[dict]:
    """metrics.jsonl rows with any `<split>_<m>` columns (train_loss, val_acc, test_top5, ...), in
    the trainer's order: epoch, step, lr, train_*, val_*, test_*, samples, time_s, epoch_time_s."""
    n = len(next(iter(columns.values())))
    ordered = [c for split in SPLITS for c in columns if c.startswith(f"{split}_")]
    return [
        {
            "epoch": e + 1,
            "step": (e + 1) * steps_per_epoch,
            "epoch_lr": lr,
            **{c: float(columns[c][e]) for c in ordered},
            "samples": (e + 1) * steps_per_epoch * 100,
            "time_s": (e + 1) * epoch_time_s,
            "epoch_time_s": epoch_time_s,
        }
        for e in range(n)
    ]


def split_summary(
    rows: Sequence[dict], status: str = "completed", n_val: int = 0, metrics=("acc",), **extra
) -> dict:
    """summary.json as the trainer writes it for these rows: summary_record's fields plus n_val,
    metrics, final_<col> for every column, and best_val_acc(_epoch) / min_val_loss(_epoch) with a
    validation split."""
    summary = summary_record(rows, status=status, n_val=n_val, metrics=list(metrics), **extra)
    last = rows[-1] if rows else {}
    summary.update({f"final_{k}": _json_value(v) for k, v in last.items() if k != "epoch"})
    if n_val and rows:
        val_acc = [(r["val_acc"], r["epoch"]) for r in rows if r.get("val_acc") is not None]
        val_loss = [(r["val_loss"], r["epoch"]) for r in rows if r.get("val_loss") is not None]
        best = max(val_acc, key=lambda p: p[0]) if val_acc else (None, None)
        low = min(val_loss, key=lambda p: p[0]) if val_loss else (None, None)
        summary.update(best_val_acc=best[0], best_val_acc_epoch=best[1])
        summary.update(min_val_loss=low[0], min_val_loss_epoch=low[1])
    return summary


def write_split_run(
    run_dir: Path,
    columns: dict[str, Sequence[float]],
    config_overrides: dict,
    overrides: Sequence[str],
    job_num: int,
    n_val: int = 0,
    status: str = "completed",
) -> Path:
    """A finished run whose metrics lines hold `columns` (with val_* when n_val > 0)."""
    rows = split_rows(columns)
    metrics = sorted({c.split("_", 1)[1] for c in columns if c != "train_loss" and not c.endswith("_loss")})
    config = base_config(
        **{"trainer.epochs": len(rows), "trainer.sample_loss_epochs": [], **config_overrides}
    )
    summary = split_summary(rows, status=status, n_val=n_val, metrics=metrics, epochs=len(rows))
    return write_run(run_dir, config, rows, summary, job_record(overrides, job_num))


# --------------------------------------------------------------------------- synthetic sweeps


def kept_epochs(epochs: int) -> list[int]:
    """The default trainer.sample_loss_epochs (1-10, 15, 20, ..., 50) within 1..epochs, plus the last."""
    kept = [e for e in [*range(1, 11), *range(15, 51, 5)] if e <= epochs]
    return sorted(set(kept) | {epochs})


def _normal_cdf(x: np.ndarray) -> np.ndarray:
    # Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7): numpy has no erf and this is synthetic data.
    z = np.abs(x) / math.sqrt(2)
    t = 1 / (1 + 0.3275911 * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = 1 - poly * np.exp(-z * z)
    return 0.5 * (1 + np.sign(x) * erf)


def synthetic_histograms(
    rng: np.random.Generator, median: np.ndarray, sigma: float, zero_frac: np.ndarray, n: int
) -> dict[str, np.ndarray]:
    """Counts of n log-normal per-sample losses per kept epoch, a share of them exactly 0."""
    log_edges = np.log(BIN_EDGES)
    cdf = _normal_cdf((log_edges[None, :] - np.log(median)[:, None]) / sigma)
    probs = np.column_stack([cdf[:, :1], np.diff(cdf, axis=1), 1 - cdf[:, -1:]])  # under, K bins, over
    probs = np.clip(probs, 0, None) * (1 - zero_frac)[:, None]
    probs = np.column_stack([zero_frac, probs])
    probs /= probs.sum(axis=1, keepdims=True)
    counts = rng.multinomial(n, probs)
    z_levels = np.array([-2.326, -1.282, -0.674, 0.0, 0.674, 1.282, 2.326])
    return {
        "zero": counts[:, 0],
        "under": counts[:, 1],
        "hist": counts[:, 2:-1],
        "over": counts[:, -1],
        "quantiles": median[:, None] * np.exp(sigma * z_levels[None, :]),
        "mean": (1 - zero_frac) * median * math.exp(sigma**2 / 2),
    }


def synthetic_run(
    rng: np.random.Generator,
    lr: float,
    channels: int,
    epochs: int,
    switch: int | None = None,
    lr2: float | None = None,
) -> list[dict]:
    """Plausible curves: larger lr learns faster but plateaus higher, dropping lr2 lowers the
    plateau, wider nets fit the training set further, and the test loss bottoms then rises while
    the test accuracy still creeps up."""
    e = np.arange(1, epochs + 1)
    lr_e = np.where((switch is not None) & (e > (switch or 0)), lr2 or lr, lr)
    progress = np.cumsum(lr_e) / 0.1
    capacity = channels / 32
    train_loss = 2.3 * np.exp(-progress / (6 / capacity)) + 0.8 * lr_e / capacity + 0.002
    train_loss *= np.exp(rng.normal(0, 0.03 + 0.1 * lr_e, epochs))
    overfit = 0.6 * capacity * np.clip(e / epochs - 0.25, 0, None) ** 1.5
    test_loss = train_loss + 0.35 + overfit + rng.normal(0, 0.01, epochs)
    train_acc = np.clip(0.1 + 0.9 * np.exp(-1.3 * train_loss), 0, 1)
    test_acc = np.clip(
        0.1 + 0.75 * np.exp(-1.1 * train_loss) - 0.03 * overfit + rng.normal(0, 0.003, epochs), 0, 1
    )
    rows = metric_rows(
        train_loss.tolist(),
        test_loss.tolist(),
        train_acc.tolist(),
        test_acc.tolist(),
        lr=lr_e.tolist(),
        epoch_time_s=float(rng.uniform(3, 5)),
    )
    return rows


def make_sweep(
    sweep_dir: Path,
    grid: dict[str, Iterable],
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 20,
    n_train: int = 2000,
    n_test: int = 1000,
    rng_seed: int = 0,
    diverge: Sequence[int] = (),
    fail: Sequence[int] = (),
    running: Sequence[int] = (),
) -> Path:
    """A synthetic sweep dir: one job per grid point x seed, in Hydra's job order.

    `grid` maps dotted keys to values; `schedule` entries may be ("step", switch_epoch, lr2) or
    "constant". Job numbers listed in diverge / fail / running get that fate.
    """
    rng = np.random.default_rng(rng_seed)
    sweep_dir = Path(sweep_dir)
    keys = list(grid)
    points = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    jobs, settings = [], []
    for point in points:
        for seed in seeds:
            overrides = [o for k, v in point.items() for o in _overrides(k, v)] + [f"trainer.seed={seed}"]
            jobs.append(overrides)
            settings.append({**point, "trainer.seed": seed})
    write_sweep_json(sweep_dir, jobs)
    kept = kept_epochs(epochs)
    for num, (overrides, point) in enumerate(zip(jobs, settings, strict=True)):
        schedule = point.pop("schedule", "constant")
        step = isinstance(schedule, tuple)
        config_overrides = dict(point)
        config_overrides["trainer.epochs"] = epochs
        config_overrides["trainer.sample_loss_epochs"] = kept
        if step:
            config_overrides.update(
                {"schedule.name": "step", "schedule.epoch": schedule[1], "schedule.lr2": schedule[2]}
            )
        config = base_config(**config_overrides)
        rows = synthetic_run(
            rng,
            config["lr"],
            config["model"]["channels"],
            epochs,
            schedule[1] if step else None,
            schedule[2] if step else None,
        )
        status = "completed"
        if num in diverge:
            cut = max(2, epochs // 4)
            rows = rows[:cut]
            rows[-1].update(train_loss=math.nan, test_loss=math.nan, train_acc=math.nan, test_acc=math.nan)
            status = "diverged"
        elif num in fail:
            rows, status = rows[: epochs // 2], "failed"
        elif num in running:
            rows = rows[: epochs // 2]
        train_loss = np.array([r["train_loss"] for r in rows], dtype=float)
        test_loss = np.array([r["test_loss"] for r in rows], dtype=float)
        train_acc = np.array([r["train_acc"] for r in rows], dtype=float)
        keep_idx = [e - 1 for e in kept if e <= len(rows) and np.isfinite(train_loss[e - 1])]
        losses = None
        if keep_idx:
            idx = np.array(keep_idx)
            zero_frac = np.clip((train_acc[idx] - 0.97) * 8, 0, 0.3)
            train = synthetic_histograms(rng, train_loss[idx] * 0.3, 1.8, zero_frac, n_train)
            test = synthetic_histograms(rng, test_loss[idx] * 0.25, 2.3, np.zeros(len(idx)), n_test)
            losses = {"epochs": idx + 1, "bin_edges": BIN_EDGES, "quantile_levels": QUANTILE_LEVELS}
            for split, h in (("train", train), ("test", test)):
                losses.update({f"{split}_{k}": np.asarray(v) for k, v in h.items()})
        summary = (
            None
            if num in running
            else summary_record(
                rows,
                status=status,
                epochs=epochs,
                error="RuntimeError: CUDA error: out of memory" if num in fail else None,
            )
        )
        write_run(sweep_dir / str(num), config, rows, summary, job_record(overrides, num), losses)
    return sweep_dir


def _overrides(key: str, value) -> list[str]:
    if key == "schedule":
        if isinstance(value, tuple):
            return ["schedule=step", f"schedule.epoch={value[1]}", f"schedule.lr2={value[2]}"]
        return [f"schedule={value}"]
    if isinstance(value, (list, tuple)):
        return [f"{key}=[" + ",".join(map(str, value)) + "]"]
    return [f"{key}={value}"]


# --------------------------------------------------------------------------- the lecture's experiments

LECTURE_DATA_ROOT = "/data/cifar10-jpeg.tar.gz"
# Per-sample loss multipliers with exactly known quantiles: median 1 (the middle element); the test
# 90th percentile is element 180 of 201, i.e. 10**0.8 times the median.
TRAIN_SPREAD = np.logspace(-2, 2, 401)
TEST_SPREAD = np.logspace(-1, 1, 201)


def lecture_curves(kind: str, epochs: int = 50, **kw) -> dict[str, np.ndarray]:
    """Noise-free curves with known answers for the lecture's claims.

    baseline  lr 0.1: train loss 2.0 -> 0.02 (2 decades), test acc 0.32 -> 0.705 at epoch 25 -> 0.69,
              test loss 1.0 + 0.002 (epoch - 12)^2 (minimum at epoch 12)
    bounce    lr 0.2: a train loss that goes back up by 1.3x every other epoch, ends at 0.26
    slow      lr 0.01: train loss 2.3 -> 1.15, test acc 0.209 -> 0.65
    flat      a baseline that contradicts claims 1, 4 and 5: train loss 2.0 -> 0.9, test acc 0.506 -> 0.8,
              test loss falling throughout
    lr2       the baseline to epoch 25, then train loss x `factor` and test acc 0.705 + `delta`
    subset    `fit`=True: train loss 2.3 -> 0.001 and train acc 1 from epoch 30 (fits from epoch 36);
              else train loss 2.3 -> 0.5, train acc 0.112 -> 0.7
    capacity  linear to `train_acc` / `test_acc` at the last epoch
    """
    e = np.arange(1, epochs + 1, dtype=float)
    if kind in ("baseline", "lr2"):
        train_loss = 2.0 * 0.01 ** ((e - 1) / 49)
        test_acc = np.where(
            e <= 20, 0.3 + 0.4 * e / 20, np.where(e <= 25, 0.7 + 0.001 * (e - 20), 0.705 - 0.0006 * (e - 25))
        )
        test_loss = 1.0 + 0.002 * (e - 12) ** 2
        lr = np.full(epochs, 0.1)
        if kind == "lr2":
            after = e > 25
            train_loss = np.where(after, train_loss * kw["factor"], train_loss)
            test_acc = np.where(after, 0.705 + kw["delta"], test_acc)
            lr = np.where(after, kw["lr2"], lr)
        train_acc = 1 - 0.15 * train_loss
    elif kind == "bounce":
        train_loss = 2.0 * 0.1 ** ((e - 1) / 49) * np.where(e % 2 == 0, 1.3, 1.0)
        test_acc = lecture_curves("baseline", epochs)["test_acc"] - 0.03
        test_loss = lecture_curves("baseline", epochs)["test_loss"] + 0.2
        train_acc, lr = 1 - 0.15 * train_loss, np.full(epochs, 0.2)
    elif kind == "slow":
        train_loss = 2.3 * 0.5 ** ((e - 1) / 49)
        test_acc = 0.2 + 0.45 * e / 50
        test_loss = train_loss + 0.1
        train_acc, lr = 1 - 0.3 * train_loss, np.full(epochs, 0.01)
    elif kind == "flat":
        train_loss = 2.0 * 0.45 ** ((e - 1) / 49)
        test_acc = 0.5 + 0.3 * e / 50
        test_loss = train_loss + 0.2
        train_acc, lr = 1 - 0.3 * train_loss, np.full(epochs, 0.1)
    elif kind == "subset":
        end = 0.001 if kw["fit"] else 0.5
        train_loss = 2.3 * (end / 2.3) ** ((e - 1) / 49)
        train_acc = np.minimum(1.0, 0.1 + 0.9 * (e - 1) / 29) if kw["fit"] else 0.1 + 0.6 * e / 50
        test_acc = 0.1 + 0.3 * e / 50
        test_loss = 2.3 - 0.5 * e / 50
        lr = np.full(epochs, 0.1)
    elif kind == "capacity":
        train_acc = 0.2 + (kw["train_acc"] - 0.2) * e / epochs
        test_acc = 0.2 + (kw["test_acc"] - 0.2) * e / epochs
        train_loss = -np.log(np.clip(train_acc, 1e-3, 0.999))
        test_loss = -np.log(np.clip(test_acc, 1e-3, 0.999)) + 0.3
        lr = np.full(epochs, 0.1)
    else:
        raise ValueError(kind)
    return {
        "train_loss": train_loss,
        "train_acc": train_acc,
        "test_loss": test_loss,
        "test_acc": test_acc,
        "lr": lr,
    }


def write_lecture_run(
    run_dir: Path,
    curves: dict[str, np.ndarray],
    config_overrides: dict,
    overrides: Sequence[str],
    job_num: int,
    done: int | None = None,
    keep_samples: bool = False,
    n_params: int = 107114,
) -> Path:
    """One run of a lecture experiment: `done` epochs of `curves` (None: all of them, with summary.json),
    losses.npz at the default kept epochs with per-sample losses scaled from TRAIN_SPREAD / TEST_SPREAD
    (medians = the train loss and the test loss of that epoch), raw sample_losses/ with `keep_samples`."""
    epochs = len(curves["train_loss"])
    done = epochs if done is None else done
    config = base_config(
        **{
            "data.name": "cifar10",
            "data.root": LECTURE_DATA_ROOT,
            "trainer.epochs": epochs,
            "trainer.sample_loss_epochs": kept_epochs(epochs),
            "trainer.keep_sample_losses": keep_samples,
            **config_overrides,
        }
    )
    rows = metric_rows(
        *(curves[k][:done].tolist() for k in ("train_loss", "test_loss", "train_acc", "test_acc")),
        lr=curves["lr"][:done].tolist(),
        steps_per_epoch=500,
        epoch_time_s=20.0,
    )
    kept = [k for k in kept_epochs(epochs) if k <= done]
    train = [curves["train_loss"][k - 1] * TRAIN_SPREAD for k in kept]
    test = [curves["test_loss"][k - 1] * TEST_SPREAD for k in kept]
    losses = losses_arrays(kept, train, test) if kept else None
    summary = (
        summary_record(rows, epochs=epochs, n_params=n_params, host="node-test") if done == epochs else None
    )
    run_dir = write_run(run_dir, config, rows, summary, job_record(overrides, job_num), losses)
    if keep_samples:
        (run_dir / "sample_losses").mkdir(exist_ok=True)
        for k, tr, te in zip(kept, train, test, strict=True):
            np.savez(
                run_dir / "sample_losses" / f"epoch_{k:03d}.npz",
                train=tr.astype(np.float32),
                test=te.astype(np.float32),
            )
    return run_dir


LR2 = {
    0.07: {"factor": 0.5, "delta": 0.005},
    0.05: {"factor": 0.3, "delta": 0.015},
    0.02: {"factor": 0.7, "delta": -0.005},
}
# (model.channels, model.units) -> (final train acc, final test acc)
CAPACITY = {(8, 50): (0.60, 0.55), (8, 200): (0.80, 0.66), (32, 50): (0.85, 0.70), (32, 200): (0.99, 0.66)}


def make_lecture_root(
    root: Path,
    experiments: Sequence[str],
    baseline: str = "baseline",
    running: dict[str, dict[int, int]] | None = None,
    not_started: dict[str, Sequence[int]] | None = None,
    typed: dict[str, Sequence[str]] | None = None,
) -> Path:
    """Sweep dirs ROOT/<experiment> of the lecture's experiments with lecture_curves' known answers.

    `baseline` is the curve kind of lecture_lr's lr=0.1 run ("flat" contradicts claims 1, 4, 5).
    `running` = {experiment: {job: epochs done}}: those jobs have no summary.json yet;
    `not_started` = {experiment: [job, ...]}: listed in sweep.json, no run dir;
    `typed` = {experiment: [override, ...]}: typed after experiment= (sweep.json's argv only).
    Experiments: lecture_lr, lecture_lr2, lecture_test_loss, lecture_overfit_subset, lecture_capacity.
    """
    root = Path(root)
    running, not_started, typed = running or {}, not_started or {}, typed or {}
    for name in experiments:
        jobs: list[tuple[list[str], dict, dict, dict]] = []  # overrides, config overrides, curves, extra
        if name == "lecture_lr":
            for lr, kind in ((0.2, "bounce"), (0.1, baseline), (0.01, "slow")):
                jobs.append(([f"lr={lr}"], {"lr": lr}, lecture_curves(kind), {"keep_samples": True}))
        elif name == "lecture_lr2":
            for lr2, kw in LR2.items():
                config = {"schedule.name": "step", "schedule.epoch": 25, "schedule.lr2": lr2}
                jobs.append(([f"schedule.lr2={lr2}"], config, lecture_curves("lr2", lr2=lr2, **kw), {}))
        elif name == "lecture_test_loss":
            for seed in (0, 1, 2):
                curves = lecture_curves("baseline")
                curves["test_acc"] = curves["test_acc"] + 0.001 * seed
                jobs.append(([f"trainer.seed={seed}"], {"trainer.seed": seed}, curves, {}))
        elif name == "lecture_overfit_subset":
            for channels, fit, n_params in ((8, False, 18834), (32, True, 107106)):
                jobs.append(
                    (
                        [f"model.channels={channels}"],
                        {"model.channels": channels, "data.train_size": 1000},
                        lecture_curves("subset", fit=fit),
                        {"n_params": n_params},
                    )
                )
        elif name == "lecture_capacity":
            for (channels, units), (train_acc, test_acc) in CAPACITY.items():
                config = {"model.channels": channels, "model.units": [units], "model.kernel_size": 5}
                jobs.append(
                    (
                        [f"model.channels={channels}", f"model.units=[{units}]"],
                        config,
                        lecture_curves("capacity", train_acc=train_acc, test_acc=test_acc),
                        {"n_params": 50 * channels * units},
                    )
                )
        else:
            raise ValueError(f"no fake for {name}")
        sweep_dir = root / name
        # An experiment's grid comes from its file: the command line only names it (and the dir).
        write_sweep_json(
            sweep_dir,
            [[*o, f"experiment={name}"] for o, *_ in jobs],
            argv=["-m", f"experiment={name}", *typed.get(name, ()), f"hydra.sweep.dir={sweep_dir}"],
        )
        for num, (overrides, config, curves, extra) in enumerate(jobs):
            if num in not_started.get(name, ()):
                continue
            write_lecture_run(
                sweep_dir / str(num),
                curves,
                config,
                [*overrides, f"experiment={name}"],
                num,
                done=running.get(name, {}).get(num),
                **extra,
            )
    return root

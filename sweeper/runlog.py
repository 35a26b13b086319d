"""The run record: what every run leaves in its output dir (docs/run-record.md is the format).

config.json once; job.json at each (re)start; metrics.jsonl one line per epoch, flushed at once;
steps.jsonl (trainer.log_steps) one line per step, appended with its epoch's metrics line;
losses.npz rewritten atomically at each kept epoch; summary.json written atomically, last. A
reader never sees a half-written JSON object or archive, and the presence of summary.json means
the run ended. No pickle anywhere.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

# Per-sample loss histograms: 10 log bins per decade over 1e-8..1e3; zeros, underflow and
# overflow counted apart (float32 cross-entropy reaches exactly 0.0 on confident samples).
BIN_EDGES = np.logspace(-8, 3, 111)
QUANTILE_LEVELS = np.array([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, or an interrupt: the partial copy must not keep its space
        tmp.unlink(missing_ok=True)
        raise


def finite_or_none(value):
    """JSON has no NaN/Infinity: a diverged metric is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode()


def loss_histogram(losses: torch.Tensor) -> dict[str, np.ndarray]:
    """Histogram, quantiles and mean of one split's per-sample losses (computed on their device)."""
    losses = losses.float()
    finite = torch.isfinite(losses)
    zero = (losses == 0).sum()
    positive = losses[finite & (losses > 0)]
    log = torch.log10(positive.double())
    lo, hi = math.log10(BIN_EDGES[0]), math.log10(BIN_EDGES[-1])
    under = (log < lo).sum()
    over = (log >= hi).sum() + (~finite).sum()
    inside = log[(log >= lo) & (log < hi)]
    n_bins = len(BIN_EDGES) - 1
    idx = ((inside - lo) / (hi - lo) * n_bins).floor().long().clamp_(0, n_bins - 1)
    hist = torch.bincount(idx, minlength=n_bins)
    values = losses[finite].double()
    quantiles = (
        torch.quantile(values, torch.tensor(QUANTILE_LEVELS, dtype=torch.float64, device=values.device))
        if len(values)
        else torch.full((len(QUANTILE_LEVELS),), float("nan"), dtype=torch.float64)
    )
    mean = values.mean() if len(values) else torch.tensor(float("nan"))
    return {
        "hist": hist.cpu().numpy().astype(np.int64),
        "zero": int(zero),
        "under": int(under),
        "over": int(over),
        "quantiles": quantiles.cpu().numpy(),
        "mean": float(mean),
    }


def _io_error(err: Exception) -> bool:
    """An error of the file system (it has an errno: EIO, ESTALE, EACCES) or of memory, which a
    retry may not meet, rather than of the file's content."""
    return isinstance(err, MemoryError) or (isinstance(err, OSError) and err.errno is not None)


def complete_lines(path: Path) -> list[dict]:
    """A JSON-lines file's objects up to its first incomplete line (a crash mid-write cuts the
    last one short); [] when the file is absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    rows = []
    for line in data.splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # cut short, or bytes that are not UTF-8 (damage)
            break
    return rows


class RunLog:
    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.dir / "metrics.jsonl"
        self.steps_path = self.dir / "steps.jsonl"
        self.losses_path = self.dir / "losses.npz"
        self.summary_path = self.dir / "summary.json"
        self.checkpoint_path = self.dir / "checkpoint.pt"
        self._losses: dict[int, dict] = {}
        # What the trainer knows of the run so far (model size, device): a summary written after
        # a failure keeps it too.
        self.facts: dict = {}

    # -- start
    def write_config(self, config: dict) -> None:
        atomic_write(self.dir / "config.json", to_json(config))

    def write_job(self, job: dict) -> None:
        atomic_write(self.dir / "job.json", to_json(job))

    def read_json(self, name: str) -> dict | None:
        try:
            return json.loads((self.dir / name).read_bytes())
        except (FileNotFoundError, ValueError):  # absent, cut short, or not UTF-8
            return None

    # -- per epoch
    def read_metrics(self) -> list[dict]:
        """The complete lines of metrics.jsonl; a truncated last line (a crash mid-write) is dropped."""
        return complete_lines(self.metrics_path)

    def why_not_resumable(self) -> str | None:
        """Why the record cannot be resumed from its checkpoint, or None when it can.

        A crash leaves at most a truncated last line in metrics.jsonl (read_metrics drops it).
        Anything else -- a checkpoint or losses.npz that does not load, a damaged line before the
        last, epochs missing before the checkpoint's -- is damage from outside: resuming would
        rewrite the record from what survives, so the attempt is set aside whole instead."""
        try:
            checkpoint = self.load_checkpoint()
        except Exception as err:  # a truncated zip, a foreign file: torch raises several kinds
            if _io_error(err):
                raise  # the file system's trouble (EIO, ESTALE), not the file's: the run fails, a rerun resumes
            return f"checkpoint.pt does not load ({type(err).__name__})"
        if checkpoint is None:
            return "no checkpoint.pt"
        if self.metrics_path.exists():
            lines = self.metrics_path.read_bytes().splitlines()
            for i, line in enumerate(lines[:-1]):
                try:
                    json.loads(line)
                except ValueError:  # not JSON, or not UTF-8
                    return f"metrics.jsonl line {i + 1} is damaged"
        epochs = [r.get("epoch") for r in self.read_metrics()]
        done = int(checkpoint.get("epoch", -1))
        if epochs[:done] != list(range(1, done + 1)):
            return f"metrics.jsonl does not hold epochs 1..{done}, the checkpoint's"
        if self.losses_path.exists():
            try:
                with np.load(self.losses_path, allow_pickle=False) as z:
                    z["epochs"], z["train_hist"], z["test_hist"]  # noqa: B018 (reading is the check)
            except Exception as err:
                if _io_error(err):
                    raise
                return f"losses.npz does not load ({type(err).__name__})"
        return None

    def keep_epochs_up_to(self, epoch: int) -> list[dict]:
        """Truncate the record to epochs <= `epoch` (resume from a checkpoint of that epoch)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epoch]
        atomic_write(self.metrics_path, b"".join(json.dumps(r).encode() + b"\n" for r in rows))
        if self.steps_path.exists():  # the steps the resumed run redoes are written again
            last_step = rows[-1]["step"] if rows else 0
            steps = [r for r in complete_lines(self.steps_path) if r.get("step", math.inf) <= last_step]
            atomic_write(self.steps_path, b"".join(json.dumps(r).encode() + b"\n" for r in steps))
        if self.losses_path.exists():
            with np.load(self.losses_path, allow_pickle=False) as z:
                for i, e in enumerate(z["epochs"]):
                    if e <= epoch:
                        self._losses[int(e)] = {
                            split: {
                                "hist": z[f"{split}_hist"][i],
                                "zero": int(z[f"{split}_zero"][i]),
                                "under": int(z[f"{split}_under"][i]),
                                "over": int(z[f"{split}_over"][i]),
                                "quantiles": z[f"{split}_quantiles"][i],
                                "mean": float(z[f"{split}_mean"][i]),
                            }
                            for split in ("train", "test")
                        }
            self._write_losses()
        return rows

    def append_metrics(self, row: dict) -> None:
        line = json.dumps({k: finite_or_none(v) for k, v in row.items()}) + "\n"
        with open(self.metrics_path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def append_steps(self, rows: list[dict]) -> None:
        """One line per step ({"step", "epoch", "lr", "loss"}), an epoch's at once, as metrics.jsonl's."""
        lines = "".join(json.dumps({k: finite_or_none(v) for k, v in r.items()}) + "\n" for r in rows)
        with open(self.steps_path, "a") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())

    def write_losses(self, epoch: int, train: torch.Tensor, test: torch.Tensor, keep_raw: bool) -> None:
        self._losses[epoch] = {"train": loss_histogram(train), "test": loss_histogram(test)}
        self._write_losses()
        if keep_raw:
            raw_dir = self.dir / "sample_losses"
            raw_dir.mkdir(exist_ok=True)
            buf = io.BytesIO()
            np.savez_compressed(buf, train=train.float().cpu().numpy(), test=test.float().cpu().numpy())
            atomic_write(raw_dir / f"epoch_{epoch:03d}.npz", buf.getvalue())

    def _write_losses(self) -> None:
        epochs = sorted(self._losses)
        if not epochs:  # resuming before the first kept epoch: none of its histograms stays
            self.losses_path.unlink(missing_ok=True)
            return
        arrays = {
            "epochs": np.array(epochs, dtype=np.int64),
            "bin_edges": BIN_EDGES,
            "quantile_levels": QUANTILE_LEVELS,
        }
        for split in ("train", "test"):
            stats = [self._losses[e][split] for e in epochs]
            arrays[f"{split}_hist"] = np.stack([s["hist"] for s in stats]).astype(np.int64)
            arrays[f"{split}_quantiles"] = np.stack([s["quantiles"] for s in stats]).astype(np.float64)
            for key in ("zero", "under", "over"):
                arrays[f"{split}_{key}"] = np.array([s[key] for s in stats], dtype=np.int64)
            arrays[f"{split}_mean"] = np.array([s["mean"] for s in stats], dtype=np.float64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.losses_path, buf.getvalue())

    # -- end
    def write_summary(self, summary: dict) -> None:
        atomic_write(self.summary_path, to_json({k: finite_or_none(v) for k, v in summary.items()}))

    def save_checkpoint(self, state: dict) -> None:
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        if not self.checkpoint_path.exists():
            return None
        # weights_only: tensors, numbers, strings and containers only -- never arbitrary objects.
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)

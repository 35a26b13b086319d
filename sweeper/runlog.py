"""The run record: what every run leaves in its output dir (docs/run-record.md is the format).

Every file is written whole and atomically, but for the .jsonl files, appended one line at a time:
a crash leaves at most a last line cut short. Anything else is damage from outside, checked for
here (a file's shape, checkpoint.pt's digest, losses.npz's zip CRCs); a damaged record is set
aside whole (rundir.open_record), never resumed from or skipped as if it had ended.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sweeper.processes import Damaged, json_object
from sweeper.schema import RENAMED_COLUMNS

if TYPE_CHECKING:
    import torch

# Per-sample loss histograms: 10 log bins per decade over 1e-8..1e3; zeros, underflow and
# overflow counted apart (float32 cross-entropy reaches exactly 0.0 on confident samples).
BIN_EDGES = np.logspace(-8, 3, 111)
QUANTILE_LEVELS = np.array([0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99])
STATS = ("hist", "quantiles", "zero", "under", "over", "mean")  # each split's, in losses.npz
LOSSES_KEYS = {"epochs", "bin_edges", "quantile_levels"} | {
    f"{s}_{k}" for s in ("train", "test") for k in STATS
}


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
    import torch

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


NOT_JSON = "not valid JSON"


def parsed_line(name: str, line: bytes) -> tuple[dict | None, str | None]:
    """One line of the .jsonl record file `name`: (its object, None), its former column names
    replaced by today's (schema.RENAMED_COLUMNS); or (None, what is wrong with it)."""
    try:
        row = json.loads(line)
    except ValueError:  # cut short, or bytes that are not UTF-8
        return None, NOT_JSON
    if not isinstance(row, dict):
        return None, f"not a JSON object ({type(row).__name__})"
    names = RENAMED_COLUMNS.get(name, {})
    return {names.get(k, k): v for k, v in row.items()}, None


def parsed_lines(path: Path) -> tuple[list[dict], str | None, bool]:
    """A .jsonl file's objects up to its first line that is not one; what is wrong with that line
    (None: none is); and whether it is the last, cut short (no newline after it: a crash
    mid-write). ([], None, False) when the file is absent."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], None, False
    lines = data.splitlines()
    rows = []
    for i, line in enumerate(lines):
        row, why = parsed_line(path.name, line)
        if why is not None:
            cut = why == NOT_JSON and i == len(lines) - 1 and not data.endswith(b"\n")
            return rows, f"line {i + 1} is damaged: {why}", cut
        rows.append(row)
    return rows, None, False


def complete_lines(path: Path) -> list[dict]:
    """The one reader of a .jsonl record: its objects up to its first incomplete or damaged line,
    columns renamed; [] when the file is absent. (The resume stops at a bad line; the analysis,
    analysis.records.json_lines, drops it and reads on.)"""
    return parsed_lines(path)[0]


NUMBER_OR_NULL = (int, float, type(None))  # null: a diverged value
# What every metrics.jsonl line holds, of which JSON type; a split's measured columns (val_loss,
# train_acc, test_top5, ...) are numbers or null.
METRIC_TYPES = {
    "epoch": (int,),
    "step": (int,),
    "samples": (int,),
    "epoch_lr": (int, float),
    "train_loss": NUMBER_OR_NULL,
    "test_loss": NUMBER_OR_NULL,
    "time_s": (int, float),
}
SPLITS = ("train_", "val_", "test_")


def metrics_line_damage(row: dict) -> str | None:
    """What is wrong with one metrics line's shape (its columns renamed), or None."""
    for key, types in METRIC_TYPES.items():
        value = row.get(key)
        if type(value) not in types:  # type(): a bool is not an epoch
            return f"{key} is {value!r}" if key in row else f"no {key}"
    for key, value in row.items():
        if key.startswith(SPLITS) and type(value) not in NUMBER_OR_NULL:
            return f"{key} is {value!r}"
    return None


def state_digest(state) -> str:
    """sha256 of a checkpoint's content: every tensor's dtype, shape and bytes, every key, number
    and string, in order: a flipped bit in a weight, a key or a number changes it."""
    import torch

    h = hashlib.sha256()

    def feed(obj) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous().reshape(-1)
            h.update(f"T{t.dtype}{tuple(obj.shape)}".encode())
            h.update(t.view(torch.uint8).numpy())
        elif isinstance(obj, dict):
            h.update(b"D%d" % len(obj))
            for k, v in obj.items():
                feed(k)
                feed(v)
        elif isinstance(obj, (list, tuple)):
            h.update(b"L%d" % len(obj) if isinstance(obj, list) else b"U%d" % len(obj))
            for v in obj:
                feed(v)
        else:  # str, bytes, int, float, bool, None: repr tells them and their values apart
            h.update(f"{type(obj).__name__}:{obj!r};".encode())

    feed(state)
    return h.hexdigest()


DIGEST_KEY = "sha256"


class DamagedCheckpoint(ValueError):
    """checkpoint.pt loads, but its content is not what was saved (or it holds no digest)."""


def _keep_lines(path: Path, n: int) -> None:
    """Truncate a .jsonl record to its first `n` lines, kept as they were written."""
    lines = path.read_bytes().splitlines()[:n] if n else []  # n=0: a fresh start, maybe no file yet
    atomic_write(path, b"".join(line + b"\n" for line in lines))


def _append(path: Path, rows: list[dict]) -> None:
    lines = "".join(json.dumps({k: finite_or_none(v) for k, v in r.items()}) + "\n" for r in rows)
    with open(path, "a") as f:
        f.write(lines)
        f.flush()
        os.fsync(f.fileno())


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
        self.damaged: dict[str, str] = {}  # read_json's: file name -> what is wrong with it
        # What the trainer knows of the run so far (model size, device): a summary written after
        # a failure keeps it too.
        self.facts: dict = {}

    # -- start
    def write_config(self, config: dict) -> None:
        atomic_write(self.dir / "config.json", to_json(config))

    def write_job(self, job: dict) -> None:
        atomic_write(self.dir / "job.json", to_json(job))

    def read_json(self, name: str) -> dict | None:
        """The JSON object in `name`; None when the file is absent, or damaged: then noted in
        `damaged[name]` for the caller to name, never raised. An error reading it is the file
        system's, not the file's: raised."""
        self.damaged.pop(name, None)
        try:
            return json_object(self.dir / name)
        except Damaged as err:
            if isinstance(err.cause, OSError):
                raise err.cause from None
            kind = "not JSON" if isinstance(err.cause, ValueError) else "not a JSON object"
            self.damaged[name] = f"{kind} ({type(err.cause).__name__})"
            return None

    # -- per epoch
    def read_metrics(self) -> list[dict]:
        """The complete lines of metrics.jsonl; a truncated last line (a crash mid-write) is dropped."""
        return complete_lines(self.metrics_path)

    def why_not_resumable(self, kept: set[int] | None = None) -> str | None:
        """Why the record cannot be resumed from its checkpoint, or None when it can: the
        checkpoint loads and matches its digest, metrics.jsonl holds its epochs whole (a last line
        cut short by a crash apart), losses.npz loads and holds the kept ones (`kept`)."""
        try:
            checkpoint = self.load_checkpoint()
        except DamagedCheckpoint as err:
            return f"checkpoint.pt {err}"
        # Anything else (EIO, ESTALE reading it) is the file system's trouble, not the file's:
        # the run fails, a rerun resumes.
        if checkpoint is None:
            return "no checkpoint.pt"
        done = checkpoint.get("epoch")
        if type(done) is not int or done < 1:
            return f"checkpoint.pt is damaged: epoch {done!r}"
        rows, why = self._checked_metrics(ended=False)
        if why is not None:
            return why
        if [r["epoch"] for r in rows][:done] != list(range(1, done + 1)):
            return f"metrics.jsonl does not hold epochs 1..{done}, the checkpoint's"
        # Epochs after the checkpoint's were written before a crash and are dropped by the resume.
        return self._losses_damage(None if kept is None else {e for e in kept if e <= done}, upto=done)

    def why_not_ended(self, summary: dict, kept: set[int] | None = None) -> str | None:
        """Why the record of an ended run (`summary`, its summary.json) does not support what its
        summary says, or None when it does: metrics.jsonl holds every epoch it counts, whole, and
        the final metrics it reports; losses.npz loads and holds the kept epochs (`kept`, with a
        diverged or stopped_early run's last epoch)."""
        rows, why = self._checked_metrics(ended=True)
        if why is not None:
            return why
        done = summary.get("epochs_done")
        if [r["epoch"] for r in rows] != list(range(1, len(rows) + 1)) or done != len(rows):
            return f"metrics.jsonl holds epochs {[r['epoch'] for r in rows]}, summary.json says {done}"
        last = rows[-1] if rows else {}
        measured = [k for k in last if k.startswith(SPLITS)]
        for key in measured or ("train_loss", "train_acc", "test_loss", "test_acc"):
            if summary.get(f"final_{key}") != finite_or_none(last.get(key)):
                return f"summary.json final_{key} {summary.get(f'final_{key}')!r} is not metrics.jsonl's"
        if kept is not None:
            kept = {e for e in kept if e <= len(rows)}
            if summary.get("status") in ("diverged", "stopped_early") and rows:
                kept.add(len(rows))
        return self._losses_damage(kept)

    def _checked_metrics(self, ended: bool) -> tuple[list[dict], str | None]:
        """metrics.jsonl's rows, and what is damaged in it (None: nothing). Only an unfinished
        run may end in a line cut short."""
        rows, bad, cut = parsed_lines(self.metrics_path)
        for i, row in enumerate(rows):
            what = metrics_line_damage(row)
            if what is not None:
                return rows[:i], f"metrics.jsonl line {i + 1} is damaged: {what}"
        if bad is not None and not (cut and not ended):
            return rows, f"metrics.jsonl {bad}"
        return rows, None

    def _losses_damage(self, kept: set[int] | None, upto: int | None = None) -> str | None:
        """What is wrong with losses.npz: it does not load (every array is read, so that its zip
        CRCs are checked), or its epochs (up to `upto`) are not `kept` (None: not checked)."""
        try:
            data = self.losses_path.read_bytes()  # an error reading it is the file system's: raised
        except FileNotFoundError:
            return f"losses.npz is missing (epochs {sorted(kept)} were kept)" if kept else None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {name: z[name] for name in z.files}
        except MemoryError:
            raise
        except Exception as err:  # parsed from memory: whatever fails is the content's
            return f"losses.npz does not load ({type(err).__name__})"
        missing = sorted(LOSSES_KEYS - set(arrays))
        if missing:
            return f"losses.npz is damaged: no {', '.join(missing)}"
        epochs = arrays["epochs"]
        if epochs.ndim != 1 or any(
            len(arrays[k]) != len(epochs) for k in LOSSES_KEYS if k.startswith(("train", "test"))
        ):
            return "losses.npz is damaged: its arrays disagree in length"
        held = {e for e in epochs.tolist() if upto is None or e <= upto}
        if kept is not None and held != kept:
            return f"losses.npz holds epochs {sorted(held)}, not the kept {sorted(kept)}"
        return None

    def keep_epochs_up_to(self, epoch: int) -> list[dict]:
        """Truncate the record to epochs <= `epoch` (resume from a checkpoint of that epoch)."""
        rows = [r for r in self.read_metrics() if r["epoch"] <= epoch]
        _keep_lines(self.metrics_path, len(rows))
        if self.steps_path.exists():  # the steps the resumed run redoes are written again
            last_step = rows[-1]["step"] if rows else 0
            steps = [r for r in complete_lines(self.steps_path) if r.get("step", math.inf) <= last_step]
            _keep_lines(self.steps_path, len(steps))
        if self.losses_path.exists():
            with np.load(self.losses_path, allow_pickle=False) as z:
                for i, e in enumerate(z["epochs"]):
                    if e <= epoch:
                        self._losses[int(e)] = {
                            s: {k: z[f"{s}_{k}"][i] for k in STATS} for s in ("train", "test")
                        }
            self._write_losses()
        return rows

    def append_metrics(self, row: dict) -> None:
        _append(self.metrics_path, [row])

    def append_steps(self, rows: list[dict]) -> None:
        """One line per step ({"step", "epoch", "step_lr", "loss"}), an epoch's at once."""
        _append(self.steps_path, rows)

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
            for key in STATS:
                dtype = np.float64 if key in ("quantiles", "mean") else np.int64
                arrays[f"{split}_{key}"] = np.array(
                    [self._losses[e][split][key] for e in epochs], dtype=dtype
                )
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        atomic_write(self.losses_path, buf.getvalue())

    # -- end
    def write_summary(self, summary: dict) -> None:
        atomic_write(self.summary_path, to_json({k: finite_or_none(v) for k, v in summary.items()}))

    def save_checkpoint(self, state: dict) -> None:
        """The state, with its digest (state_digest) under "sha256": load_checkpoint checks it."""
        import torch

        buf = io.BytesIO()
        torch.save({**state, DIGEST_KEY: state_digest(state)}, buf)
        atomic_write(self.checkpoint_path, buf.getvalue())

    def load_checkpoint(self) -> dict | None:
        """The saved state (without its digest); None when there is no checkpoint.pt. Raises
        DamagedCheckpoint when it loads but is not what was saved: torch's zip reader checks no
        CRC, so a flipped bit in a weight loads as a wrong weight."""
        try:
            data = self.checkpoint_path.read_bytes()  # an error reading it is the file system's: raised
        except FileNotFoundError:
            return None
        import torch

        try:
            # weights_only: tensors, numbers, strings and containers only -- never arbitrary objects.
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except Exception as err:  # parsed from memory: whatever fails (torch raises several kinds,
            # OSError EINVAL among them) is the content's
            raise DamagedCheckpoint(f"does not load ({type(err).__name__})") from err
        if not isinstance(state, dict):
            raise DamagedCheckpoint(f"is damaged: not a dict ({type(state).__name__})")
        digest = state.pop(DIGEST_KEY, None)
        if digest is None:
            raise DamagedCheckpoint(
                "is damaged: it holds no digest (written by an older version, or damaged)"
            )
        if digest != state_digest(state):
            raise DamagedCheckpoint("is damaged: its content does not match its digest")
        return state

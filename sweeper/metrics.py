"""What each epoch measures, and what summary.json keeps of it.

After every epoch the model is evaluated on each split (train, val when data.val_size holds one
out, test) for the run's loss and each name in `trainer.metrics`: `acc` (top-1 accuracy) and
`top<k>` (the true class among the k highest logits, k >= 2), in the order of `columns()`.
"""

from __future__ import annotations

import re

import torch

from sweeper import data as data_module

DEFAULT = ("acc",)
TOP_K = re.compile(r"top([0-9]+)")


def _error(message: str):
    from sweeper.validate import ConfigError  # validate imports the modules that import this one

    return ConfigError(message)


def names(trainer) -> list[str]:
    """trainer.metrics as a list of names, checked; [acc] for a config without it."""
    given = trainer.get("metrics")
    return check(list(DEFAULT) if given is None else given)


def check(given, num_classes: int | None = None) -> list[str]:
    """The metric names, or ConfigError in one line naming trainer.metrics and what is allowed."""
    allowed = "allowed are acc and top<k> for k >= 2 (e.g. [acc,top5])"
    if isinstance(given, str) or not hasattr(given, "__iter__"):
        raise _error(f"trainer.metrics={given!r} is invalid: must be a list of names; {allowed}")
    listed = list(given)
    for name in listed:
        k = TOP_K.fullmatch(name) if isinstance(name, str) else None
        if name != "acc" and (k is None or int(k[1]) < 2):
            raise _error(f"trainer.metrics={listed} is invalid: {name!r} is not a metric; {allowed}")
        if k is not None and num_classes is not None and int(k[1]) > num_classes:
            raise _error(
                f"trainer.metrics={listed} is invalid: {name} needs at least {k[1]} classes, the data has {num_classes}"
            )
    if len(set(listed)) != len(listed):
        raise _error(f"trainer.metrics={listed} is invalid: a name is given twice")
    return [str(n) for n in listed]


def columns(metric_names, has_val: bool) -> list[str]:
    """The metrics line's measured columns, in order: train_loss, train_<m>..., [val_...,] test_..."""
    splits = ("train", "val", "test") if has_val else ("train", "test")
    return [f"{split}_{c}" for split in splits for c in ("loss", *metric_names)]


def allowed_stopping_metrics(trainer, has_val: bool) -> list[str]:
    """What trainer.early_stopping.metric may name: a measured column of the run."""
    return columns(names(trainer), has_val)


def hits(logits: torch.Tensor, y: torch.Tensor, metric_names) -> torch.Tensor:
    """Per metric, how many of the batch's samples it counts as right (a float32 vector)."""
    counts = []
    for name in metric_names:
        if name == "acc":
            counts.append((logits.argmax(1) == y).sum())
        else:
            k = int(TOP_K.fullmatch(name)[1])
            counts.append((logits.topk(k, 1).indices == y[:, None]).any(1).sum())
    return torch.stack(counts).float() if counts else logits.new_zeros(0)


@torch.inference_mode()
def evaluate(model, x, y, data, batch_size, autocast, layout, loss, metric_names=DEFAULT):
    """Per-sample losses (float32, on the device), their mean and each metric over a whole split."""
    model.eval()
    losses, right = [], torch.zeros(len(metric_names), device=y.device)
    for xb, yb in data_module.eval_batches(x, y, data, batch_size, layout):
        with autocast():
            logits = model(xb)
        losses.append(loss.per_sample(logits.float(), yb))
        right += hits(logits, yb, metric_names)
    losses = torch.cat(losses)
    return losses, losses.mean(), right / len(y)


def summarize(rows: list[dict], measured=None, has_val: bool = False) -> dict:
    """final, best and minimum metrics with their epochs, from the metrics lines: final_<column>
    for every measured column (`measured`, the run's columns(); the default ones otherwise)."""
    out = {"epochs_done": len(rows)}
    last = rows[-1] if rows else {}
    for key in measured or columns(DEFAULT, has_val):
        out[f"final_{key}"] = last.get(key)
    reductions = [
        ("test_acc", max, "best_test_acc"),
        ("test_loss", min, "min_test_loss"),
        ("train_loss", min, "min_train_loss"),
    ]
    if has_val:
        reductions += [("val_acc", max, "best_val_acc"), ("val_loss", min, "min_val_loss")]
    for key, best, name in reductions:
        valid = [r for r in rows if r.get(key) is not None]
        top = best(valid, key=lambda r: r[key]) if valid else None
        out[name] = top[key] if top else None
        out[f"{name}_epoch"] = top["epoch"] if top else None
    out["time_s"] = last.get("time_s")
    return out


def epoch_line(row: dict, epochs: int) -> str:
    """An epoch's log line, from its metrics.jsonl row (a solo run's and each fused trial's)."""
    measured = " ".join(
        f"{k} {v:.4g}" if k.endswith("_loss") else f"{k} {v:.4f}"
        for k, v in row.items()
        if k.startswith(("train_", "val_", "test_")) and v is not None
    )
    return f"epoch {row['epoch']}/{epochs} lr {row['epoch_lr']:.4g} {measured} ({row['epoch_time_s']:.1f}s)"

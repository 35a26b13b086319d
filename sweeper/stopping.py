"""When a run ends before trainer.epochs by its own rules: early stopping and divergence.

- `trainer.early_stopping`: the run ends `stopped_early` once its metric (a metrics line's
  measured column: `<split>_loss` or `<split>_<m>` for a split of train, val, test and a name m of
  trainer.metrics; a loss is minimised, any other metric maximised) has not improved on its best
  by more than `min_delta` for `patience` epochs.
- `trainer.diverge_factor` / `trainer.diverge_epochs`: the run ends `diverged` once its train
  loss has been above diverge_factor x ln(number of classes), the loss of a uniform guess, for
  diverge_epochs epochs in a row (a non-finite loss ends it at once).

Both are decided from the metrics lines alone: a resumed run is fed the lines its record kept,
so it decides exactly as the uninterrupted run did.
"""

from __future__ import annotations

import math


class Stopping:
    """Fed a run's metrics lines in order (`update`); says when the run must end, and why."""

    def __init__(self, trainer, n_classes: int, measured=None):  # measured: metrics.columns
        self.epochs = int(trainer.epochs)
        rule = trainer.get("early_stopping") or {}
        self.metric = rule.get("metric")
        if self.metric is not None and measured is not None and self.metric not in measured:
            from sweeper.validate import ConfigError

            raise ConfigError(
                f"trainer.early_stopping.metric={self.metric} is invalid: this run measures "
                f"{', '.join(measured)} (val_* needs data.val_size, other names trainer.metrics), or null (off)"
            )
        self.patience = int(rule.get("patience", 5))
        self.min_delta = float(rule.get("min_delta", 0.0))
        self.factor = trainer.get("diverge_factor")
        self.diverge_epochs = int(trainer.get("diverge_epochs") or 1)
        # A uniform guess's cross-entropy is ln(classes); with one class there is no chance level.
        self.threshold = (
            float(self.factor) * math.log(n_classes) if self.factor is not None and n_classes > 1 else None
        )
        self.n_classes = n_classes
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.above: list[int] = []  # the latest epochs in a row whose train loss was above threshold
        self.verdict: dict | None = None

    def update(self, row: dict) -> dict | None:
        """Take one metrics line; return the verdict once the run must end after it: its status
        and the summary.json fields that say why. None while it goes on."""
        if self.verdict is not None:
            return self.verdict
        epoch = int(row["epoch"])
        if self.threshold is not None:
            loss = row.get("train_loss")
            self.above = [*self.above, epoch] if loss is not None and loss > self.threshold else []
            if len(self.above) >= self.diverge_epochs:
                self.verdict = {
                    "status": "diverged",
                    "stopped_epoch": epoch,
                    "diverged_epochs": list(self.above),
                    "diverge_threshold": self.threshold,
                    "stop_reason": (
                        f"train_loss above {self.threshold:.4g} (trainer.diverge_factor={self.factor:g} x "
                        f"ln {self.n_classes} classes) for {len(self.above)} epoch"
                        f"{'s' * (len(self.above) != 1)} in a row: epochs {', '.join(map(str, self.above))}"
                    ),
                }
                return self.verdict
        if self.metric is None:
            return None
        value = row.get(self.metric)
        if value is not None and (self.best is None or self._improves(value)):
            self.best, self.best_epoch = value, epoch
        # At trainer.epochs the run ends anyway: it completed, it did not stop early.
        if self.best_epoch is not None and epoch - self.best_epoch >= self.patience and epoch < self.epochs:
            self.verdict = {
                "status": "stopped_early",
                "stopped_epoch": epoch,
                "best_epoch": self.best_epoch,
                "stop_reason": (
                    f"{self.metric} did not improve on {self.best:.4g} (epoch {self.best_epoch}) by more "
                    f"than {self.min_delta:g} for {self.patience} epoch{'s' * (self.patience != 1)}"
                ),
            }
        return self.verdict

    def _improves(self, value: float) -> bool:
        if self.metric.endswith("_loss"):  # a loss is minimised, any other metric maximised
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta


def non_finite(epoch: int) -> dict:
    """The verdict on a non-finite loss, which ends a run at once."""
    return {"status": "diverged", "stopped_epoch": epoch, "stop_reason": f"non-finite loss at epoch {epoch}"}

"""Learning-rate schedules as pure functions of the optimizer step.

Each takes the step (0-based, counted over the whole run) and returns the learning rate for it.
`build.py` binds the static knobs from conf/schedule/*.yaml and the runtime values (lr,
steps_per_epoch, total_steps), then hands the result to torch's LambdaLR, which applies it.
Epoch boundaries follow the lecture: "0.1 for 25 epochs, then lr2" means epochs 1..25 run at
0.1 and epoch 26 onwards at lr2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def constant(step: int, *, lr: float, steps_per_epoch: int, total_steps: int) -> float:
    return lr


def step(step: int, *, lr: float, steps_per_epoch: int, total_steps: int, lr2: float, epoch: int) -> float:
    """The lecture's protocol: `lr` for the first `epoch` epochs, then `lr2`."""
    return lr if step < epoch * steps_per_epoch else lr2


def multistep(
    step: int, *, lr: float, steps_per_epoch: int, total_steps: int, milestones: Sequence[int], gamma: float
) -> float:
    """Discrete steps: multiply by `gamma` after each milestone epoch."""
    passed = sum(step >= m * steps_per_epoch for m in milestones)
    return lr * gamma**passed


def geometric(step: int, *, lr: float, steps_per_epoch: int, total_steps: int, decay: float) -> float:
    """Geometric decay: lr * decay**e during epoch e+1, constant within an epoch."""
    return lr * decay ** (step // steps_per_epoch)


def cosine(step: int, *, lr: float, steps_per_epoch: int, total_steps: int, lr_min: float) -> float:
    """Cosine annealing from lr at the first step to lr_min at the last."""
    progress = step / max(1, total_steps - 1)
    return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def with_warmup(schedule, warmup_epochs: float, steps_per_epoch: int):
    """Linear warmup over the first `warmup_epochs` epochs: step s runs at (s+1)/warmup_steps of the rate."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if warmup_steps <= 0:
        return schedule

    def warmed(s: int) -> float:
        return schedule(s) * min(1.0, (s + 1) / warmup_steps)

    return warmed

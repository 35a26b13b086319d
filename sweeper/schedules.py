"""Learning-rate schedules: each factory is built once per run and returns the rate of a step.

A factory takes the run's values (lr, steps_per_epoch, total_steps) and the schedule's knobs
from conf/schedule/*.yaml, and returns a plain function of the step (0-based, over the whole
run). Epoch boundaries follow the lecture: "0.1 for 25 epochs, then lr2" means epochs 1..25 run
at 0.1 and epoch 26 onwards at lr2. Factories rather than `_partial_: true` functions, because a
Hydra partial re-checks its target on every call, and the rate is asked at every step. A user's
schedule is a factory of the same shape, named by `schedule._target_` (docs/components.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from omegaconf import OmegaConf

Schedule = Callable[[int], float]


def fraction_of_epochs(fraction, *, _root_) -> int | None:
    """`${fraction_of_epochs:0.5}`: that fraction of the run's trainer.epochs, as an epoch number
    (rounded down, at least 1), so that a grid shortened with trainer.epochs=4 keeps its shape.
    None while trainer.epochs is not a whole number >= 1: the check of trainer.epochs names it."""
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        raise ValueError(
            f"fraction_of_epochs takes a number between 0 and 1 (0.5: halfway), not {fraction!r}"
        )
    epochs = OmegaConf.select(_root_, "trainer.epochs", default=None)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        return None
    return max(1, math.floor(fraction * epochs))


# Registered on import: whatever builds or checks a schedule imports this module first.
OmegaConf.register_new_resolver("fraction_of_epochs", fraction_of_epochs, replace=True)


def constant(*, lr: float, steps_per_epoch: int, total_steps: int) -> Schedule:
    def at(step: int) -> float:
        return lr

    return at


def step(*, lr: float, steps_per_epoch: int, total_steps: int, lr2: float, switch_epoch: int) -> Schedule:
    """The lecture's protocol: `lr` for the first `switch_epoch` epochs, then `lr2`."""
    switch = switch_epoch * steps_per_epoch

    def at(s: int) -> float:
        return lr if s < switch else lr2

    return at


def multistep(
    *, lr: float, steps_per_epoch: int, total_steps: int, milestones: Sequence[int], gamma: float
) -> Schedule:
    """Discrete steps: multiply by `gamma` after each milestone epoch."""
    switches = [m * steps_per_epoch for m in milestones]

    def at(s: int) -> float:
        return lr * gamma ** sum(s >= m for m in switches)

    return at


def geometric(*, lr: float, steps_per_epoch: int, total_steps: int, gamma: float) -> Schedule:
    """Geometric decay: lr * gamma**e during epoch e+1, constant within an epoch (torch's ExponentialLR)."""

    def at(s: int) -> float:
        return lr * gamma ** (s // steps_per_epoch)

    return at


def cosine(*, lr: float, steps_per_epoch: int, total_steps: int, lr_min: float) -> Schedule:
    """Cosine annealing from lr at the first step to lr_min at the last."""
    last = max(1, total_steps - 1)

    def at(s: int) -> float:
        return lr_min + (lr - lr_min) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / last)))

    return at


def lr_range(*, lr: float, steps_per_epoch: int, total_steps: int, lr_min: float, lr_max: float) -> Schedule:
    """The LR range test's sweep (fastai's lr_find): the rate grows geometrically at every step,
    from lr_min at the first step to lr_max at the last; `lr` plays no part."""
    last = max(1, total_steps - 1)
    ratio = lr_max / lr_min

    def at(s: int) -> float:
        return lr_min * ratio ** min(1.0, s / last)

    return at


def with_warmup(schedule: Schedule, warmup_epochs: float, steps_per_epoch: int) -> Schedule:
    """Linear warmup over the first `warmup_epochs` epochs: step s runs at (s+1)/warmup_steps of the rate."""
    warmup_steps = round(warmup_epochs * steps_per_epoch)
    if warmup_steps <= 0:
        return schedule

    def warmed(s: int) -> float:
        return schedule(s) * min(1.0, (s + 1) / warmup_steps)

    return warmed

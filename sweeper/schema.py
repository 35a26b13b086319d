"""The config's schema: what each of the project's own knobs is, in one place.

The dataclasses give each option's keys and their types; Hydra composes the trainer through its
schema (conf/trainer/default.yaml lists `/trainer_schema` first), and sweeper.validate checks every
section of the project's own options against its dataclass. RULES holds what a type cannot say
(ranges, allowed values); rules that relate several keys are sweeper.validate.CROSS. A
user's own option (its `_target_` a class or function of the user's) has no dataclass here: its
keys are bound to its target's signature (sweeper.signatures).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

# The config's own sections: a key appended under one of them (+model.foo=1) is read by nothing,
# or breaks the builder that takes the section's keys as arguments.
SECTIONS = ("model", "optim", "schedule", "data", "loss", "trainer")

# A knob's former dotted name -> its name now. The command line refuses the former name in one
# line; a record written under it is read under the new one (renamed), so that a resume compares
# like with like and the analysis shows one column per knob.
RENAMED_KEYS = {
    "schedule.decay": "schedule.gamma",  # geometric: the factor per epoch, torch's ExponentialLR gamma
    "schedule.epoch": "schedule.switch_epoch",  # step: the epoch after which lr2 takes over
    "data.n_train": "data.generated_train",  # synthetic: images generated, before any split or subset
    "data.n_test": "data.generated_test",
}

# metrics.jsonl / steps.jsonl columns renamed: the per-epoch and per-step learning rate are not
# the `lr` knob (the rate the schedule starts from).
RENAMED_COLUMNS = {"metrics.jsonl": {"lr": "epoch_lr"}, "steps.jsonl": {"lr": "step_lr"}}


def flatten(config: dict, prefix: str = "") -> dict:
    """{"model": {"channels": 32}} -> {"model.channels": 32}; an empty dict is a value."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def renamed(flat: dict, current: Collection[str] = ()) -> dict:
    """A record's flattened config with its knobs' former names (RENAMED_KEYS) under today's. A
    former name that can be a key of its own stays: where the record holds today's name too, where
    its section is a user's option (a `_target_` not among OWN's: a user's schedule may well have
    an `epoch`), or where `current` (the keys of the config a resume compares it with) has it."""

    def stays(key: str) -> bool:
        section = key.split(".")[0]
        target = flat.get(f"{section}._target_")
        users = target is not None and target not in tuple(OWN.get(section, ()))
        return RENAMED_KEYS[key] in flat or users or key in current

    return {RENAMED_KEYS[k] if k in RENAMED_KEYS and not stays(k) else k: v for k, v in flat.items()}


# ----------------------------------------------------------------------------- the types
# Values are the YAML's (conf/); MISSING here, so that a default lives in one place. The
# auto|true|false knobs are Any, not Enums: Hydra's parser reads `true` as a bool, which
# OmegaConf's EnumNode refuses; RULES lists their values.


@dataclass
class Root:
    lr: float = MISSING


@dataclass
class EarlyStopping:
    metric: str | None = None
    patience: int = MISSING
    min_delta: float = MISSING


@dataclass
class Trainer:
    epochs: int = MISSING
    batch_size: int = MISSING
    eval_batch_size: int = MISSING
    metrics: list[str] = MISSING
    seed: int = MISSING
    device: str = MISSING
    precision: str = MISSING
    channels_last: Any = MISSING
    threads: Any = MISSING
    cuda_graph: Any = MISSING
    sample_loss_epochs: list[int] = MISSING
    keep_sample_losses: bool = MISSING
    log_steps: bool = MISSING
    checkpoint: bool = MISSING
    resume: bool = MISSING
    until_epoch: int | None = None
    early_stopping: EarlyStopping = field(default_factory=EarlyStopping)
    diverge_factor: float | None = None
    diverge_epochs: int = MISSING
    objective: str | None = None


@dataclass
class Option:
    """What every option of a built section has: the target it builds, and its label."""

    _target_: str = MISSING
    name: str = MISSING


@dataclass
class SGD(Option):
    momentum: float = MISSING
    nesterov: bool = MISSING
    weight_decay: float = MISSING


@dataclass
class Adam(Option):
    betas: list[float] = MISSING
    eps: float = MISSING
    weight_decay: float = MISSING


@dataclass
class Schedule(Option):
    warmup_epochs: float = MISSING


@dataclass
class Step(Schedule):
    lr2: float = MISSING
    switch_epoch: int = MISSING


@dataclass
class MultiStep(Schedule):
    milestones: list[int] = MISSING
    gamma: float = MISSING


@dataclass
class Geometric(Schedule):
    gamma: float = MISSING


@dataclass
class Cosine(Schedule):
    lr_min: float = MISSING


@dataclass
class LRRange(Schedule):
    lr_min: float = MISSING
    lr_max: float = MISSING


@dataclass
class Model(Option):
    units: list[int] = MISSING
    dropout: float = MISSING
    batch_norm: bool = MISSING
    l1: float = MISSING


@dataclass
class ConvNet(Model):
    conv_layers: int = MISSING
    channels: Any = MISSING  # a base width, or one per layer: OmegaConf types no int-or-list
    growth: float = MISSING
    kernel_size: Any = MISSING
    pool: Any = MISSING
    padding: str = MISSING


@dataclass
class ResNet(Model):
    channels: int = MISSING
    blocks: int = MISSING
    kernel_size: int = MISSING


# The project's own options, by the `_target_` they name: (their name, their dataclass).
OWN = {
    "optim": {
        "torch.optim.SGD": ("sgd", SGD),
        "torch.optim.Adam": ("adam", Adam),
        "torch.optim.AdamW": ("adamw", Adam),
    },
    "schedule": {
        f"sweeper.schedules.{name}": (name, kind)
        for name, kind in [
            ("constant", Schedule),
            ("step", Step),
            ("multistep", MultiStep),
            ("geometric", Geometric),
            ("cosine", Cosine),
            ("lr_range", LRRange),
        ]
    },  # fmt: skip
    "model": {"sweeper.models.ConvNet": ("convnet", ConvNet), "sweeper.models.ResNet": ("resnet", ResNet)},
}


def register() -> None:
    """Give Hydra the trainer's schema (the search-path plugin calls it, so every Hydra start has
    it); a function, so that the record readers that import this module never import Hydra."""
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="trainer_schema", node=Trainer)  # no group: not an option to pick


# ----------------------------------------------------------------------------- the rules


@dataclass(frozen=True)
class Rule:
    """What a value may be beyond its type. A bound given as a string is another key's value
    (trainer.epochs), or a value the checks measure (n_train: the run's training images)."""

    low: float | str | None = None
    high: float | str | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()  # of their own type: 1 is not true
    nonempty: bool = False  # a list
    example: str = ""  # a list's, shown where its form is wrong
    when: str | None = None  # checked only where this key is set (not null)


RULES = {
    "lr": Rule(low=0, low_open=True),
    "trainer.epochs": Rule(low=1),
    "trainer.batch_size": Rule(low=1, high="n_train"),
    "trainer.eval_batch_size": Rule(low=1),
    "trainer.seed": Rule(low=0, high=2**64 - 1),  # torch.manual_seed's range
    "trainer.precision": Rule(choices=("fp32", "bf16")),
    "trainer.channels_last": Rule(choices=("auto", True, False)),
    "trainer.cuda_graph": Rule(choices=("auto", True, False)),
    "trainer.sample_loss_epochs": Rule(low=1),
    "trainer.until_epoch": Rule(low=1, high="trainer.epochs"),  # null: trainer.epochs
    "trainer.early_stopping.patience": Rule(low=1, when="trainer.early_stopping.metric"),
    "trainer.early_stopping.min_delta": Rule(low=0, when="trainer.early_stopping.metric"),
    "trainer.diverge_factor": Rule(low=0, low_open=True),  # null: only a non-finite loss diverges
    "trainer.diverge_epochs": Rule(low=1, when="trainer.diverge_factor"),
    "optim.weight_decay": Rule(low=0),
    "optim.momentum": Rule(low=0, high=1, high_open=True),
    "optim.eps": Rule(low=0, low_open=True),
    "schedule.warmup_epochs": Rule(low=0, high="trainer.epochs", high_open=True),
    "schedule.lr2": Rule(low=0, low_open=True),
    "schedule.switch_epoch": Rule(low=1),
    "schedule.milestones": Rule(low=1, nonempty=True, example="[25]"),
    "schedule.gamma": Rule(low=0, high=1, low_open=True),
    "schedule.lr_min": Rule(low=0),
    "lr_range:schedule.lr_min": Rule(low=0, low_open=True),  # a geometric range starts above 0
    "schedule.lr_max": Rule(low=0, low_open=True),
    "model.l1": Rule(low=0),
    "model.dropout": Rule(low=0, high=1, high_open=True),
    "model.batch_norm": Rule(),
    "model.units": Rule(low=1),
    "model.conv_layers": Rule(low=1),
    "model.channels": Rule(low=1, nonempty=True, example="[32,64]"),
    "model.growth": Rule(low=0, low_open=True),
    "model.kernel_size": Rule(low=1, nonempty=True, example="[32,64]"),
    "model.pool": Rule(low=1, nonempty=True, example="[32,64]"),
    "model.padding": Rule(choices=("valid", "same")),
    "model.blocks": Rule(low=1),
}


def rule(key: str, option: str | None = None) -> Rule | None:
    """The rule of `key`; one stated for the section's option (lr_range:schedule.lr_min) first."""
    return RULES.get(f"{option}:{key}") or RULES.get(key)

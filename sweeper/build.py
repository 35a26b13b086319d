"""Builds the run's objects from the config: the only module that calls Hydra's instantiate.

A section's `_target_` (the project's or the user's) is called with its YAML keys, less those the
training loop reads (NOT_ARGUMENTS), and with the runtime values (the data's shape, the model's
parameters, steps per epoch) its signature takes. docs/components.md says what each target must be.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable

import torch
import torch.nn.functional as F
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sweeper import schedules

# Keys of a model, optim, loss or schedule section that are read by the loop, not passed to the
# target. _partial_: an old run's config, whose schedules were partials.
NOT_ARGUMENTS = {"name", "l1", "warmup_epochs", "_partial_"}
# Per section, the arguments the run passes its target itself: not the YAML's to give.
RUNTIME = {
    "model": ("in_channels", "image_size", "num_classes"),
    "optim": ("params", "lr"),
    "schedule": ("lr", "steps_per_epoch", "total_steps"),
    "loss": ("reduction",),
}
# The loss of a config without a `loss` section (an old run's).
CROSS_ENTROPY = {"_target_": "torch.nn.CrossEntropyLoss", "name": "cross_entropy", "label_smoothing": 0.0}
CROSS_ENTROPY_TARGETS = {"torch.nn.CrossEntropyLoss", "torch.nn.modules.loss.CrossEntropyLoss"}


def _arguments(node: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in NOT_ARGUMENTS}


def accepted(target: str | Callable, values: dict) -> dict:
    """Those of `values` that `target` (a dotted name or the callable) takes by name: all of them
    when it has **kwargs, or when its signature cannot be read (a C extension's)."""
    obj = get_object(target) if isinstance(target, str) else target
    try:
        parameters = inspect.signature(obj).parameters
    except (TypeError, ValueError):
        return dict(values)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(values)
    return {k: v for k, v in values.items() if k in parameters}


def model(cfg: DictConfig, in_channels: int, image_size, num_classes: int) -> nn.Module:
    """The model section's target, given the runtime values its signature takes (image_size: an
    int for square images, else (height, width))."""
    arguments = _arguments(cfg.model)
    runtime = dict(in_channels=in_channels, image_size=image_size, num_classes=num_classes)
    net = instantiate(arguments, **accepted(arguments["_target_"], runtime))
    if not isinstance(net, nn.Module):
        raise TypeError(
            f"model._target_={arguments['_target_']} returned a {type(net).__name__}, not a torch nn.Module"
        )
    return net


def model_name(cfg: DictConfig) -> str:
    """The model's label: model.name, or its target's last part for a section without one."""
    return cfg.model.get("name") or str(cfg.model.get("_target_", "model")).rpartition(".")[2]


def optimizer(cfg: DictConfig, parameters):
    return instantiate(_arguments(cfg.optim), parameters, lr=cfg.lr)


def optimizer_arguments(cfg: DictConfig) -> dict:
    """What optimizer() passes the optimizer's class besides the parameters and lr (= cfg.lr)."""
    return {k: v for k, v in _arguments(cfg.optim).items() if k != "_target_"}


def schedule(cfg: DictConfig, steps_per_epoch: int, total_steps: int) -> schedules.Schedule:
    """step -> learning rate, built once with the schedule's knobs and the run's values."""
    at = instantiate(
        _arguments(cfg.schedule), lr=cfg.lr, steps_per_epoch=steps_per_epoch, total_steps=total_steps
    )
    return schedules.with_warmup(at, cfg.schedule.get("warmup_epochs", 0), steps_per_epoch)


def loss_config(cfg: DictConfig) -> dict:
    """The run's loss section as plain values; cross-entropy for a config without one."""
    node = cfg.get("loss")
    return CROSS_ENTROPY if node is None else OmegaConf.to_container(node, resolve=True)


def plain_cross_entropy(cfg: DictConfig) -> bool:
    """Whether the run's loss is torch's cross-entropy with every argument at its default (no
    label smoothing): what the fused step and the CUDA-graph step compute."""
    section = loss_config(cfg)
    arguments = {k: v for k, v in section.items() if k not in NOT_ARGUMENTS and k != "_target_"}
    return section.get("_target_") in CROSS_ENTROPY_TARGETS and arguments in ({}, {"label_smoothing": 0.0})


class Loss:
    """The run's loss: `per_sample(logits, y)` -> one float32 loss per sample (evaluation and the
    per-sample histograms), `mean(logits, y)` -> their mean (the training step's)."""

    def __init__(self, per_sample: Callable, mean: Callable | None = None, target: str = ""):
        self._per_sample, self.target = per_sample, target
        self.mean = mean or (lambda logits, y: self.per_sample(logits, y).mean())

    def per_sample(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        losses = self._per_sample(logits, y)
        if losses.shape != y.shape:  # shapes are known on the host: no device sync
            from sweeper.validate import ConfigError

            raise ConfigError(
                f"loss._target_={self.target} gave a loss of shape {tuple(losses.shape)} for {len(y)} samples: "
                "it must give one loss per sample (reduction='none')"
            )
        return losses


def loss(cfg: DictConfig) -> Loss:
    """The loss section's target: a class or factory whose result is called as fn(logits, targets),
    given `reduction='none'` where its signature takes it; torch's cross-entropy as F.cross_entropy."""
    section = loss_config(cfg)
    arguments = {k: v for k, v in section.items() if k not in NOT_ARGUMENTS}
    target = arguments["_target_"]
    if target in CROSS_ENTROPY_TARGETS and set(arguments) <= {"_target_", "label_smoothing"}:
        smoothing = float(arguments.get("label_smoothing", 0.0))
        return Loss(
            functools.partial(F.cross_entropy, reduction="none", label_smoothing=smoothing),
            functools.partial(F.cross_entropy, label_smoothing=smoothing),
            target,
        )
    fn = instantiate(arguments, **accepted(target, {"reduction": "none"}))
    if not callable(fn):
        raise TypeError(
            f"loss._target_={target} returned a {type(fn).__name__}, not a function of (logits, targets)"
        )
    return Loss(fn, target=target)


def resolved(node: DictConfig, key: str):
    """node[key] as a plain value, its interpolations resolved."""
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def launcher(node: DictConfig):
    """The sweep's launcher built from hydra.launcher as Hydra builds it, for its constructor's
    checks; a value that resolves only once Hydra runs (${hydra.sweep.dir}) stays as written."""
    arguments = {}
    for key in node:
        try:
            arguments[key] = resolved(node, key)
        except OmegaConfBaseException:
            arguments[key] = OmegaConf.to_container(node, resolve=False)[key]
    module, _, name = arguments.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module), name)(**arguments)

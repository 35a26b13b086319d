"""Builds the run's objects from the config: the only module that calls Hydra's instantiate.

Static knobs come from conf/<group>/*.yaml (`_target_` names the class or function); runtime
values (the data's shape, the model's parameters, steps per epoch) are passed here, where the
objects are built. Keys that are not constructor arguments (`name`, `l1`, `warmup_epochs`) are
read by the training loop and dropped before instantiation.
"""

from __future__ import annotations

import importlib

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from sweeper import schedules

# _partial_: configs from before schedules were factories (an old run's .hydra/config.yaml).
NOT_ARGUMENTS = {"name", "l1", "warmup_epochs", "_partial_"}


def _arguments(node: DictConfig) -> dict:
    return {k: v for k, v in OmegaConf.to_container(node, resolve=True).items() if k not in NOT_ARGUMENTS}


def model(cfg: DictConfig, in_channels: int, image_size: int, num_classes: int) -> nn.Module:
    return instantiate(
        _arguments(cfg.model), in_channels=in_channels, image_size=image_size, num_classes=num_classes
    )


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
    return schedules.with_warmup(at, cfg.schedule.warmup_epochs, steps_per_epoch)


def resolved(node: DictConfig, key: str):
    """node[key] as a plain value, its interpolations resolved."""
    value = node[key]
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def launcher(node: DictConfig):
    """The sweep's launcher built from hydra.launcher as Hydra builds it, without its set-up: its
    constructor's checks of its values. A value naming the run's own directory (such as
    ${hydra.sweep.dir}, which exists only once Hydra runs) stays as written."""
    arguments = {}
    for key in node:
        try:
            arguments[key] = resolved(node, key)
        except OmegaConfBaseException:
            arguments[key] = OmegaConf.to_container(node, resolve=False)[key]
    module, _, name = arguments.pop("_target_").rpartition(".")
    return getattr(importlib.import_module(module), name)(**arguments)

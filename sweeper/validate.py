"""Every user mistake becomes one clear line, before any training starts.

`check(cfg)` raises ConfigError naming the key, the value and what is allowed. It is called for
a single run before training, and by the sweep callback for every job of a `-m` grid before the
first job is launched, so a bad value never reaches a queue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper import data as data_module
from sweeper import models, schedules, signatures  # noqa: F401 -- schedules registers ${fraction_of_epochs:...}, which configs use

# The project's own components, by the `_target_` their options name: their values get the range
# checks below. Any other `_target_` (a user's option, found on Hydra's search path) gets its
# keys bound to its signature instead (sweeper/signatures.py); its `name` is only a label.
SCHEDULES = {
    f"sweeper.schedules.{n}": n for n in ("constant", "step", "multistep", "geometric", "cosine", "lr_range")
}
OPTIMIZERS = {"torch.optim.SGD": "sgd", "torch.optim.Adam": "adam", "torch.optim.AdamW": "adamw"}
MODELS = {"sweeper.models.ConvNet": "convnet", "sweeper.models.ResNet": "resnet"}
# The sections whose `_target_` a user may name.
BUILT = ("model", "optim", "loss", "schedule", "data")
DATASETS = ("cifar10", "synthetic")
PRECISIONS = ("fp32", "bf16")


class ConfigError(ValueError):
    pass


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def number(cfg, key, *, low=None, high=None, low_open=False, high_open=False, integer=False):
    v = _get(cfg, key)
    kind = "an integer" if integer else "a number"
    lo = "" if low is None else f"{'>' if low_open else '>='} {low}"
    hi = "" if high is None else f"{'<' if high_open else '<='} {high}"
    allowed = " and ".join(s for s in (lo, hi) if s)
    wanted = f"{kind}{' ' + allowed if allowed else ''}"
    if not (_is_int(v) if integer else _is_number(v)):
        hint = ""
        if isinstance(v, str) and _parses_as_number(v):  # ${oc.env:X,0.05} gives the string '0.05'
            hint = " (a string: ${oc.env:...} gives strings, ${oc.decode:${oc.env:...}} numbers)"
        raise ConfigError(f"{key}={v!r} is invalid: must be {wanted}{hint}")
    if low is not None and (v <= low if low_open else v < low):
        raise ConfigError(f"{key}={v} is invalid: must be {wanted}")
    if high is not None and (v >= high if high_open else v > high):
        raise ConfigError(f"{key}={v} is invalid: must be {wanted}")
    return v


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _shown(value) -> str:
    """A value as the command line writes it: true, not True."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def choice(cfg, key, allowed: Sequence):
    v = _get(cfg, key)
    # Equal and of the same type: `in` alone takes 0 and 1 for False and True.
    if not any(v == a and type(v) is type(a) for a in allowed):
        raise ConfigError(f"{key}={v!r} is invalid: allowed values are {', '.join(map(_shown, allowed))}")
    return v


def boolean(cfg, key):
    v = _get(cfg, key)
    if not isinstance(v, bool):
        raise ConfigError(f"{key}={v!r} is invalid: must be true or false")
    return v


def int_list(cfg, key, *, low=1, allow_scalar=True, allow_empty=False, example="[32,64]"):
    v = _get(cfg, key)
    if allow_scalar and _is_int(v):
        values = [v]
    elif isinstance(v, ListConfig | list) and all(_is_int(x) for x in v) and (allow_empty or len(v) > 0):
        values = list(v)
    else:
        form = "an integer or a list of integers" if allow_scalar else "a list of integers"
        empty = "" if allow_empty else ", not empty"
        raise ConfigError(f"{key}={_list_text(v)} is invalid: must be {form}{empty} (e.g. {example})")
    if any(x < low for x in values):
        entries = "every entry " if isinstance(v, ListConfig | list) else ""
        raise ConfigError(f"{key}={_list_text(v)} is invalid: {entries}must be >= {low}")
    return v


def _list_text(v) -> str:
    """[16,32] or 16, as typed on the command line."""
    if isinstance(v, ListConfig | list):
        return "[" + ",".join(_shown(x) for x in v) + "]"
    return repr(v) if isinstance(v, str) else _shown(v)


def check(cfg: DictConfig) -> None:
    try:
        _check(cfg)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve: ${nope.key}
        raise in_one_line(cfg, e) from None


def in_one_line(cfg, e: OmegaConfBaseException, where: str | None = None) -> ConfigError:
    """OmegaConf's error in `cfg` as one line: the key it names (its full_key, else `where`), its
    value as written, and OmegaConf's reason."""
    return ConfigError(f"{_as_written(cfg, getattr(e, 'full_key', None) or where)} is invalid: {_reason(e)}")


def _reason(e: Exception) -> str:
    """OmegaConf's first line, without its prefix for what a resolver raised (the resolver's own
    words say it: `${fraction_of_epochs:1.5}` is not a fraction)."""
    return data_module.first_line(e).removeprefix("ValueError raised while resolving interpolation: ")


def _as_written(cfg, key: str | None) -> str:
    """key=value with the value as written, unresolved (lr=${nope.key}); the key alone if none."""
    if not key:
        return "the config"
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(cfg, parent, throw_on_resolution_failure=False) if parent else cfg
        return f"{key}={OmegaConf.to_container(node, resolve=False)[leaf]}"
    except Exception:  # a key OmegaConf names but cannot walk to (a list's [0]): say the key
        return key


def _check(cfg: DictConfig) -> None:
    epochs = number(cfg, "trainer.epochs", low=1, integer=True)
    number(cfg, "lr", low=0, low_open=True)
    for section in BUILT:
        problem = signatures.problem(cfg, section) if section in cfg else None
        if problem:
            raise ConfigError(problem)
    _check_optim(cfg)
    _check_schedule(cfg, epochs)
    n_train = _check_data(cfg)
    _check_model(cfg)
    _check_sizable(cfg)
    _check_trainer(cfg, n_train)


def _own(cfg, section: str, known: dict[str, str]) -> str | None:
    """The project's option `section` is (its name, by its `_target_`), or None for a user's."""
    target = _get(cfg, f"{section}._target_")
    if target is None:  # a section without a _target_: named by `name`
        return choice(cfg, f"{section}.name", tuple(known.values()))
    return known.get(str(target))


def _check_optim(cfg) -> None:
    name = _own(cfg, "optim", OPTIMIZERS)
    if name is None:
        return
    number(cfg, "optim.weight_decay", low=0)
    if name == "sgd":
        momentum = number(cfg, "optim.momentum", low=0, high=1, high_open=True)
        if boolean(cfg, "optim.nesterov") and momentum == 0:
            raise ConfigError(
                "optim.nesterov=true is invalid with optim.momentum=0: nesterov needs momentum > 0"
            )
    else:
        betas = _get(cfg, "optim.betas")
        if not (
            isinstance(betas, ListConfig)
            and len(betas) == 2
            and all(_is_number(b) and 0 <= b < 1 for b in betas)
        ):
            raise ConfigError(
                f"optim.betas={betas!r} is invalid: must be two numbers in [0, 1), e.g. [0.9,0.999]"
            )
        number(cfg, "optim.eps", low=0, low_open=True)


def _check_schedule(cfg, epochs: int) -> None:
    if _get(cfg, "schedule.warmup_epochs") is not None:  # a user's schedule may leave it out
        number(cfg, "schedule.warmup_epochs", low=0, high=epochs, high_open=True)
    name = _own(cfg, "schedule", SCHEDULES)
    if name == "step":
        number(cfg, "schedule.lr2", low=0, low_open=True)
        e = number(cfg, "schedule.epoch", low=1, integer=True)
        if e >= epochs:
            written = _as_written(cfg, "schedule.epoch").partition("=")[2]  # ${fraction_of_epochs:0.5}
            given = str(e) if written == str(e) else f"{written} (epoch {e} here)"
            raise ConfigError(
                f"schedule.epoch={given} is invalid: the switch to schedule.lr2 must come before the end, "
                f"1 <= schedule.epoch < trainer.epochs={epochs}"
            )
    elif name == "multistep":
        milestones = int_list(
            cfg, "schedule.milestones", allow_scalar=False, example=f"[{max(1, epochs // 2)}]"
        )
        if list(milestones) != sorted(set(milestones)) or milestones[-1] >= epochs:
            raise ConfigError(
                f"schedule.milestones={list(milestones)} is invalid: must be increasing epochs "
                f"between 1 and trainer.epochs-1={epochs - 1}"
            )
        number(cfg, "schedule.gamma", low=0, high=1, low_open=True)
    elif name == "geometric":
        number(cfg, "schedule.decay", low=0, high=1, low_open=True)
    elif name == "cosine":
        lr_min = number(cfg, "schedule.lr_min", low=0)
        if lr_min > cfg.lr:
            raise ConfigError(f"schedule.lr_min={lr_min} is invalid: must be <= lr={cfg.lr}")
    elif name == "lr_range":
        lr_min = number(cfg, "schedule.lr_min", low=0, low_open=True)
        lr_max = number(cfg, "schedule.lr_max", low=0, low_open=True)
        if lr_max <= lr_min:
            raise ConfigError(
                f"schedule.lr_max={lr_max} is invalid: the range must grow, schedule.lr_max > schedule.lr_min={lr_min}"
            )


def _check_data(cfg) -> int:
    return data_module.check(cfg)


def _check_model(cfg) -> None:
    if _get(cfg, "model.l1") is not None:  # read by the training loop, for any model
        number(cfg, "model.l1", low=0)
    name = _own(cfg, "model", MODELS)
    if name is None:
        return
    # The data's own image shape (a 28x28 MNIST, a 64x48 folder); the CIFAR size where it is
    # not known before loading (the job checks it again then).
    extent = data_module.extent(cfg.data)
    height, width = extent.shape[1:] if extent else (data_module.IMAGE_SIZE,) * 2
    try:
        models.square(height if height == width else (height, width), name)
    except models.GeometryError as e:
        raise ConfigError(str(e)) from None
    number(cfg, "model.dropout", low=0, high=1, high_open=True)
    boolean(cfg, "model.batch_norm")
    int_list(cfg, "model.units", low=1, allow_scalar=False, allow_empty=True)
    if name == "resnet":
        number(cfg, "model.channels", low=1, integer=True)
        number(cfg, "model.blocks", low=1, integer=True)
        k = number(cfg, "model.kernel_size", low=1, integer=True)
        if k % 2 == 0:  # padding k//2 keeps a map's size only for odd k: the residual sum needs it
            raise ConfigError(
                f"model.kernel_size={k} is invalid for model=resnet: must be odd (1, 3, 5, ...), "
                "so that each block keeps its input's size for the residual sum"
            )
        return
    layers = number(cfg, "model.conv_layers", low=1, integer=True)
    int_list(cfg, "model.channels")
    number(cfg, "model.growth", low=0, low_open=True)
    kernels = int_list(cfg, "model.kernel_size")
    pools = int_list(cfg, "model.pool")
    padding = choice(cfg, "model.padding", ("valid", "same"))
    try:
        models.conv_widths(_get(cfg, "model.channels"), cfg.model.growth, layers)
        models.convnet_geometry(
            height,
            models.per_layer(kernels, layers, "model.kernel_size"),
            models.per_layer(pools, layers, "model.pool"),
            padding,
        )
    except models.GeometryError as e:
        raise ConfigError(str(e)) from None


def _check_sizable(cfg) -> None:
    """A net too large for any machine (torch cannot size its weights) is refused on any machine,
    a SLURM login node included; what fits where is check_device's, on the machine that trains."""
    from sweeper import footprint

    try:
        footprint.meta_net(cfg)
    except footprint.Unsizable as e:
        raise ConfigError(str(e)) from None


def _check_trainer(cfg, n_train: int) -> None:
    number(cfg, "trainer.batch_size", low=1, high=n_train, integer=True)
    number(cfg, "trainer.eval_batch_size", low=1, integer=True)
    number(cfg, "trainer.seed", low=0, high=2**64 - 1, integer=True)  # torch.manual_seed's range
    device = _get(cfg, "trainer.device")
    if not (
        device in ("auto", "cpu", "cuda", "mps")
        or (isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ConfigError(
            f"trainer.device={device!r} is invalid: allowed values are auto, cpu, cuda, cuda:N, mps"
        )
    choice(cfg, "trainer.precision", PRECISIONS)
    threads = _get(cfg, "trainer.threads")
    if threads != "auto" and not (_is_int(threads) and threads >= 1):
        raise ConfigError(
            f"trainer.threads={_list_text(threads)} is invalid: must be auto or an integer >= 1"
        )
    choice(cfg, "trainer.channels_last", ("auto", True, False))
    if choice(cfg, "trainer.cuda_graph", ("auto", True, False)) is True:
        from sweeper.cuda_graph import capturable

        reason = capturable(cfg)
        if reason:
            raise ConfigError(
                f"trainer.cuda_graph=true cannot capture this run's step: {reason}; use auto or false"
            )
    int_list(cfg, "trainer.sample_loss_epochs", low=1, allow_scalar=False, allow_empty=True)
    for key in ("keep_sample_losses", "checkpoint", "resume", "log_steps"):
        boolean(cfg, f"trainer.{key}")
    if _get(cfg, "trainer.until_epoch") is not None:  # null: trainer.epochs
        number(cfg, "trainer.until_epoch", low=1, high=_get(cfg, "trainer.epochs"), integer=True)
    _check_stopping(cfg)
    from sweeper import objective

    objective.check(cfg)  # trainer.objective (hydra/sweeper=optuna)


def _check_stopping(cfg) -> None:
    """trainer.early_stopping and the divergence threshold (sweeper/stopping.py); a config
    without them (written before they existed) has them off."""
    from sweeper.metrics import allowed_stopping_metrics

    # The run's measured columns: its trainer.metrics (checked here) on each split it has.
    allowed = allowed_stopping_metrics(cfg.trainer, _get(cfg, "data.val_size") is not None)
    metric = _get(cfg, "trainer.early_stopping.metric")
    if metric is not None:
        if metric not in allowed:
            raise ConfigError(
                f"trainer.early_stopping.metric={_list_text(metric)} is invalid: allowed values are "
                f"{', '.join(allowed)}, or null (off)"
            )
        number(cfg, "trainer.early_stopping.patience", low=1, integer=True)
        number(cfg, "trainer.early_stopping.min_delta", low=0)
    if _get(cfg, "trainer.diverge_factor") is not None:
        number(cfg, "trainer.diverge_factor", low=0, low_open=True)
        number(cfg, "trainer.diverge_epochs", low=1, integer=True)


def check_device(cfg) -> None:
    """trainer.device exists on this machine, and the run fits in its memory: the machine that
    trains (a job, or a local sweep before it launches), not a login node that submits to GPU nodes."""
    import torch

    from sweeper import footprint

    device = _get(cfg, "trainer.device")
    # The device the run will train on, as train.pick_device picks it (auto: cuda, else cpu).
    trains_on = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else str(device)
    if _get(cfg, "trainer.cuda_graph") is True and not trains_on.startswith("cuda"):
        # true asks for a graph (auto takes one where it can): without CUDA none is captured
        raise ConfigError(
            f"trainer.cuda_graph=true is invalid here: this run trains on {trains_on}, "
            "and a CUDA graph needs a CUDA device; use auto (a graph where there is CUDA) or false"
        )
    if trains_on == "cpu" and _get(cfg, "trainer.precision") == "bf16":
        # torch's CPU kernels run bf16 autocast far slower than fp32 on common CPUs (10x was
        # measured), for a result no more faithful: bf16 pays on a GPU's tensor cores.
        raise ConfigError(
            "trainer.precision=bf16 is invalid here: this run trains on cpu, where bf16 autocast runs "
            "about 10x slower than fp32; use fp32, or bf16 on a CUDA device"
        )
    if trains_on == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "trainer.device=mps is invalid here: this machine has no MPS device; use auto or cpu"
        )
    if trains_on.startswith("cuda"):
        _check_cuda_index(trains_on, torch)
    problem = footprint.problem(cfg, trains_on)
    if problem:
        raise ConfigError(problem)


def _check_cuda_index(device: str, torch) -> None:
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device[5:]) if device.startswith("cuda:") else 0
    if count == 0:
        raise ConfigError(
            f"trainer.device={device} is invalid here: this machine has no CUDA GPU (torch.cuda.is_available() "
            "is false); use auto or cpu"
        )
    if index >= count:
        raise ConfigError(
            f"trainer.device={device} is invalid here: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}"
        )

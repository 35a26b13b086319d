"""Every user mistake becomes one clear line, before any training starts.

`check(cfg)` raises ConfigError naming the key, the value and what is allowed: for a single run
before it trains, and for every job of a `-m` grid before the first is launched. The project's own
options are walked against their schema (sweeper/schema.py: dataclasses for types and known keys,
RULES for the rest); CROSS relates several keys of one option. A user's option is bound to its
target's signature (sweeper.signatures). `check_device` checks the machine that trains.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from difflib import get_close_matches

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from sweeper import data as data_module
from sweeper import footprint, metrics, models, objective, schedules, schema, signatures  # noqa: F401 -- schedules registers ${fraction_of_epochs:...}, which configs use

# The sections whose `_target_` a user may name.
BUILT = ("model", "optim", "loss", "schedule", "data")


class ConfigError(ValueError):
    pass


def _get(cfg, key):
    return OmegaConf.select(cfg, key, throw_on_missing=False)


def _shown(value) -> str:
    """A value as the command line writes it: true, not True; [16,32]; a string quoted."""
    if isinstance(value, ListConfig | list):
        return "[" + ",".join(_shown(x) for x in value) + "]"
    return str(value).lower() if isinstance(value, bool) else repr(value)


def _fields(kind, prefix: str = "") -> typing.Iterator[tuple[str, typing.Any]]:
    """(dotted key, type) for each leaf of a schema dataclass; Optional[X] as X."""
    hints = typing.get_type_hints(kind)
    for f in dataclasses.fields(kind):
        tp = hints[f.name]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        tp = args[0] if typing.get_origin(tp) in (typing.Union, types.UnionType) else tp
        if dataclasses.is_dataclass(tp):
            yield from _fields(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp


def _kind(tp) -> str:
    """What a value of schema type `tp` is, in words."""
    if typing.get_origin(tp) is list:
        return f"a list of {_kind(typing.get_args(tp)[0]).removeprefix('an ').removeprefix('a ')}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "a value")


def _bound(cfg, bound, measured: dict):
    """A rule's bound: a number, another key's value, or a measured one (None until measured)."""
    if not isinstance(bound, str):
        return bound
    return measured[bound] if bound in measured else _get(cfg, bound) if cfg is not None else None


def _bounds(rule: schema.Rule, cfg=None, measured: dict | None = None) -> list[str]:
    """A rule's bounds in words: ['> 0', '<= 1']; a key's as its value where cfg is given."""
    said = []
    for bound, sign, opened in ((rule.low, ">", rule.low_open), (rule.high, "<", rule.high_open)):
        value = _bound(cfg, bound, measured or {}) if cfg is not None else bound
        if value is not None:  # a measured bound not measured yet: none
            said.append(f"{sign}{'' if opened else '='} {value}")
    return said


def allowed(key: str, tp, rule: schema.Rule | None, cfg=None, measured: dict | None = None) -> str:
    """What `key` may be: its type in words, and its rule's bounds or values."""
    rule = rule or schema.Rule()
    if rule.choices:
        return "allowed values are " + ", ".join(
            str(c).lower() if isinstance(c, bool) else c for c in rule.choices
        )
    if tp is typing.Any:  # an integer, or one per layer
        form = f"an integer or a list of integers{', not empty' if rule.nonempty else ''}"
        return f"must be {form} (e.g. {rule.example})" if rule.example else f"must be {form}"
    if typing.get_origin(tp) is list and rule.nonempty:
        return f"must be {_kind(tp)}, not empty (e.g. {rule.example})"
    return "must be " + " and ".join([_kind(tp), *_bounds(rule, cfg, measured)]).replace(" and ", " ", 1)


def _converted(given, typed) -> bool:
    """Whether OmegaConf converted a value to its type (the string '0.05' to 0.05, 1 to true):
    the run reads the value as given, so the given one must already be of its type."""
    if isinstance(given, list):
        return len(given) != len(typed) or any(_converted(g, t) for g, t in zip(given, typed, strict=False))
    return type(given) is not type(typed) and not (type(given) is int and type(typed) is float)


def _walk(cfg, section: str | None, kind, option: str | None, measured: dict) -> None:
    """Check one section against its dataclass (types, known keys), then its keys' rules."""
    # The root's own keys only: hydra's, in a config check_overrides composed, resolve only in a job.
    if section is None:
        plain = {k: _get(cfg, k) for k, _ in _fields(kind)}
    else:
        plain = OmegaConf.to_container(cfg[section], resolve=True)
    prefix = f"{section}." if section else ""
    try:
        typed = OmegaConf.to_container(OmegaConf.merge(OmegaConf.structured(kind), plain))
    except OmegaConfBaseException as e:
        raise in_one_line(cfg, e, prefix=prefix, option=option) from None
    for key, tp in _fields(kind):
        given, value = _at(plain, key), _at(typed, key)
        full = prefix + key
        rule = schema.rule(full, option)
        if value == "???":  # a key the option lacks (a null where none is allowed: the merge refused it)
            raise ConfigError(f"{full}=None is invalid: {allowed(full, tp, rule, cfg, measured)}")
        if value is None or (rule and rule.when and _get(cfg, rule.when) is None):
            continue
        if _converted(given, value) or (tp is typing.Any and rule and not rule.choices and not _ints(value)):
            hint = ""
            if isinstance(given, str) and _parses_as_number(given):  # ${oc.env:X,0.05} gives a string
                hint = " (a string: ${oc.env:...} gives strings, ${oc.decode:${oc.env:...}} numbers)"
            raise ConfigError(
                f"{full}={_shown(given)} is invalid: {allowed(full, tp, rule, cfg, measured)}{hint}"
            )
        # As given: -1, not OmegaConf's -1.0; a rule with a bound not measured yet (n_train) later.
        if rule and not any(
            isinstance(b, str) and "." not in b and b not in measured for b in (rule.low, rule.high)
        ):
            _apply(cfg, full, given, tp, rule, measured)


def _at(tree, key: str):
    for part in key.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def _ints(value) -> bool:
    return isinstance(value, list | int) and all(
        type(v) is int for v in (value if isinstance(value, list) else [value])
    )


def _parses_as_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _apply(cfg, key: str, value, tp, rule: schema.Rule, measured: dict) -> None:
    """Refuse `value` where it breaks `rule`: a value not among its choices, one out of bounds."""
    if rule.choices:
        # Equal and of the same type: `in` alone takes 0 and 1 for False and True.
        if not any(value == c and type(value) is type(c) for c in rule.choices):
            raise ConfigError(f"{key}={_shown(value)} is invalid: {allowed(key, tp, rule)}")
        return
    values = value if isinstance(value, list) else [value]
    if rule.nonempty and not values:
        raise ConfigError(f"{key}=[] is invalid: {allowed(key, tp, rule, cfg, measured)}")
    low, high = _bound(cfg, rule.low, measured), _bound(cfg, rule.high, measured)
    for v in values:
        if (low is not None and (v <= low if rule.low_open else v < low)) or (
            high is not None and (v >= high if rule.high_open else v > high)
        ):
            if isinstance(value, list):
                text = "every entry must be " + " and ".join(_bounds(rule, cfg, measured))
            elif tp is typing.Any:
                text = "must be " + " and ".join(_bounds(rule, cfg, measured))
            else:
                text = allowed(key, tp, rule, cfg, measured)
            shown = _shown(value) if isinstance(value, list | str) else str(value)
            raise ConfigError(f"{key}={shown} is invalid: {text}")


def number(cfg, key, *, integer=False, rule: schema.Rule | None = None, **bounds):
    """`key`'s value, refused unless a number (an integer) within the rule's bounds: for a value
    of no schema dataclass (a launcher's counts, a loop's key in a user's option)."""
    value, tp = _get(cfg, key), int if integer else float
    rule = rule or schema.Rule(**bounds)
    if isinstance(value, bool) or not isinstance(value, int if integer else int | float):
        raise ConfigError(f"{key}={_shown(value)} is invalid: {allowed(key, tp, rule, cfg)}")
    _apply(cfg, key, value, tp, rule, {})
    return value


def in_one_line(
    cfg, e: Exception, where: str | None = None, *, prefix: str = "", option=None, written: str | None = None
) -> ConfigError:
    """The one line for any OmegaConf error, or Hydra's wrapping one: `written` (the argument as
    given) and why; else the key it names (its full_key under `prefix`, else `where`), the value as
    written, and what the schema allows there, with the nearest key for an unknown one."""
    if not isinstance(e, OmegaConfBaseException) and e.__cause__ is not None:
        e = e.__cause__  # Hydra's composition error: what it wraps is the reason
    if written:
        return ConfigError(f"{written} is invalid: {_reason(e)}")
    key = prefix + (getattr(e, "full_key", None) or "") or where
    value = getattr(e, "value", None)
    if key and "[" in key:  # an entry of a list: the list, as given where it is known
        key = key.split("[")[0]
        value = value if cfg is None else _get(cfg, key)
    if isinstance(e, ConfigKeyError) and prefix:  # a key the section's schema does not have
        section = key.rpartition(".")[0]
        return unknown_key(key, _schema_of(key, option), f"{section}={option}" if option else section)
    tp = _schema_of(key, option).get(key.partition(".")[2] or key) if key else None
    if isinstance(e, ValidationError) and tp is not None:  # a value not of its type
        return ConfigError(f"{key}={_shown(value)} is invalid: {allowed(key, tp, schema.rule(key, option))}")
    return ConfigError(f"{_as_written(cfg, key)} is invalid: {_reason(e)}")


def unknown_key(key: str, known, of: str | None = None, hint: str | None = None) -> ConfigError:
    """The one line for a key that `of` (its parent by default: a section, an option, a
    launcher) does not have: the known key nearest it, else the known keys (`_target_` is none)."""
    parent, _, name = key.rpartition(".")
    known = [str(k) for k in known if not str(k).startswith("_")]
    hint = hint or did_you_mean(name, known, f"{parent}." if parent else "")
    hint = hint or (f"its keys are {', '.join(known)}" if known else "it has none")
    return ConfigError(f"{key} is not a key of {of or parent or 'the config'}: {hint}")


def did_you_mean(name: str, known, prefix: str = "", suffix: str = "") -> str | None:
    """The hint for a misspelt key, option or section, wherever it is found: "did you mean"
    the known name nearest `name` (between prefix and suffix)?; None where none is near."""
    close = get_close_matches(name, [str(k) for k in known], n=1, cutoff=0.6)
    return f"did you mean {prefix}{close[0]}{suffix}?" if close else None


# Each schema dataclass by the name of what it types: the trainer, or an option (sgd, step, ...).
KINDS = {"trainer": schema.Trainer} | {n: k for own in schema.OWN.values() for n, k in own.values()}


def _schema_of(key: str, option: str | None) -> dict:
    """{key under its section: type} of the schema that types `key`: lr's, the trainer's, or
    the option's; empty where none does (a user's option)."""
    section, _, rest = key.partition(".")
    kind = (KINDS.get(option) or KINDS.get(section)) if rest else schema.Root
    return dict(_fields(kind)) if kind else {}


def _reason(e: Exception) -> str:
    """OmegaConf's first line, told by the error's type: a null where none is allowed, a new key
    (which Hydra adds with +); without the prefix for what a resolver raised (the resolver's own
    words say it: `${fraction_of_epochs:1.5}` is not a fraction)."""
    if isinstance(e, ValidationError) and getattr(e, "value", 0) is None:
        return "this key must be set: null is not allowed"
    text = data_module.first_line(e).removeprefix("ValueError raised while resolving interpolation: ")
    return text + ("; a new key takes Hydra's +" if isinstance(e, ConfigKeyError) else "")


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


def check(cfg: DictConfig) -> None:
    try:
        _check(cfg)
    except OmegaConfBaseException as e:  # an interpolation that does not resolve: ${nope.key}
        raise in_one_line(cfg, e) from None


def _own(cfg, section: str) -> tuple[str, type] | None:
    """The project's option `section` is (its name and schema, by its `_target_`), or None for a user's."""
    known = schema.OWN[section]
    target = _get(cfg, f"{section}._target_")
    if target is None:  # a section without a _target_: named by `name`
        by_name = {name: (name, kind) for name, kind in known.values()}
        name = _get(cfg, f"{section}.name")
        if name not in by_name:
            raise ConfigError(f"{section}.name={name!r} is invalid: allowed values are {', '.join(by_name)}")
        return by_name[name]
    return known.get(str(target))


def _check(cfg: DictConfig) -> None:
    for section in BUILT:
        problem = signatures.problem(cfg, section) if section in cfg else None
        if problem:
            raise ConfigError(problem)
    measured = {}  # what the checks measure, for the rules bounded by it: the data's n_train
    _walk(cfg, "trainer", schema.Trainer, None, measured)
    _walk(cfg, None, schema.Root, None, measured)
    for section in ("optim", "schedule", "model"):
        own = _own(cfg, section)
        if own:
            _walk(cfg, section, own[1], own[0], measured)
            problem = CROSS.get(own[0], lambda cfg: None)(cfg)
            if problem:
                raise ConfigError(problem)
        else:  # a user's option: the keys the training loop reads from any option, where it has them
            for key in {"schedule": ["schedule.warmup_epochs"], "model": ["model.l1"]}.get(section, []):
                if _get(cfg, key) is not None:
                    number(cfg, key, rule=schema.RULES[key])
    measured["n_train"] = data_module.check(cfg)
    _check_geometry(cfg)
    # A net too large for any machine is refused on any, a SLURM login node too; what fits where is
    # check_device's, on the machine that trains.
    try:
        footprint.meta_net(cfg)
    except footprint.Unsizable as e:
        raise ConfigError(str(e)) from None
    _apply(
        cfg, "trainer.batch_size", cfg.trainer.batch_size, int, schema.RULES["trainer.batch_size"], measured
    )
    _check_trainer(cfg)


def _step(cfg) -> str | None:
    e, epochs = cfg.schedule.switch_epoch, cfg.trainer.epochs
    if e < epochs:
        return None
    written = _as_written(cfg, "schedule.switch_epoch").partition("=")[2]  # ${fraction_of_epochs:0.5}
    given = str(e) if written == str(e) else f"{written} (epoch {e} here)"
    return (
        f"schedule.switch_epoch={given} is invalid: the switch to schedule.lr2 must come before the end, "
        f"1 <= schedule.switch_epoch < trainer.epochs={epochs}"
    )


def _multistep(cfg) -> str | None:
    milestones, epochs = list(cfg.schedule.milestones), cfg.trainer.epochs
    if milestones == sorted(set(milestones)) and milestones[-1] < epochs:
        return None
    return (
        f"schedule.milestones={milestones} is invalid: must be increasing epochs "
        f"between 1 and trainer.epochs-1={epochs - 1}"
    )


def _adam(cfg) -> str | None:
    betas = list(cfg.optim.betas)
    if len(betas) == 2 and all(0 <= b < 1 for b in betas):
        return None
    return f"optim.betas={_shown(betas)} is invalid: must be two numbers in [0, 1), e.g. [0.9,0.999]"


# The rules that relate several keys of an option, by the option's name: each gives the line that
# refuses the option's values, or None.
CROSS = {
    "step": _step,
    "multistep": _multistep,
    "cosine": lambda cfg: (
        cfg.schedule.lr_min > cfg.lr
        and f"schedule.lr_min={cfg.schedule.lr_min} is invalid: must be <= lr={cfg.lr}"
    ),
    "lr_range": lambda cfg: (
        cfg.schedule.lr_max <= cfg.schedule.lr_min
        and f"schedule.lr_max={cfg.schedule.lr_max} is invalid: the range must grow, "
        f"schedule.lr_max > schedule.lr_min={cfg.schedule.lr_min}"
    ),
    "sgd": lambda cfg: (
        cfg.optim.nesterov
        and cfg.optim.momentum == 0
        and "optim.nesterov=true is invalid with optim.momentum=0: nesterov needs momentum > 0"
    ),
    "adam": _adam,
    "adamw": _adam,
    # padding k//2 keeps a map's size only for odd k: the residual sum needs it
    "resnet": lambda cfg: (
        cfg.model.kernel_size % 2 == 0
        and f"model.kernel_size={cfg.model.kernel_size} is invalid for model=resnet: must be odd (1, 3, 5, ...), "
        "so that each block keeps its input's size for the residual sum"
    ),
}


def _check_geometry(cfg) -> None:
    """The net fits the data's images: the data's own image shape (a 28x28 MNIST, a 64x48
    folder); the CIFAR size where it is not known before loading (the job checks it again then)."""
    own = _own(cfg, "model")
    if own is None:
        return
    extent = data_module.extent(cfg.data)
    height, width = extent.shape[1:] if extent else (data_module.IMAGE_SIZE,) * 2
    m = cfg.model
    try:
        models.square(height if height == width else (height, width), own[0])
        if own[0] == "convnet":
            models.conv_widths(m.channels, m.growth, m.conv_layers)
            models.convnet_geometry(
                height,
                models.per_layer(m.kernel_size, m.conv_layers, "model.kernel_size"),
                models.per_layer(m.pool, m.conv_layers, "model.pool"),
                m.padding,
            )
    except models.GeometryError as e:
        raise ConfigError(str(e)) from None


def _check_trainer(cfg) -> None:
    device, threads = cfg.trainer.device, cfg.trainer.threads
    if device not in ("auto", "cpu", "cuda", "mps") and not (
        device.startswith("cuda:") and device[5:].isdigit()
    ):
        raise ConfigError(
            f"trainer.device={device!r} is invalid: allowed values are auto, cpu, cuda, cuda:N, mps"
        )
    if threads != "auto" and not (type(threads) is int and threads >= 1):
        raise ConfigError(f"trainer.threads={_shown(threads)} is invalid: must be auto or an integer >= 1")
    if cfg.trainer.cuda_graph is True:
        from sweeper.cuda_graph import capturable

        reason = capturable(cfg)
        if reason:
            raise ConfigError(
                f"trainer.cuda_graph=true cannot capture this run's step: {reason}; use auto or false"
            )
    # The run's measured columns: its trainer.metrics (checked here) on each split it has.
    stopping = metrics.allowed_stopping_metrics(cfg.trainer, _get(cfg, "data.val_size") is not None)
    metric = cfg.trainer.early_stopping.metric
    if metric is not None and metric not in stopping:
        raise ConfigError(
            f"trainer.early_stopping.metric={_shown(metric)} is invalid: allowed values are "
            f"{', '.join(stopping)}, or null (off)"
        )
    objective.check(cfg)  # trainer.objective (hydra/sweeper=optuna)


def check_device(cfg) -> None:
    """trainer.device exists on this machine, and the run fits in its memory: on the machine that
    trains (a job, a local sweep before launch), not a login node that submits to GPU nodes."""
    import torch

    device = _get(cfg, "trainer.device")
    # The device the run will train on, as train.pick_device picks it (auto: cuda, else cpu).
    trains_on = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else str(device)
    if _get(cfg, "trainer.cuda_graph") is True and not trains_on.startswith("cuda"):
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
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (int(trains_on[5:]) if trains_on.startswith("cuda:") else 0) >= count:
            has = f"{count} CUDA GPU(s), cuda:0 to cuda:{count - 1}" if count else "no CUDA GPU"
            fix = "" if count else " (torch.cuda.is_available() is false); use auto or cpu"
            raise ConfigError(f"trainer.device={trains_on} is invalid here: this machine has {has}{fix}")
    problem = footprint.problem(cfg, trains_on)
    if problem:
        raise ConfigError(problem)

"""Every user mistake becomes one clear line, before any training starts.

`check(cfg)` raises ConfigError naming the key, the value and what is allowed. It is called for
a single run before training, and by the sweep callback for every job of a `-m` grid before the
first job is launched, so a bad value never reaches a queue.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from difflib import get_close_matches
from pathlib import Path

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sweeper import data as data_module
from sweeper import models, schedules  # noqa: F401 -- schedules registers ${fraction_of_epochs:...}, which configs use

SCHEDULES = ("constant", "step", "multistep", "geometric", "cosine", "lr_range")
OPTIMIZERS = ("sgd", "adam", "adamw")
MODELS = ("convnet", "resnet")
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
        key = getattr(e, "full_key", None)
        raise ConfigError(f"{_as_written(cfg, key)} is invalid: {_reason(e)}") from None


def _reason(e: Exception) -> str:
    """OmegaConf's first line, without its prefix for what a resolver raised (the resolver's own
    words say it: `${fraction_of_epochs:1.5}` is not a fraction)."""
    return data_module.first_line(e).removeprefix("ValueError raised while resolving interpolation: ")


def _as_written(cfg, key: str | None) -> str:
    """key=value with the value as written, unresolved (lr=${nope.key}); the key alone if none."""
    if not key:
        return "the config"
    node = cfg
    try:
        for part in key.split("."):
            node = node._get_node(part)
        return f"{key}={node._value()}"
    except Exception:  # a key OmegaConf names but cannot walk to: say the key
        return key


def _check(cfg: DictConfig) -> None:
    epochs = number(cfg, "trainer.epochs", low=1, integer=True)
    number(cfg, "lr", low=0, low_open=True)
    _check_optim(cfg)
    _check_schedule(cfg, epochs)
    n_train = _check_data(cfg)
    _check_model(cfg)
    _check_sizable(cfg)
    _check_trainer(cfg, n_train)


def _check_optim(cfg) -> None:
    name = choice(cfg, "optim.name", OPTIMIZERS)
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
    name = choice(cfg, "schedule.name", SCHEDULES)
    number(cfg, "schedule.warmup_epochs", low=0, high=epochs, high_open=True)
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
    name = choice(cfg, "data.name", DATASETS)
    boolean(cfg, "data.normalize")
    boolean(cfg, "data.augment")
    number(cfg, "data.seed", low=0, high=2**64 - 1, integer=True)  # torch.Generator.manual_seed's range
    cache_dir = _get(cfg, "data.cache_dir")
    if cache_dir is not None and not (isinstance(cache_dir, str) and cache_dir.strip()):
        raise ConfigError(
            f"data.cache_dir={cache_dir!r} is invalid: must be a directory, or null for no cache"
        )
    if name == "synthetic":
        number(cfg, "data.n_train", low=1, integer=True)
        number(cfg, "data.n_test", low=1, integer=True)
        number(cfg, "data.label_noise", low=0, high=1)
    else:
        root = _get(cfg, "data.root")
        problem = data_module.source_problem(root, boolean(cfg, "data.download"), cache_dir)
        if problem:
            raise ConfigError(f"data.root={root if root else repr(root)} is invalid: {problem}")
    size = data_module.dataset_size(cfg.data)
    if _get(cfg, "data.train_size") is not None:
        return number(cfg, "data.train_size", low=1, high=size, integer=True)
    return size


def _check_model(cfg) -> None:
    name = choice(cfg, "model.name", MODELS)
    number(cfg, "model.dropout", low=0, high=1, high_open=True)
    number(cfg, "model.l1", low=0)
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
            data_module.IMAGE_SIZE,
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
    _check_stopping(cfg)


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


def _overrides(arguments: list[str]):
    """(argument, Hydra's reading of it) for each command-line override; flags are left to Hydra.
    An override Hydra's grammar cannot read is refused in one line (Hydra says it over four)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in arguments:
        if arg.startswith("-") or ("=" not in arg and not arg.startswith("~")):  # ~key deletes
            continue
        try:
            yield arg, parser.parse_overrides([arg])[0]
        except OverrideParseException as e:
            lines = [
                line
                for line in str(e).splitlines()
                if line.strip() and not line.startswith(("Error parsing override", "See https://"))
            ]
            # "mismatched input '<EOF>' expecting {':', BRACKET_OPEN, ...}": the grammar's tokens say little
            why = (
                (lines[0] if lines else "")
                .split(" expecting ")[0]
                .removeprefix("ValueError while evaluating ")
            )
            raise ConfigError(
                f"{arg} is invalid: Hydra's override grammar cannot read it ({why}); see "
                "https://hydra.cc/docs/advanced/override_grammar/basic"
            ) from None


def flagged(arguments: list[str], *flags: str) -> bool:
    """Whether a flag is given, as argparse reads it: `--flag`, `--flag=x`, or a prefix (`--multi`)."""
    for a in arguments:
        name = a.split("=", 1)[0]
        if any(name == f or (name.startswith("--") and len(name) > 2 and f.startswith(name)) for f in flags):
            return True
    return False


def sweeping(arguments: list[str]) -> bool:
    """Whether the command is a sweep (-m, --multirun, or hydra.mode=MULTIRUN)."""
    modes = {"MULTIRUN", "RunMode.MULTIRUN", "2"}
    return flagged(arguments, "-m", "--multirun") or any(
        a.lstrip("+").partition("=")[::2] in {("hydra.mode", m) for m in modes} for a in arguments
    )


# The config's own sections: a key appended under one of them (+model.foo=1) is read by nothing,
# or breaks the builder that takes the section's keys as arguments.
SECTIONS = ("model", "optim", "schedule", "data", "trainer")


def check_overrides(arguments: list[str], conf_dir: str, config_name: str = "config") -> DictConfig | None:
    """Refuse a command line that Hydra would refuse, or that would fail in every job, in one line.

    Unknown group options and misspelt keys (naming the allowed values or the nearest key), a
    sweep without -m, interval() in a grid, a key appended under a section of the config, and
    whatever else Hydra's own composition refuses (the config is composed as Hydra will compose
    it: a sweep's values left out), and interpolations that do not resolve. Hydra would say most
    of these too, over several lines or a traceback.

    Returns that composed config, Hydra's keys included (a single run's, whole), or None when the
    command has no override to compose.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.types import Glob, IntervalSweep, OverrideType
    from hydra.errors import HydraException

    multirun = sweeping(arguments)
    parsed = list(_overrides(arguments))
    groups = {
        p.name: sorted(f.stem for f in p.glob("*.yaml"))
        for p in Path(conf_dir).iterdir()
        if p.is_dir() and p.name != "hydra"
    }
    selections, keys, appended, hydra_groups, forced, hydra_added = [], [], [], [], [], []
    grid: list[tuple[str, int]] = []  # (argument, its number of values) for each sweep
    swept_groups: dict[str, list[str]] = {}
    for arg, override in parsed:
        key = override.key_or_group
        if override.is_sweep_override():
            value = arg.partition("=")[2]
            if isinstance(override.value(), IntervalSweep):
                raise ConfigError(
                    f"{arg} is invalid: interval() is a range for an optimizing sweeper; a grid takes "
                    "values (a,b,c), range(start,stop,step) or choice(a,b)"
                )
            if not multirun:
                raise ConfigError(
                    f"{arg} is a sweep over several values: add -m to run a job per value "
                    f"(a list is [{value}], a string with commas '{value}')"
                )
            try:  # range(0,1,0) fails only when Hydra expands it, with a traceback; range(1,1) is empty
                empty = (
                    not isinstance(override.value(), Glob)
                    and next(iter(override.sweep_string_iterator()), None) is None
                )
            except ValueError as e:
                raise ConfigError(f"{arg} is invalid: {e}") from None
            if empty:
                raise ConfigError(f"{arg} is invalid: it gives no value, so the sweep would have no job")
            size = _sweep_size(override.value())
            if size:
                grid.append((arg, size))
        if key.startswith("hydra/"):
            hydra_groups.append((arg, override))
            continue
        if (
            key.startswith("hydra.")
            and override.type in (OverrideType.ADD, OverrideType.FORCE_ADD)
            and not key.startswith("hydra.launcher.")
        ):
            hydra_added.append(arg)  # +hydra.sweeep.dir=x: added, and read by nothing
            continue
        if key.startswith("hydra") or override.type is OverrideType.DEL:
            continue
        if override.type is OverrideType.ADD:
            appended.append(key)
            continue
        if arg.startswith("+"):  # ++key: set or add; under a section, only where it is read
            if key.split(".")[0] in SECTIONS:
                forced.append((arg, key))
            continue
        if key in groups:  # Hydra's sweep syntax too: a,b  choice(a,b)  glob(c*)
            allowed = groups[key]
            if key == "experiment" and override.value() is None and not override.is_sweep_override():
                # The default has no experiment, but Hydra takes no null for a group on the
                # command line (a traceback: "Config group override must be a string").
                raise ConfigError(
                    f"{arg} is invalid: leave experiment out to run none, or write ~experiment; "
                    f"its options are {', '.join(allowed)}"
                )
            if isinstance(override.value(), Glob):
                values = override.value().filter(groups[key])
                if not values:
                    raise ConfigError(f"{arg} is invalid: it matches none of {', '.join(allowed)}")
            elif override.is_sweep_override():
                values = list(override.sweep_string_iterator())
            else:
                values = [override.get_value_element_as_str()]
            for v in values:
                if v not in allowed:
                    raise ConfigError(f"{key}={v} is invalid: allowed values are {', '.join(allowed)}")
            selections.append(f"{key}={values[0]}")
            if len(values) > 1:
                swept_groups[key] = values
        else:
            keys.append(key)
    if math.prod(n for _, n in grid) > MAX_JOBS:
        # Hydra lists every job before the first starts: a billion of them never start.
        raise ConfigError(
            f"{' '.join(a for a, _ in grid)} is a grid of {math.prod(n for _, n in grid):,} jobs"
            + (f" ({' x '.join(str(n) for _, n in grid)})" if len(grid) > 1 else "")
            + f": more than the {MAX_JOBS:,} one sweep takes; "
            "sweep fewer values, or split the grid over several sweeps"
        )
    if not parsed:
        return None
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        loader = GlobalHydra.instance().config_loader()
        for _arg, override in hydra_groups:  # hydra/sweeper=basicc; hydra/launcher has its own check
            key = override.key_or_group
            options = loader.get_group_options(key)
            values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [
                override.get_value_element_as_str()
            ]  # fmt: skip
            for v in values:
                if options and v not in options and v != "null":
                    raise ConfigError(f"{key}={v} is invalid: allowed values are {', '.join(options)}")
        base = compose(config_name=config_name, overrides=selections)
        known = _dotted_keys(OmegaConf.to_container(base))
        for key in keys:
            if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
                raise ConfigError(
                    _missing_key(key, key, known, selections, swept_groups, groups, compose, config_name)
                )
        for arg, key in forced:  # ++section.key: every job's section must have the key, or nothing reads it
            split = _split_on(key, selections, swept_groups, compose, config_name)
            if split:
                raise ConfigError(_sweep_them_separately(arg, key, *split))
            if OmegaConf.select(base, key, default=_MISSING) is _MISSING:
                section = key.split(".")[0]
                current, others = _options_with(key, section, selections, groups, compose, config_name)
                raise ConfigError(
                    _another_option(arg, key, section, current, others)
                    if others
                    else _nothing_reads(arg, section, known)
                )
        for key in appended:
            section = key.split(".")[0]
            if key in known:
                raise ConfigError(f"+{key} is invalid: {key} is a key already; set it without +")
            if section in SECTIONS:
                raise ConfigError(_nothing_reads(f"+{key}", section, known))
            close = get_close_matches(key, [k for k in known if "." not in k], n=1, cutoff=0.6)
            if close:  # +lrr=1: a typo that + would otherwise let through, read by nothing
                raise ConfigError(f"+{key} is invalid: did you mean {close[0]}? (+ adds a new key)")
        # As Hydra composes it: every override, less a sweep's values (they vary per job).
        shared = [
            arg
            for arg, o in parsed
            if not (multirun and o.is_sweep_override())
            # launcher keys matter to a sweep only, and check_launcher names the launchers with a key
            and not o.key_or_group.startswith(("hydra.launcher.", "hydra/launcher"))
        ]
        try:
            cfg = compose(config_name=config_name, overrides=shared, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            raise ConfigError(_composition_problem(shared, e, swept_groups, compose, config_name)) from None
        except AttributeError as e:  # OmegaConf merging a dict into a None node: basic sweeper's params
            culprit = next((a for a in shared if "hydra.sweeper.params" in a), " ".join(shared))
            hint = "; the default hydra/sweeper=grid takes it" if "hydra.sweeper.params" in culprit else ""
            reason = data_module.first_line(e)
            raise ConfigError(f"{culprit} is invalid: OmegaConf cannot merge it ({reason}){hint}") from None
        if hydra_added:  # a typo in the path: a new key there is read by nothing
            plain = compose(
                config_name, [a for a in shared if a not in hydra_added], return_hydra_config=True
            )
            for arg in hydra_added:
                typo = _missing_part(plain, arg.partition("=")[0].lstrip("+"))
                if typo and "did you mean" in typo:
                    raise ConfigError(f"{arg} is invalid: {typo} (+ adds a key, which nothing would read)")
    _check_output_dir(cfg, "hydra.sweep.dir" if multirun else "hydra.run.dir")
    for section in [k for k in cfg if k != "hydra"]:  # ${nope.key}, ${oc.env:UNSET}
        try:
            value = cfg[section]  # a scalar's interpolation resolves here
            if OmegaConf.is_config(value):
                OmegaConf.to_container(value, resolve=True)
        except OmegaConfBaseException as e:
            where = _as_written(cfg, getattr(e, "full_key", None) or section)
            raise ConfigError(f"{where} is invalid: {_reason(e)}") from None
    return cfg


# The most jobs one sweep takes. Each is listed and composed before the first starts (0.16 s a
# job on a 2-core machine: this many take four hours) and gets its own run dir.
MAX_JOBS = 100_000


def _sweep_size(value) -> int | None:
    """How many values a sweep gives, counted without listing them; None for a glob (its options)."""
    from hydra.core.override_parser.types import ChoiceSweep, RangeSweep

    if isinstance(value, RangeSweep) and value.step:
        return max(0, math.ceil((value.stop - value.start) / value.step))
    if isinstance(value, ChoiceSweep):
        return len(value.list)
    return None


def _check_output_dir(cfg: DictConfig, key: str) -> None:
    """An empty hydra.run.dir or hydra.sweep.dir is the current directory: the record's files
    (config.json, checkpoint.pt, multirun.yaml ...) would land among the user's own, unasked."""
    try:
        folder = OmegaConf.select(cfg, key)
    except OmegaConfBaseException:
        return  # an interpolation only Hydra can resolve: it says so if it cannot
    if folder is None or not str(folder).strip():
        raise ConfigError(
            f"{key}={'' if folder is None else folder} is invalid: an empty directory is the current one, where "
            f"the {'sweep' if 'sweep' in key else 'run'}'s files would land among others; name a directory "
            f"({key}=. if that is what you mean)"
        )


def _has_key(key: str, selections: list[str], group: str, option: str, compose, config_name) -> bool:
    """Whether `key` is in the config composed with group=option (and the other selections)."""
    chosen = [a for a in selections if a.partition("=")[0] != group] + [f"{group}={option}"]
    try:
        cfg = compose(config_name=config_name, overrides=chosen)
    except Exception:  # noqa: BLE001 -- an option that does not compose has no key
        return False
    return OmegaConf.select(cfg, key, default=_MISSING) is not _MISSING


def _split_on(key: str, selections, swept_groups: dict, compose, config_name):
    """(group, options with `key`, options without) for the first swept group whose options
    differ in having it: its jobs could not all set it. None when none differ."""
    for group, options in swept_groups.items():
        have = [o for o in options if _has_key(key, selections, group, o, compose, config_name)]
        if have and len(have) < len(options):
            return group, have, [o for o in options if o not in have]
    return None


def _sweep_them_separately(given: str, key: str, group: str, have: list[str], lacking: list[str]) -> str:
    name = key.removeprefix(f"{group}.")  # optim=sgd has no eps; experiment=x has no schedule.epoch
    return (
        f"{given} is invalid in this sweep: {group}={','.join(lacking)} has no {name} "
        f"(only {group}={','.join(have)} has); sweep them separately"
    )


def _options_with(key: str, section: str, selections, groups: dict, compose, config_name):
    """(the section's chosen option, its other options that have `key`)."""
    chosen = [a.partition("=")[2] for a in selections if a.partition("=")[0] == section]
    current = (
        chosen[-1]
        if chosen
        else compose(
            config_name=config_name, overrides=selections, return_hydra_config=True
        ).hydra.runtime.choices.get(section)
    )
    others = [
        o
        for o in groups.get(section, [])
        if o != current and _has_key(key, selections, section, o, compose, config_name)
    ]
    return current, others


def _missing_key(key: str, given: str, known, selections, swept_groups, groups, compose, config_name) -> str:
    """One line for a key the composed config lacks: the swept options that have it, the
    section's options that have it, or the nearest key."""
    split = _split_on(key, selections, swept_groups, compose, config_name)
    if split:  # optim=sgd,adam optim.eps=1e-7: whatever the order of the options
        return _sweep_them_separately(given, key, *split)
    section = key.split(".")[0]
    if section in groups:  # schedule.lr2 with schedule=constant
        current, others = _options_with(key, section, selections, groups, compose, config_name)
        if others:
            return _another_option(given, key, section, current, others)
    return f"{key} is not a config key: {_nearest(key, known)}"


def _another_option(given: str, key: str, section: str, current: str, others: list[str]) -> str:
    return (
        f"{given} is invalid: {section}={current} has no {key.split('.', 1)[1]}; the {section} "
        f"options with it are {', '.join(others)} (add {section}={others[0]})"
    )


def _nothing_reads(given: str, section: str, known: list[str]) -> str:
    """A new key under a config section: the section's builder reads only the keys it has."""
    siblings = [k.split(".", 1)[1] for k in known if k.startswith(section + ".") and "._" not in k]
    return (
        f"{given} is invalid: nothing reads a new key under {section}, whose keys are {', '.join(siblings)}"
    )


def _nearest(key: str, known: list[str]) -> str:
    known = [k for k in known if not k.rpartition(".")[2].startswith("_")]  # _target_: not a knob
    group, _, leaf = key.rpartition(".")
    tops = sorted({k.split(".")[0] for k in known})
    head, _, rest = key.partition(".")
    if rest and head not in tops:  # modle.channels: the section is the typo
        near = get_close_matches(head, tops, n=1, cutoff=0.6)
        if near and f"{near[0]}.{rest}" in known:
            return f"did you mean {near[0]}.{rest}?"
    siblings = [k for k in known if k.startswith(group + ".")] if group else []
    # A key under a section is matched by its last part among its siblings': the section's name,
    # common to all, would make schedule.lrr2 look like schedule.name.
    leaves = {k.rpartition(".")[2]: k for k in siblings if k.count(".") == key.count(".")}
    close = [leaves[c] for c in get_close_matches(leaf, list(leaves), n=1, cutoff=0.6)] if group else []
    close = close or get_close_matches(key, known if not group else [], n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    if siblings:
        return f"the keys of {group} are {', '.join(siblings)}"
    return f"top-level keys are {', '.join(tops)}"


def _missing_part(tree, key: str) -> str | None:
    """Where a dotted key leaves the config before its last part (hydra.sweeep.dir: at sweeep),
    with the nearest existing name; None when only the last part is new."""
    parts = key.split(".")
    for i in range(len(parts) - 1):
        node = OmegaConf.select(tree, ".".join(parts[:i])) if i else tree
        if not OmegaConf.is_dict(node) or parts[i] in node:
            continue
        at = ".".join(parts[:i]) or "the config"
        names = [str(k) for k in node]
        close = get_close_matches(parts[i], names, n=1, cutoff=0.6)
        if close:
            return (
                f"{at} has no {parts[i]}; did you mean {'.'.join([*parts[:i], close[0], *parts[i + 1 :]])}?"
            )
        return f"{at} has no {parts[i]}; its keys are {', '.join(names)}"
    return None


def _composition_problem(shared: list[str], error: Exception, swept_groups, compose, config_name) -> str:
    """One line for what Hydra's composition refused: the argument that fails, and why."""
    import re

    text = str(error).strip()
    first_line = text.splitlines()[0] if text else ""
    match = re.match(r"Could not override '([^']+)'", text)
    quoted = match.group(1) if match else None
    culprit = next(  # the argument Hydra names, in quotes: hydra.sweep.dir is not hydra.sweep.dirr
        (
            a
            for a in shared
            if f"'{a.partition('=')[0].lstrip('+~')}'" in first_line or a.partition("=")[0] == quoted
        ),
        None,
    )
    if match:
        key = match.group(1)
        section = key.split(".")[0]
        if section in swept_groups:
            # Hydra composes a sweep's shared config with the group's default option: a key that
            # every swept option has but the default lacks cannot be set there.
            have = [
                o for o in swept_groups[section]
                if OmegaConf.select(compose(config_name, [f"{section}={o}"]), key, default=_MISSING) is not _MISSING
            ]  # fmt: skip
            name = key.split(".", 1)[1]
            if len(have) == len(swept_groups[section]):
                value = (culprit or "").partition("=")[2]
                default = compose(config_name, [], return_hydra_config=True).hydra.runtime.choices.get(
                    section
                )
                return (
                    f"{culprit} is invalid in this sweep: Hydra first composes the shared config with "
                    f"{section}={default}, which has no {name}; write ++{key}={value} to set it in every "
                    f"{section} swept"
                )
            lacking = [o for o in swept_groups[section] if o not in have]
            return (
                f"{culprit} is invalid in this sweep: {section}={','.join(lacking)} has no {name} "
                f"(only {section}={','.join(have) or 'none'} has); sweep them separately"
            )
        parent, _, name = key.rpartition(".")
        try:
            tree = compose(config_name, [a for a in shared if a != culprit], return_hydra_config=True)
            typo = _missing_part(tree, key)
            if typo:  # hydra.sweeep.dir: the parent is missing, not the key
                return f"{key} is not a key: {typo}"
            node = OmegaConf.select(tree, parent) if parent else tree
            siblings = sorted(node.keys()) if OmegaConf.is_dict(node) else []
        except Exception:  # the rest does not compose either: say what Hydra said
            siblings = []
        if name in siblings:  # the key is there; the dict given for it brings keys it lacks
            return f"{culprit} is invalid: it adds keys to {key}, which takes Hydra's +: +{culprit}"
        close = get_close_matches(name, siblings, n=1, cutoff=0.6)
        hint = f"did you mean {parent + '.' if parent else ''}{close[0]}?" if close else (
            f"the keys of {parent} are {', '.join(siblings)}" if siblings else "a new key takes Hydra's +"
        )  # fmt: skip
        return f"{key} is not a key of {parent or 'the config'}: {hint}"
    first = (str(error.__cause__).strip() if error.__cause__ else text).splitlines()[0]
    return f"{culprit + ' is invalid: ' if culprit else ''}{first}"


# hydra-submitit-launcher's counts (those of every SLURM and local preset), and the least each
# takes; null, where a key allows it, leaves the choice to the cluster.
SUBMITIT_COUNTS = {
    "timeout_min": 0,  # sbatch --time=0: no limit
    "nodes": 1,
    "tasks_per_node": 1,
    "cpus_per_task": 1,
    "gpus_per_node": 0,
    "mem_gb": 0,  # sbatch --mem=0: all of a node's memory
    "cpus_per_gpu": 1,
    "gpus_per_task": 0,
    "array_parallelism": 1,
    "signal_delay_s": 0,
    "max_num_timeout": 0,
}


def _check_launcher_type(arg: str, current, given) -> None:
    """A launcher's true/false or integer key takes a value of its kind. OmegaConf would take
    fuse=2 or fuse=yes as true, and say of slots_per_device=1.5 only that it "could not be
    converted to Integer"."""
    if given is None or (isinstance(given, str) and given.startswith("${")):
        return  # null (the schema says where it is allowed), an interpolation: checked once composed
    if isinstance(current, ListConfig) and isinstance(given, dict):
        raise ConfigError(f"{arg} is invalid: must be a list, such as [{', '.join(map(str, current))}]")
    if isinstance(given, str) and given.strip().lower() in ("true", "false"):
        given = given.strip().lower() == "true"  # quoted ("true"): OmegaConf converts it
    elif isinstance(given, str) and given.strip().lstrip("+-").isdigit():
        given = int(given)  # quoted ("2")
    if isinstance(current, bool) and not isinstance(given, bool):
        raise ConfigError(f"{arg} is invalid: allowed values are true and false")
    if (
        isinstance(current, int)
        and not isinstance(current, bool)
        and (isinstance(given, bool) or not isinstance(given, int))
    ):
        raise ConfigError(f"{arg} is invalid: must be a whole number (an integer such as {current})")


def check_launcher(arguments: list[str], conf_dir: str, config_name: str = "config") -> None:
    """Refuse a bad launcher option, key or value in one line, before Hydra starts.

    Hydra reports these over several lines, and a launcher's own checks (pool's devices and
    slots_per_device, jobs_per_task) come wrapped in its instantiation error. The launcher is
    built here as Hydra will build it, so those checks speak first, in their own words. Does
    nothing (and costs nothing) when no argument concerns the launcher.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sweeper import build

    group, prefix = "hydra/launcher", "hydra.launcher."
    # As Hydra composes the launcher's config: every override but the sweeps (they vary per job).
    selections, changes = [], []  # those overrides; (override, argument) of the launcher's keys
    for arg, override in _overrides(arguments):
        key = override.key_or_group
        if key.startswith(prefix):
            if override.is_sweep_override():
                value = arg.partition("=")[2]
                raise ConfigError(
                    f"{arg} is invalid: a launcher key takes one value; quote a string with commas "
                    f"('{value}') or write a list ([{value}])"
                )
            changes.append((override, arg))
        elif key == group and override.is_sweep_override():
            raise ConfigError(f"{arg} is invalid: a sweep runs on one launcher, so pick one of them")
        elif not override.is_sweep_override():
            selections.append(arg)
    chosen_here = [a.partition("=")[2] for a in selections if a.partition("=")[0] == group]
    if not changes and not chosen_here:
        return

    def compose_with(extra: list[str]):
        return compose(config_name, [*selections, *extra], return_hydra_config=True)

    def reason(e: Exception) -> str:  # the cause's first line, without Hydra's lines of context
        text = str(e.__cause__ or e).strip().splitlines()[0]
        if "is not Optional" in text:
            return "this key must be set: null is not allowed"
        return text + ("; a new key takes Hydra's +" if "not in struct" in text else "")

    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base=None):
        options = GlobalHydra.instance().config_loader().get_group_options(group)
        for option in chosen_here:
            if option not in options:
                raise ConfigError(f"{group}={option} is invalid: allowed values are {', '.join(options)}")
        try:
            base = compose_with([])
        except (HydraException, OmegaConfBaseException):
            return  # the other overrides do not compose: Hydra says why, in its own words
        chosen = base.hydra.runtime.choices.get(group)
        known = sorted(k for k in base.hydra.launcher if k != "_target_")
        for override, arg in changes:
            key = override.key_or_group
            name = key.removeprefix(prefix).split(".")[0]
            if name == "_target_" or (
                override.type is not OverrideType.CHANGE
                and (name in known or override.type is OverrideType.DEL)
            ):
                current = OmegaConf.select(base, key, default=_MISSING)
                if override.type is OverrideType.FORCE_ADD and current is not _MISSING:
                    _check_launcher_type(arg, current, override.value())  # ++fuse=2 sets fuse as fuse=2 does
                continue  # another class; +key, ++key, ~key within a launcher's key: checked below
            if name not in known:  # a launcher takes the keys it has, with + or without
                others = [  # the key belongs to another launcher (jobs_per_task to sweeper_local, say)
                    o
                    for o in options
                    if name in compose(config_name, [f"{group}={o}"], return_hydra_config=True).hydra.launcher
                ]
                close = get_close_matches(name, known, n=1, cutoff=0.6)
                hint = (
                    f"the launchers with it are {', '.join(others)}"
                    if others
                    else f"did you mean {prefix}{close[0]}?"
                    if close
                    else f"its keys are {', '.join(known)}"
                    if known
                    else "it has none"
                )
                raise ConfigError(f"{key} is not a key of {group}={chosen}: {hint}")
            current = OmegaConf.select(base, key, default=_MISSING)
            if current is _MISSING:  # a new sbatch option, say
                raise ConfigError(f"{key} is not a key of {group}={chosen}: append it with +{arg}")
            _check_launcher_type(arg, current, override.value())
        try:
            cfg = compose_with([a for _, a in changes])
        except (HydraException, OmegaConfBaseException) as together:
            for _, arg in changes:  # name the argument that fails on its own, if one does
                try:
                    compose_with([arg])
                except (HydraException, OmegaConfBaseException) as e:
                    raise ConfigError(f"{arg} is invalid: {reason(e)}") from None
            arguments_ = " ".join(a for _, a in changes)
            raise ConfigError(f"{arguments_} is invalid: {reason(together)}") from None
    for override, arg in changes:  # the user's interpolations (${oc.env:...}) must resolve
        name = override.key_or_group.removeprefix(prefix).split(".")[0]
        try:
            if name in cfg.hydra.launcher:
                build.resolved(cfg.hydra.launcher, name)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{arg} is invalid: {reason(e)}") from None
    for key, least in SUBMITIT_COUNTS.items():  # sbatch would refuse these only at submission
        if _get(cfg.hydra.launcher, key) is not None:
            number(cfg, prefix + key, low=least, integer=True)
    timeout_min, delay_s = _get(cfg.hydra.launcher, "timeout_min"), _get(cfg.hydra.launcher, "signal_delay_s")
    if timeout_min and delay_s is not None and timeout_min * 60 <= delay_s:
        # SLURM signals the job signal_delay_s before its limit: submitit would take it as timed
        # out right at the start, and stop or requeue it before it has trained.
        raise ConfigError(
            f"{prefix}timeout_min={timeout_min} is invalid with {prefix}signal_delay_s={delay_s}: the "
            f"time-limit signal would come at the start; give more than {delay_s / 60:g} min, or a "
            "smaller signal_delay_s"
        )
    launcher = cfg.hydra.launcher
    device = str(_get(cfg, "trainer.device") or "")
    extra = launcher.get("additional_parameters") or {}  # any sbatch option: gpus, gres, gpus-per-node ...
    asks_gpus = any(_get(launcher, k) for k in ("gpus_per_node", "gpus_per_task", "gres")) or any(
        str(k).replace("-", "_") in ("gpus", "gres", "gpus_per_node", "gpus_per_task", "gpus_per_socket")
        for k in extra
    )
    if "slurm" in str(launcher.get("_target_", "")).lower() and device.startswith("cuda") and not asks_gpus:
        # SLURM gives a job the GPUs it asks for, and this launcher asks for none: every job would
        # be refused on its node, after waiting in the queue.
        raise ConfigError(
            f"trainer.device={device} needs a GPU, but hydra/launcher={cfg.hydra.runtime.choices.get(group)} "
            f"asks SLURM for none ({prefix}gpus_per_node=null): use hydra/launcher=slurm_gpu, or set "
            f"{prefix}gpus_per_node=1"
        )
    try:
        build.launcher(cfg.hydra.launcher)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    except (ImportError, AttributeError) as e:  # another _target_, which does not import
        target = cfg.hydra.launcher._target_
        raise ConfigError(f"{prefix}_target_={target} is invalid: {str(e).strip().splitlines()[0]}") from None


def _dotted_keys(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


_MISSING = object()

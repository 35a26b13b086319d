"""The sweep's launcher checked before Hydra starts: its option (hydra/launcher=...), its keys and
their values, each refused in one line (Hydra says them over several lines, and wraps a launcher's
own checks, such as the pool's devices, in its instantiation error)."""

from __future__ import annotations

from omegaconf import ListConfig, OmegaConf

from sweeper.command_line import ConfigSource, GroupOptions, parsed_overrides, source_of
from sweeper.overrides import _MISSING
from sweeper.validate import ConfigError, _get, in_one_line, number, unknown_key

# hydra-submitit-launcher's counts (its queue's integer keys) take at least 1, but these, which
# sbatch reads as none: no time limit, all of a node's memory, no GPU, no signal delay, no requeue.
MAY_BE_ZERO = {"timeout_min", "mem_gb", "gpus_per_node", "gpus_per_task", "signal_delay_s", "max_num_timeout"}


def submitit_counts() -> list[str]:
    """hydra-submitit-launcher's integer keys, read from its SLURM queue's dataclass (its local
    queue's are a subset); null, where a key allows it, leaves the choice to the cluster."""
    import typing

    from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf

    hints = typing.get_type_hints(SlurmQueueConf)
    return [name for name, tp in hints.items() if int in (tp, *typing.get_args(tp))]


def _check_launcher_type(arg: str, current, given) -> None:
    """A launcher's true/false or integer key takes a value of its kind: OmegaConf would take
    fuse=2 or fuse=yes as true, and say of slots_per_device=1.5 "could not be converted"."""
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
    if type(current) is int and type(given) is not int:
        raise ConfigError(f"{arg} is invalid: must be a whole number (an integer such as {current})")


def check_launcher(arguments: list[str], conf_dir: ConfigSource | str, config_name: str = "config") -> None:
    """Refuse a bad launcher option, key or value in one line, before Hydra starts: the launcher
    is built here as Hydra will build it, so that its own checks speak. Nothing to do where no
    argument concerns the launcher."""
    from hydra import compose
    from hydra.core.override_parser.types import OverrideType
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from sweeper import build

    source = source_of(conf_dir, config_name)
    config_name = source.name
    group, prefix = "hydra/launcher", "hydra.launcher."
    # As Hydra composes the launcher's config: every override but the sweeps (they vary per job).
    selections, changes = [], []  # those overrides; (override, argument) of the launcher's keys
    for arg, override in parsed_overrides(arguments):
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

    with source.hydra() as loader:
        search = [a for a in selections if a.partition("=")[0].lstrip("+") == "hydra.searchpath"]
        options = GroupOptions(loader, config_name, search)[group]
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
                hint = f"the launchers with it are {', '.join(others)}" if others else None
                raise unknown_key(prefix + name, known, f"{group}={chosen}", hint)
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
                    raise in_one_line(None, e, written=arg) from None
            arguments_ = " ".join(a for _, a in changes)
            raise in_one_line(None, together, written=arguments_) from None
    launcher = cfg.hydra.launcher
    for override, arg in changes:  # the user's interpolations (${oc.env:...}) must resolve
        name = override.key_or_group.removeprefix(prefix).split(".")[0]
        try:
            if name in launcher:
                build.resolved(launcher, name)
        except OmegaConfBaseException as e:
            raise in_one_line(None, e, written=arg) from None
    for key in submitit_counts():  # sbatch would refuse these only at submission
        if _get(launcher, key) is not None:
            number(cfg, prefix + key, low=0 if key in MAY_BE_ZERO else 1, integer=True)
    timeout_min, delay_s = _get(launcher, "timeout_min"), _get(launcher, "signal_delay_s")
    if timeout_min and delay_s is not None and timeout_min * 60 <= delay_s:
        # SLURM signals the job signal_delay_s before its limit: submitit would take it as timed
        # out right at the start, and stop or requeue it before it has trained.
        raise ConfigError(
            f"{prefix}timeout_min={timeout_min} is invalid with {prefix}signal_delay_s={delay_s}: the "
            f"time-limit signal would come at the start; give more than {delay_s / 60:g} min, or a "
            "smaller signal_delay_s"
        )
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
        build.launcher(launcher)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None
    except (ImportError, AttributeError) as e:  # another _target_, which does not import
        raise in_one_line(None, e, written=f"{prefix}_target_={launcher._target_}") from None

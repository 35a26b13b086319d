"""The command line's checks: Hydra's overrides, composed as Hydra will compose them, so that a
typo, an unknown group option or key, a sweep without -m or a bad launcher value is refused in
one line before Hydra starts (where Hydra says it over several lines, or only once a job fails).
How the command is read (its flags, config source, group options) is sweeper.command_line's.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigTypeError, OmegaConfBaseException, ValidationError

from sweeper import command_line
from sweeper import data as data_module
from sweeper.command_line import ConfigSource, GroupOptions, parsed_overrides, source_of, sweeping
from sweeper.schema import RENAMED_KEYS, SECTIONS
from sweeper.validate import ConfigError, did_you_mean, in_one_line, unknown_key


def check_overrides(
    arguments: list[str], conf_dir: ConfigSource | str, config_name: str = "config"
) -> DictConfig | None:
    """Refuse in one line a command line that Hydra would refuse (over several lines), or that
    would fail in every job. Returns the config composed as Hydra will compose it (a sweep's
    values left out), Hydra's keys included; None when the command has no override."""
    from hydra import compose
    from hydra.core.override_parser.types import Glob, IntervalSweep, OverrideType
    from hydra.errors import HydraException

    source = source_of(conf_dir, config_name)
    config_name = source.name
    multirun = sweeping(arguments)
    _COMPOSED.clear()
    parsed = list(parsed_overrides(arguments))
    if not parsed:
        return None
    # The search path's own overrides go into every composition below, as Hydra applies them first.
    search = [arg for arg, o in parsed if o.key_or_group == "hydra.searchpath"]
    with source.hydra() as loader:
        groups = GroupOptions(loader, config_name, search)
        selections, keys, appended, forced, hydra_added = [*search], [], [], [], []
        intervals = []  # interval(): a range for an optimizing sweeper, checked once the sweeper is known
        grid: list[tuple[str, int]] = []  # (argument, its number of values) for each sweep
        swept_groups: dict[str, list[str]] = {}
        for arg, override in parsed:
            key = override.key_or_group
            if override.is_sweep_override():
                value = arg.partition("=")[2]
                if not multirun:
                    raise ConfigError(
                        f"{arg} is a sweep over several values: add -m to run a job per value "
                        f"(a list is [{value}], a string with commas '{value}')"
                    )
                if isinstance(override.value(), IntervalSweep):
                    intervals.append(arg)  # no values to list: the sweeper draws them
                try:  # range(0,1,0) fails only when Hydra expands it, with a traceback; range(1,1) is empty
                    empty = (
                        not isinstance(override.value(), Glob | IntervalSweep)
                        and next(iter(override.sweep_string_iterator()), None) is None
                    )
                except ValueError as e:
                    raise ConfigError(f"{arg} is invalid: {e}") from None
                if empty:
                    raise ConfigError(f"{arg} is invalid: it gives no value, so the sweep would have no job")
                size = _sweep_size(override.value())
                if size:
                    grid.append((arg, size))
            if key.startswith("hydra/"):  # hydra/sweeper=basicc
                options = groups.get(key, [])
                for v in _values(override):
                    if options and v not in options and v != "null":
                        raise ConfigError(f"{key}={v} is invalid: allowed values are {', '.join(options)}")
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
            added = override.type is OverrideType.ADD  # +loss=mine: a group the primary config leaves out
            if added and key not in groups:
                appended.append(key)
                continue
            if arg.startswith("+") and not added:  # ++key: set or add; under a section, only where it is read
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
                else:
                    values = _values(override)
                for v in values:
                    if v not in allowed:
                        raise ConfigError(f"{key}={v} is invalid: allowed values are {', '.join(allowed)}")
                selections.append(f"{'+' if added else ''}{key}={values[0]}")
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
        base = compose(config_name=config_name, overrides=selections)
        known = _dotted_keys(base)
        for key in keys:
            if _lacks(base, key):
                swept_groups |= _config_grid_groups(selections, swept_groups, groups, compose, config_name)
                raise ConfigError(
                    _missing_key(key, key, known, selections, swept_groups, groups, compose, config_name)
                )
        for arg, key in forced:  # ++section.key: every job's section must have the key, or nothing reads it
            if _renamed(key) and _lacks(base, key):
                raise ConfigError(_renamed(key))
            if _lacks(base, key):
                swept_groups |= _config_grid_groups(selections, swept_groups, groups, compose, config_name)
            in_sweep = _in_this_sweep(arg, key, selections, swept_groups, compose, config_name)
            if in_sweep:
                raise ConfigError(in_sweep)
            section = key.split(".")[0]
            if section in swept_groups and all(
                _has_key(key, selections, section, o, compose, config_name) for o in swept_groups[section]
            ):
                continue  # the section is swept (by the config's grid): every option has it
            if _lacks(base, key):
                current, others = _options_with(key, section, selections, groups, compose, config_name)
                raise ConfigError(
                    _another_option(arg, key, section, current, others)
                    if others
                    else _nothing_reads(arg, section, known)
                )
        for key in appended:
            section = key.split(".")[0]
            if _renamed(key) and key not in known:
                raise ConfigError(_renamed(key))
            if key in known:
                raise ConfigError(f"+{key} is invalid: {key} is a key already; set it without +")
            if section in SECTIONS:
                raise ConfigError(_nothing_reads(f"+{key}", section, known))
            leaves = [k for k in known if "." not in key and k.rpartition(".")[2] == key]
            if leaves:  # +label_smoothing=0.1: a label, read by nothing, where loss.label_smoothing was meant
                raise ConfigError(
                    f"+{key} is invalid: did you mean {' or '.join(leaves)}? (+ adds a new key, which nothing reads)"
                )
            hint = did_you_mean(key, [k for k in known if "." not in k])
            if hint:  # +lrr=1: a typo that + would otherwise let through, read by nothing
                raise ConfigError(f"+{key} is invalid: {hint} (+ adds a new key)")
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
            swept_groups |= _config_grid_groups(selections, swept_groups, groups, compose, config_name)
            raise ConfigError(_composition_problem(shared, e, swept_groups, compose, config_name)) from None
        except AttributeError as e:  # OmegaConf merging a dict into a None node: basic sweeper's params
            culprit = next((a for a in shared if "hydra.sweeper.params" in a), " ".join(shared))
            hint = "; the default hydra/sweeper=grid takes it" if "hydra.sweeper.params" in culprit else ""
            reason = data_module.first_line(e)
            raise ConfigError(f"{culprit} is invalid: OmegaConf cannot merge it ({reason}){hint}") from None
        if intervals and not _draws_values(cfg):
            raise ConfigError(
                f"{intervals[0]} is invalid: interval() is a range for an optimizing sweeper; a grid takes "
                "values (a,b,c), range(start,stop,step) or choice(a,b)"
            )
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
            raise in_one_line(cfg, e, section) from None
    return cfg


# The sweepers that run a grid of the values given: Hydra's basic sweeper and this project's.
GRID_SWEEPERS = (
    "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
    "hydra_plugins.sweeper_grid.grid.GridSweeper",
)


def _draws_values(cfg: DictConfig) -> bool:
    """Whether the command's sweeper draws each job's values itself (an optimizing sweeper, such
    as hydra-optuna-sweeper's optuna), rather than running the grid of the values given."""
    return OmegaConf.select(cfg, "hydra.sweeper._target_") not in GRID_SWEEPERS


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


def _with_option(selections: list[str], group: str, option: str, compose, config_name) -> DictConfig | None:
    """The config composed with group=option (and the other selections); None where it does not
    compose. Composed once per option: each refusal below asks several questions of the same ones."""
    chosen = (*[a for a in selections if a.partition("=")[0] != group], f"{group}={option}")
    if (config_name, chosen) not in _COMPOSED:
        try:
            _COMPOSED[config_name, chosen] = compose(config_name=config_name, overrides=list(chosen))
        except Exception:  # noqa: BLE001 -- an option that does not compose has no key
            _COMPOSED[config_name, chosen] = None
    return _COMPOSED[config_name, chosen]


_COMPOSED: dict = {}  # _with_option's, for one command's checks (cleared by check_overrides)


def _has_key(key: str, selections: list[str], group: str, option: str, compose, config_name) -> bool:
    cfg = _with_option(selections, group, option, compose, config_name)
    return cfg is not None and not _lacks(cfg, key)


def _lacks(cfg, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_MISSING) is _MISSING


def _values(override) -> list[str]:
    """The values an override gives, a sweep's each: a,b  choice(a,b)  range(1,3)."""
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]  # fmt: skip


def _config_grid_groups(selections, swept_groups: dict, groups, compose, config_name) -> dict[str, list[str]]:
    """The groups that the config's own grid sweeps (an experiment's hydra.sweeper.params, such
    as `model: tiny_vgg,mlp`), with their options: swept as those on the command line are."""
    try:
        params = compose(
            config_name=config_name, overrides=selections, return_hydra_config=True
        ).hydra.sweeper.get("params")
    except Exception:  # the config does not compose: the caller says why
        return {}
    chosen = {a.partition("=")[0] for a in selections}
    found = {g: command_line.sweep_values(g, v) for g, v in (params or {}).items()}
    return {
        g: v for g, v in found.items() if v and g not in swept_groups and g not in chosen and groups.get(g)
    }


def _in_this_sweep(given: str, key: str, selections, swept_groups: dict, compose, config_name) -> str | None:
    """Why `given` cannot set `key` in every job of the sweep; None where it can. Some swept
    options lack the key (sweep them separately, whatever their order), or all have it but the
    default option lacks it: Hydra composes the sweep's shared config first, with the default."""
    for group, options in swept_groups.items():
        have = [o for o in options if _has_key(key, selections, group, o, compose, config_name)]
        name = key.removeprefix(f"{group}.")  # optim=sgd has no eps; experiment=x has no schedule.lr2
        if have and len(have) < len(options):
            return (
                f"{given} is invalid in this sweep: {group}={','.join(o for o in options if o not in have)} "
                f"has no {name} (only {group}={','.join(have)} has); sweep them separately"
            )
        if have and group == key.split(".")[0] and not given.startswith("++"):
            shared = [a for a in selections if a.partition("=")[0] != group]
            default = _choice(shared, group, compose, config_name)
            if not _has_key(key, shared, group, default, compose, config_name):
                value = f"={given.partition('=')[2]}" if "=" in given else ""
                return (
                    f"{given} is invalid in this sweep: Hydra first composes the shared config with "
                    f"{group}={default}, which has no {name}; write ++{key}{value} to set it in every {group} swept"
                )
    return None


def _options_with(key: str, section: str, selections, groups: dict, compose, config_name):
    """(the section's chosen option, its other options that have `key`)."""
    chosen = [a.partition("=")[2] for a in selections if a.partition("=")[0] == section]
    current = chosen[-1] if chosen else _choice(selections, section, compose, config_name)
    others = [o for o in groups.get(section, []) if o != current and _has_key(key, selections, section, o, compose, config_name)]  # fmt: skip
    return current, others


def _choice(selections, group: str, compose, config_name) -> str:
    """The option of `group` that the config composed with `selections` takes (its default)."""
    return compose(config_name, selections, return_hydra_config=True).hydra.runtime.choices.get(group)


def _renamed(key: str) -> str | None:
    """The line that refuses a knob's former name, naming the new one (schema.RENAMED_KEYS)."""
    return f"{key} was renamed {RENAMED_KEYS[key]}" if key in RENAMED_KEYS else None


def _missing_key(key: str, given: str, known, selections, swept_groups, groups, compose, config_name) -> str:
    """One line for a key the composed config lacks: its new name, the swept options that have
    it, the section's options that have it, or the nearest key."""
    if _renamed(key):
        return _renamed(key)
    in_sweep = _in_this_sweep(given, key, selections, swept_groups, compose, config_name)
    if in_sweep:
        return in_sweep
    section = key.split(".")[0]
    if section in swept_groups:
        known = sorted({*known, *(k for o in swept_groups[section] for k in _dotted_keys(_with_option(selections, section, o, compose, config_name) or {}))})  # fmt: skip
    if section in groups:  # schedule.lr2 with schedule=constant
        current, others = _options_with(key, section, selections, groups, compose, config_name)
        if others:
            return _another_option(given, key, section, current, others)
    return str(_nearest(key, known))


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


def _nearest(key: str, known: list[str]) -> ConfigError:
    """A key the config lacks, with the nearest one: its section's (by its last part: the
    section's name, common to all, would make schedule.lrr2 look like schedule.name), or the
    same key under the nearest section (modle.channels)."""
    tops = sorted({k.split(".")[0] for k in known})
    head, _, rest = key.partition(".")
    if rest and head not in tops:  # modle.channels: the section is the typo
        hint = did_you_mean(head, [t for t in tops if f"{t}.{rest}" in known], suffix=f".{rest}")
        if hint:
            return unknown_key(key, [], "the config", hint)
    group = key.rpartition(".")[0]
    children = (
        {k[len(group) + 1 :].split(".")[0] for k in known if k.startswith(group + ".")} if group else tops
    )
    return unknown_key(key, sorted(children))


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
        hint = did_you_mean(parts[i], names, ".".join([*parts[:i], ""]), ".".join(["", *parts[i + 1 :]]))
        return f"{at} has no {parts[i]}; {hint or 'its keys are ' + ', '.join(names)}"
    return None


def _composition_problem(shared: list[str], error: Exception, swept_groups, compose, config_name) -> str:
    """One line for what Hydra's composition refused: the argument that fails, and why. The
    argument is found by the key OmegaConf's error names (its full_key), or else as the first
    one with which the composition fails; never by the wording of Hydra's message."""
    cause = error.__cause__
    failed = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    failed = failed and failed.split("[")[0]  # an entry of a list (milestones[1]): the list's key
    culprit = key = None
    for a in shared if failed else ():
        # the override of that key, of a dict holding it (model={a:1}) or of a key under it (hydra.sweeep.dir)
        k = a.partition("=")[0].lstrip("+~")
        if k == failed or failed.startswith(k + ".") or k.startswith(failed + "."):
            culprit, key = a, k
            break
    if key and isinstance(cause, ValidationError):  # a value not of its type: the schema says what is
        return str(in_one_line(None, cause))
    if key and isinstance(cause, ConfigTypeError) and culprit.startswith("~"):
        return f"{culprit} is invalid: {key} is a key of the schema, which a run reads; set it instead"
    if key and not culprit.startswith(("+", "~")):
        in_sweep = _in_this_sweep(culprit, key, [], swept_groups, compose, config_name)
        if in_sweep:
            return in_sweep
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
        return str(unknown_key(key, siblings, hint=None if siblings else "a new key takes Hydra's +"))
    if culprit is None:
        for i in range(len(shared)):
            try:
                compose(config_name, shared[: i + 1], return_hydra_config=True)
            except Exception:  # noqa: BLE001 -- whatever it is, it is this argument's
                culprit = shared[i]
                break
    return (
        str(in_one_line(None, error, written=culprit)) if culprit else data_module.first_line(cause or error)
    )


def _dotted_keys(tree, prefix: str = "") -> list[str]:
    tree = OmegaConf.to_container(tree) if OmegaConf.is_config(tree) else tree
    out = []
    for k, v in tree.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


_MISSING = object()

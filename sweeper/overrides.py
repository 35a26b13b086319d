"""The command line's checks: Hydra's overrides, composed as Hydra will compose them, so that a
typo, an unknown group option or key, a sweep without -m or a bad launcher value is refused in
one line before Hydra starts (where Hydra says it over several lines, or only once a job fails).
How the command is read (its flags, config source, group options) is sweeper.command_line's.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigTypeError, OmegaConfBaseException, ValidationError

from sweeper import data as data_module
from sweeper import signatures
from sweeper.command_line import (
    ConfigSource,
    GroupOptions,
    config_grid,
    parsed_overrides,
    source_of,
    sweeping,
    values,
)
from sweeper.schema import OWN, RENAMED_KEYS, SECTIONS
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
    multirun = sweeping(arguments)
    parsed = list(parsed_overrides(arguments))
    if not parsed:
        return None
    # The search path's own overrides go into every composition below, as Hydra applies them first.
    search = [arg for arg, o in parsed if o.key_or_group == "hydra.searchpath"]
    with source.hydra() as loader:
        groups = GroupOptions(loader, source.name, search)
        configs = _Configs(compose, source.name, groups, selections=[*search])
        keys, appended, forced, hydra_added = [], [], [], []
        intervals = []  # interval(): a range for an optimizing sweeper, checked once the sweeper is known
        grid: list[tuple[str, int]] = []  # (argument, its number of values) for each sweep
        for arg, override in parsed:
            key, value = override.key_or_group, override.value()
            if override.is_sweep_override():
                if not multirun:
                    given = arg.partition("=")[2]
                    raise ConfigError(
                        f"{arg} is a sweep over several values: add -m to run a job per value "
                        f"(a list is [{given}], a string with commas '{given}')"
                    )
                if isinstance(value, IntervalSweep):
                    intervals.append(arg)  # no values to list: the sweeper draws them
                try:  # range(0,1,0) fails only when Hydra expands it, with a traceback; range(1,1) is empty
                    empty = (
                        not isinstance(value, Glob | IntervalSweep)
                        and next(iter(override.sweep_string_iterator()), None) is None
                    )
                except ValueError as e:
                    raise ConfigError(f"{arg} is invalid: {e}") from None
                if empty:
                    raise ConfigError(f"{arg} is invalid: it gives no value, so the sweep would have no job")
                if size := _sweep_size(value):
                    grid.append((arg, size))
            if key.startswith("hydra/"):  # hydra/sweeper=basicc
                options = groups[key]
                for v in values(override):
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
            elif (
                arg.startswith("+") and not added
            ):  # ++key: set or add; under a section, only where it is read
                if key.split(".")[0] in SECTIONS:
                    forced.append((arg, key))
            elif key not in groups:
                keys.append(key)
            else:  # Hydra's sweep syntax too: a,b  choice(a,b)  glob(c*)
                allowed = groups[key]
                if key == "experiment" and value is None and not override.is_sweep_override():
                    # The default has no experiment, but Hydra takes no null for a group on the
                    # command line (a traceback: "Config group override must be a string").
                    raise ConfigError(
                        f"{arg} is invalid: leave experiment out to run none, or write ~experiment; "
                        f"its options are {', '.join(allowed)}"
                    )
                chosen = value.filter(allowed) if isinstance(value, Glob) else values(override)
                if not chosen:
                    raise ConfigError(f"{arg} is invalid: it matches none of {', '.join(allowed)}")
                for v in chosen:
                    if v not in allowed:
                        raise ConfigError(f"{key}={v} is invalid: allowed values are {', '.join(allowed)}")
                configs.selections.append(f"{'+' if added else ''}{key}={chosen[0]}")
                if len(chosen) > 1:
                    configs.swept[key] = chosen
        jobs = math.prod(n for _, n in grid)
        if jobs > MAX_JOBS:  # Hydra lists every job before the first starts: a billion of them never start
            raise ConfigError(
                f"{' '.join(a for a, _ in grid)} is a grid of {jobs:,} jobs"
                + (f" ({' x '.join(str(n) for _, n in grid)})" if len(grid) > 1 else "")
                + f": more than the {MAX_JOBS:,} one sweep takes; "
                "sweep fewer values, or split the grid over several sweeps"
            )
        base = compose(config_name=source.name, overrides=configs.selections)
        known = _dotted_keys(base)
        for key in keys:
            if _lacks(base, key):
                configs.add_config_grid()
                raise ConfigError(configs.missing_key(key, known))

        def users_target(section: str) -> bool:
            """The section builds a callable of the user's (its `_target_` set by the option or on
            this command line): its signature, not the option's keys, says which keys it takes."""
            given = [
                o.value()
                for _, o in parsed
                if o.key_or_group == f"{section}._target_" and not o.is_sweep_override()
            ]
            target = given[-1] if given else OmegaConf.select(base, f"{section}._target_", default=None)
            return (
                target is not None
                and not str(target).startswith(signatures.OWN)
                and str(target) not in OWN.get(section, {})
            )

        for arg, key in forced:  # ++section.key: every job's section must have the key, or nothing reads it
            if users_target(key.split(".")[0]):
                continue  # signatures.problem binds it to the target's signature
            if _lacks(base, key):
                if _renamed(key):
                    raise ConfigError(_renamed(key))
                configs.add_config_grid()
            in_sweep = configs.in_this_sweep(arg, key)
            if in_sweep:
                raise ConfigError(in_sweep)
            section = key.split(".")[0]
            if section in configs.swept and all(
                configs.has_key(key, section, o) for o in configs.swept[section]
            ):
                continue  # the section is swept (by the config's grid): every option has it
            if _lacks(base, key):
                current, others = configs.options_with(key, section)
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
            if section in SECTIONS and not users_target(section):
                raise ConfigError(_nothing_reads(f"+{key}", section, known))
            leaves = [k for k in known if "." not in key and k.rpartition(".")[2] == key]
            if leaves:  # +label_smoothing=0.1: a label, read by nothing, where loss.label_smoothing was meant
                raise ConfigError(
                    f"+{key} is invalid: did you mean {' or '.join(leaves)}? (+ adds a new key, which nothing reads)"
                )
            hint = did_you_mean(key, [k for k in known if "." not in k])
            if hint:  # +lrr=1: a typo that + would otherwise let through, read by nothing
                raise ConfigError(f"+{key} is invalid: {hint} (+ adds a new key)")
        # As Hydra composes it: every override, less a sweep's values (they vary per job), and
        # less the launcher's keys: they matter to a sweep only, and check_launcher checks them.
        shared = [
            arg
            for arg, o in parsed
            if not (multirun and o.is_sweep_override())
            and not o.key_or_group.startswith(("hydra.launcher.", "hydra/launcher"))
        ]
        try:
            cfg = compose(config_name=source.name, overrides=shared, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as e:
            configs.add_config_grid()
            raise ConfigError(configs.composition_problem(shared, e)) from None
        except AttributeError as e:  # OmegaConf merging a dict into a None node: basic sweeper's params
            culprit = next((a for a in shared if "hydra.sweeper.params" in a), " ".join(shared))
            hint = "; the default hydra/sweeper=grid takes it" if "hydra.sweeper.params" in culprit else ""
            reason = data_module.first_line(e)
            raise ConfigError(f"{culprit} is invalid: OmegaConf cannot merge it ({reason}){hint}") from None
        # An optimizing sweeper (hydra-optuna-sweeper's optuna) draws each job's values itself.
        if intervals and OmegaConf.select(cfg, "hydra.sweeper._target_") in GRID_SWEEPERS:
            raise ConfigError(
                f"{intervals[0]} is invalid: interval() is a range for an optimizing sweeper; a grid takes "
                "values (a,b,c), range(start,stop,step) or choice(a,b)"
            )
        # +hydra.sweeper.x=1: a key the sweeper's class does not take (Hydra: a TypeError, over lines).
        problem = signatures.problem(cfg, "hydra.sweeper") if multirun else None
        if problem:
            raise ConfigError(problem)
        if hydra_added:  # a typo in the path: a new key there is read by nothing
            plain = compose(
                source.name, [a for a in shared if a not in hydra_added], return_hydra_config=True
            )
            for arg in hydra_added:
                typo = _missing_part(plain, arg.partition("=")[0].lstrip("+"))
                if typo and "did you mean" in typo:
                    raise ConfigError(f"{arg} is invalid: {typo} (+ adds a key, which nothing would read)")
    # An empty hydra.run.dir or hydra.sweep.dir is the current directory: the record's files
    # (config.json, checkpoint.pt, multirun.yaml ...) would land among the user's own, unasked.
    key, what = ("hydra.sweep.dir", "sweep") if multirun else ("hydra.run.dir", "run")
    try:
        folder = OmegaConf.select(cfg, key)
    except OmegaConfBaseException:
        folder = "?"  # an interpolation only Hydra can resolve: it says so if it cannot
    if folder is None or not str(folder).strip():
        raise ConfigError(
            f"{key}={folder or ''} is invalid: an empty directory is the current one, where the {what}'s "
            f"files would land among others; name a directory ({key}=. if that is what you mean)"
        )
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


class _Configs:
    """The command's configs as the refusals below ask about them: its group selections, the
    groups it sweeps (with their options), and the config composed with one option of a group,
    composed once each (a refusal asks several questions of the same ones)."""

    def __init__(self, compose, config_name: str, groups: GroupOptions, selections: list[str]):
        self.compose, self.config_name, self.groups = compose, config_name, groups
        self.selections = selections
        self.swept: dict[str, list[str]] = {}
        self.composed: dict[tuple, DictConfig | None] = {}

    def with_option(self, group: str, option: str, selections=None) -> DictConfig | None:
        """The config composed with group=option and the other selections; None where it does not compose."""
        selections = self.selections if selections is None else selections
        chosen = (*[a for a in selections if a.partition("=")[0] != group], f"{group}={option}")
        if chosen not in self.composed:
            try:
                self.composed[chosen] = self.compose(config_name=self.config_name, overrides=list(chosen))
            except Exception:  # noqa: BLE001 -- an option that does not compose has no key
                self.composed[chosen] = None
        return self.composed[chosen]

    def has_key(self, key: str, group: str, option: str, selections=None) -> bool:
        cfg = self.with_option(group, option, selections)
        return cfg is not None and not _lacks(cfg, key)

    def choice(self, group: str, selections=None) -> str:
        """The option of `group` that the config composed with the selections takes (its default)."""
        selections = self.selections if selections is None else selections
        cfg = self.compose(self.config_name, selections, return_hydra_config=True)
        return cfg.hydra.runtime.choices.get(group)

    def add_config_grid(self) -> None:
        """Count as swept the groups the config's own grid sweeps (an experiment's
        hydra.sweeper.params, such as `model: tiny_vgg,mlp`), as those on the command line are."""
        try:
            cfg = self.compose(
                config_name=self.config_name, overrides=self.selections, return_hydra_config=True
            )
        except Exception:  # noqa: BLE001 -- the config does not compose: the caller says why
            return
        chosen = {a.partition("=")[0] for a in self.selections}
        self.swept |= {
            g: v
            for g, v in config_grid(cfg).items()
            if v and g not in self.swept and g not in chosen and self.groups[g]
        }

    def in_this_sweep(self, given: str, key: str, selections=None) -> str | None:
        """Why `given` cannot set `key` in every job of the sweep; None where it can. Some swept
        options lack the key (sweep them separately, whatever their order), or all have it but the
        default option lacks it: Hydra composes the sweep's shared config first, with the default."""
        selections = self.selections if selections is None else selections
        for group, options in self.swept.items():
            have = [o for o in options if self.has_key(key, group, o, selections)]
            name = key.removeprefix(f"{group}.")  # optim=sgd has no eps; experiment=x has no schedule.lr2
            if have and len(have) < len(options):
                return (
                    f"{given} is invalid in this sweep: {group}={','.join(o for o in options if o not in have)} "
                    f"has no {name} (only {group}={','.join(have)} has); sweep them separately"
                )
            if have and group == key.split(".")[0] and not given.startswith("++"):
                shared = [a for a in selections if a.partition("=")[0] != group]
                default = self.choice(group, shared)
                if not self.has_key(key, group, default, shared):
                    value = f"={given.partition('=')[2]}" if "=" in given else ""
                    return (
                        f"{given} is invalid in this sweep: Hydra first composes the shared config with "
                        f"{group}={default}, which has no {name}; write ++{key}{value} to set it in every {group} swept"
                    )
        return None

    def options_with(self, key: str, section: str) -> tuple[str, list[str]]:
        """(the section's chosen option, its other options that have `key`)."""
        chosen = [a.partition("=")[2] for a in self.selections if a.partition("=")[0] == section]
        current = chosen[-1] if chosen else self.choice(section)
        others = [o for o in self.groups[section] if o != current and self.has_key(key, section, o)]
        return current, others

    def missing_key(self, key: str, known: list[str]) -> str:
        """One line for a key the composed config lacks: its new name, the swept options that have
        it, the section's options that have it, or the nearest key."""
        in_sweep = _renamed(key) or self.in_this_sweep(key, key)
        if in_sweep:
            return in_sweep
        section = key.split(".")[0]
        if section in self.swept:
            known = sorted({*known, *(k for o in self.swept[section] for k in _dotted_keys(self.with_option(section, o) or {}))})  # fmt: skip
        if section in self.groups:  # schedule.lr2 with schedule=constant
            current, others = self.options_with(key, section)
            if others:
                return _another_option(key, key, section, current, others)
        return str(_nearest(key, known))

    def composition_problem(self, shared: list[str], error: Exception) -> str:
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
            in_sweep = self.in_this_sweep(culprit, key, selections=[])
            if in_sweep:
                return in_sweep
            parent, _, name = key.rpartition(".")
            try:
                tree = self.compose(
                    self.config_name, [a for a in shared if a != culprit], return_hydra_config=True
                )
                typo = _missing_part(tree, key)
                if typo:  # hydra.sweeep.dir: the parent is missing, not the key
                    return f"{key} is not a key: {typo}"
                node = OmegaConf.select(tree, parent) if parent else tree
                siblings = sorted(node.keys()) if OmegaConf.is_dict(node) else []
            except Exception:  # noqa: BLE001 -- the rest does not compose either: say what Hydra said
                siblings = []
            if name in siblings:  # the key is there; the dict given for it brings keys it lacks
                return f"{culprit} is invalid: it adds keys to {key}, which takes Hydra's +: +{culprit}"
            return str(unknown_key(key, siblings, hint=None if siblings else "a new key takes Hydra's +"))
        if culprit is None:
            for i in range(len(shared)):
                try:
                    self.compose(self.config_name, shared[: i + 1], return_hydra_config=True)
                except Exception:  # noqa: BLE001 -- whatever it is, it is this argument's
                    culprit = shared[i]
                    break
        if culprit:
            return str(in_one_line(None, error, written=culprit))
        return data_module.first_line(cause or error)


def _lacks(cfg, key: str) -> bool:
    return OmegaConf.select(cfg, key, default=_MISSING) is _MISSING


def _renamed(key: str) -> str | None:
    """The line that refuses a knob's former name, naming the new one (schema.RENAMED_KEYS)."""
    return f"{key} was renamed {RENAMED_KEYS[key]}" if key in RENAMED_KEYS else None


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


def _dotted_keys(tree, prefix: str = "") -> list[str]:
    tree = OmegaConf.to_container(tree) if OmegaConf.is_config(tree) else tree
    out = []
    for k, v in tree.items():
        out += _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return out


_MISSING = object()

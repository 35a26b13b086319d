"""The command as Hydra reads it, before Hydra runs: its flags, where its config comes from
(-cp, -cn, --config-dir), its overrides, and the options of each config group (from Hydra's own
config repository), so that the checks compose the config that Hydra will compose."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sweeper.validate import ConfigError

# The package's own config: the primary config dir unless -cp names another.
CONF = str(Path(__file__).resolve().parent.parent / "conf")

# --config-dir, while ConfigSource initialises Hydra: hydra_plugins/sweeper_search_path reads it.
EXTRA_CONFIG_DIRS: list[str] = []


@dataclass(frozen=True)
class ConfigSource:
    """Where the command's config comes from: the primary config dir (-cp: an absolute path, or
    pkg://package.module), the primary config's name (-cn), and the dir --config-dir adds."""

    primary: str
    name: str = "config"
    extra_dir: str | None = None

    @contextmanager
    def hydra(self) -> Iterator:
        """Hydra initialised as the command will initialise it; yields its config loader."""
        from hydra import initialize_config_dir, initialize_config_module
        from hydra.core.global_hydra import GlobalHydra

        EXTRA_CONFIG_DIRS[:] = [str(Path(self.extra_dir).resolve())] if self.extra_dir else []
        try:
            if self.primary.startswith("pkg://"):
                module = self.primary.removeprefix("pkg://").strip("/").replace("/", ".")
                init = initialize_config_module(config_module=module, version_base=None)
            else:
                init = initialize_config_dir(config_dir=str(Path(self.primary).resolve()), version_base=None)
        finally:
            EXTRA_CONFIG_DIRS.clear()
        with init:
            yield GlobalHydra.instance().config_loader()


def source_of(conf: ConfigSource | str, config_name: str) -> ConfigSource:
    return conf if isinstance(conf, ConfigSource) else ConfigSource(str(conf), config_name)


class GroupOptions(dict):
    """A config group's options as Hydra's config repository lists them (conf/, --config-dir,
    hydra.searchpath and -cp alike), read while Hydra is initialised; a key that is not a group has none."""

    def __init__(self, loader, config_name: str, search: list[str]):
        super().__init__()
        self.read = lambda group: sorted(
            loader.get_group_options(group, config_name=config_name, overrides=search)
        )

    def __missing__(self, group: str) -> list[str]:
        self[group] = self.read(group) if group and "." not in group else []
        return self[group]

    def __contains__(self, group: str) -> bool:
        return bool(self[group])


def is_override(argument: str) -> bool:
    """key=value, +key=value, ~key: Hydra's overrides, as opposed to flags and their values."""
    return not argument.startswith("-") and ("=" in argument or argument.startswith("~"))


def parsed_overrides(arguments: list[str]):
    """(argument, Hydra's reading of it) for each command-line override; flags are left to Hydra.
    An override Hydra's grammar cannot read is refused in one line (Hydra says it over four)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parser = OverridesParser.create()
    for arg in filter(is_override, arguments):
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


def values(override) -> list[str]:
    """The values a parsed override gives, a sweep's each: a,b  choice(a,b)  range(1,3)."""
    if override.is_sweep_override():
        return list(override.sweep_string_iterator())
    return [override.get_value_element_as_str()]


def config_grid(cfg) -> dict[str, list[str]]:
    """The config's own grid (hydra.sweeper.params, such as an experiment's `lr: 0.2,0.1`): each
    swept key's values. A param Hydra cannot read is left out: Hydra says why when it sweeps."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, grid = OverridesParser.create(), {}
    for key, value in (cfg.hydra.sweeper.get("params") or {}).items():
        try:
            override = parser.parse_overrides([f"{key}={value}"])[0]
            if override.is_sweep_override():
                grid[key] = values(override)
        except Exception:  # noqa: BLE001 -- Hydra's grammar or a sweep's expansion
            pass
    return grid


def hydra_flags(arguments: list[str]):
    """Hydra's command-line flags in `arguments`, read as Hydra's argparse reads them, so that an
    abbreviation means what it means to Hydra (--multi is --multirun; -c is --cfg, not -cp). None
    where argparse cannot read them: Hydra will say why."""
    import argparse

    def refuse(message: str):
        raise ValueError(message)

    parser = argparse.ArgumentParser(add_help=False)
    parser.error = refuse  # argparse would print its usage and exit
    info = ["all", "config", "defaults", "defaults-tree", "plugins", "searchpath"]
    for flags, kw in [
        (("--config-path", "-cp"), {}), (("--config-name", "-cn"), {}), (("--config-dir", "-cd"), {}),
        (("--cfg", "-c"), {"choices": ["job", "hydra", "all"]}), (("--package", "-p"), {}),
        (("--info", "-i"), {"nargs": "?", "const": "all", "choices": info}), (("--experimental-rerun",), {}),
        *[(f, {"action": "store_true"}) for f in [("--help", "-h"), ("--hydra-help",), ("--version",),
          ("--resolve",), ("--run", "-r"), ("--multirun", "-m"), ("--shell-completion", "-sc")]],
    ]:  # fmt: skip
        parser.add_argument(*flags, **kw)
    try:
        return parser.parse_known_args(arguments)[0]
    except ValueError:
        return None


def launches(flags) -> bool:
    """Whether Hydra launches anything with these flags: not when it prints (--cfg, --info, --help)."""
    return bool(flags) and not (flags.cfg or flags.info or flags.help or flags.hydra_help)


def sweeping(arguments: list[str]) -> bool:
    """Whether the command is a sweep (-m, --multirun, or hydra.mode=MULTIRUN)."""
    flags = hydra_flags(arguments)
    modes = {("hydra.mode", m) for m in ("MULTIRUN", "RunMode.MULTIRUN", "2")}
    return bool(flags and flags.multirun) or any(
        a.lstrip("+").partition("=")[::2] in modes for a in arguments
    )


def config_source(arguments: list[str]) -> ConfigSource | None:
    """Where the command's config comes from, read as Hydra reads -cp (relative to sweeper/, where
    the app's main is), -cn and --config-dir; None where the checks stand aside and Hydra speaks:
    shell completion, or flags Hydra refuses."""
    args = hydra_flags(arguments)
    if args is None or args.shell_completion:
        return None
    name = (args.config_name or "config").removesuffix(".yaml")
    extra = None
    if args.config_dir:
        extra = Path(args.config_dir).resolve()
        if not extra.is_dir():  # Hydra: a SearchPathException, in a line of its own words
            raise ConfigError(f"--config-dir {args.config_dir} is invalid: {extra} is not a directory")
    if (args.config_path or "").startswith("pkg://"):
        return ConfigSource(args.config_path, name, extra and str(extra))
    conf_dir = (
        (Path(__file__).resolve().parent / args.config_path).resolve() if args.config_path else Path(CONF)
    )
    if not conf_dir.is_dir():  # Hydra says so over four lines
        raise ConfigError(f"--config-path {args.config_path} is invalid: {conf_dir} is not a directory")
    holding = [d for d in (conf_dir, extra) if d]
    if not any((d / f"{name}.yaml").is_file() for d in holding):
        names = ", ".join(sorted({f.stem for d in holding for f in d.glob("*.yaml")})) or "none"
        said = (
            f"--config-name {args.config_name} is invalid" if args.config_name else "--config-name is needed"
        )
        where = " or ".join(str(d) for d in holding)
        raise ConfigError(f"{said}: {where} has no {name}.yaml (its configs: {names})")
    return ConfigSource(str(conf_dir), name, extra and str(extra))

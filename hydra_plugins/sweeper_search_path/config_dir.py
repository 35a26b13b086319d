"""The --config-dir of a command, on the search path of the Hydra that the project's checks
initialise before launch (sweeper.command_line.ConfigSource), where Hydra's main puts it for the run
itself: after the primary config dir. Hydra's compose API takes one config dir; a search path
plugin is Hydra's way to add more."""

import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import sweeper.schema

# The trainer's schema, before Hydra composes (it scans its plugins first). Hydra scans the plugins
# of every installed package, so any Hydra app in this environment gets a root config named
# `trainer_schema` in its ConfigStore; only a defaults list that names it (conf/trainer/default.yaml)
# composes it.
sweeper.schema.register()


class CommandLineConfigDir(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # Read from sweeper.command_line, which sets them only while it initialises Hydra (the run
        # itself adds its own): Hydra's plugin scan runs this module apart from sys.modules, so a
        # list kept here would not be the one the checks set. Another Hydra app, which never
        # imports sweeper.command_line, gets no directory here.
        checks = sys.modules.get("sweeper.command_line")
        for path in getattr(checks, "EXTRA_CONFIG_DIRS", ()):
            search_path.append(provider="command-line", path=f"file://{path}")

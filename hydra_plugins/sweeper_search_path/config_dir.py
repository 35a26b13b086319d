"""The --config-dir of a command, on the search path of the Hydra that the project's checks
initialise before launch (sweeper.command_line.ConfigSource), where Hydra's main puts it for the run
itself: after the primary config dir. Hydra's compose API takes one config dir; a search path
plugin is Hydra's way to add more."""

import sys

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

import sweeper.schema

sweeper.schema.register()  # the trainer's schema, before Hydra composes (it scans plugins first)


class CommandLineConfigDir(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        # Read from sweeper.command_line, which sets them only while it initialises Hydra (the run
        # itself adds its own): Hydra's plugin scan runs this module apart from sys.modules, so
        # a list kept here would not be the one the checks set. Nothing in another Hydra app.
        checks = sys.modules.get("sweeper.command_line")
        for path in getattr(checks, "EXTRA_CONFIG_DIRS", ()):
            search_path.append(provider="command-line", path=f"file://{path}")

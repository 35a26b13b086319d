"""SweepRefused, apart from grid.py: Hydra's plugin scan executes every module of hydra_plugins
whose name does not start with one underscore, again if it is already imported, which would make
a second SweepRefused class that an `except` naming the first one misses."""

from hydra.errors import CompactHydraException


class SweepRefused(CompactHydraException):
    """A sweep refused before any of its jobs starts, in one line that says why (and which job).
    Hydra prints a CompactHydraException's text without a traceback."""

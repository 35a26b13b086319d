"""SweepRefused, apart from grid.py: Hydra's plugin scan executes grid.py again, which would make a
second class that an `except` naming the first one misses (it skips modules named _*)."""

from hydra.errors import CompactHydraException


class SweepRefused(CompactHydraException):
    """A sweep refused before any job starts, in one line (Hydra prints it without a traceback)."""

"""sweeper: Hydra-driven grids of training runs for choosing capacity and learning-rate schedules."""

__version__ = "0.1.0"

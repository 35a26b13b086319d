"""sweeper: Hydra-driven grids of training runs for choosing capacity and learning-rate schedules."""

__version__ = "0.1.0"


def __getattr__(name):
    # `from sweeper import load_model` imports torch and the builder only when it is asked for:
    # the launchers import light modules of this package (sweeper.processes) in every process.
    if name in ("load_model", "TrainedModel", "NotLoadable"):
        from sweeper import trained

        return getattr(trained, name)
    raise AttributeError(f"module 'sweeper' has no attribute {name!r}")

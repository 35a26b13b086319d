"""The project's default sweeper: Hydra's basic sweeper (same grid syntax, jobs, numbering,
batches and `hydra.sweeper.params`) that composes each job's config once, for the app's checks
and its launcher both, and has the app check the whole grid before the first job starts.

    python -m sweeper -m model.channels=16,32,64 lr=0.2,0.1,0.01     # hydra/sweeper=grid is the default
    python my_app.py -m hydra/sweeper=grid db=mysql,postgresql       # any Hydra app

The app's checks: each callback in `hydra.callbacks` with a `check_grid(config, jobs)` method is
given the jobs as (overrides, composed config) pairs, in Hydra's order, before anything is
written; it returns the overrides to launch, in order, or raises SweepRefused. A job whose config
does not compose refuses the sweep too.

One difference: a job whose config brings a grid of its own (`hydra.sweeper.params`) runs that
grid, where Hydra's basic sweeper would run one job at its default values:

    python -m sweeper -m experiment=lecture_lr,lecture_lr2     # the lecture's 6 protocols, one sweep
"""

# No `from __future__ import annotations`: Hydra's plugin scan executes this module before it is
# in sys.modules, and dataclasses then cannot resolve string annotations.
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import HydraContext
from omegaconf import DictConfig, OmegaConf

from hydra_plugins.sweeper_grid._refusal import SweepRefused


@dataclass
class GridSweeperConf:
    _target_: str = "hydra_plugins.sweeper_grid.grid.GridSweeper"
    max_batch_size: int | None = None  # as the basic sweeper's: launch the grid in batches of this many jobs
    # As the basic sweeper's; empty, not None, so that the command line can merge into it
    # (hydra.sweeper.params={lr:"0.1,0.2"}).
    params: dict = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="sweeper")


KEEP = 64  # composed configs held for the launcher, at most


class ComposedOnce:
    """The config loader, except that a job composed by the sweeper's check is handed to the
    launcher once, instead of being composed again."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.composed: dict = {}  # job overrides -> its config, until the launcher takes it

    def compose(self, master_config, overrides: Sequence[str]):
        """The job's config, held for the launcher while fewer than KEEP are (about 240 kB each)."""
        config = self.loader.load_sweep_config(master_config=master_config, sweep_overrides=list(overrides))
        if len(self.composed) < KEEP:
            self.composed[tuple(overrides)] = config
        return config

    def load_sweep_config(self, master_config, sweep_overrides: list[str]):
        config = self.composed.pop(tuple(sweep_overrides), None)
        if config is None:  # not composed here (a launcher's second call, a remote job): compose
            config = self.loader.load_sweep_config(
                master_config=master_config, sweep_overrides=sweep_overrides
            )
        return config

    def __getattr__(self, name: str):
        if name.startswith("__") or name == "loader":  # no loader yet (unpickling): nothing to find
            raise AttributeError(name)
        return getattr(self.loader, name)

    def __getstate__(self) -> dict:
        # A launcher pickles its context into each job: the pending configs stay here.
        return {"loader": self.loader, "composed": {}}


def _with_project_launcher(launcher: Any, context: HydraContext, task_function, config) -> Any:
    """hydra/launcher=submitit_slurm (or submitit_local) run by the project's subclass with the
    same parameters (hydra_plugins/sweeper_launcher): upstream's stops the sweep at the first job
    that ends without a result, and says an option sbatch refuses over 40 lines."""
    if type(launcher).__module__ != "hydra_plugins.hydra_submitit_launcher.submitit_launcher":
        return launcher
    from hydra_plugins.sweeper_launcher import launcher as ours

    kind = {"slurm": ours.SweeperSlurmLauncher, "local": ours.SweeperLocalLauncher}.get(launcher._EXECUTOR)
    if kind is None:
        return launcher
    replaced = kind(**launcher.params)
    replaced.setup(hydra_context=context, task_function=task_function, config=config)
    return replaced


def expand(config: DictConfig, config_loader=None) -> list[list[str]]:
    """The jobs of the sweep, in the order (and so with the numbers) Hydra's basic sweeper gives
    them. With Hydra's config loader, `glob()` sweeps over a config group's options expand too."""
    batches = BasicSweeper.split_arguments(parsed(config, config_loader), None)
    return [list(job) for batch in batches for job in batch]


def parsed(config: DictConfig, config_loader=None) -> list:
    """The sweep's overrides, parsed: `hydra.sweeper.params`, then the command line's."""
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task))
    return OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)


def own_grid(job_config: DictConfig, job: list[str]) -> dict:
    """The sweep params a job's own config brings that the job does not set: those of a config
    group chosen by the sweep itself (`-m experiment=lecture_lr,lecture_lr2`)."""
    params = job_config.hydra.sweeper.get("params") or {}
    keys = {o.split("=", 1)[0].lstrip("+~") for o in job}
    return {k: str(v) for k, v in params.items() if k.lstrip("+~") not in keys}


def label(num: int, job: list[str]) -> str:
    """How a refusal names a job: its number in the grid and its overrides."""
    return f"job {num} ({' '.join(job)})"


def composed_or_refused(compose: Callable[[list[str]], DictConfig], num: int, job: list[str]) -> DictConfig:
    """The job's config, or SweepRefused naming the job and the first line of Hydra's reason."""
    try:
        return compose(job)
    except Exception as e:  # Hydra's composition errors (an unknown key or option), OmegaConf's
        raise SweepRefused(
            f"{label(num, job)}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"
        ) from e


class GridSweeper(BasicSweeper):
    def setup(self, *, hydra_context: HydraContext, task_function, config) -> None:
        self.loader = ComposedOnce(hydra_context.config_loader)
        context = HydraContext(config_loader=self.loader, callbacks=hydra_context.callbacks)
        super().setup(hydra_context=context, task_function=task_function, config=config)
        self.launcher = _with_project_launcher(self.launcher, context, task_function, config)

    def sweep(self, arguments: list[str]) -> Any:
        self.check_jobs()
        return super().sweep(arguments)

    def check_jobs(self) -> None:
        """Compose and check every job (self.jobs: those to launch, in order) before Hydra's sweep
        writes anything, so that a bad job in a later batch is refused too."""
        jobs: list[tuple[list[str], DictConfig]] = []
        parser = OverridesParser.create(config_loader=self.loader.loader)

        def visit(job: list[str]) -> None:
            composed = composed_or_refused(lambda j: self.loader.compose(self.config, j), len(jobs), job)
            extra = own_grid(composed, job)
            if not extra:
                jobs.append((job, composed))
                return
            # The job becomes the grid its config brings: keys the job sets win over the grid's.
            arguments = [*job, *(f"{k}={v}" for k, v in extra.items())]
            for inner in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]:
                if own_grid(composed, list(inner)):  # each inner job sets every key of the grid
                    raise SweepRefused(
                        f"{label(len(jobs), job)}: cannot expand the grid its config sweeps ({', '.join(extra)})"
                    )
                visit(list(inner))

        for job in expand(self.config, self.loader.loader):
            visit(job)
        self.jobs = [job for job, _ in jobs]
        for check in self._app_checks():
            self.jobs = check(self.config, jobs)
            by_overrides = {tuple(job): composed for job, composed in jobs}
            jobs = [(job, by_overrides[tuple(job)]) for job in self.jobs]
        launched = {tuple(job) for job in self.jobs}
        for job in [job for job in self.loader.composed if job not in launched]:  # became its grid
            del self.loader.composed[job]

    def _app_checks(self) -> list[Callable]:
        callbacks = getattr(self.hydra_context.callbacks, "callbacks", None) or []
        return [c.check_grid for c in callbacks if callable(getattr(c, "check_grid", None))]

    def split_arguments(self, overrides, max_batch_size: int | None) -> list[list[list[str]]]:
        """The batches of the jobs sweep() expanded and checked (Hydra's sweep() calls this)."""
        return list(self.split_overrides_to_chunks(self.jobs, max_batch_size))

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        pass  # sweep() has composed and checked every job

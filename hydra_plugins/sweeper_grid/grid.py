"""A general Hydra sweeper, the project's default: Hydra's basic sweeper -- the same grid syntax,
jobs, numbering, batches and `hydra.sweeper.params` -- that composes each job's config once, and
has the app check the whole grid before the first job starts.

    python -m sweeper -m model.channels=16,32,64 lr=0.2,0.1,0.01     # hydra/sweeper=grid is the default
    python my_app.py -m hydra/sweeper=grid db=mysql,postgresql       # any Hydra app

Hydra's basic sweeper composes a job's config to check that it can, and its launcher composes it
again to run it; checking an app's values would need a third. Here each job is composed once, and
the launcher takes that config instead of composing it again.

The app's checks: each of the app's callbacks (`hydra.callbacks`) that has a
`check_grid(config, jobs)` method is given the jobs as (overrides, composed config) pairs, in
Hydra's order, before anything is written; it returns the overrides to launch, in the order to
launch them, or raises SweepRefused to refuse the sweep. This project's is
sweeper.sweep.SweepCallback (values, resume conflicts, a live writer). A job whose config does not
compose refuses the sweep too (SweepRefused, naming the job), before any job starts.

One difference: a job whose config brings a grid of its own runs that grid. Sweeping a config
group whose options set `hydra.sweeper.params` runs each option's grid:

    python -m sweeper -m experiment=lecture_lr,lecture_lr2     # the lecture's 6 protocols, one sweep

where Hydra's basic sweeper would run one job per experiment, at its default values.
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
    # As the basic sweeper's: sweep overrides kept in the config. Empty, not None, so that the
    # command line can set it too (hydra.sweeper.params={lr:"0.1,0.2"}): OmegaConf cannot merge a
    # dict into a None typed as a dict, and raised an AttributeError.
    params: dict = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/sweeper", name="grid", node=GridSweeperConf, provider="sweeper")


class ComposedOnce:
    """The config loader, except that a job composed by the sweeper's check is handed to the
    launcher as it is, once, instead of being composed again. Everything else goes to the loader."""

    def __init__(self, loader: Any):
        self.loader = loader
        self.composed: dict = {}  # job overrides -> its config, until the launcher takes it

    def compose(self, master_config, overrides: Sequence[str]):
        config = self.loader.load_sweep_config(master_config=master_config, sweep_overrides=list(overrides))
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
    """hydra/launcher=submitit_slurm (or submitit_local) run by the project's launcher class, with
    the same parameters: upstream's stops the sweep, with a traceback and no summary, at the first
    job that ends without a result (cancelled, a time limit), and says an option sbatch refuses
    over 40 lines. (hydra_plugins/sweeper_launcher.)"""
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
    params = config.hydra.sweeper.get("params") or {}
    arguments = [f"{k}={v}" for k, v in params.items()]
    arguments += list(OmegaConf.to_container(config.hydra.overrides.task))
    overrides = OverridesParser.create(config_loader=config_loader).parse_overrides(arguments)
    batches = BasicSweeper.split_arguments(overrides, None)
    return [list(job) for batch in batches for job in batch]


def own_grid(job_config: DictConfig, job: list[str]) -> dict:
    """The sweep params a job's own config brings that the job does not set: those of a config
    group chosen by the sweep itself, as `-m experiment=lecture_lr,lecture_lr2` chooses each
    experiment, whose `hydra.sweeper.params` were not in the grid Hydra expanded."""
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


KEEP = 64  # composed configs held for the launcher, at most


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
        """Compose and check every job (self.jobs: those to launch, in order), writing nothing
        but what the app's checks write (this project's: sweep.json)."""
        # The whole grid is composed and checked before Hydra's sweep writes anything (the sweep
        # dir, its multirun.yaml) or launches a job, so a bad job in a later batch
        # (hydra.sweeper.max_batch_size) is refused too. Only the first KEEP jobs' configs are
        # kept for the launchers of their batches (about 240 kB each): a huge grid's later jobs
        # are composed again at launch, and a launcher that composes in the job (submitit)
        # leaves at most KEEP here.
        held = self.loader.composed

        def compose(job: list[str]) -> DictConfig:
            if len(held) < KEEP:
                return self.loader.compose(self.config, job)
            return self.loader.loader.load_sweep_config(master_config=self.config, sweep_overrides=job)

        jobs: list[tuple[list[str], DictConfig]] = []
        parser = OverridesParser.create(config_loader=self.loader.loader)

        def visit(job: list[str]) -> None:
            composed = composed_or_refused(compose, len(jobs), job)
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

        # The jobs Hydra's basic sweeper would launch, in its order, except that a job whose
        # config brings a grid of its own (`-m experiment=lecture_lr,lecture_lr2`) becomes that grid.
        for job in expand(self.config, self.loader.loader):
            visit(job)
        self.jobs = [job for job, _ in jobs]
        for check in self._app_checks():
            self.jobs = check(self.config, jobs)
            by_overrides = {tuple(job): composed for job, composed in jobs}
            jobs = [(job, by_overrides[tuple(job)]) for job in self.jobs]
        launched = {tuple(job) for job in self.jobs}
        for job in [job for job in held if job not in launched]:  # a job that became its grid
            del held[job]

    def _app_checks(self) -> list[Callable]:
        """The app's grid checks: its callbacks' check_grid methods (see the module's docstring)."""
        callbacks = getattr(self.hydra_context.callbacks, "callbacks", None) or []
        return [c.check_grid for c in callbacks if callable(getattr(c, "check_grid", None))]

    def split_arguments(self, overrides, max_batch_size: int | None) -> list[list[list[str]]]:
        """The batches of the jobs sweep() expanded and checked (Hydra's sweep() calls this)."""
        return list(self.split_overrides_to_chunks(self.jobs, max_batch_size))

    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        pass  # sweep() has composed and checked every job

"""The lecture's experiments under ROOT and the runs of each that test a claim."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import yaml
from omegaconf import OmegaConf

from analysis.discovery import MissingJob, NoRunsFound, discover
from analysis.knobs import format_value, is_missing
from analysis.load import Sweep, load_sweep
from hydra_plugins.sweeper_grid.grid import expand
from sweeper.rundir import ENDED

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
NO_RUNS = pd.DataFrame(columns=["run", "status", "epoch"])


def read_conf() -> dict:
    """claims.yaml. PyYAML, not OmegaConf: the templates' case keys include booleans."""
    return yaml.safe_load(Path(__file__).with_name("claims.yaml").read_text())


def grid_jobs(name: str) -> int:
    """The number of jobs conf/experiment/<name>.yaml sweeps, as the grid sweeper expands them."""
    conf = yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text()) or {}
    params = ((conf.get("hydra") or {}).get("sweeper") or {}).get("params") or {}
    return len(
        expand(OmegaConf.create({"hydra": {"sweeper": {"params": params}, "overrides": {"task": []}}}))
    )


@dataclass
class Experiment:
    """One sweep dir under ROOT (or its absence)."""

    name: str
    path: Path
    shown: str  # the sweep dir as written in commands (ROOT as given on the command line)
    default_epochs: int
    sweep: Sweep | None = None
    missing: list[MissingJob] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)

    @property
    def present(self) -> bool:
        return self.sweep is not None or bool(self.missing)

    def epochs_target(self) -> int:
        epochs = self.sweep.runs.get("trainer.epochs") if self.sweep is not None else None
        return int(epochs.max()) if epochs is not None and epochs.notna().any() else self.default_epochs


def load_experiments(root: Path, shown_root: str, conf: dict | None = None) -> dict[str, Experiment]:
    """The experiments under ROOT; absent ones come back with present=False."""
    conf = conf or read_conf()
    out = {}
    for name in conf["experiments"]:
        path = Path(root) / name
        exp = out[name] = Experiment(name, path, f"{shown_root.rstrip('/')}/{name}", conf["default_epochs"])
        if not path.is_dir():
            continue
        _, exp.missing = discover(path)
        with warnings.catch_warnings(), contextlib.suppress(NoRunsFound):
            warnings.simplefilter("ignore")
            exp.sweep = load_sweep(path)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            argv = [str(a) for a in json.loads((path / "sweep.json").read_text()).get("argv", [])]
            exp.argv = argv[1:] if argv and argv[0].endswith(".py") else argv  # sys.argv[0]: the script
    return out


def _same_value(written: str, value) -> bool:
    try:
        return float(written) == float(value)
    except (TypeError, ValueError):
        return written == format_value(value)


def _matches(overrides: Sequence[str], where: dict) -> bool:
    """Whether a job not started yet, by the overrides it was listed with, belongs to `where`."""
    typed = {key.lstrip("+~"): value for key, sep, value in (o.partition("=") for o in overrides) if sep}
    return all(key not in typed or _same_value(typed[key], value) for key, value in where.items())


@dataclass
class Selection:
    """The runs of one experiment that test a claim, plus its jobs that have no record yet."""

    exp: Experiment
    where: dict
    sweep: Sweep | None  # the runs with at least one epoch logged: the claims read their curves
    missing: list[MissingJob]
    unlogged: pd.DataFrame = field(default_factory=lambda: NO_RUNS)

    runs = property(lambda self: self.sweep.runs if self.sweep is not None else NO_RUNS)
    curves = property(lambda self: self.sweep.curves if self.sweep is not None else NO_RUNS)

    @property
    def empty(self) -> bool:
        return self.runs.empty and self.unlogged.empty and not self.missing

    @property
    def complete(self) -> bool:
        ended = self.runs["status"].isin(ENDED)
        return not self.missing and self.unlogged.empty and len(ended) > 0 and bool(ended.all())

    def row(self, run: str) -> pd.Series:
        return self.runs.loc[self.runs["run"] == run].iloc[0]

    def label(self, run: str | pd.Series) -> str:
        """A run (its id or its row) by its varied keys (lr=0.1), else by its id."""
        row = run if isinstance(run, pd.Series) else self.row(run)
        keys = self.exp.sweep.varied if self.exp.sweep is not None else []
        return ", ".join(f"{k}={format_value(row[k])}" for k in keys if k in row) or f"run {row['run']}"

    def progress(self) -> str | None:
        """None when every run has ended, else 'partial: N/E epochs (what is not done)'."""
        if self.complete:
            return None
        target = self.exp.epochs_target()
        # A run with nothing logged (started, or failed at its start) is at epoch 0.
        waiting = [(row, 0) for _, row in self.unlogged.iterrows()]
        waiting += [
            (row, int(row["epochs_done"])) for _, row in self.runs.iterrows() if row["status"] not in ENDED
        ]
        pending = [f"{self.label(row)}: {row['status']}, {done}/{target}" for row, done in waiting]
        for job in self.missing:
            typed = " ".join(o for o in job.overrides if not o.startswith("experiment="))
            pending.append(f"{typed or f'job {job.job_num}'}: not started")
        least = min([done for _, done in waiting] + [0] * len(self.missing), default=0)
        return f"partial: {least}/{target} epochs ({'; '.join(pending)})"

    def run_curves(self, run: str) -> pd.DataFrame:
        return self.curves[self.curves["run"] == run].sort_values("epoch")

    def wall_time(self, run: str) -> float:
        """summary.json's time_s, else the last metrics line's (a run in progress)."""
        row = self.row(run)
        if not is_missing(row.get("time_s")):
            return float(row["time_s"])
        times = self.run_curves(run).get("time_s", pd.Series(dtype=float)).dropna()
        return float(times.iloc[-1]) if len(times) else math.nan


def select(exp: Experiment, where: dict) -> Selection:
    sweep, unlogged = exp.sweep, NO_RUNS
    if sweep is not None:
        sweep = sweep.subset({k: v for k, v in where.items() if k in sweep.runs})
        # A run with no epoch logged yet (just started, killed or failed at its start) has no
        # curve to test a claim on: it counts as pending, like a job not started.
        logged = sweep.runs["epochs_done"] > 0
        unlogged, kept = sweep.runs.loc[~logged], sweep.runs.loc[logged, "run"]
        sweep = dataclasses.replace(
            sweep, runs=sweep.runs[logged], curves=sweep.curves[sweep.curves["run"].isin(kept)]
        )
        sweep = None if sweep.runs.empty else sweep
    return Selection(
        exp, where, sweep, [job for job in exp.missing if _matches(job.overrides, where)], unlogged
    )


def pick_source(exps: dict[str, Experiment], candidates: Sequence[Sequence]) -> Selection | None:
    """The first candidate (experiment, where) whose runs have all ended, else the first one present."""
    found = [select(exps[name], dict(where)) for name, where in candidates if exps[name].present]
    found = [sel for sel in found if not sel.empty]
    return ([sel for sel in found if sel.complete] or found or [None])[0]

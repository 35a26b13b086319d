"""The lecture's experiments under ROOT and the runs of each that test a claim."""

from __future__ import annotations

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


def read_conf() -> dict:
    """analysis/reproduction/claims.yaml. PyYAML, not OmegaConf: the templates' case keys include booleans."""
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
        if self.sweep is not None and "trainer.epochs" in self.sweep.runs:
            values = self.sweep.runs["trainer.epochs"].dropna()
            if len(values):
                return int(values.max())
        return self.default_epochs


def load_experiments(root: Path, shown_root: str, conf: dict | None = None) -> dict[str, Experiment]:
    """The experiments under ROOT; absent ones come back with present=False."""
    conf = conf or read_conf()
    out = {}
    for name in conf["experiments"]:
        path = Path(root) / name
        exp = Experiment(name, path, f"{shown_root.rstrip('/')}/{name}", conf["default_epochs"])
        if path.is_dir():
            refs, exp.missing = discover(path)
            if refs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        exp.sweep = load_sweep(path)
                    except NoRunsFound:
                        exp.sweep = None
            try:
                argv = [str(a) for a in json.loads((path / "sweep.json").read_text()).get("argv", [])]
                exp.argv = argv[1:] if argv and argv[0].endswith(".py") else argv  # sys.argv[0]: the script
            except (OSError, ValueError, AttributeError):
                exp.argv = []
        out[name] = exp
    return out


def _override_dict(overrides: Sequence[str]) -> dict[str, str]:
    pairs = (item.partition("=") for item in overrides)
    return {key.lstrip("+~"): value for key, sep, value in pairs if sep}


def _same_value(written: str, value) -> bool:
    try:
        return float(written) == float(value)
    except (TypeError, ValueError):
        return written == format_value(value)


@dataclass
class Selection:
    """The runs of one experiment that test a claim, plus its jobs that have no record yet."""

    exp: Experiment
    where: dict
    sweep: Sweep | None  # the runs with at least one epoch logged: the claims read their curves
    missing: list[MissingJob]
    unlogged: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run", "status"]))

    @property
    def runs(self) -> pd.DataFrame:
        return self.sweep.runs if self.sweep is not None else pd.DataFrame(columns=["run", "status"])

    @property
    def curves(self) -> pd.DataFrame:
        return self.sweep.curves if self.sweep is not None else pd.DataFrame(columns=["run", "epoch"])

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
        pending, least = [], None
        for _, row in self.unlogged.iterrows():  # started (or failed at its start), nothing logged
            least = 0
            pending.append(f"{self.label(row)}: {row['status']}, 0/{target}")
        for row in self.runs.itertuples():
            if row.status in ENDED:
                continue
            done = int(row.epochs_done)
            least = done if least is None else min(least, done)
            pending.append(f"{self.label(row.run)}: {row.status}, {done}/{target}")
        for job in self.missing:
            least = 0
            typed = " ".join(o for o in job.overrides if not o.startswith("experiment="))
            pending.append(f"{typed or f'job {job.job_num}'}: not started")
        return f"partial: {least or 0}/{target} epochs ({'; '.join(pending)})"

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
    unlogged = pd.DataFrame(columns=["run", "status"])
    sweep = exp.sweep
    if sweep is not None:
        usable = {k: v for k, v in where.items() if k in sweep.runs}
        sweep = sweep.subset(usable) if usable else sweep
        # A run with no epoch logged yet (just started, killed or failed at its start) has no
        # curve to test a claim on: it counts as pending, like a job not started.
        logged = sweep.runs["epochs_done"] > 0
        if not logged.all():
            unlogged = sweep.runs.loc[~logged]
            kept = sweep.runs.loc[logged, "run"]
            sweep = dataclasses.replace(
                sweep, runs=sweep.runs[logged], curves=sweep.curves[sweep.curves["run"].isin(kept)]
            )
            sweep = None if sweep.runs.empty else sweep
    missing = [
        job
        for job in exp.missing
        if all(
            k not in (o := _override_dict(job.overrides)) or _same_value(o[k], v) for k, v in where.items()
        )
    ]
    return Selection(exp, where, sweep, missing, unlogged)


def pick_source(exps: dict[str, Experiment], candidates: Sequence[Sequence]) -> Selection | None:
    """The first candidate (experiment, where) whose runs have all ended, else the first one present."""
    found = [select(exps[name], dict(where)) for name, where in candidates if exps[name].present]
    found = [sel for sel in found if not sel.empty]
    return ([sel for sel in found if sel.complete] or found or [None])[0]

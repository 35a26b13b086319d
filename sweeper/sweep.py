"""What a `-m` sweep does around its jobs: validate them all first, summarise them all last.

Both run on the submitting machine, whatever the launcher (basic, pool, submitit_local,
submitit_slurm): the grid sweeper (hydra_plugins/sweeper_grid, the default) calls check_jobs
before it launches anything -- SweepCallback does it for Hydra's basic sweeper -- so a bad value
never reaches a queue, and SweepCallback's count at the end reads the run records, which are the
truth wherever the jobs ran.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from sweeper import processes
from sweeper.runlog import atomic_write, to_json
from sweeper.train import config_difference
from sweeper.validate import ConfigError, check

STATES = ("completed", "diverged", "failed", "running", "missing")


def _grid(jobs: list[list[str]]) -> list[list[str]]:
    """The jobs without `trainer.resume`: it says how to treat old records, not which runs make the grid."""
    return [[o for o in job if o.split("=", 1)[0].lstrip("+~") != "trainer.resume"] for job in jobs]


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def check_jobs(
    config: DictConfig,
    jobs: list[list[str]],
    compose_job: Callable[[list[str]], DictConfig],
    config_loader=None,
    nested: bool = True,
) -> list[list[str]]:
    """Refuse a bad sweep in one line (exit 2) before its first job starts, else record it in
    sweep.json; returns the jobs to launch, in order.

    `compose_job(overrides)` gives a job's composed config (hydra_plugins/sweeper_grid composes
    each job once and hands the same config to the launcher). A job whose config brings a grid
    of its own (own_grid: `-m experiment=lecture_lr,lecture_lr2`) becomes that grid's jobs when
    `nested`, else it is refused (Hydra's basic sweeper would run it as one job). Refused: a bad
    value or an unknown key in any job, a sweep dir that holds another grid, a run dir still
    being written by a live process, and a resume into a run dir of another config.
    """
    sweep_dir = Path(config.hydra.sweep.dir)
    final: list[list[str]] = []
    resolved: list[dict | None] = []  # a resumed job's config, to compare with its old record

    def visit(job: list[str]) -> None:
        label = f"job {len(final)} ({' '.join(job)})"
        try:
            composed = compose_job(job)
        except Exception as e:  # a composition error (unknown key or option) from Hydra
            fail(f"{label}: {str(e).splitlines()[0]}")
        extra = own_grid(composed, job)
        if extra and not nested:
            fail(
                f"{label}: its config sweeps " + " ".join(f"{k}={v}" for k, v in extra.items())
                + ", which hydra/sweeper=basic does not expand; use the default hydra/sweeper=grid"
            )  # fmt: skip
        if extra:  # the job becomes its own grid: keys the job sets win over the grid's
            arguments = [*job, *(f"{k}={v}" for k, v in extra.items())]
            parser = OverridesParser.create(config_loader=config_loader)
            for inner in BasicSweeper.split_arguments(parser.parse_overrides(arguments), None)[0]:
                if own_grid(composed, list(inner)):  # each inner job sets every key of the grid
                    fail(f"{label}: cannot expand the grid its config sweeps ({', '.join(extra)})")
                visit(list(inner))
            return
        job_cfg = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
        try:
            check(job_cfg)
        except ConfigError as e:
            fail(f"{label}: {e}")
        previous = sweep_dir / str(len(final)) / "config.json"
        resume = job_cfg.trainer.resume and previous.exists()
        resolved.append(OmegaConf.to_container(job_cfg, resolve=True) if resume else None)
        final.append(job)

    for job in jobs:
        visit(job)
    known = _read_sweep(sweep_dir)
    if known is not None and _grid([j["overrides"] for j in known["jobs"]]) != _grid(final):
        fail(
            f"{sweep_dir} holds a sweep of another grid ({len(known['jobs'])} jobs); "
            "resume it with the same overrides, or choose another hydra.sweep.dir"
        )
    for num, (overrides, job_config) in enumerate(zip(final, resolved, strict=True)):
        writer = _live_writer(sweep_dir / str(num))
        if writer is not None:
            fail(
                f"job {num} ({' '.join(overrides)}): {sweep_dir / str(num)} is being trained by process {writer} "
                "on this host; wait for it to end (or stop it) before resuming this sweep"
            )
        # Resuming into a run dir of another config would mix results: refuse before any job.
        if job_config is not None:
            previous = sweep_dir / str(num) / "config.json"
            diff = config_difference(json.loads(previous.read_text()), job_config)
            if diff:
                fail(
                    f"job {num} ({' '.join(overrides)}): {previous.parent} holds a run of another config "
                    f"({'; '.join(diff[:3])}); use another hydra.sweep.dir, or trainer.resume=false to set it aside"
                )
    listing = [{"num": n, "dir": str(n), "overrides": o} for n, o in enumerate(final)]
    sweep_dir.mkdir(parents=True, exist_ok=True)
    launcher = config.hydra.runtime.choices.get("hydra/launcher", "basic")
    if known is None:
        atomic_write(
            sweep_dir / "sweep.json",
            to_json(
                {
                    "argv": sys.argv,
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "launcher": launcher,
                    "jobs": listing,
                }
            ),
        )
    print(f"sweep: {len(final)} jobs validated, launching into {sweep_dir}", file=sys.stderr, flush=True)
    return final


GRID_SWEEPER = "hydra_plugins.sweeper_grid.grid.GridSweeper"


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


class SweepCallback(Callback):
    """Checks a grid run by another sweeper than the grid sweeper (`hydra/sweeper=basic`), and
    prints every sweep's summary, read from the run records once every job has ended."""

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.sweeper.get("_target_") == GRID_SWEEPER:
            return  # the grid sweeper checks its jobs as it composes them, once each
        # Composed as the launcher will (the command line's hydra overrides applied), with
        # Hydra's part: a job's own sweep params (own_grid) are refused, not dropped.
        loader = GlobalHydra.instance().hydra.config_loader
        jobs = expand(config, loader)
        check_jobs(
            config, jobs, lambda job: loader.load_sweep_config(config, list(job)), loader, nested=False
        )

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        known = _read_sweep(sweep_dir)
        if known is None:
            return
        counts = dict.fromkeys(STATES, 0)
        lines = []
        for job in known["jobs"]:
            state, detail = job_state(sweep_dir / job["dir"])
            counts[state] += 1
            if state != "completed":
                lines.append(f"  {job['num']:>4}  {state:<9} {' '.join(job['overrides'])}  {detail}")
        total = len(known["jobs"])
        print(
            f"\nsweep {sweep_dir}: {total} jobs: "
            + ", ".join(f"{counts[s]} {s}" for s in STATES if counts[s] or s == "completed")
        )
        for line in lines[:20]:
            print(line)
        if len(lines) > 20:
            print(f"  ... and {len(lines) - 20} more (python -m analysis status {sweep_dir})")
        print(f"report: python -m analysis {sweep_dir}")
        if counts["completed"] != total:
            raise SystemExit(1)


def _live_writer(run_dir: Path) -> int | None:
    """The pid of a process on this host still writing the unfinished run in `run_dir`, else None.

    Two processes appending to one metrics.jsonl would corrupt the run. Only this host's processes
    can be seen; on a cluster, wait until the earlier array has left the queue (docs/slurm.md).
    A pid reused by another process after a crash or reboot is told apart by its start time.
    """
    if (run_dir / "summary.json").exists():
        return None
    try:
        job = json.loads((run_dir / "job.json").read_text())
    except (OSError, ValueError):
        return None
    if not processes.on_this_host(job) or job["pid"] == os.getpid() or not processes.alive(job):
        return None
    return job["pid"]


def _read_sweep(sweep_dir: Path) -> dict | None:
    try:
        return json.loads((sweep_dir / "sweep.json").read_text())
    except FileNotFoundError:
        return None


def job_state(run_dir: Path) -> tuple[str, str]:
    """(state, one-line detail) of a run dir from its record alone."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        return (
            ("running", "no summary yet") if (run_dir / "config.json").exists() else ("missing", "no record")
        )
    except json.JSONDecodeError:
        return "failed", "unreadable summary.json"
    state = summary.get("status", "failed")
    if state == "completed":
        return state, f"test_acc {summary.get('final_test_acc')}"
    return state, summary.get("error") or f"after {summary.get('epochs_done')} epochs"

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
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict, read_write

from sweeper import processes, submitted
from sweeper.runlog import atomic_write, complete_lines, to_json
from sweeper.train import PENDING_HYDRA_FILES, as_written_in_place, attempt_dir, config_difference, move_into
from sweeper.validate import ConfigError, check, check_device

STATES = ("completed", "diverged", "failed", "interrupted", "running", "missing")


def _effective(job: list[str]) -> frozenset:
    """What a job runs, whatever the order of its overrides: key -> value, the last one winning,
    without `trainer.resume` (it says how to treat old records, not which run the job is)."""
    settings = {}
    for override in job:
        key, _, value = override.partition("=")
        if key.lstrip("+~") != "trainer.resume":
            settings[key] = value
    return frozenset(settings.items())


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


# Stand-ins for the job number and id while a job's hydra.sweep.subdir is resolved before launch:
# the launcher sets both only then, and the number depends on the job's place in the grid.
NUM_MARK, ID_MARK = "987654321", "987654322"
# Launchers whose hydra.job.id is the job number; submitit's is the SLURM job id, known only later.
ID_IS_NUM = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.sweeper_pool.launcher.PoolLauncher",
)


def _subdir(config: DictConfig, composed: DictConfig) -> str:
    """The job's run dir under the sweep dir as its launcher will name it (hydra.sweep.subdir,
    as Hydra's run_job resolves it), with NUM_MARK where the job number goes."""
    job = composed.hydra.job
    with read_write(job), open_dict(job):
        # Set for the resolution and put back: the launcher sets both itself, as it launches.
        saved = {k: MISSING if OmegaConf.is_missing(job, k) else job[k] for k in ("num", "id")}
        job.num, job.id = int(NUM_MARK), ID_MARK
        try:
            subdir = os.path.normpath(str(composed.hydra.sweep.subdir))
        except Exception as e:  # an interpolation that does not resolve
            raw = OmegaConf.to_container(composed.hydra.sweep)["subdir"]
            fail(f"hydra.sweep.subdir={raw} is invalid: {str(e).splitlines()[0]}")
        finally:
            job.num, job.id = saved["num"], saved["id"]
    if ID_MARK in subdir:
        if config.hydra.launcher.get("_target_") not in ID_IS_NUM:
            fail(
                "hydra.sweep.subdir is invalid with this launcher: it uses ${hydra.job.id}, which is "
                "known only once the job is submitted; use ${hydra.job.num} or ${hydra.job.override_dirname}"
            )
        subdir = subdir.replace(ID_MARK, NUM_MARK)
    return subdir


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
    value or an unknown key in any job, two jobs with one run dir, a sweep dir that holds another
    grid (unless every job has trainer.resume=false: the old sweep is then set aside in
    attempts/N/), a run dir still being written by a live process, and a resume into a run dir of
    another config. A rerun of the same grid, its overrides in any order, resumes it: its jobs
    keep their numbers and run dirs (the grid sweeper launches them in the recorded order;
    Hydra's basic sweeper, which launches in its own, is refused where that differs).
    """
    sweep_dir = Path(config.hydra.sweep.dir)
    # A SLURM launcher's jobs train on its nodes, whose GPUs this (login) machine may not have.
    remote = str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher")
    final: list[list[str]] = []
    subdirs: list[str] = []  # each job's run dir under the sweep dir, NUM_MARK for its number
    resolved: list[dict | None] = []  # a resuming job's config, to compare with an old record
    starts_over: list[bool] = []  # trainer.resume=false
    old_records = sweep_dir.exists()

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
            if not remote:  # jobs that will train on this machine: its devices
                check_device(job_cfg)
        except ConfigError as e:
            fail(f"{label}: {e}")
        resume = bool(job_cfg.trainer.resume)
        resolved.append(OmegaConf.to_container(job_cfg, resolve=True) if resume and old_records else None)
        starts_over.append(not resume)
        subdirs.append(_subdir(config, composed))
        final.append(job)

    for job in jobs:
        visit(job)
    try:
        known = _read_sweep(sweep_dir)
    except ConfigError as e:
        fail(str(e))
    order = list(range(len(final)))
    if known is not None:
        # The recorded grid in its recorded order: each job keeps its number, and so its run dir.
        places: dict[frozenset, list[int]] = {}
        for i, job in enumerate(final):
            places.setdefault(_effective(job), []).append(i)
        listed = [_effective(j["overrides"]) for j in known["jobs"]]
        if len(listed) == len(final) and all(len(places.get(k, [])) == listed.count(k) for k in places):
            order = [places[k].pop(0) for k in listed]
        # Only the grid sweeper (nested) launches the jobs returned here, in their order.
        if order != list(range(len(final))) and not nested:
            fail(
                f"{sweep_dir} holds this grid with its jobs in another order, which hydra/sweeper=basic "
                "launches as given; give the sweep's overrides in their first order, or use hydra/sweeper=grid"
            )
    final, resolved, starts_over, subdirs = (
        [xs[i] for i in order] for xs in (final, resolved, starts_over, subdirs)
    )
    dirs = [d.replace(NUM_MARK, str(num)) for num, d in enumerate(subdirs)]
    seen: dict[str, int] = {}
    for num, d in enumerate(dirs):
        if d in seen:
            fail(
                f"jobs {seen[d]} and {num} would both write to {sweep_dir / d}: hydra.sweep.subdir must "
                "differ between jobs (${hydra.job.num}, the default, does)"
            )
        seen[d] = num
    listing = [{"num": n, "dir": d, "overrides": o} for n, (o, d) in enumerate(zip(final, dirs, strict=True))]
    same = known is not None and [
        (_effective(j["overrides"]), os.path.normpath(j["dir"])) for j in known["jobs"]
    ] == [(_effective(j["overrides"]), j["dir"]) for j in listing]
    if known is not None and not same:
        if not all(starts_over):
            fail(
                f"{sweep_dir} holds a sweep of another grid ({len(known['jobs'])} jobs); resume it with the "
                "same overrides, start over with trainer.resume=false (the old sweep is set aside in "
                "attempts/N/), or choose another hydra.sweep.dir"
            )
        aside = _set_aside_sweep(sweep_dir, known)
        print(f"sweep: the earlier sweep of {sweep_dir} is set aside in {aside}", file=sys.stderr)
        known = None
    for num, (overrides, job_config, d) in enumerate(zip(final, resolved, dirs, strict=True)):
        run_dir = sweep_dir / d
        writer = processes.live_writer(run_dir)
        if writer is not None:
            fail(
                f"job {num} ({' '.join(overrides)}): {run_dir} is being trained by process {writer} "
                "on this host; wait for it to end (or stop it) before resuming this sweep"
            )
        # Resuming into a run dir of another config would mix results: refuse before any job.
        try:
            previous = json.loads((run_dir / "config.json").read_text()) if job_config is not None else None
        except (OSError, ValueError):  # none, or unreadable: the job's start sets such a record aside
            previous = None
        if previous is not None:
            diff = config_difference(previous, job_config)
            if diff:
                fail(
                    f"job {num} ({' '.join(overrides)}): {run_dir} holds a run of another config "
                    f"({'; '.join(diff[:3])}); use another hydra.sweep.dir, or trainer.resume=false to set it aside"
                )
    sweep_dir.mkdir(parents=True, exist_ok=True)
    launcher = config.hydra.runtime.choices.get("hydra/launcher", "basic")
    if known is None:
        atomic_write(
            sweep_dir / "sweep.json",
            to_json(
                {
                    # as the user typed it: without the override __main__ adds (hydra_files)
                    "argv": [a for a in sys.argv if not a.startswith(PENDING_OVERRIDE)],
                    "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                    "launcher": launcher,
                    "jobs": listing,
                }
            ),
        )
    print(f"sweep: {len(final)} jobs validated, launching into {sweep_dir}", file=sys.stderr, flush=True)
    STARTED.append(sweep_dir)
    return final


PENDING_OVERRIDE = f"hydra.output_subdir={PENDING_HYDRA_FILES}"


def _set_aside_sweep(sweep_dir: Path, known: dict) -> Path:
    """Move an earlier sweep (sweep.json, multirun.yaml and its jobs' run dirs) into
    <sweep>/attempts/N/, for a new grid to start over there: nothing a run produced is deleted.
    Refused (exit 2) while a live process still trains one of its runs."""
    inside = [
        j["dir"]
        for j in known["jobs"]
        if not Path(j["dir"]).is_absolute() and ".." not in Path(j["dir"]).parts
    ]
    for d in inside:
        writer = processes.live_writer(sweep_dir / d)
        if writer is not None:
            fail(
                f"{sweep_dir / d} is being trained by process {writer} on this host; wait for it to end "
                "(or stop it) before starting this sweep over"
            )
    with attempt_dir(sweep_dir) as target:
        for name in ("sweep.json", "multirun.yaml", *inside):
            if (sweep_dir / name).exists():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                move_into(sweep_dir / name, target / name)
    return target


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
        pending = str(config.hydra.output_subdir or "")
        if pending.startswith(PENDING_HYDRA_FILES):
            as_written_in_place(sweep_dir / "multirun.yaml", pending)
        if not summarize(sweep_dir, ended=True):
            raise SystemExit(1)


# The sweeps this process has launched (check_jobs), and those it has printed the end summary of:
# an interrupted sweep on Hydra's basic launcher never reaches on_multirun_end, and __main__
# prints it then; the pool launcher prints its own on an interrupt.
STARTED: list[Path] = []
SUMMARIZED: set[Path] = set()


def summarize(sweep_dir: Path, ended: bool = False) -> bool:
    """Print the one-screen end summary of a sweep, from its records; whether every job completed.
    `ended`: the launcher has returned every job's result, so none is still running, wherever it ran."""
    known = _read_sweep(sweep_dir)
    if known is None or sweep_dir in SUMMARIZED:
        return True
    SUMMARIZED.add(sweep_dir)
    counts = dict.fromkeys(STATES, 0)
    lines = []
    slurm = submitted.slurm_ids(sweep_dir)
    for job in known["jobs"]:
        state, detail = job_state(sweep_dir / job["dir"], ended)
        if state == "missing" and job["num"] in slurm:  # queued, or ended before it started
            job_id = slurm[job["num"]]
            detail = f"no record; SLURM job {job_id}" + (
                f" ended before it started (log: .submitit/{job_id}/)" if ended else " not started yet"
            )
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
    return counts["completed"] == total


def _read_sweep(sweep_dir: Path) -> dict | None:
    """The sweep's sweep.json, None when there is none; a damaged one is refused in one line (the
    grid it lists decides which run dir is whose: guessing could resume a job into another's)."""
    path = sweep_dir / "sweep.json"
    try:
        known = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"{path} is damaged ({type(err).__name__}); move it away to resume this sweep (each run dir "
            "is then checked against its job's config), or choose another hydra.sweep.dir"
        ) from None
    if not isinstance(known, dict) or not isinstance(known.get("jobs"), list):
        raise ConfigError(f"{path} is damaged (no job list); move it away, or choose another hydra.sweep.dir")
    return known


def job_state(run_dir: Path, ended: bool = False) -> tuple[str, str]:
    """(state, one-line detail) of a run dir from its record alone; `ended`: its job has returned
    (a SLURM job killed on another node leaves a record that only says it has not finished)."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except FileNotFoundError:
        if not (run_dir / "config.json").exists():
            return "missing", "no record"
        try:
            job = json.loads((run_dir / "job.json").read_text())
        except (OSError, ValueError):
            job = None
        # Its process on this host has ended (or is this one, whose job returned) without a
        # summary: stopped (Ctrl-C, SIGTERM, a killed worker), and a rerun resumes it.
        if ended or (processes.on_this_host(job) and (job["pid"] == os.getpid() or not processes.alive(job))):
            try:
                epochs = len(complete_lines(run_dir / "metrics.jsonl"))  # a kill can cut the last short
            except OSError:
                epochs = 0
            return "interrupted", f"stopped after {epochs} epochs; a rerun into this sweep dir resumes it"
        return "running", "no summary yet"
    except ValueError:  # not JSON, or not UTF-8
        return "failed", "unreadable summary.json"
    state = summary.get("status", "failed")
    if state == "completed":
        return state, f"test_acc {summary.get('final_test_acc')}"
    return state, summary.get("error") or f"after {summary.get('epochs_done')} epochs"

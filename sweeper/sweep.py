"""What a `-m` sweep does around its jobs: validate them all first, summarise them all last.

Both run on the submitting machine, whatever the launcher, and belong to this app (conf/config.yaml
names SweepCallback in hydra.callbacks), not to a sweeper: the grid sweeper hands check_grid each
job's composed config before it launches anything, so a bad value never reaches a queue; the
summary reads the run records, which are the truth wherever the jobs ran.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as dt
import os
import sys
from pathlib import Path

from hydra.core.global_hydra import GlobalHydra
from hydra.experimental.callback import Callback
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import InterpolationToMissingValueError

from hydra_plugins.sweeper_grid.grid import SweepRefused, composed_or_refused, expand, label, own_grid
from sweeper import objective, processes, submitted
from sweeper.processes import Damaged, json_object, short
from sweeper.rundir import (
    PENDING_HYDRA_FILES,
    STATUSES,
    SUCCEEDED,
    as_written_in_place,
    attempt_dir,
    config_difference,
    live_writer,
    move_into,
    unwritable,
)
from sweeper.runlog import atomic_write, complete_lines, to_json

# A job's state (job_state): its summary's status, or what its record without one says.
STATES = (*STATUSES, "interrupted", "running", "damaged", "missing")


def _effective(job: list[str]) -> frozenset:
    """What a job runs, whatever the order of its overrides (the last one winning), without
    `trainer.resume`: it says how to treat old records, not which run the job is."""
    settings = dict(o.partition("=")[::2] for o in job)
    return frozenset((k, v) for k, v in settings.items() if k.lstrip("+~") != "trainer.resume")


# Launchers whose hydra.job.id is the job number; submitit's is the SLURM job id, known only later.
ID_IS_NUM = (
    "hydra._internal.core_plugins.basic_launcher.BasicLauncher",
    "hydra_plugins.sweeper_pool.launcher.PoolLauncher",
)


def _subdir(config: DictConfig, composed: DictConfig, num: int) -> str:
    """Job `num`'s run dir under the sweep dir as its launcher will name it (hydra.sweep.subdir,
    resolved as Hydra's run_job does once the launcher has set hydra.job.num and id, which are
    put back after: the launcher sets them itself)."""
    job = composed.hydra.job
    with read_write(job), open_dict(job):
        saved = {k: MISSING if OmegaConf.is_missing(job, k) else job[k] for k in ("num", "id")}
        job.num = num
        job.id = num if config.hydra.launcher.get("_target_") in ID_IS_NUM else MISSING
        try:
            return os.path.normpath(str(composed.hydra.sweep.subdir))
        except InterpolationToMissingValueError:  # hydra.job.id, under a launcher that sets it later
            raise SweepRefused(
                "hydra.sweep.subdir is invalid with this launcher: it uses ${hydra.job.id}, which is "
                "known only once the job is submitted; use ${hydra.job.num} or ${hydra.job.override_dirname}"
            ) from None
        except Exception as e:  # an interpolation that does not resolve
            raise SweepRefused(
                f"hydra.sweep.subdir={_raw_subdir(composed)} is invalid: {str(e).splitlines()[0]}"
            ) from None
        finally:
            job.num, job.id = saved["num"], saved["id"]


def check_jobs(
    config: DictConfig, jobs: list[tuple[list[str], DictConfig]], reorder: bool = True
) -> list[list[str]]:
    """Refuse a bad sweep (SweepRefused, one line) before its first job starts, else record it in
    sweep.json; returns the jobs to launch, in order. `jobs`: each job's overrides and composed
    config, in Hydra's order. A rerun of the same grid, its overrides in any order, resumes it: its
    jobs keep their numbers and run dirs when `reorder` (the grid sweeper launches them in the order
    returned); Hydra's basic sweeper, which launches in its own order, is refused where that differs.
    """
    from sweeper.validate import ConfigError, check, check_device  # torch: not for job_state's readers

    sweep_dir = Path(config.hydra.sweep.dir)
    # A SLURM launcher's jobs train on its nodes, whose GPUs this (login) machine may not have.
    remote = str(config.hydra.launcher.get("_target_", "")).endswith("SlurmLauncher")
    final, composeds = [job for job, _ in jobs], [composed for _, composed in jobs]
    resolved: list[dict | None] = []  # a resuming job's config, to compare with an old record
    starts_over: list[bool] = []
    old_records = sweep_dir.exists()
    for num, (job, composed) in enumerate(jobs):
        job_cfg = OmegaConf.masked_copy(composed, [k for k in composed if k != "hydra"])
        try:
            check(job_cfg)
            if not remote:
                check_device(job_cfg)
        except ConfigError as e:
            raise SweepRefused(f"{label(num, job)}: {e}") from None
        resume = bool(job_cfg.trainer.resume)
        resolved.append(OmegaConf.to_container(job_cfg, resolve=True) if resume and old_records else None)
        starts_over.append(not resume)
    known = read_sweep(sweep_dir)
    order = list(range(len(final)))
    if known is not None:
        # The recorded grid in its recorded order: each job keeps its number, and so its run dir.
        places: dict[frozenset, list[int]] = {}
        for i, job in enumerate(final):
            places.setdefault(_effective(job), []).append(i)
        listed = [_effective(j["overrides"]) for j in known["jobs"]]
        if len(listed) == len(final) and all(len(places.get(k, [])) == listed.count(k) for k in places):
            order = [places[k].pop(0) for k in listed]
        if order != list(range(len(final))) and not reorder:
            raise SweepRefused(
                f"{sweep_dir} holds this grid with its jobs in another order, which hydra/sweeper=basic "
                "launches as given; give the sweep's overrides in their first order, or use hydra/sweeper=grid"
            )
    final, resolved, starts_over, composeds = (
        [xs[i] for i in order] for xs in (final, resolved, starts_over, composeds)
    )
    dirs = [_subdir(config, composed, num) for num, composed in enumerate(composeds)]
    seen: dict[str, int] = {}
    for num, d in enumerate(dirs):
        if os.path.isabs(d) or d.split(os.sep)[0] in (os.curdir, os.pardir):
            # Its record would be where neither the analysis nor a resume of this sweep looks.
            raise SweepRefused(
                f"hydra.sweep.subdir={_raw_subdir(composeds[num])} is invalid: job {num}'s run dir "
                f"{os.path.normpath(sweep_dir / d)} must be below the sweep dir {sweep_dir}, where the "
                "analysis and a resume look for it; use a relative path, e.g. ${hydra.job.num}"
            )
        if d in seen:
            raise SweepRefused(
                f"jobs {seen[d]} and {num} would both write to {sweep_dir / d}: hydra.sweep.subdir must "
                "differ between jobs (${hydra.job.num}, the default, does)"
            )
        seen[d] = num
    listing = [{"num": n, "dir": d, "overrides": o} for n, (o, d) in enumerate(zip(final, dirs, strict=True))]
    same = known is not None and [
        (_effective(j["overrides"]), os.path.normpath(j["dir"])) for j in known["jobs"]
    ] == [(_effective(j["overrides"]), j["dir"]) for j in listing]
    if known is not None and not same and not all(starts_over):
        raise SweepRefused(
            f"{sweep_dir} holds a sweep of another grid ({counted(len(known['jobs']), 'job')}); resume it with "
            "the same overrides, start over with trainer.resume=false (the old sweep is set aside in "
            "attempts/N/), or choose another hydra.sweep.dir"
        )
    check_writable(sweep_dir)
    if known is not None and not same:
        aside = _set_aside_sweep(sweep_dir, known)
        print(f"sweep: the earlier sweep of {sweep_dir} is set aside in {aside}", file=sys.stderr)
        known = None
    for num, (overrides, job_config, d) in enumerate(zip(final, resolved, dirs, strict=True)):
        run_dir = sweep_dir / d
        # Hydra opens the job's log file there before the job runs (a traceback). Asked, not
        # tried: a probe per run dir would cost a big grid's rerun a write and fsync per job.
        if run_dir.is_dir() and not os.access(run_dir, os.W_OK | os.X_OK):
            raise SweepRefused(
                f"{label(num, overrides)}: {run_dir} is not writable: its run writes its record there; "
                "make it writable, or choose another hydra.sweep.dir"
            )
        writer = live_writer(run_dir)
        if writer is not None:
            raise SweepRefused(
                f"{label(num, overrides)}: {run_dir} is being trained by process {writer} "
                "on this host; wait for it to end (or stop it) before resuming this sweep"
            )
        if job_config is None:
            continue
        # Resuming into a run dir of another config would mix results: refuse before any job.
        try:
            previous = json_object(run_dir / "config.json")
        except Damaged as damage:  # the job's start sets such a record aside; the other jobs run on
            print(f"sweep: {label(num, overrides)}: {run_dir / 'config.json'} {damage}; its job sets the "
                  "record aside and starts the run over", file=sys.stderr)  # fmt: skip
            continue
        if previous is None:
            continue
        diff = config_difference(previous, job_config)
        if diff:
            raise SweepRefused(
                f"{label(num, overrides)}: {run_dir} holds a run of another config "
                f"({'; '.join(diff[:3])}); use another hydra.sweep.dir, or trainer.resume=false to set it aside"
            )
    if known is None:
        write_sweep(sweep_dir, config, listing)
    print(
        f"sweep: {counted(len(final), 'job')} validated, launching into {sweep_dir}",
        file=sys.stderr,
        flush=True,
    )
    STARTED.append(sweep_dir)
    return final


def counted(n: int, noun: str) -> str:
    """'1 job', '2 jobs'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def tally(states: list[str], order=STATES, always=()) -> str:
    """'16 jobs: 1 diverged, 14 completed': the jobs in each state, in `order` (others after),
    with the states of `always` said when none is in them."""
    counts = collections.Counter(states)
    said = [s for s in order if counts[s] or s in always] + [s for s in counts if s not in order]
    return f"{counted(len(states), 'job')}: " + ", ".join(f"{counts[s]} {s}" for s in said)


def write_sweep(sweep_dir: Path, config: DictConfig, jobs: list, **more) -> None:
    """sweep.json, once, as a sweep starts: its command line, start time, launcher and jobs."""
    sweep = {
        # as the user typed it: without the override __main__ adds (hydra_files)
        "argv": [a for a in sys.argv if not a.startswith(PENDING_OVERRIDE)],
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "launcher": config.hydra.runtime.choices.get("hydra/launcher", "basic"),
    }
    atomic_write(sweep_dir / "sweep.json", to_json(sweep | more | {"jobs": jobs}))


def _raw_subdir(composed: DictConfig) -> str:
    """hydra.sweep.subdir as the user gave it, interpolations unresolved."""
    return OmegaConf.to_container(composed.hydra.sweep, resolve=False)["subdir"]


def check_writable(sweep_dir: Path) -> None:
    """Refuse, naming the path, a sweep dir this process cannot write: Hydra writes multirun.yaml
    there before the first job, with a traceback when it cannot. Tried, not asked (os.access):
    root passes every permission check, and not a read-only file system nor a full disk."""
    advice = "the sweep writes its records there; make it writable, or choose another hydra.sweep.dir"
    why = unwritable(sweep_dir)
    if why is None:
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            why = f"{sweep_dir} cannot be made ({e.strerror})"
    if why is not None:
        raise SweepRefused(f"{why}: {advice}")
    for path in (sweep_dir / "multirun.yaml", sweep_dir / "sweep.json"):  # rewritten by a rerun
        try:
            if path.exists():
                path.open("ab").close()
        except OSError as e:
            raise SweepRefused(
                f"{path} is not writable ({e.strerror or type(e).__name__}): {advice}"
            ) from None


PENDING_OVERRIDE = f"hydra.output_subdir={PENDING_HYDRA_FILES}"


def _set_aside_sweep(sweep_dir: Path, known: dict) -> Path:
    """Move an earlier sweep (sweep.json, multirun.yaml and its jobs' run dirs) into
    <sweep>/attempts/N/, for a new grid to start over there; refused while a live process trains one."""
    inside = [
        j["dir"]
        for j in known["jobs"]
        if not Path(j["dir"]).is_absolute() and ".." not in Path(j["dir"]).parts
    ]
    for d in inside:
        writer = live_writer(sweep_dir / d)
        if writer is not None:
            raise SweepRefused(
                f"{sweep_dir / d} is being trained by process {writer} on this host; wait for it to end "
                "(or stop it) before starting this sweep over"
            )
    with attempt_dir(sweep_dir) as target:
        for name in ("sweep.json", "multirun.yaml", *inside):
            if (sweep_dir / name).exists():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                move_into(sweep_dir / name, target / name)
    return target


# Sweepers that hand their composed jobs to check_grid themselves: the grid and its halving.
CHECKING_SWEEPERS = (
    "hydra_plugins.sweeper_grid.grid.GridSweeper",
    "hydra_plugins.sweeper_halving.halving.HalvingSweeper",
)


class SweepCallback(Callback):
    """Checks every grid before its first job (check_grid, which the grid sweeper calls;
    on_multirun_start for another sweeper, such as `hydra/sweeper=basic`), and prints every
    sweep's summary once every job has ended."""

    def check_grid(self, config: DictConfig, jobs: list[tuple[list[str], DictConfig]]) -> list[list[str]]:
        return check_jobs(config, jobs)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        if config.hydra.sweeper.get("_target_") in CHECKING_SWEEPERS:
            return  # the grid sweeper calls check_grid with the configs it composed, once each
        if objective.optimizing(config):  # Optuna: no grid to list, its trials drawn as it goes
            return objective.start_study(config, GlobalHydra.instance().hydra.config_loader)
        # Composed as the launcher will (the command line's hydra overrides applied), with
        # Hydra's part: a job's own sweep params (own_grid) are refused, not dropped.
        loader = GlobalHydra.instance().hydra.config_loader
        try:
            jobs = []
            for num, job in enumerate(expand(config, loader)):
                composed = composed_or_refused(lambda j: loader.load_sweep_config(config, list(j)), num, job)
                extra = own_grid(composed, job)
                if extra:
                    raise SweepRefused(
                        f"{label(num, job)}: its config sweeps " + " ".join(f"{k}={v}" for k, v in extra.items())
                        + ", which hydra/sweeper=basic does not expand; use the default hydra/sweeper=grid"
                    )  # fmt: skip
                jobs.append((job, composed))
            check_jobs(config, jobs, reorder=False)
        except SweepRefused as e:  # Hydra turns a callback's exception into a warning, and launches
            _refuse(e)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        pending = str(config.hydra.output_subdir or "")
        if pending.startswith(PENDING_HYDRA_FILES):
            as_written_in_place(sweep_dir / "multirun.yaml", pending)
        objective.end_study(sweep_dir)  # an Optuna study's trials listed in sweep.json
        if not report_end(sweep_dir, ended=True):
            raise SystemExit(1)


@contextlib.contextmanager
def refusals_in_one_line():
    """While it lasts, a sweep refused before launch (SweepRefused) prints `error: <why>` and exits
    2, as the command line's other refusals do, where Hydra would print a hint about
    HYDRA_FULL_ERROR and exit 1. Hydra offers no hook for it: its reporting function is wrapped."""
    from hydra._internal import utils

    report = utils.run_and_report

    def refusing(func):
        try:
            return func()
        except SweepRefused as e:
            _refuse(e)

    utils.run_and_report = lambda func: report(lambda: refusing(func))
    try:
        yield
    finally:
        utils.run_and_report = report


def _refuse(refusal: SweepRefused):
    print(f"error: {refusal}", file=sys.stderr)
    raise SystemExit(2) from None


# The sweeps this process has launched (check_jobs), and those it has printed the end summary of:
# an interrupted sweep on Hydra's basic launcher never reaches on_multirun_end, and __main__
# prints it then (on Ctrl-C, or SIGTERM); the pool launcher prints its own on an interrupt.
STARTED: list[Path] = []
REPORTED: set[Path] = set()


def report_end(sweep_dir: Path, ended: bool = False) -> bool:
    """Print the one-screen end summary of a sweep, from its records; whether every job succeeded
    (SUCCEEDED: completed, or stopped by its early stopping).
    `ended`: the launcher has returned every job's result, so none is still running, wherever it ran.
    Never raises for what the records hold: a damaged file is named in its job's line."""
    if sweep_dir in REPORTED:
        return True
    try:
        known = read_sweep(sweep_dir)
    except SweepRefused as e:  # damaged since the sweep began
        print(f"\nsweep {sweep_dir}: no summary: {e}")
        return False
    if known is None:
        return True
    REPORTED.add(sweep_dir)
    states, lines = [], []
    slurm = submitted.slurm_ids(sweep_dir)
    for job in known["jobs"]:
        state, detail = job_state(sweep_dir / job["dir"], ended)
        if state == "missing" and job["num"] in slurm:  # queued, or ended before it started
            job_id = slurm[job["num"]]
            detail = f"no record; SLURM job {job_id}" + (
                f" ended before it started (log: .submitit/{job_id}/)" if ended else " not started yet"
            )
        states.append(state)
        if state not in ("completed", "stopped"):  # stopped: successive halving's, as it asked
            lines.append(f"  {job['num']:>4}  {state:<11} {' '.join(job['overrides'])}  {detail}")
    print(f"\nsweep {sweep_dir}: {tally(states, always=('completed',))}")
    for line in lines[:20]:
        print(line)
    if len(lines) > 20:
        print(f"  ... and {len(lines) - 20} more (python -m analysis status {sweep_dir})")
    print(f"report: python -m analysis {sweep_dir}")
    return all(s in SUCCEEDED for s in states)


def read_sweep(sweep_dir: Path) -> dict | None:
    """The sweep's sweep.json, None when there is none; a damaged one is refused in one line (the
    grid it lists decides which run dir is whose: guessing could resume a job into another's)."""
    path = sweep_dir / "sweep.json"
    advice = (
        "move it away to resume this sweep (each run dir is then checked against its job's config), "
        "or choose another hydra.sweep.dir"
    )
    try:
        known = json_object(path)
    except Damaged as damage:
        raise SweepRefused(f"{path} is damaged: it {damage}; {advice}") from None
    if known is None:
        return None
    jobs = known.get("jobs")
    if not isinstance(jobs, list):
        raise SweepRefused(f"{path} is damaged: it has no job list; {advice}")
    for i, job in enumerate(jobs):
        what = _bad_listed_job(job, i)
        if what:
            raise SweepRefused(f"{path} is damaged: job {i} of its list {what}; {advice}")
    return known


def _bad_listed_job(job, i: int) -> str | None:
    """What is wrong with entry `i` of sweep.json's job list, None if nothing."""
    if not isinstance(job, dict):
        return f"is {short(job)}, not an object with num, dir and overrides"
    if job.get("num") != i or type(job.get("num")) is not int:
        return f"has num {short(job.get('num'))}, not {i}"
    if not isinstance(job.get("dir"), str) or not job["dir"]:
        return f"has dir {short(job.get('dir'))}, not a path"
    overrides = job.get("overrides")
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        return f"has overrides {short(overrides)}, not a list of strings"
    return None


def job_state(run_dir: Path, ended: bool = False) -> tuple[str, str]:
    """(state, one-line detail) of a run dir from its record alone; `ended`: its job has returned
    (a SLURM job killed on another node leaves a record that only says it has not finished)."""
    try:
        summary = json_object(run_dir / "summary.json")
    except Damaged as damage:
        return "damaged", f"summary.json {damage}"
    if summary is not None:
        state = summary.get("status")
        if state not in STATUSES:
            return "damaged", f"summary.json has status {short(state)}, not one of {', '.join(STATUSES)}"
        if state == "completed":
            return state, f"test_acc {summary.get('final_test_acc')}"
        after = f"after {counted(summary.get('epochs_done'), 'epoch')}"
        if state == "stopped_early":  # sweeper/stopping.py says why
            return state, f"{after}, test_acc {summary.get('final_test_acc')}: {summary.get('stop_reason')}"
        if state == "stopped":
            return state, f"{after}, not promoted past rung {summary.get('rung')} by successive halving"
        if state == "paused":
            return state, f"{after} (trainer.until_epoch); a rerun resumes it"
        return state, str(
            summary.get("error") or f"{after}: {summary.get('stop_reason') or 'non-finite loss'}"
        )
    if not (run_dir / "config.json").exists():
        return "missing", "no record"
    # Another process on this host still trains it: another sweep into this dir, started
    # together with this one, whose job this sweep's job was refused.
    writer = live_writer(run_dir)
    if writer is not None:
        return "running", f"being trained by process {writer} on this host, in another sweep or run"
    try:
        job, damaged = json_object(run_dir / "job.json"), None
    except Damaged as damage:
        job, damaged = None, f"job.json {damage}"
    # Its process on this host has ended (or is this one, whose job returned) without a
    # summary: stopped (Ctrl-C, SIGTERM, a killed worker), and a rerun resumes it.
    if ended or (processes.on_this_host(job) and (job["pid"] == os.getpid() or not processes.alive(job))):
        try:
            epochs = len(complete_lines(run_dir / "metrics.jsonl"))  # a kill can cut the last short
        except OSError:
            epochs = 0
        return (
            "interrupted",
            f"stopped after {counted(epochs, 'epoch')}; a rerun into this sweep dir resumes it",
        )
    if damaged:  # nothing tells which process writes it, or whether one still does
        return "damaged", damaged
    return "running", "no summary yet"


# -- successive halving (hydra_plugins/sweeper_halving): its rungs, kept in sweep.json


def read_halving(sweep_dir: Path) -> dict | None:
    """sweep.json's `halving` record: the settings and each rung's epoch, jobs launched, their
    metric values and the jobs promoted; None when the sweep has none yet."""
    known = read_sweep(sweep_dir)
    record = None if known is None else known.get("halving")
    return record if isinstance(record, dict) else None


def write_halving(sweep_dir: Path, halving: dict) -> None:
    """Replace sweep.json's `halving` record, atomically (its job list stays as check_jobs wrote it)."""
    known = read_sweep(sweep_dir)
    if known is None:  # check_jobs writes it before any launch
        raise SweepRefused(f"{sweep_dir / 'sweep.json'} is missing: the halving record needs the job list")
    atomic_write(sweep_dir / "sweep.json", to_json({**known, "halving": halving}))


def mark_stopped(run_dir: Path, rung: int) -> None:
    """A configuration not promoted past rung `rung`: its summary (a pause's) says `stopped` and
    the rung, rewritten atomically; its metrics lines and checkpoint stay, so it can go on later."""
    summary = json_object(run_dir / "summary.json")
    if summary is None or (summary.get("status"), summary.get("rung")) == ("stopped", rung):
        return  # marked already (a rerun reads the rung back): untouched
    if summary.get("status") in ("paused", "stopped"):
        atomic_write(run_dir / "summary.json", to_json({**summary, "status": "stopped", "rung": rung}))

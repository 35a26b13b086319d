"""A run directory's lifecycle: everything a run does to its dir besides training in it.

Open (`open_record`): refuse a start that would mix results (`check_start`), skip a run that
already ended, resume an unfinished one from its checkpoint, or set an earlier attempt aside into
attempts/N/ and start over. Close (`close_record`, `refused`, `record_lost`): summary.json, last;
or none for a run that was stopped (`interrupted`, `stopped_by_cluster`), so that a rerun resumes it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib.metadata
import logging
import os
import platform
import shutil
import socket
import tempfile
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from sweeper import processes
from sweeper.runlog import RunLog, atomic_write
from sweeper.schema import flatten, renamed

# torch, and the modules that import it (build, data, metrics, validate), are imported where a
# run is opened or closed: the analysis imports this module for the lists below.
log = logging.getLogger("sweeper")

# What a run writes into its dir: a set-aside moves these (and its *.log) into attempts/N/.
RECORD_FILES = (
    "config.json",
    "job.json",
    "metrics.jsonl",
    "steps.jsonl",
    "losses.npz",
    "checkpoint.pt",
    "summary.json",
    "sample_losses",
)
# What summary.json's status can be.
STATUSES = ("completed", "stopped_early", "stopped", "diverged", "failed", "paused")
# A rerun of the same config would end the same way: skipped. stopped_early: sweeper/stopping.py.
ENDED = ("completed", "diverged", "stopped_early")
# Ended at trainer.until_epoch (paused), or there for good by hydra/sweeper=halving (stopped): a
# rerun that trains no further skips it, one with a later until_epoch resumes it from its checkpoint.
PAUSED = ("paused", "stopped")
# Ended as the sweep asks: trained to trainer.epochs, or stopped by early stopping or by halving.
SUCCEEDED = ("completed", "stopped_early", "stopped")


def kept_epochs(cfg: DictConfig) -> set[int]:
    """Epochs whose per-sample losses are kept: the configured ones that occur, and the last."""
    epochs = cfg.trainer.epochs
    return {int(e) for e in cfg.trainer.sample_loss_epochs if 1 <= e <= epochs} | {epochs}


def pause_epoch(cfg: DictConfig) -> int:
    """The epoch the run trains to this time: trainer.until_epoch, or null for trainer.epochs."""
    until = cfg.trainer.get("until_epoch")
    return cfg.trainer.epochs if until is None else int(until)


def versions() -> dict:
    import hydra
    import numpy
    import omegaconf
    import torch

    from sweeper import __version__

    try:  # the installed version, without importing torchvision (a fifth of a second) for it
        vision = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": vision,
        "hydra": hydra.__version__,
        "omegaconf": omegaconf.__version__,
        "numpy": numpy.__version__,
        "sweeper": __version__,
    }


# Keys that say how a run is carried out, not what it computes: a resume may change them.
NOT_COMPARED = {
    "trainer.resume",
    "data.cache_dir",
    "trainer.cuda_graph",
    "schedule._partial_",  # older records carry it
    "trainer.until_epoch",
    "trainer.objective",
}
# Keys added after records were written, with the value that does what a record without the key
# did: a resume compares them as that value, not as a different config. (diverge_factor 10 can
# only end a run whose train loss is 10x chance's or worse: an old record resumes under it.)
ADDED_KEYS = {
    "trainer.threads": "auto",
    "trainer.log_steps": False,
    "trainer.early_stopping": {"metric": None, "patience": 5, "min_delta": 0.0},
    "trainer.diverge_factor": 10,
    "trainer.diverge_epochs": 2,
    # what runs before the key trained with, written out: it stays so whatever today's default
    "loss": {"_target_": "torch.nn.CrossEntropyLoss", "name": "cross_entropy", "label_smoothing": 0.0},
    "trainer.metrics": ["acc"],
}


def under_todays_names(recorded: dict, current: dict) -> dict:
    """A recorded config with its renamed keys under today's names (schema.renamed): an older
    run's schedule.decay is compared as schedule.gamma, and resumes or is skipped as it was."""
    flat = flatten(recorded)
    today = renamed(flat, current=flatten(current))
    if list(today) == list(flat):
        return recorded
    nested: dict = {}
    for key, value in today.items():
        *parents, last = key.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return nested


def config_difference(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ, as "key: old -> new" lines, the recorded config's
    under today's names. A recorded config that is not a JSON object is damage, not a difference:
    [] (the start sets such a record aside; refusing would block every job of a sweep for it)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
    if not prefix:
        old = under_todays_names(old, new)
    keys = sorted(set(old) | set(new))
    diffs = []
    for k in keys:
        name = f"{prefix}{k}"
        a, b = old.get(k, ADDED_KEYS.get(name)), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_difference(a, b, name + ".")
        elif a != b and name not in NOT_COMPARED:
            diffs.append(f"{name}: {a!r} -> {b!r}")
    return diffs


# Where Hydra writes its copy of a run's config (config.yaml, hydra.yaml, overrides.yaml).
HYDRA_FILES = ".hydra"
# Where `python -m sweeper` has Hydra write it instead (hydra.output_subdir), since Hydra writes
# before the task runs: a run then refused or skipped would overwrite the record's .hydra/.
PENDING_HYDRA_FILES = ".hydra.pending-"


def recorded_config(run_dir: Path) -> dict | None:
    """The config.json of the record in `run_dir`; None when there is none, or it is damaged."""
    return processes.read_object(Path(run_dir) / "config.json")


def unwritable(path: Path) -> str | None:
    """Why a run (or a sweep) cannot write under `path` (or its nearest existing parent), in one
    line naming it; None when it can. It writes and removes a probe file: permissions alone do not
    show a read-only mount to root, nor a full disk."""
    path = Path(path).absolute()
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory, so {path} cannot be made"
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".sweeper-probe-")
    except OSError as err:
        return f"{existing} is not writable ({err.strerror})"
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * 4096)  # a full disk can still take an empty file, not a block
            f.flush()
            os.fsync(f.fileno())
    except OSError as err:
        return f"{existing} is not writable ({err.strerror})"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(probe)
    return None


def live_writer(run_dir: Path) -> int | None:
    """The pid of another process on this host still writing the unfinished run in `run_dir`, else
    None: two would corrupt its metrics.jsonl, or move the record out from under the other. Only
    this host's processes can be seen (docs/slurm.md)."""
    if (Path(run_dir) / "summary.json").exists():
        return None
    job = processes.read_job(run_dir)
    if not processes.on_this_host(job) or job["pid"] == os.getpid() or not processes.alive(job):
        return None
    return job["pid"]


def check_start(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse (ConfigError, one line) to start or resume `cfg` in `run_dir`: a live process still
    trains the run there, or (resuming) it holds a run of another config. Reads only: `python -m
    sweeper` calls it before Hydra writes anything, open_record again."""
    from sweeper.validate import ConfigError

    writer = live_writer(run_dir)
    if writer is not None:
        raise ConfigError(
            f"{run_dir} is being trained by process {writer} on this host; "
            "wait for it to end (or stop it), or use another output dir"
        )
    previous = recorded_config(run_dir)
    if previous is None:
        return  # no record (or a damaged one, which a start sets aside): nothing to mix with
    if cfg.trainer.resume:
        diff = config_difference(previous, OmegaConf.to_container(cfg, resolve=True))
        if diff:
            raise ConfigError(
                f"{run_dir} already holds a run of another config ({'; '.join(diff[:3])}); "
                "use another output dir, or trainer.resume=false to set the old record aside"
            )


# In attempts/N/ while a set-aside moves files there. A kill mid-move leaves it, and the next
# set-aside finishes the move into the same N: one attempt is never split over two.
UNFINISHED = ".unfinished"


@contextlib.contextmanager
def attempt_dir(parent: Path):
    """parent/attempts/N/ to move an earlier attempt into: an unfinished one's, or a new one, N one
    past the highest there."""
    attempts = parent / "attempts"
    unfinished = sorted(p for p in attempts.glob(f"*/{UNFINISHED}") if p.parent.name.isdigit())
    if unfinished:
        target = unfinished[0].parent
    else:
        n = 1 + max((int(p.name) for p in attempts.glob("*") if p.name.isdigit()), default=0)
        target = attempts / str(n)
        target.mkdir(parents=True)
        (target / UNFINISHED).touch()
    yield target
    (target / UNFINISHED).unlink(missing_ok=True)


def move_into(source: Path, target: Path) -> None:
    """Move `source` to `target`, or beside it (name.~2, name.~3, ...) if something of that name
    is there already (finishing an interrupted set-aside may meet one): never overwrites."""
    free, k = target, 1
    while free.exists() or free.is_symlink():
        k += 1
        free = target.with_name(f"{target.name}.~{k}")
    shutil.move(str(source), free)


def _set_aside(record: RunLog, hydra_files: bool = True) -> Path:
    """Move an earlier attempt's record into attempts/N/, with its logs (reopened: this attempt's
    lines start a new train.log) and its .hydra/ unless `hydra_files` is False (Hydra has written
    this attempt's own there)."""
    names = [*RECORD_FILES, *(p.name for p in record.dir.glob("*.log") if p.is_file())]
    names += [HYDRA_FILES] if hydra_files else []
    moved = set()
    with attempt_dir(record.dir) as target:
        for name in names:
            if (record.dir / name).exists():
                move_into(record.dir / name, target / name)
                moved.add((record.dir / name).resolve())
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() in moved:
            old = handler.setStream(handler._open())
            if old is not None:
                old.close()
    return target


def as_written_in_place(path: Path, pending: str) -> None:
    """Hydra's record of a run (hydra.yaml, multirun.yaml) as if it had written .hydra/ in place:
    replaying its overrides would otherwise write into a stale .hydra.pending-<pid>/."""
    try:
        text = path.read_text()
    except OSError:
        return
    lines = [line for line in text.splitlines(keepends=True) if f"hydra.output_subdir={pending}" not in line]
    fixed = "".join(lines).replace(f"output_subdir: {pending}", f"output_subdir: {HYDRA_FILES}")
    if fixed != text:
        atomic_write(path, fixed.encode())


def drop_pending(run_dir: Path, hydra_files: str | None) -> None:
    """Remove the .hydra files Hydra wrote for this invocation when its run does not start."""
    if hydra_files and hydra_files.startswith(PENDING_HYDRA_FILES):
        shutil.rmtree(Path(run_dir) / hydra_files, ignore_errors=True)


def drop_stale_pending(run_dir: Path) -> None:
    """Remove the pending .hydra files of invocations whose process has ended (killed before their
    run started): Hydra's copies of a config, never a run's record."""
    for pending in Path(run_dir).glob(f"{PENDING_HYDRA_FILES}*"):
        pid = pending.name.removeprefix(PENDING_HYDRA_FILES)
        if pid.isdigit() and int(pid) != os.getpid() and not processes.pid_alive(int(pid)):
            shutil.rmtree(pending, ignore_errors=True)


def open_record(
    cfg: DictConfig,
    run_dir: Path,
    overrides=(),
    job_num: int | None = None,
    hydra_files: str | None = HYDRA_FILES,
) -> tuple[RunLog, dict | None]:
    """Prepare `run_dir` for a (re)start; returns the record, and the summary if the run already ended.

    A record of the same config that ended (ENDED) is skipped, an unfinished one resumes from its
    checkpoint, any other (a `failed` one, a damaged one, or any with `trainer.resume=false`) is
    set aside and the run starts over. check_start's refusals raise ConfigError.

    `hydra_files` is where Hydra wrote this invocation's .hydra files: ".hydra" (in place), None
    (none), or a pending dir, which becomes .hydra/ when an attempt starts and is dropped when the
    run is refused, skipped or resumed (.hydra/ stays its start's).
    """
    from sweeper.validate import ConfigError

    run_dir = Path(run_dir)
    try:
        check_start(cfg, run_dir)
    except ConfigError:
        drop_pending(run_dir, hydra_files)
        raise
    drop_stale_pending(run_dir)
    record = RunLog(run_dir)
    config = OmegaConf.to_container(cfg, resolve=True)
    kept = kept_epochs(cfg)
    previous = record.read_json("config.json")
    old_job = record.read_json("job.json") or {}  # a damaged job.json only loses the restart count
    if "job.json" in record.damaged:
        log.info(
            "%s: job.json is damaged (%s); its restart count starts over", run_dir, record.damaged["job.json"]
        )
    elif previous is not None and not (run_dir / "job.json").exists():  # every start writes both
        log.info("%s: job.json is missing; its restart count starts over", run_dir)
    moves_hydra = hydra_files != HYDRA_FILES
    if previous is not None and cfg.trainer.resume:
        summary = record.read_json("summary.json")
        status = None if summary is None else summary.get("status")
        if status in ENDED:
            why = record.why_not_ended(summary, kept)
            if why is None:
                log.info("%s: already %s, skipping", run_dir, status)
                drop_pending(run_dir, hydra_files)
                return record, summary
            why = f"it ended {status}, but {why}"
        elif status in PAUSED:
            why = record.why_not_resumable(kept)
            if why is None and summary.get("epochs_done") == pause_epoch(cfg):
                log.info("%s: already %s after epoch %d, skipping", run_dir, status, pause_epoch(cfg))
                drop_pending(run_dir, hydra_files)
                return record, summary
            if why is None:  # it goes on: the pause's summary no longer says where the run is
                record.summary_path.unlink()
        elif summary is not None:
            why = "it failed" if status == "failed" else f"summary.json is damaged: status {status!r}"
        elif "summary.json" in record.damaged:
            why = f"summary.json is damaged: {record.damaged['summary.json']}"
        else:
            why = record.why_not_resumable(kept)
        if why is not None:
            log.info(
                "%s: earlier attempt set aside in %s (%s)", run_dir, _set_aside(record, moves_hydra), why
            )
    elif (
        previous is not None
        or any((run_dir / name).exists() for name in RECORD_FILES)
        or (moves_hydra and (run_dir / HYDRA_FILES).exists())  # an invocation that never started one
    ):
        # Without a readable config.json a record cannot be checked against this config: never resumed.
        if previous is not None:
            why = "trainer.resume=false"
        elif "config.json" in record.damaged:
            why = f"config.json is damaged: {record.damaged['config.json']}"
        else:
            why = "no config.json"
        log.info("%s: earlier record set aside in %s (%s)", run_dir, _set_aside(record, moves_hydra), why)
    pending = run_dir / hydra_files if hydra_files and hydra_files.startswith(PENDING_HYDRA_FILES) else None
    if pending is not None and pending.is_dir():
        if (run_dir / HYDRA_FILES).exists():  # a resume: .hydra/ stays that of the attempt's start
            drop_pending(run_dir, hydra_files)
        else:
            pending.rename(run_dir / HYDRA_FILES)
            as_written_in_place(run_dir / HYDRA_FILES / "hydra.yaml", hydra_files)
    record.write_config(config)
    restarts = old_job.get("restarts")
    restarts = restarts + 1 if type(restarts) is int and restarts >= 0 else 0
    env = os.environ
    record.write_job(
        {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_started": processes.process_started(os.getpid()),
            "slurm_job_id": env.get("SLURM_JOB_ID"),
            "slurm_array_job_id": env.get("SLURM_ARRAY_JOB_ID"),
            "slurm_array_task_id": env.get("SLURM_ARRAY_TASK_ID"),
            "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
            "overrides": list(overrides),
            "job_num": job_num,
            "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "restarts": restarts,
        }
    )
    return record, None


def close_record(record: RunLog, cfg: DictConfig, outcome: dict, error: Exception | None = None) -> dict:
    """Write summary.json, last: the outcome, the metrics' reductions, versions and any error."""
    import torch

    from sweeper import data as data_module
    from sweeper import metrics
    from sweeper.validate import ConfigError

    trace = None
    if error is not None:
        outcome = {**record.facts, **outcome, "status": "failed"}
        trace = "".join(traceback.format_exception(error))
        # A missing data set or a refused value is the user's to fix: one line, not a traceback.
        shown = f"{type(error).__name__}: {error}"
        one_line = isinstance(error, (data_module.DataError, ConfigError))
        log.error("run failed: %s", shown if one_line else f"{shown}\n{trace}")
    held_out = bool({**record.facts, **outcome}.get("n_val"))
    try:
        chosen = metrics.names(cfg.trainer)
    except ConfigError:  # refused at the start: the run failed before measuring anything
        chosen = ["acc"]
    try:
        reduced = metrics.summarize(record.read_metrics(), metrics.columns(chosen, held_out), held_out)
    except OSError:  # metrics.jsonl unreadable (what failed the run, maybe): the summary still ends it
        reduced = {}
    summary = {
        **outcome,
        **reduced,
        "epochs": cfg.trainer.epochs,
        "host": socket.gethostname(),
        # CPU figures depend on both: a 2-core laptop and a 64-core node give different time_s.
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # The run's (train's facts); a fused trial's, or a run failed before it set its own, the
        # count in effect as it closes.
        "threads": outcome.get("threads", torch.get_num_threads()),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "versions": versions(),
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "traceback": trace,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    record.write_summary(summary)
    return summary


def refused(cfg: DictConfig, run_dir: Path, overrides, job_num, hydra_files, error: Exception) -> str:
    """Record a sweep job refused where it runs (a SLURM node without the GPU it asks for) as a
    failed run with the refusal as its error; a completed run is left as it is. Its status."""
    record, ended = open_record(cfg, run_dir, overrides, job_num, hydra_files)
    if ended is not None:
        return ended["status"]
    return close_record(record, cfg, {}, error)["status"]


def record_lost(
    cfg: DictConfig,
    run_dir: Path,
    overrides,
    job_num: int,
    error: Exception,
    pid: int,
    started,
    resumable: bool,
) -> None:
    """Close the run of a job whose process (`pid`, started at `started`) ended without closing
    it, as a failed run. With `resumable` (the process died, rather than raised) a run that has a
    checkpoint is left unclosed, as a Ctrl-C leaves it: a rerun resumes it. Only a record that
    process opened is touched, not an earlier attempt's it had not yet taken over."""
    run_dir = Path(run_dir)
    if (run_dir / "summary.json").exists():  # the run had ended (or was skipped) before
        return
    if not (run_dir / "config.json").exists():  # it died before the run opened its record
        record, _ = open_record(cfg, run_dir, overrides, job_num)
        record.write_job({**record.read_json("job.json"), "pid": pid, "pid_started": started})
    else:
        record = RunLog(run_dir)
        job = record.read_json("job.json")
        if not isinstance(job, dict) or job.get("pid") != pid or job.get("host") != socket.gethostname():
            return
        if resumable and record.checkpoint_path.exists():
            log.warning("%s: %s; a rerun resumes it from its last checkpoint", run_dir, error)
            return
    close_record(record, cfg, {}, error)


def interrupted(error: BaseException) -> bool:
    """An error raised while an interrupt (Ctrl-C, a pool worker's SIGTERM) was being handled: one
    that lands inside library code can come out as that code's cleanup error (np.savez's zipfile)."""
    return any(isinstance(e, KeyboardInterrupt) for e in _chain(error))


def stopped_by_cluster(error: BaseException) -> bool:
    """submitit's "Job not requeued" (a SLURM time limit or preemption with no requeue left),
    raised from its signal handler wherever the run is: it stopped at its last checkpoint."""
    return any(
        type(e).__name__ == "UncompletedJobError" and type(e).__module__.startswith("submitit")
        for e in _chain(error)
    )


def _chain(error: BaseException | None):
    """The error and those it was raised while handling (or from), once each."""
    seen = set()
    while error is not None and id(error) not in seen:
        yield error
        seen.add(id(error))
        error = error.__context__ or error.__cause__

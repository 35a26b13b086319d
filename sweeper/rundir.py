"""A run directory's lifecycle: everything a run does to its dir besides training in it.

- open (`open_record`): refuse a start that would mix results (`check_start`: another config, a
  `live_writer`), skip a run that already ended, resume an unfinished one from its checkpoint, or
  set an earlier attempt aside and start over; write config.json and job.json.
- resume: decided here from the record (`config_difference` against its config.json, read under
  today's key names; what RunLog says is resumable); the training loop only loads the checkpoint.
- set aside (`_set_aside`): an earlier attempt's files move into attempts/N/ (`attempt_dir`,
  `move_into`), never deleted; this process's log files are reopened in the run dir.
- Hydra's .hydra/ files: written by `python -m sweeper` into a pending dir, moved into place once
  the run owns its dir, dropped when it is refused or skipped.
- close (`close_record`, `refused`, `record_lost` for a job whose process died): summary.json,
  last; or none for a run that was stopped (`interrupted`, `stopped_by_cluster`), so that a rerun
  resumes it.
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
from sweeper.schema import RENAMED_KEYS

# torch, and the modules that import it (build, data, metrics, validate), are imported where a
# run is opened or closed, not here: the analysis reads the statuses and record lists below (and
# sweeper.sweep's job_state) without paying for torch.
log = logging.getLogger("sweeper")

# What a run writes into its dir: a set-aside moves these (and the dir's *.log) into attempts/N/.
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


# kept_epochs and pause_epoch live here, not in the loop that also reads them: whether a record
# ended (is skipped) or must train on is decided from them when the run dir is opened.
def kept_epochs(cfg: DictConfig) -> set[int]:
    """Epochs whose per-sample losses are kept: the configured ones that occur, and the last."""
    epochs = cfg.trainer.epochs
    return {int(e) for e in cfg.trainer.sample_loss_epochs if 1 <= e <= epochs} | {epochs}


def pause_epoch(cfg: DictConfig) -> int:
    """The epoch the run trains to this time: trainer.until_epoch, or null for trainer.epochs."""
    until = cfg.trainer.get("until_epoch")
    return cfg.trainer.epochs if until is None else int(until)


def recorded_columns(cfg: DictConfig, facts: dict) -> list[str]:
    """The measured columns of a run's metrics lines: those of its trainer.metrics, with val's
    when it held a split out (facts: its summary's n_val)."""
    from sweeper import metrics
    from sweeper.validate import ConfigError

    try:
        chosen = metrics.names(cfg.trainer)
    except ConfigError:  # refused at the start: the run failed before measuring anything
        chosen = ["acc"]
    return metrics.columns(chosen, bool(facts.get("n_val")))


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


def job_info(overrides: list[str], job_num: int | None, restarts: int) -> dict:
    env = os.environ
    return {
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


# Keys that say how a run is carried out, not what it computes: a resume may change them.
# schedule._partial_: older records carry it.
NOT_COMPARED = {
    "trainer.resume",
    "data.cache_dir",
    "trainer.cuda_graph",
    "schedule._partial_",
    "trainer.until_epoch",
    "trainer.objective",
}
# Keys added after records were written, with the value that does what a record without the key
# did: a resume of such a record compares them as that value, not as a different config.
# trainer.diverge_factor is compared as its default (10), not as "none" as before it existed: an
# old sweep rerun with today's defaults resumes (or skips its ended runs) instead of being refused
# as another config; the threshold can only end a run whose train loss is 10x chance's or worse.
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


def _flat(config: dict, prefix: str = "") -> dict:
    """{dotted key: value} of a nested config."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, dict) and v:
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def under_todays_names(recorded: dict, current: dict) -> dict:
    """A recorded config with its renamed keys (schema.RENAMED_KEYS) under today's names, where
    the config it is compared with no longer has the former name: an older run's
    schedule.decay is compared as schedule.gamma, and resumes or is skipped as it was."""
    flat = _flat(recorded)
    former = {k for k in flat if k in RENAMED_KEYS} - set(_flat(current))
    if not former:
        return recorded
    nested: dict = {}
    for key, value in flat.items():
        *parents, last = (RENAMED_KEYS[key] if key in former else key).split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return nested


def config_difference(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ, as "key: old -> new" lines; the recorded config's
    renamed keys are compared under today's names (under_todays_names). A recorded config that
    is not a JSON object is damage, not a difference: [] (the start sets such a record aside,
    naming the file; refusing here would block every job of a sweep for one damaged file)."""
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
# What `python -m sweeper` makes Hydra write instead (hydra.output_subdir): Hydra writes before
# the task runs, so a run that is then refused or skipped would overwrite the record's .hydra/.
# open_record moves it to .hydra/ once the run owns its dir, and drops it otherwise.
PENDING_HYDRA_FILES = ".hydra.pending-"


def recorded_config(run_dir: Path) -> dict | None:
    """The config.json of the record in `run_dir`; None when there is none, or it is damaged
    (not JSON, not UTF-8, not a JSON object, unreadable): a start sets such a record aside."""
    return processes.read_object(Path(run_dir) / "config.json")


def unwritable(path: Path) -> str | None:
    """Why a run (or a sweep) cannot write under `path`, in one line naming the path: the path
    itself, or its nearest existing parent (where its dirs would be made), is not a directory,
    is read-only or not ours, or its disk is full. None when it can. It writes (and removes) one
    small probe file: permissions alone do not show a read-only mount to root, nor a full disk."""
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
    """The pid of another process on this host still writing the unfinished run in `run_dir`, else None.

    Two processes appending to one metrics.jsonl would corrupt the run, and a second one starting
    over would move the record out from under the first. Only this host's processes can be seen;
    on a cluster, wait until the earlier array has left the queue (docs/slurm.md). A pid reused
    by another process after a crash or reboot is told apart by its start time.
    """
    if (Path(run_dir) / "summary.json").exists():
        return None
    job = processes.read_job(run_dir)
    if not processes.on_this_host(job) or job["pid"] == os.getpid() or not processes.alive(job):
        return None
    return job["pid"]


def check_start(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse (ConfigError, one line) to start or resume `cfg` in `run_dir`: a live process still
    trains the run there, or (resuming) it holds a run of another config. Reads only, creates
    nothing: `python -m sweeper` calls it before Hydra writes anything, open_record again."""
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
    past the highest there. Marked unfinished until the block ends."""
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
    is there already: finishing an interrupted set-aside may meet one. Never overwrites."""
    free, k = target, 1
    while free.exists() or free.is_symlink():
        k += 1
        free = target.with_name(f"{target.name}.~{k}")
    shutil.move(str(source), free)


def _set_aside(record: RunLog, hydra_files: bool = True) -> Path:
    """Move an earlier attempt's record into attempts/N/: nothing a run produced is deleted.

    Its Hydra log (train.log) goes too, and its .hydra/ unless `hydra_files` is False (Hydra has
    already written this attempt's own there). The log is reopened here, so this attempt's lines
    start a new train.log instead of following the old file into attempts/N/."""
    names = [*RECORD_FILES, *(p.name for p in record.dir.glob("*.log") if p.is_file())]
    names += [HYDRA_FILES] if hydra_files else []
    moved = set()
    with attempt_dir(record.dir) as target:
        for name in names:
            if (record.dir / name).exists():
                move_into(record.dir / name, target / name)
                moved.add((record.dir / name).resolve())
    _reopen_logs(moved)
    return target


def _reopen_logs(moved: set[Path]) -> None:
    """Point this process's log files that were just moved away at a new file of the same name."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    for handler in {h for lg in loggers for h in lg.handlers}:
        if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).resolve() in moved:
            old = handler.setStream(handler._open())
            if old is not None:
                old.close()


def as_written_in_place(path: Path, pending: str) -> None:
    """Hydra's record of a run (hydra.yaml, multirun.yaml) as if it had written .hydra/ in place:
    the pending dir's name is an implementation detail, and replaying the record's overrides
    would otherwise write into a stale .hydra.pending-<pid>/."""
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
    """Remove the pending .hydra files of invocations whose process has ended (a kill before
    their run started or was refused): Hydra's copies of a config, never a run's record."""
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

    A run dir that already holds a record of the same config: one that ended (ENDED) is skipped,
    an unfinished one resumes from its checkpoint, a `failed` one is set aside and rerun.
    `trainer.resume=false` sets any earlier record aside and starts over. A different config, or
    a run a live process still trains, is refused (ConfigError) so that results never mix.

    `hydra_files` is where Hydra wrote this invocation's .hydra files (hydra.output_subdir):
    ".hydra" (written in place: nothing to settle), None (none written), or a pending dir, which
    becomes .hydra/ when an attempt starts (the earlier attempt's .hydra/ set aside with its
    record) and is dropped when the run is refused, skipped or resumed (.hydra/ is its start's).
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
        or (moves_hydra and (run_dir / HYDRA_FILES).exists())
    ):
        # Without a readable config.json a record cannot be checked against this config, so its
        # checkpoint is never resumed. (A .hydra/ without a record: an invocation that never
        # started one; kept all the same.)
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
    record.write_job(job_info(overrides, job_num, restarts=restarts))
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
        # A missing data set or a refused value is the user's to fix: one line. Anything else:
        # the whole traceback.
        shown = f"{type(error).__name__}: {error}"
        one_line = isinstance(error, (data_module.DataError, ConfigError))
        log.error("run failed: %s", shown if one_line else f"{shown}\n{trace}")
    try:
        reduced = metrics.summarize(
            record.read_metrics(),
            recorded_columns(cfg, {**record.facts, **outcome}),
            bool({**record.facts, **outcome}.get("n_val")),
        )
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
    it, as a failed run is closed: a rerun sets the attempt aside and trains it again. With
    `resumable` (the process died, rather than raised) a run that has a checkpoint is left
    unclosed instead, as a Ctrl-C leaves it: its epochs are sound, and a rerun resumes it. Only a
    record that process opened is touched: an earlier attempt's, which it had not yet taken over,
    is left as it was (resumable, or ended)."""
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
    """An error raised while an interrupt (Ctrl-C, a pool worker's SIGTERM) was being handled:
    one that lands inside library code can come out as that code's cleanup error (np.savez's
    zipfile: "Can't close the ZIP file while there is an open writing handle"), not as itself."""
    return any(isinstance(e, KeyboardInterrupt) for e in _chain(error))


def stopped_by_cluster(error: BaseException) -> bool:
    """submitit's "Job not requeued": a SLURM time limit (or preemption) reached with no requeue
    left, or under a preset that does not requeue. submitit raises it from its signal handler,
    wherever the run is; the run stopped at its last checkpoint, it did not fail."""
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

"""One training run: a flat epoch loop that writes the run record as it goes.

    python -m sweeper                         # the lecture's protocol, one run
    python -m sweeper data=synthetic trainer.epochs=5

Read `train()` top to bottom: set up, (resume), then per epoch: train on shuffled batches,
evaluate the full train and test sets, keep per-sample loss histograms, append one metrics line,
checkpoint. `run()` wraps it so that whatever happens -- completion, divergence, an exception --
the run dir ends with a summary.json that says so, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import importlib.metadata
import logging
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from sweeper import build, cuda_graph, host_memory, models, processes, stopping, trained
from sweeper import data as data_module
from sweeper.metrics import check as check_metrics
from sweeper.metrics import columns, epoch_line, evaluate, summarize
from sweeper.metrics import names as metric_names
from sweeper.runlog import RunLog, atomic_write
from sweeper.validate import ConfigError

log = logging.getLogger("sweeper")

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
# A rerun of the same config would end the same way: skipped. stopped_early: sweeper/stopping.py.
ENDED = ("completed", "diverged", "stopped_early")
# Ended at trainer.until_epoch (paused), or there for good by hydra/sweeper=halving (stopped): a
# rerun that trains no further skips it, one with a later until_epoch resumes it from its checkpoint.
PAUSED = ("paused", "stopped")


def pick_device(name: str) -> torch.device:
    """The run's device. A CUDA device gets its index and is made the current one: streams and
    CUDA-graph capture act on the current device, whatever device the tensors are on."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def run_device(name: str) -> torch.device:
    """pick_device, and what a training process on that device wants set once: cuDNN times its
    kernels for each new shape on CUDA; large freed buffers are kept for reuse on the CPU."""
    device = pick_device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif device.type == "cpu":
        host_memory.keep_freed_buffers()  # not page-faulted in again at every step
    return device


def use_threads(cfg: DictConfig) -> int:
    """Set and return the run's CPU thread count: trainer.threads, an int >= 1, or `auto` for the
    threads the process was given (every core alone, a pool worker's share, SLURM's
    cpus-per-task). CPU kernels reduce in an order that depends on it, so the same config gives
    bit-identical numbers only with the same count: it is recorded. run() gives the process its
    own count back after the run, so that a stated count never becomes the next run's `auto`."""
    threads = cfg.trainer.get("threads", "auto")
    if threads == "auto" or threads is None:
        threads = torch.get_num_threads()
    elif type(threads) is not int or threads < 1:
        raise ConfigError(f"trainer.threads={threads} is invalid: auto, or an int >= 1")
    torch.set_num_threads(threads)
    return threads


def kept_epochs(cfg: DictConfig) -> set[int]:
    """Epochs whose per-sample losses are kept: the configured ones that occur, and the last."""
    epochs = cfg.trainer.epochs
    return {int(e) for e in cfg.trainer.sample_loss_epochs if 1 <= e <= epochs} | {epochs}


def memory_format(cfg: DictConfig, device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) where it pays: on CPU it halves a convnet step (docs/benchmarks.md);
    on CUDA it pays with bf16 tensor cores and in a CUDA graph. It changes the layout, not the
    arithmetic."""
    choice = cfg.trainer.channels_last
    if choice == "auto":
        # Replayed as a CUDA graph, an fp32 step is about a quarter faster NHWC than NCHW; eager,
        # fp32 gains nothing there (docs/benchmarks.md).
        choice = device.type == "cpu" or cfg.trainer.precision == "bf16" or cuda_graph.wanted(cfg, device)
    return torch.channels_last if choice else torch.contiguous_format


def autocast_for(precision: str, device_type: str):
    """`with autocast():` for the run's precision: bf16 autocast, or nothing for fp32."""
    if precision != "bf16":
        return contextlib.nullcontext
    # No weight-cast cache: a CUDA graph must not capture a cache that outlives it.
    return functools.partial(torch.autocast, device_type, dtype=torch.bfloat16, cache_enabled=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Give every parameter group the step's rate (the schedule's value for the step); returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def validation_split(data) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The data's validation images and labels (data.val_size), or None when it holds none out."""
    val_x, val_y = getattr(data, "val_x", None), getattr(data, "val_y", None)
    return None if val_x is None or val_y is None or len(val_y) == 0 else (val_x, val_y)


def recorded_columns(cfg: DictConfig, facts: dict) -> list[str]:
    """The measured columns of a run's metrics lines: those of its trainer.metrics, with val's
    when it held a split out (facts: its summary's n_val)."""
    try:
        chosen = metric_names(cfg.trainer)
    except ConfigError:  # refused at the start: the run failed before measuring anything
        chosen = ["acc"]
    return columns(chosen, bool(facts.get("n_val")))


def train(cfg: DictConfig, record: RunLog) -> dict:
    threads = use_threads(cfg)
    device = run_device(cfg.trainer.device)
    torch.manual_seed(cfg.trainer.seed)
    layout = memory_format(cfg, device)
    data = data_module.stage(data_module.load(cfg.data).to(device), layout)
    model = build.model(cfg, data.in_channels, data.image_size, len(data.classes)).to(
        device, memory_format=layout
    )
    optimizer = build.optimizer(cfg, model.parameters())
    loss_fn = build.loss(cfg)
    chosen = check_metrics(metric_names(cfg.trainer), len(data.classes))  # top<k>: k <= classes
    val = validation_split(data)
    splits = {"train": (data.train_x, data.train_y), **({"val": val} if val else {})}
    splits["test"] = (data.test_x, data.test_y)
    measured = columns(chosen, val is not None)
    n_train, batch_size, epochs = len(data.train_y), cfg.trainer.batch_size, cfg.trainer.epochs
    steps_per_epoch = math.ceil(n_train / batch_size)
    lr_at = build.schedule(cfg, steps_per_epoch, steps_per_epoch * epochs)
    # One generator drives batch order and augmentation, so its state is all a resume needs.
    generator = torch.Generator(device=device).manual_seed(cfg.trainer.seed)
    autocast = autocast_for(cfg.trainer.precision, device.type)
    l1 = float(cfg.model.get("l1", 0.0))
    log_steps = bool(cfg.trainer.get("log_steps", False))  # steps.jsonl: each step's lr and loss
    keep = kept_epochs(cfg)
    graph = cuda_graph.wanted(cfg, device)
    info = {
        "n_params": models.n_params(model),
        "receptive_field_px": models.receptive_field_px(model, data.image_size),
        "n_train": n_train,
        "n_val": 0 if val is None else len(val[1]),
        "n_test": len(data.test_y),
        "metrics": chosen,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "cuda_graph": graph,
        "threads": threads,
        **trained.input_facts(data),  # what rebuilding and feeding the model needs (load_model)
    }
    record.facts = info  # the same dict: a summary after a failure reports what it says by then
    field = info["receptive_field_px"]
    log.info(
        "%s: %d params, receptive field %s, %d train / %d val / %d test images on %s, %d threads",
        build.model_name(cfg),
        info["n_params"],
        "not computed" if field is None else f"{field} px",
        n_train,
        info["n_val"],
        info["n_test"],
        info["device"],
        threads,
    )

    # Resume from the last finished epoch, dropping any record written after that checkpoint.
    start_epoch, step, samples, time_offset, rows = 0, 0, 0, 0.0, []
    checkpoint = record.load_checkpoint()
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        # The optimizer's state (momentum, ...). Its rate is set from the schedule at every step,
        # so a checkpoint of LambdaLR's time (with a "scheduler" entry) resumes the same way.
        optimizer.load_state_dict(checkpoint["optimizer"])
        generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoint["cpu_rng"])
        if device.type == "cuda" and "cuda_rng" in checkpoint:
            torch.cuda.set_rng_state(checkpoint["cuda_rng"], device)
        start_epoch = int(checkpoint["epoch"])
        rows = record.keep_epochs_up_to(start_epoch)
        if rows:
            step, samples, time_offset = rows[-1]["step"], rows[-1]["samples"], rows[-1]["time_s"]
        log.info("resuming after epoch %d from %s", start_epoch, record.checkpoint_path)
    else:
        record.keep_epochs_up_to(0)
    # Early stopping and the divergence threshold decide from the metrics lines alone: fed the
    # kept ones, a resumed run decides as the uninterrupted one did (and one stopped after its
    # last checkpoint, before its summary, ends here without training on).
    stop = stopping.Stopping(cfg.trainer, len(data.classes), measured)
    verdict = next(filter(None, map(stop.update, rows)), None)

    # On CUDA the whole step is captured once as a CUDA graph and replayed (sweeper/cuda_graph.py):
    # a small net's step is launch-bound. It needs the optimizer's state, so it is built after resume.
    if graph:
        graph_step = cuda_graph.Replay(
            cuda_graph.sgd_step(model, optimizer, autocast, l1, loss_fn),
            enabled=device.type == "cuda",
            required=cfg.trainer.cuda_graph is True,
        )
        lr_now = torch.zeros((), device=device)  # the step's rate, read by the graph at replay
    t_start = time.perf_counter()
    progress = Progress(epochs, steps_per_epoch)
    last_epoch = epochs if verdict is None else start_epoch  # a verdict already reached: train no more
    # trainer.until_epoch pauses the run there (hydra/sweeper=halving's rungs); the schedule stays
    # defined over trainer.epochs, so a paused run resumed goes on exactly as if never paused.
    last_epoch = min(last_epoch, pause_epoch(cfg))
    for epoch in range(start_epoch + 1, last_epoch + 1):
        t_epoch = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        step_losses = []  # trainer.log_steps: (step, lr, loss on the device), read back once per epoch
        for i, (x, y) in enumerate(
            data_module.train_batches(data, batch_size, generator, cfg.data.augment, layout)
        ):
            lr = set_lr(optimizer, lr_at(step))
            if graph:
                loss = graph_step(x, y, lr_now.fill_(lr))
            else:
                with autocast():
                    logits = model(x)
                loss = loss_fn.mean(logits.float(), y)
                if l1 > 0:
                    loss = loss + l1 * models.weight_l1(model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            # Accumulate on the device; reading it back every step would stall a GPU.
            loss_sum += loss.detach()
            step, samples = step + 1, samples + len(y)
            if log_steps:  # a copy: the CUDA graph's loss is one buffer, overwritten at each replay
                step_losses.append((step, lr, loss.detach().clone()))
            if i % 50 == 49 and not torch.isfinite(loss_sum):
                break  # diverged: no point finishing the epoch
            progress.update(epoch, i + 1, loss_sum, i + 1)

        eval_size = cfg.trainer.eval_batch_size
        results = {
            split: evaluate(model, x, y, data, eval_size, autocast, layout, loss_fn, chosen)
            for split, (x, y) in splits.items()
        }
        # One read back per epoch; it waits for the queued GPU work, so the epoch's time includes it.
        values = torch.cat(
            [torch.cat([mean.view(1), scores]) for _, mean, scores in results.values()]
        ).tolist()
        now = time.perf_counter()
        row = {
            "epoch": epoch,
            "step": step,
            "lr": lr,
            **dict(zip(measured, values, strict=True)),
            "samples": samples,
            "time_s": round(time_offset + now - t_start, 4),
            "epoch_time_s": round(now - t_epoch, 4),
        }
        finite = torch.isfinite(loss_sum) and all(math.isfinite(row[f"{s}_loss"]) for s in splits)
        verdict = stop.update(row) if finite else stopping.non_finite(epoch)
        if epoch in keep or verdict:  # a run's last epoch is always kept
            record.write_losses(
                epoch, results["train"][0], results["test"][0], cfg.trainer.keep_sample_losses
            )
        if step_losses:  # before the epoch's metrics line: a resume keeps the steps up to its step
            losses = torch.stack([loss for *_, loss in step_losses]).tolist()
            record.append_steps(
                [
                    {"step": s, "epoch": epoch, "lr": r, "loss": v}
                    for (s, r, _), v in zip(step_losses, losses, strict=True)
                ]
            )
        record.append_metrics(row)
        progress.epoch_done(row)
        if verdict is not None:
            log.warning(
                "epoch %d: %s, stopping this run (status %s)",
                epoch,
                verdict["stop_reason"],
                verdict["status"],
            )
        if verdict is not None and verdict["status"] == "diverged":
            break  # no checkpoint: its weights are not a result to go on from
        if cfg.trainer.checkpoint:
            state = {
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "generator": generator.get_state(),
                "cpu_rng": torch.get_rng_state(),
            }
            if device.type == "cuda":
                state["cuda_rng"] = torch.cuda.get_rng_state(device)
            record.save_checkpoint(state)
        if verdict is not None:
            break  # stopped early, its checkpoint saved: the weights it ends with
    if graph:
        info["cuda_graph"] = graph_step.enabled  # false after a failed capture, and on the CPU
    status = "paused" if verdict is None and last_epoch < epochs else "completed"
    return {"status": status, **(verdict or {}), **info}


def pause_epoch(cfg: DictConfig) -> int:
    """The epoch the run trains to this time: trainer.until_epoch, or null for trainer.epochs."""
    until = cfg.trainer.get("until_epoch")
    return cfg.trainer.epochs if until is None else int(until)


class Progress:
    """A live in-epoch line on a terminal; one log line per epoch everywhere (SLURM, CI, files)."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.live = sys.stderr.isatty()
        self.last = 0.0

    def update(self, epoch, step, loss_sum, n):
        if not self.live or time.perf_counter() - self.last < 0.25:
            return
        self.last = time.perf_counter()
        bar = "#" * (20 * step // self.steps)
        sys.stderr.write(
            f"\repoch {epoch}/{self.epochs} [{bar:<20}] {step}/{self.steps} loss {loss_sum.item() / n:.4f}"
        )
        sys.stderr.flush()

    def epoch_done(self, row):
        if self.live:
            sys.stderr.write("\r" + " " * 70 + "\r")
        log.info("%s", epoch_line(row, self.epochs))


def versions() -> dict:
    import hydra
    import numpy
    import omegaconf

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
# Keys whose change does not change what a resumed run computes. schedule._partial_: records
# written before schedules were built as factories carry it.
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
    "loss": build.CROSS_ENTROPY,
    "trainer.metrics": ["acc"],
}


def config_difference(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The keys (dotted) whose values differ, as "key: old -> new" lines. A recorded config that
    is not a JSON object is damage, not a difference: [] (the start sets such a record aside,
    naming the file; refusing here would block every job of a sweep for one damaged file)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return []
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


def check_start(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse (ConfigError, one line) to start or resume `cfg` in `run_dir`: a live process still
    trains the run there, or (resuming) it holds a run of another config. Reads only, creates
    nothing: `python -m sweeper` calls it before Hydra writes anything, open_record again."""
    writer = processes.live_writer(run_dir)
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
        reduced = summarize(
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


def run(
    cfg: DictConfig,
    run_dir: Path,
    overrides=(),
    job_num: int | None = None,
    hydra_files: str | None = HYDRA_FILES,
) -> dict:
    """Train (or resume, or skip) the run in `run_dir`; always leaves a summary.json when it ends.
    A refusal (open_record) raises ConfigError and leaves the run dir as it was."""
    record, ended = open_record(cfg, run_dir, overrides, job_num, hydra_files)
    if ended is not None:
        return ended
    given = torch.get_num_threads()
    try:
        return close_record(record, cfg, train(cfg, record))
    except Exception as e:  # recorded, not raised: one job's failure must not stop a sweep
        if interrupted(e):
            raise KeyboardInterrupt from e  # no summary: the run stopped, and a rerun resumes it
        if stopped_by_cluster(e):
            raise  # no summary either; submitit records the job as ended without a result
        return close_record(record, cfg, {}, e)
    finally:
        torch.set_num_threads(given)  # the process's own again, for its next run's `auto`


def refused(cfg: DictConfig, run_dir: Path, overrides, job_num, hydra_files, error: Exception) -> str:
    """Record a sweep job refused where it runs (a SLURM node without the GPU it asks for) as a
    failed run with the refusal as its error; a completed run is left as it is. Its status."""
    record, ended = open_record(cfg, run_dir, overrides, job_num, hydra_files)
    if ended is not None:
        return ended["status"]
    return close_record(record, cfg, {}, error)["status"]


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

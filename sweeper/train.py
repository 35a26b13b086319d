"""One training run: a flat epoch loop that writes the run record as it goes.

    python -m sweeper                         # the lecture's protocol, one run
    python -m sweeper data=synthetic trainer.epochs=5

Read `train()` top to bottom: set up, (resume), then per epoch: train on shuffled batches,
evaluate the full train and test sets, keep per-sample loss histograms, append one metrics line,
checkpoint. `run()` wraps it so that whatever happens -- completion, divergence, an exception --
the run dir ends with a summary.json that says so, and the sweep goes on. What happens to the run
dir itself (open, skip, resume, set aside, close) is sweeper/rundir.py's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweeper import build, cuda_graph, host_memory, models, stopping, trained
from sweeper import data as data_module
from sweeper.metrics import check as check_metrics
from sweeper.metrics import columns, epoch_line, evaluate
from sweeper.metrics import names as metric_names
from sweeper.rundir import (
    HYDRA_FILES,
    close_record,
    interrupted,
    kept_epochs,
    open_record,
    pause_epoch,
    stopped_by_cluster,
)
from sweeper.runlog import RunLog
from sweeper.validate import ConfigError

log = logging.getLogger("sweeper")


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

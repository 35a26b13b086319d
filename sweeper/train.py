"""Training: one epoch loop that writes the run record as it goes.

`run()` -> `train()` -> `train_trials()`: set up, (resume), then per epoch: train on shuffled
batches (`Solo.step`, whose SGD update is cuda_graph.sgd_update), evaluate every split, write
the record, decide early stopping, checkpoint. Fused trials (sweeper/fused.py) run the same loop
with their wide net as the engine. `run()` leaves a summary.json whatever happens, so that the
sweep goes on; the run dir's lifecycle (open, skip, resume, set aside, close) is sweeper/rundir.py's.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import sys
import time
from operator import itemgetter
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


def use_threads(cfg: DictConfig) -> int:
    """Set and return the run's CPU thread count: trainer.threads, or `auto` for the threads the
    process was given (a pool worker's share, SLURM's cpus-per-task). CPU kernels reduce in an
    order that depends on it, so bit-identical numbers need the same count: it is recorded."""
    threads = cfg.trainer.get("threads", "auto")
    if threads == "auto" or threads is None:
        threads = torch.get_num_threads()
    elif type(threads) is not int or threads < 1:
        raise ConfigError(f"trainer.threads={threads} is invalid: auto, or an int >= 1")
    torch.set_num_threads(threads)
    return threads


def memory_format(cfg: DictConfig, device: torch.device) -> torch.memory_format:
    """channels_last (NHWC) where it pays (docs/benchmarks.md): on the CPU, with bf16, and in a
    CUDA graph; eager fp32 CUDA gains nothing. It changes the layout, not the arithmetic."""
    choice = cfg.trainer.channels_last
    if choice == "auto":
        choice = device.type == "cpu" or cfg.trainer.precision == "bf16" or cuda_graph.wanted(cfg, device)
    return torch.channels_last if choice else torch.contiguous_format


def autocast_for(precision: str, device_type: str):
    """`with autocast():` for the run's precision."""
    if precision != "bf16":
        return contextlib.nullcontext
    # No weight-cast cache: a CUDA graph must not capture a cache that outlives it.
    return functools.partial(torch.autocast, device_type, dtype=torch.bfloat16, cache_enabled=False)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> float:
    """Give every parameter group the step's rate; returns it."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


class Solo:
    """One run's model and optimizer, as train_trials drives them (fused.Fused is the other
    engine): step a batch, evaluate a split, give its checkpoint state."""

    def __init__(self, cfgs, data, device, layout, autocast, checkpoints):
        (cfg,) = cfgs
        self.autocast, self.layout, self.data, self.device = autocast, layout, data, device
        self.model = build.model(cfg, data.in_channels, data.image_size, len(data.classes))
        self.model = self.model.to(device, memory_format=layout)
        self.optimizer = build.optimizer(cfg, self.model.parameters())
        self.loss_fn = build.loss(cfg)
        if checkpoints[0] is not None:
            self.model.load_state_dict(checkpoints[0]["model"])
            self.optimizer.load_state_dict(checkpoints[0]["optimizer"])  # momentum; the rate is set per step
        self.metrics = check_metrics(metric_names(cfg.trainer), len(data.classes))  # top<k>: k <= classes
        # SGD's update is cuda_graph.sgd_update, eager or captured as a CUDA graph (a small net's
        # step is launch-bound); other optimizers are torch's. `wanted` implies plain SGD.
        graph = cuda_graph.wanted(cfg, device)
        make = cuda_graph.sgd_step if cuda_graph.plain_sgd(cfg) is None else cuda_graph.optimizer_step
        fn = make(self.model, self.optimizer, autocast, float(cfg.model.get("l1", 0.0)), self.loss_fn)
        self.step_fn = cuda_graph.Replay(
            fn, enabled=graph and device.type == "cuda", required=cfg.trainer.cuda_graph is True
        )
        self.lr_now = torch.zeros((), device=device) if graph else None  # the rate a graph reads at replay
        self.facts = {"cuda_graph": graph}

    def start_epoch(self, rates: list[list[float]]):
        self.model.train()
        self.rates = rates

    def step(self, x, y, i: int) -> torch.Tensor:
        lr = set_lr(self.optimizer, self.rates[i][0])
        return self.step_fn(x, y, lr if self.lr_now is None else self.lr_now.fill_(lr)).view(1)

    def evaluate(self, x, y, eval_size: int):
        losses, mean, scores = evaluate(
            self.model, x, y, self.data, eval_size, self.autocast, self.layout, self.loss_fn, self.metrics
        )
        return losses[None], mean.view(1), scores[None]

    def state(self, t: int) -> dict:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()}
        if self.device.type == "cuda":  # dropout's masks on the device
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state


def train(cfg: DictConfig, record: RunLog) -> dict:
    """One run: the one-trial case of train_trials."""
    return train_trials([cfg], [record])[0]


def train_trials(cfgs, records: list[RunLog], checkpoints=None, engine=Solo) -> list[dict]:
    """Train one run, or fused trials (engine=fused.Fused); returns each one's outcome.

    All start from scratch or resume from checkpoints of one epoch (`checkpoints`, or None to
    load the records'). A fused trial whose record cannot be written fails alone (its outcome
    holds the exception under "error") and the others go on."""
    checkpoints = checkpoints or [record.load_checkpoint() for record in records]
    start = {int(c["epoch"]) if c is not None else 0 for c in checkpoints}
    if len(start) != 1:
        raise ValueError(f"fused trials must start from one epoch, not {sorted(start)}")
    (start_epoch,) = start
    cfg, n = cfgs[0], len(cfgs)  # what fused trials share (fused.fusable): cfg's
    threads = use_threads(cfg)
    device = pick_device(cfg.trainer.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # cuDNN times its kernels for each new shape
    elif device.type == "cpu":
        host_memory.keep_freed_buffers()  # large buffers are not page-faulted in again at every step
    torch.manual_seed(cfg.trainer.seed)
    layout = memory_format(cfg, device)
    autocast = autocast_for(cfg.trainer.precision, device.type)
    data = data_module.stage(data_module.load(cfg.data).to(device), layout)
    trials = engine(cfgs, data, device, layout, autocast, checkpoints)
    val_y = getattr(data, "val_y", None)  # data.val_size's held-out split, if any
    val = (data.val_x, val_y) if val_y is not None and len(val_y) else None
    splits = {"train": (data.train_x, data.train_y), **({"val": val} if val else {})}
    splits["test"] = (data.test_x, data.test_y)
    measured = columns(trials.metrics, val is not None)
    n_train, batch_size, epochs = len(data.train_y), cfg.trainer.batch_size, cfg.trainer.epochs
    steps_per_epoch = math.ceil(n_train / batch_size)
    lr_at = [build.schedule(c, steps_per_epoch, steps_per_epoch * epochs) for c in cfgs]
    # One generator per trial drives batch order and augmentation, so its state is all a resume
    # needs. Trials of one seed draw the same batches in their solo runs: drawn once for all.
    generators = [torch.Generator(device=device).manual_seed(c.trainer.seed) for c in cfgs]
    if start_epoch:
        for generator, checkpoint in zip(generators, checkpoints, strict=True):
            generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoints[0]["cpu_rng"])
        if device.type == "cuda" and "cuda_rng" in checkpoints[0]:
            torch.cuda.set_rng_state(checkpoints[0]["cuda_rng"], device)
    shared = all(torch.equal(g.get_state(), generators[0].get_state()) for g in generators)
    generators = generators[:1] * n if shared else generators
    log_steps = bool(cfg.trainer.get("log_steps", False))  # steps.jsonl: each step's rate and loss
    keep = kept_epochs(cfg)
    info = {
        "n_params": models.n_params(trials.model),
        "receptive_field_px": models.receptive_field_px(trials.model, data.image_size),
        "n_train": n_train,
        "n_val": 0 if val is None else len(val[1]),
        "n_test": len(data.test_y),
        "metrics": trials.metrics,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        **trials.facts,
        "threads": threads,
        **trained.input_facts(data),  # what rebuilding and feeding the model needs (load_model)
    }
    for record in records:
        record.facts = info  # the same dict: a summary after a failure reports what it says by then
    field = info["receptive_field_px"]
    log.info(
        "%s: %d params, receptive field %s, %d train / %d val / %d test images on %s, %d threads%s",
        build.model_name(cfg), info["n_params"], "not computed" if field is None else f"{field} px", n_train,
        info["n_val"], info["n_test"], info["device"], threads, f", {n} trials fused" if n > 1 else "",
    )  # fmt: skip

    # Each record as its checkpoint left it (a line written after it is dropped). Early stopping
    # and the divergence threshold decide from the metrics lines alone: fed the kept ones, a
    # resumed run decides as the uninterrupted one did (and one stopped after its last
    # checkpoint, before its summary, ends here without training on).
    rows = [record.keep_epochs_up_to(start_epoch) for record in records]
    step, samples, time_offset = (
        (0, 0, 0.0) if not rows[0] else itemgetter("step", "samples", "time_s")(rows[0][-1])
    )
    if start_epoch:
        log.info("resuming after epoch %d from %s", start_epoch, records[0].checkpoint_path)
    stops = [stopping.Stopping(c.trainer, len(data.classes), measured) for c in cfgs]
    verdicts = [
        next(filter(None, map(stop.update, kept)), None) for stop, kept in zip(stops, rows, strict=True)
    ]
    status = [v["status"] if v else "completed" for v in verdicts]
    errors: dict[int, Exception] = {}
    t_start = time.perf_counter()
    progress = Progress(epochs, steps_per_epoch)
    # trainer.until_epoch pauses the run there (hydra/sweeper=halving's rungs); the schedule stays
    # defined over trainer.epochs, so a paused run resumed goes on exactly as if never paused.
    for epoch in range(start_epoch + 1, pause_epoch(cfg) + 1):
        if "completed" not in status:
            break  # every trial has ended (an ended fused trial's weights train on, unrecorded)
        active = torch.tensor([s == "completed" for s in status], device=device)
        t_epoch = time.perf_counter()
        # The epoch's rates, asked of the schedule as it starts (not the run's: epochs=1e9).
        rates = [[at(s) for at in lr_at] for s in range(step, step + steps_per_epoch)]
        trials.start_epoch(rates)
        loss_sum = torch.zeros(n, device=device)
        step_losses = []  # trainer.log_steps: (step, rates, losses on the device), read back once per epoch
        batches = [
            data_module.train_batches(data, batch_size, g, cfg.data.augment, layout)
            for g in generators[: 1 if shared else n]
        ]
        for i, drawn in enumerate(zip(*batches, strict=True)):
            xs, ys = zip(*drawn, strict=True)
            x, y = (xs[0], ys[0]) if shared else (torch.stack(xs), torch.stack(ys))
            loss = trials.step(x, y, i)
            # Accumulated on the device; reading it back every step would stall a GPU.
            loss_sum += loss
            step, samples = step + 1, samples + len(ys[0])
            if log_steps:  # a copy: a CUDA graph's loss is one buffer, overwritten at each replay
                step_losses.append((step, rates[i], loss.clone()))
            if i % 50 == 49 and not torch.isfinite(loss_sum[active]).any():
                break  # diverged: no point finishing the epoch
            progress.update(epoch, i + 1, loss_sum[0])

        results = {s: trials.evaluate(x, y, cfg.trainer.eval_batch_size) for s, (x, y) in splits.items()}
        # One read back per epoch; it waits for the queued GPU work, so the epoch's time includes it.
        values = torch.cat([torch.cat([mean[:, None], scores], 1) for _, mean, scores in results.values()], 1)
        values, finite = values.tolist(), torch.isfinite(loss_sum).tolist()
        step_values = torch.stack([loss for *_, loss in step_losses]).tolist() if step_losses else []
        now = time.perf_counter()
        progress.clear()
        for t, record in enumerate(records):
            if status[t] != "completed":
                continue  # ended earlier: its record ended there
            row = {
                "epoch": epoch,
                "step": step,
                "epoch_lr": rates[i][t],  # the epoch's last step's
                **dict(zip(measured, values[t], strict=True)),
                "samples": samples,
                "time_s": round(time_offset + now - t_start, 4),
                "epoch_time_s": round(now - t_epoch, 4),
            }
            ok = finite[t] and all(math.isfinite(row[f"{s}_loss"]) for s in splits)
            verdict = stops[t].update(row) if ok else stopping.non_finite(epoch)
            try:
                if epoch in keep or verdict:  # a run's last epoch is always kept
                    record.write_losses(
                        epoch,
                        results["train"][0][t],
                        results["test"][0][t],
                        cfgs[t].trainer.keep_sample_losses,
                    )
                if step_values:  # before the epoch's metrics line: a resume keeps the steps up to its step
                    record.append_steps(
                        [
                            {"step": s, "epoch": epoch, "step_lr": r[t], "loss": v[t]}
                            for (s, r, _), v in zip(step_losses, step_values, strict=True)
                        ]
                    )
                record.append_metrics(row)
                # A diverged run keeps no checkpoint: its weights are not a result to go on from.
                if cfgs[t].trainer.checkpoint and not (verdict and verdict["status"] == "diverged"):
                    # The batch generator and the process's random state (dropout's) resume the run.
                    state = {"epoch": epoch, **trials.state(t), "step": step}
                    state |= {"generator": generators[t].get_state(), "cpu_rng": torch.get_rng_state()}
                    record.save_checkpoint(state)
            except Exception as err:
                if n == 1 or interrupted(err):
                    raise  # a run's own failure: run() records it
                status[t], errors[t] = "failed", err
                log.error("trial %s failed at epoch %d: %s: %s", record.dir, epoch, type(err).__name__, err,
                          extra={"trial": record.dir})  # fmt: skip
                continue
            prefix = f"{record.dir.name}: " if n > 1 else ""
            log.info("%s%s", prefix, epoch_line(row, epochs), extra={"trial": record.dir})
            if verdict is not None:
                status[t], verdicts[t] = verdict["status"], verdict
                log.warning("%sepoch %d: %s, stopping this run (status %s)", prefix, epoch, verdict["stop_reason"],
                            verdict["status"], extra={"trial": record.dir})  # fmt: skip
    info["cuda_graph"] = trials.step_fn.enabled  # false after a failed capture
    if pause_epoch(cfg) < epochs:
        status = ["paused" if s == "completed" else s for s in status]
    return [
        {"status": s, **(verdicts[t] or {}), **info, **({"error": errors[t]} if t in errors else {})}
        for t, s in enumerate(status)
    ]


class Progress:
    """A live in-epoch line on a terminal (one log line per epoch everywhere: the loop's)."""

    def __init__(self, epochs: int, steps_per_epoch: int):
        self.epochs, self.steps = epochs, steps_per_epoch
        self.live = sys.stderr.isatty()
        self.last = 0.0

    def update(self, epoch, step, loss_sum):
        if not self.live or time.perf_counter() - self.last < 0.25:
            return
        self.last = time.perf_counter()
        bar = "#" * (20 * step // self.steps)
        sys.stderr.write(
            f"\repoch {epoch}/{self.epochs} [{bar:<20}] {step}/{self.steps} loss {loss_sum.item() / step:.4f}"
        )
        sys.stderr.flush()

    def clear(self):
        if self.live:
            sys.stderr.write("\r" + " " * 70 + "\r")


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

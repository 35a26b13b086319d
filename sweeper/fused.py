"""Several trials of one architecture trained as one program, a kernel per layer for all of them.

A small convnet cannot fill a GPU, and its step is bound by kernel launches, not arithmetic.
Trials that share the architecture, the data and the trainer -- and differ only in optimisation
hyper-parameters (lr, schedule, momentum, weight decay), seed and what their records keep -- are
stacked along a leading trial dimension and run through one wide copy of the net
(sweeper/stacked.py: grouped convolutions, batched matmuls), so one launch does the work of all
of them. Each trial keeps its own initialisation, batch order and augmentation (its own seed),
its own learning-rate schedule, and writes its own complete run record, in the same format and
with the same checkpoints as a solo run (an interrupted group resumes as a group, and any of its
trials can resume alone). Its curves
are those of the same trial run alone, computed by other kernels: each step differs from the solo
step by float32 rounding (bf16's, with trainer.precision=bf16). Training amplifies such
differences where it is unstable: at lr=0.01 a fused trial matched its solo run to 1e-7, at
lr=0.2 its train loss was 1% off by epoch 2 -- as two solo runs on different hardware would be.
Trials that share a seed share their batches: one is drawn for all. Each trial ends by its own
early stopping and divergence threshold (sweeper/stopping.py), at the epoch its solo run would.

    python -m sweeper -m hydra/launcher=pool hydra.launcher.fuse=true lr=0.2,0.1,0.01 trainer.seed=0,1,2

What fuses is a whitelist of what the fused step computes exactly: torch.optim.SGD, named by its
`_target_`, with any momentum, nesterov and weight decay and its other arguments at their
defaults; any schedule (each trial's rates are the function its solo run uses); model.l1; plain
cross-entropy (no label smoothing) and trainer.metrics=[acc], evaluated on train, test and any
validation split; and a model of the layer classes stacked.widen stacks -- no batch norm (running
statistics cannot be stacked simply), no dropout (its masks could not follow the solo runs'), no
class of the user's (its forward may compute anything). `fusable()` says why a job cannot be
fused, and such a job runs solo (a config of another Hydra app too), the reason logged.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, stack_module_state

from sweeper import build, cuda_graph, metrics, models, stacked, stopping, trained
from sweeper import data as data_module
from sweeper.rundir import (
    close_record,
    interrupted,
    kept_epochs,
    open_record,
    pause_epoch,
    stopped_by_cluster,
)
from sweeper.runlog import RunLog
from sweeper.train import autocast_for, log, memory_format, run_device

# What may differ between the trials of one fused group: their optimisation, their seed, what
# each one's record keeps (each trial writes its own), and when each one ends (its own Stopping).
PER_TRIAL = {"lr", "schedule", "optim"}
PER_TRIAL_TRAINER = {
    "seed", "keep_sample_losses", "checkpoint", "resume", "early_stopping", "diverge_factor", "diverge_epochs"
}  # fmt: skip


# Whose run a line logged now is about. The group's own lines (None) go to every trial's
# train.log; a line about one trial (its skip, its set-aside, its solo resume, its epoch) to that
# trial's only: the `trial` attribute of the record (log.info(..., extra={"trial": dir})), or
# the owner run_group sets around a trial's own work.
LOG_OWNER: contextvars.ContextVar[Path | None] = contextvars.ContextVar("LOG_OWNER", default=None)


class TrialLog(logging.Filter):
    """On a trial's train.log handler: keep the group's lines and this trial's, not another's."""

    def __init__(self, run_dir: Path):
        super().__init__()
        self.run_dir = Path(run_dir)

    def filter(self, record: logging.LogRecord) -> bool:
        owner = getattr(record, "trial", None) or LOG_OWNER.get()
        return owner is None or Path(owner) == self.run_dir


@contextlib.contextmanager
def owned_by(run_dir: Path):
    token = LOG_OWNER.set(Path(run_dir))
    try:
        yield
    finally:
        LOG_OWNER.reset(token)


def _shared(cfg: DictConfig) -> dict:
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree = {k: v for k, v in tree.items() if k not in PER_TRIAL}
    tree["trainer"] = {k: v for k, v in tree["trainer"].items() if k not in PER_TRIAL_TRAINER}
    return tree


# The sections of the project's training config that train_group reads: a config without them
# (another Hydra app's) is not a training this module can run.
SECTIONS = ("lr", "model", "optim", "schedule", "data", "trainer")


def fusable(cfgs: list[DictConfig]) -> str | None:
    """None when the configs can train as one program, else the reason they cannot.

    What fuses is a whitelist of what train_group computes exactly as the solo run does:
    torch.optim.SGD's update with the arguments cuda_graph.capturable admits (the same update,
    written per trial); any schedule (the very function build.schedule gives the solo run);
    model.l1; and a model every layer of which stacked.widen stacks. Anything else runs alone."""
    for c in cfgs:
        missing = [k for k in SECTIONS if not isinstance(c, DictConfig) or k not in c]
        if missing:
            return f"not a training config of this project (no {', '.join(missing)})"
        if not build.plain_cross_entropy(c):
            loss = build.loss_config(c)
            arguments = {k: v for k, v in loss.items() if k not in build.NOT_ARGUMENTS}
            return f"fused trials compute plain cross-entropy only, not loss={arguments}"
        chosen = c.trainer.get("metrics")
        if chosen is not None and list(chosen) != ["acc"]:
            return f"fused trials measure trainer.metrics=[acc] only, not {list(chosen)}"
        reason = cuda_graph.capturable(c)  # the same update is written here, per trial
        if reason:
            return f"fused trials need plain optim=sgd ({reason})"
    if cfgs[0].trainer.get("log_steps", False):  # shared by all (trainer is), so the first says
        return "trainer.log_steps: fused trials do not write steps.jsonl"
    if cfgs[0].model.get("batch_norm", False):
        return "fused trials need model.batch_norm=false"
    if cfgs[0].model.get("dropout", 0) > 0:  # masks drawn for T trials cannot follow each solo run's
        return "fused trials need model.dropout=0"  # random stream, so their curves would not match
    first = _shared(cfgs[0])
    if any(_shared(c) != first for c in cfgs[1:]):
        return (
            "fused trials must share model, data and trainer (all but trainer.seed and what the records keep)"
        )
    try:  # the net's layers, built without memory: can one wide net compute every trial?
        with torch.device("meta"):
            # Only the layers' classes matter here, not the data's shape.
            net = build.model(cfgs[0], 3, data_module.IMAGE_SIZE, 10)
    except Exception as e:  # its solo run reports this as its failure
        return f"its model cannot be built: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    dropout = [m.p for m in net.modules() if isinstance(m, torch.nn.Dropout) and m.p > 0]
    if dropout:  # a user's net without a model.dropout key
        return f"fused trials cannot follow a Dropout layer's masks (p={dropout[0]})"
    try:
        stacked.widen(net, 2)
    except stacked.UnsupportedLayer as e:
        return str(e)
    return None


def _per_trial(values, like: torch.Tensor) -> torch.Tensor:
    """A (T,) vector of per-trial scalars, shaped to broadcast against a stacked (T, ...) tensor."""
    return torch.tensor(values, dtype=like.dtype, device=like.device).view(-1, *([1] * (like.dim() - 1)))


def trial_sgd(wide, params: dict, buffers: dict, momentum, nesterov, decay, l1: float, autocast=None):
    """The trials' forward and training step over their stacked parameters (updated in place).

    forward(x) -> logits [T, B, classes], from images [B, C, H, W] shared by every trial or
    [T, B, C, H, W]; step(x, y, lr) -> per-trial losses [T], with lr a [T] device tensor, does
    torch.optim.SGD's update for each trial with its own momentum, nesterov and weight decay.
    Returns (forward, step, velocity): the momentum buffers, by parameter name, for checkpoints.
    `autocast` (train.autocast_for's) wraps the step's forward, as the solo step's; the loss is
    taken in float32, as there.
    """
    autocast = autocast or contextlib.nullcontext
    n_trials = len(momentum)
    velocity = {k: torch.zeros_like(p) for k, p in params.items()} if any(momentum) else {}
    any_decay = any(decay)
    # The constant per-trial hyper-parameters, shaped once per parameter (not rebuilt every step).
    hyper = {
        k: {"decay": _per_trial(decay, p), "momentum": _per_trial(momentum, p),
            "nesterov": _per_trial(nesterov, p).bool()}
        for k, p in params.items()
    }  # fmt: skip

    def forward(x):
        return functional_call(wide, (params, buffers), (x,))

    def step_fn(x, y, lr):
        with autocast():
            logits = forward(x)
        loss = (
            F.cross_entropy(logits.flatten(0, 1).float(), y.expand(n_trials, -1).flatten(), reduction="none")
            .view(n_trials, -1)
            .mean(1)
        )
        if l1 > 0:
            loss = loss + l1 * sum(p.abs().flatten(1).sum(1) for p in params.values() if p.dim() > 2)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        with torch.no_grad():
            # torch.optim.SGD's update, per trial: g += wd*p; v = mu*v + g; p -= lr*(g + mu*v | v).
            # Terms no trial has (weight decay, momentum: the lecture's plain SGD) are left out,
            # not multiplied by zero: each is a kernel per parameter in every step.
            for (name, p), g in zip(params.items(), grads, strict=True):
                if any_decay:
                    g = g + hyper[name]["decay"] * p
                if velocity:
                    mu = hyper[name]["momentum"]
                    v = velocity[name]
                    v.mul_(mu).add_(g)
                    g = torch.where(hyper[name]["nesterov"], g + mu * v, torch.where(mu > 0, v, g))
                p.addcmul_(lr.view(-1, *([1] * (p.dim() - 1))), g, value=-1.0)
        return loss.detach()

    return forward, step_fn, velocity


def train_group(
    cfgs: list[DictConfig], records: list[RunLog], checkpoints: list[dict | None] | None = None
) -> list[dict]:
    """Train the trials together; returns each trial's outcome (status and model facts).

    The trials start from scratch, or all resume from checkpoints of one epoch (run_group groups
    them so; `checkpoints`, the records' as loaded, or None to load them), exactly as each would
    resume alone: its weights, momentum, batch generator and record up to that epoch. A trial whose own record cannot be written (its run dir, its disk)
    fails alone, as its solo run would: its outcome is `failed` with the exception under "error",
    and the others go on."""
    from sweeper import train

    checkpoints = checkpoints or [record.load_checkpoint() for record in records]
    start = {int(c["epoch"]) if c is not None else 0 for c in checkpoints}
    if len(start) != 1:
        raise ValueError(f"fused trials must start from one epoch, not {sorted(start)}")
    (start_epoch,) = start

    cfg0 = cfgs[0]
    n_trials = len(cfgs)
    device = run_device(cfg0.trainer.device)
    layout = memory_format(cfg0, device)
    autocast = autocast_for(cfg0.trainer.precision, device.type)  # shared: precision is not per trial
    data = data_module.stage(data_module.load(cfg0.data).to(device), layout)
    nets = []
    for cfg in cfgs:  # each trial initialised exactly as its solo run would be
        torch.manual_seed(cfg.trainer.seed)
        nets.append(
            build.model(cfg, data.in_channels, data.image_size, len(data.classes)).to(
                device, memory_format=layout
            )
        )
    if start_epoch:
        for net, checkpoint in zip(nets, checkpoints, strict=True):
            net.load_state_dict(checkpoint["model"])
    params, buffers = stack_module_state(nets)
    base = copy.deepcopy(nets[0]).to("meta")  # a solo net's structure, for the solo checkpoints
    wide = stacked.widen(copy.deepcopy(base), n_trials)  # all trials' forward, one kernel per layer
    n_train, batch_size, epochs = len(data.train_y), cfg0.trainer.batch_size, cfg0.trainer.epochs
    steps_per_epoch = math.ceil(n_train / batch_size)
    lr_at = [build.schedule(cfg, steps_per_epoch, steps_per_epoch * epochs) for cfg in cfgs]
    # Trials of one seed draw the same batches (and augmentations) in their solo runs: draw them
    # once, from one generator whose state each trial's checkpoint then holds.
    shared_batches = len({int(cfg.trainer.seed) for cfg in cfgs}) == 1
    generators = [torch.Generator(device=device).manual_seed(cfg.trainer.seed) for cfg in cfgs]
    if start_epoch:
        for generator, checkpoint in zip(generators, checkpoints, strict=True):
            generator.set_state(checkpoint["generator"])
        torch.set_rng_state(checkpoints[0]["cpu_rng"])  # as a solo resume sets it (one process here)
        # Trials of one seed that ran together are at one state; otherwise each draws its own.
        shared_batches &= all(torch.equal(g.get_state(), generators[0].get_state()) for g in generators)
    if shared_batches:
        generators = generators[:1] * n_trials
    forward, step_fn, velocity = trial_sgd(
        wide,
        params,
        buffers,
        momentum=[float(cfg.optim.momentum) for cfg in cfgs],
        nesterov=[bool(cfg.optim.nesterov) for cfg in cfgs],
        decay=[float(cfg.optim.weight_decay) for cfg in cfgs],
        l1=float(cfg0.model.get("l1", 0.0)),
        autocast=autocast,
    )
    if start_epoch and velocity:  # SGD's momentum buffers, by parameter index (SoloStates.state)
        names = list(params)
        for t, checkpoint in enumerate(checkpoints):
            for i, buf in checkpoint["optimizer"]["state"].items():
                if "momentum_buffer" in buf:
                    velocity[names[int(i)]][t].copy_(buf["momentum_buffer"])
    keep = kept_epochs(cfg0)
    val = train.validation_split(data)
    splits = {"train": (data.train_x, data.train_y), **({"val": val} if val else {})}
    splits["test"] = (data.test_x, data.test_y)
    measured = metrics.columns(metrics.DEFAULT, val is not None)
    info = {
        "n_params": models.n_params(nets[0]),
        "receptive_field_px": models.receptive_field_px(nets[0], data.image_size),
        "n_train": n_train,
        "n_val": 0 if val is None else len(val[1]),
        "n_test": len(data.test_y),
        "metrics": list(metrics.DEFAULT),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "fused_trials": n_trials,
        **trained.input_facts(data),  # as a solo run records it: the trials share the data
    }
    for record in records:
        record.facts = info
    field = info["receptive_field_px"]
    log.info(
        "%s: %d params, receptive field %s, %d train / %d val / %d test images on %s, %d trials fused",
        build.model_name(cfg0), info["n_params"], "not computed" if field is None else f"{field} px", n_train,
        info["n_val"], info["n_test"], info["device"], n_trials,
    )  # fmt: skip
    del nets

    # Each epoch's per-trial learning rates, computed at its start and kept on the device: a
    # step then reads its row there instead of copying host values (which a CUDA graph could not
    # replay). An epoch's, not the run's: trainer.epochs=1e9 must not tabulate 1e9 epochs first.
    def lr_table(first_step: int) -> torch.Tensor:
        steps = range(first_step, first_step + steps_per_epoch)
        return torch.tensor([[fn(s) for fn in lr_at] for s in steps], dtype=torch.float32, device=device)

    lr_now = torch.zeros(n_trials, device=device)

    # On CUDA the fused step is captured once and replayed (sweeper/cuda_graph.py).
    graph = cuda_graph.wanted(cfg0, device)  # fusable() has checked the update is capturable
    fused_step = cuda_graph.Replay(step_fn, graph, required=cfg0.trainer.cuda_graph is True)

    solo_states = SoloStates(cfgs, base, device)
    errors: dict[int, Exception] = {}
    # Each record as its checkpoint left it (a line written after it is dropped); the trials'
    # counts agree, as they trained together or alone for the same epochs.
    rows = [record.keep_epochs_up_to(start_epoch) for record in records]
    step, samples, time_offset = (
        (rows[0][-1]["step"], rows[0][-1]["samples"], rows[0][-1]["time_s"]) if start_epoch else (0, 0, 0.0)
    )
    if start_epoch:
        log.info("resuming %d fused trials after epoch %d", n_trials, start_epoch)
    # Each trial's early stopping and divergence threshold, as its solo run decides them: from
    # its metrics lines, the kept ones first (one stopped after its checkpoint ends at once).
    stops = [stopping.Stopping(cfg.trainer, len(data.classes), measured) for cfg in cfgs]
    verdicts = [
        next(filter(None, map(stop.update, kept)), None) for stop, kept in zip(stops, rows, strict=True)
    ]
    status = [v["status"] if v else "completed" for v in verdicts]
    t_start = time.perf_counter() - time_offset
    for epoch in range(start_epoch + 1, pause_epoch(cfg0) + 1):  # trainer.until_epoch: one for the group
        if all(s != "completed" for s in status):
            break  # every trial has ended (an ended trial's stacked weights train on, unrecorded)
        t_epoch = time.perf_counter()
        wide.train()
        loss_sum = torch.zeros(n_trials, device=device)
        # Each trial draws its batches exactly as its solo run does, from its own generator.
        per_trial_batches = [
            data_module.train_batches(data, batch_size, g, cfg0.data.augment, layout)
            for g in generators[: 1 if shared_batches else n_trials]
        ]
        epoch_lrs, first_step = lr_table(step), step
        for batches in zip(*per_trial_batches, strict=True):
            xs, ys = zip(*batches, strict=True)
            x, y = (xs[0], ys[0]) if shared_batches else (torch.stack(xs), torch.stack(ys))
            loss_sum += fused_step(x, y, lr_now.copy_(epoch_lrs[step - first_step]))
            step, samples = step + 1, samples + len(ys[0])

        wide.eval()
        results = {}
        with torch.inference_mode():
            for split, (xs_, ys_) in splits.items():
                per_sample, correct = [], torch.zeros(n_trials, device=device)
                for xb, yb in data_module.eval_batches(xs_, ys_, data, cfg0.trainer.eval_batch_size, layout):
                    with autocast():
                        logits = forward(xb)
                    logits = logits.float()
                    per_sample.append(
                        F.cross_entropy(logits.transpose(1, 2), yb.expand(n_trials, -1), reduction="none")
                    )
                    correct += (logits.argmax(-1) == yb).sum(1)
                losses = torch.cat(per_sample, dim=1)
                results[split] = (losses, losses.mean(1).tolist(), (correct / len(ys_)).tolist())
        now = time.perf_counter()
        finite = torch.isfinite(loss_sum).tolist()
        for t, record in enumerate(records):
            if status[t] != "completed":
                continue  # ended earlier: its record ended there
            row = {"epoch": epoch, "step": step, "lr": lr_at[t](step - 1)}
            for split in splits:  # the order of metrics.columns: loss, then acc, per split
                row |= {f"{split}_loss": results[split][1][t], f"{split}_acc": results[split][2][t]}
            row |= {
                "samples": samples,
                "time_s": round(now - t_start, 4),
                "epoch_time_s": round(now - t_epoch, 4),
            }
            ok = finite[t] and all(math.isfinite(row[f"{s}_loss"]) for s in splits)
            verdict = stops[t].update(row) if ok else stopping.non_finite(epoch)
            diverged = verdict is not None and verdict["status"] == "diverged"
            try:
                if epoch in keep or verdict:
                    record.write_losses(
                        epoch,
                        results["train"][0][t],
                        results["test"][0][t],
                        cfgs[t].trainer.keep_sample_losses,
                    )
                record.append_metrics(row)
                if not diverged and cfgs[t].trainer.checkpoint:
                    record.save_checkpoint(
                        solo_states.state(
                            t, epoch, step, lr_at[t](step - 1), params, buffers, velocity, generators[t]
                        )
                    )
            except Exception as err:
                if interrupted(err):
                    raise
                status[t], errors[t] = "failed", err
                log.error("trial %s failed at epoch %d: %s: %s", record.dir, epoch, type(err).__name__, err,
                          extra={"trial": record.dir})  # fmt: skip
                continue
            log.info("%s: %s", record.dir.name, metrics.epoch_line(row, epochs), extra={"trial": record.dir})
            if verdict is not None:
                status[t], verdicts[t] = verdict["status"], verdict
                log.warning("trial %s: epoch %d: %s (status %s)", record.dir, epoch, verdict["stop_reason"],
                            verdict["status"], extra={"trial": record.dir})  # fmt: skip
    info["cuda_graph"] = fused_step.enabled  # false after a failed capture
    if pause_epoch(cfg0) < epochs:
        status = ["paused" if s == "completed" else s for s in status]
    return [
        {"status": s, **(verdicts[t] or {}), **info, **({"error": errors[t]} if t in errors else {})}
        for t, s in enumerate(status)
    ]


class SoloStates:
    """Each trial's state in exactly the layout train.train() saves, so a solo run can resume it.

    The model's comes from a solo net, built at the trial's first save, that the stacked values
    are copied into at each save. The optimizer's is written as torch.optim.SGD's state_dict
    writes it, without building one: the first torch.optim call of a process imports
    torch._dynamo (seconds), which a fused program otherwise never pays. tests/test_fused.py
    holds it to the solo run's.
    """

    def __init__(self, cfgs: list[DictConfig], base: torch.nn.Module, device: torch.device):
        self.cfgs, self.base, self.device = cfgs, base, device
        self.nets: dict[int, torch.nn.Module] = {}
        # SGD's param group holds each constructor argument (maximize, foreach, fused, ... as the
        # installed torch has them), with the defaults of those the config leaves out.
        self.sgd_defaults = {
            k: p.default for k, p in inspect.signature(torch.optim.SGD).parameters.items() if k != "params"
        }

    def state(self, t, epoch, step, lr, params, buffers, velocity, generator) -> dict:
        """Trial t's checkpoint after `epoch` (`step` steps), its last step's rate `lr`."""
        cfg = self.cfgs[t]
        if t not in self.nets:
            self.nets[t] = copy.deepcopy(self.base).to_empty(device=self.device)
        net = self.nets[t]
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(params[name][t])
            for name, b in net.named_buffers():
                b.copy_(buffers[name][t])
        names = [name for name, _ in net.named_parameters()]
        # The solo loop sets each step's rate in the group: the last step's is there at its save.
        group = self.sgd_defaults | build.optimizer_arguments(cfg)
        group |= {"lr": lr, "params": list(range(len(names)))}
        # SGD keeps a momentum buffer per parameter only when it has momentum.
        momentum = bool(velocity) and cfg.optim.momentum > 0
        optimizer = {
            "state": {i: {"momentum_buffer": velocity[n][t].clone()} for i, n in enumerate(names)}
            if momentum
            else {},
            "param_groups": [group],
        }
        return {
            "epoch": epoch,
            "model": net.state_dict(),
            "optimizer": optimizer,
            "step": step,
            "generator": generator.get_state(),
            "cpu_rng": torch.get_rng_state(),
        }


def run_group(
    cfgs: list[DictConfig], run_dirs, overrides, job_nums, hydra_files: str | None = ".hydra"
) -> list[dict]:
    """Like train.run for each trial: skip ended runs, set aside what cannot resume, and train
    the rest fused -- those resuming from one epoch together (an interrupted group resumes as a
    group), any at another epoch in a group of their own.
    `hydra_files`: where each job's .hydra files were written (see rundir.open_record)."""
    from sweeper import train

    summaries: list[dict | None] = [None] * len(cfgs)
    by_start: dict[int, list[tuple[int, RunLog, dict | None]]] = {}
    for i, cfg in enumerate(cfgs):
        with owned_by(run_dirs[i]):
            record, ended = open_record(cfg, run_dirs[i], overrides[i], job_nums[i], hydra_files)
        if ended is not None:
            summaries[i] = ended
            continue
        checkpoint = record.load_checkpoint()  # open_record leaves one only where the run resumes from it
        by_start.setdefault(int(checkpoint["epoch"]) if checkpoint else 0, []).append((i, record, checkpoint))
    for start in sorted(by_start):
        members = [(i, record) for i, record, _ in by_start[start]]
        group = [cfgs[i] for i, _ in members]
        records = [r for _, r in members]
        try:
            if len(group) > 1:
                outcomes = train_group(group, records, [c for _, _, c in by_start[start]])
            else:
                with owned_by(records[0].dir):
                    outcomes = [train.train(group[0], records[0])]
        except Exception as e:  # the whole group failed together: each trial says so
            if interrupted(e):
                raise KeyboardInterrupt from e  # stopped, not failed: reruns resume the trials
            if stopped_by_cluster(e):
                raise  # a SLURM time limit: stopped too
            outcomes = [{"error": e} for _ in members]
        # Each trial closed on its own: one whose summary cannot be written (its disk, its dir)
        # must not turn the others' finished runs into failures, nor leave them unclosed.
        for (i, record), outcome in zip(members, outcomes, strict=True):
            error = outcome.pop("error", None)  # its own record failed it (train_group), or the group
            try:
                summaries[i] = close_record(record, cfgs[i], outcome, error)
            except Exception as err:
                if interrupted(err):
                    raise KeyboardInterrupt from err
                log.error("%s: its summary could not be written: %s: %s", record.dir, type(err).__name__, err,
                          extra={"trial": record.dir})  # fmt: skip
                summaries[i] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return summaries

"""Several trials of one architecture trained as one program, a kernel per layer for all of them.

A small convnet cannot fill a GPU: its step is bound by kernel launches, not arithmetic. Trials
that share the architecture, the data and the trainer, and differ only in optimisation (lr,
schedule, momentum, weight decay), seed and what their records keep, are stacked along a leading
trial dimension and run through one wide copy of the net (sweeper/stacked.py), so one launch does
the work of all of them. The loop is train.train_trials, the solo run's; `Fused` is its engine.
Each trial keeps its own initialisation, batch order and augmentation (its seed), schedule,
early stopping, and record with solo-format checkpoints (an interrupted group resumes as a
group; any trial can resume alone). Its curves are its solo run's computed by other kernels:
each step differs by float rounding, which training amplifies where it is unstable.

    python -m sweeper -m hydra/launcher=pool hydra.launcher.fuse=true lr=0.2,0.1,0.01 trainer.seed=0,1,2

What fuses is a whitelist of what the fused step computes exactly (`fusable()` says why a job
cannot; it then runs solo): torch.optim.SGD by its `_target_` with any momentum, nesterov and
weight decay, its other arguments at their defaults; any schedule; model.l1; plain cross-entropy
and trainer.metrics=[acc]; a model of the layers stacked.widen stacks: no batch norm (running
statistics), no dropout (its masks could not follow the solo runs'), no class of the user's.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, stack_module_state

from sweeper import build, cuda_graph, metrics, stacked, train
from sweeper import data as data_module
from sweeper.rundir import close_record, interrupted, open_record, stopped_by_cluster
from sweeper.runlog import RunLog
from sweeper.train import log

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
    """What the trials of one group must share (the pool groups jobs by it)."""
    tree = OmegaConf.to_container(cfg, resolve=True)
    tree = {k: v for k, v in tree.items() if k not in PER_TRIAL}
    tree["trainer"] = {k: v for k, v in tree["trainer"].items() if k not in PER_TRIAL_TRAINER}
    return tree


# The sections of the project's training config that train_group reads: a config without them
# (another Hydra app's) is not a training this module can run.
SECTIONS = ("lr", "model", "optim", "schedule", "data", "trainer")


def fusable(cfgs: list[DictConfig]) -> str | None:
    """None when the configs can train as one program, else the reason they cannot (the
    whitelist in this module's docstring)."""
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


def trial_sgd(wide, params: dict, buffers: dict, momentum, nesterov, decay, l1: float, autocast=None):
    """The trials' forward and training step over their stacked parameters (updated in place).

    forward(x) -> logits [T, B, classes], from images [B, C, H, W] shared by every trial or
    [T, B, C, H, W]; step(x, y, lr) -> per-trial losses [T], with lr a [T] device tensor, does
    cuda_graph.sgd_update for each trial with its own momentum, nesterov and weight decay.
    Returns (forward, step, velocity): the momentum buffers, by parameter name, for checkpoints.
    As in the solo step, `autocast` wraps the forward and the loss is taken in float32.
    """
    autocast = autocast or contextlib.nullcontext
    n_trials, like = len(momentum), next(iter(params.values()))
    velocity = {k: torch.zeros_like(p) for k, p in params.items()} if any(momentum) else {}

    def per_trial(values, dtype):
        # A value every trial shares is passed as a number: a term no trial has (weight decay,
        # momentum: the lecture's plain SGD) is left out, not multiplied by zero, as in the solo step.
        return values[0] if len(set(values)) == 1 else torch.tensor(values, dtype=dtype, device=like.device)

    hyper = {
        "weight_decay": per_trial(decay, like.dtype),
        "momentum": per_trial(momentum, like.dtype),
        "nesterov": per_trial(nesterov, torch.bool),
    }

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
        cuda_graph.sgd_update(list(params.values()), grads, list(velocity.values()), lr, **hyper)
        return loss.detach()

    return forward, step_fn, velocity


class Fused:
    """The trials as one wide net over their stacked parameters, as train.train_trials drives
    them (train.Solo is the other engine)."""

    def __init__(self, cfgs, data, device, layout, autocast, checkpoints):
        self.cfgs, self.data, self.layout, self.autocast = cfgs, data, layout, autocast
        nets = []  # each trial's solo net, initialised as its solo run's
        for cfg, checkpoint in zip(cfgs, checkpoints, strict=True):
            torch.manual_seed(cfg.trainer.seed)
            net = build.model(cfg, data.in_channels, data.image_size, len(data.classes))
            nets.append(net.to(device, memory_format=layout))
            if checkpoint is not None:
                net.load_state_dict(checkpoint["model"])
        self.params, self.buffers = stack_module_state(nets)
        # The trials train in the stacked tensors; one solo net is kept to carry each trial's
        # weights into a checkpoint in the solo format (state), the others are freed.
        self.model, self.metrics = nets[0], list(metrics.DEFAULT)
        self.wide = stacked.widen(copy.deepcopy(self.model).to("meta"), len(cfgs))  # one kernel per layer
        self.forward, step_fn, self.velocity = trial_sgd(
            self.wide, self.params, self.buffers,
            momentum=[float(c.optim.momentum) for c in cfgs], nesterov=[bool(c.optim.nesterov) for c in cfgs],
            decay=[float(c.optim.weight_decay) for c in cfgs], l1=float(cfgs[0].model.get("l1", 0.0)),
            autocast=autocast,
        )  # fmt: skip
        names = list(self.params)
        for t, checkpoint in enumerate(checkpoints if self.velocity else []):
            for i, buf in (checkpoint or {"optimizer": {"state": {}}})["optimizer"]["state"].items():
                if "momentum_buffer" in buf:  # SGD's momentum buffers, by parameter index
                    self.velocity[names[int(i)]][t].copy_(buf["momentum_buffer"])
        graph = cuda_graph.wanted(cfgs[0], device)  # fusable() has checked the update is capturable
        self.step_fn = cuda_graph.Replay(step_fn, graph, required=cfgs[0].trainer.cuda_graph is True)
        self.lr_now = torch.zeros(len(cfgs), device=device)
        self.facts = {"fused_trials": len(cfgs)}

    def start_epoch(self, rates: list[list[float]]):
        # On the device: a step reads its row there (a CUDA graph cannot replay a host copy).
        self.wide.train()
        self.rates = torch.tensor(rates, dtype=torch.float32, device=self.lr_now.device)
        self.last_rates = rates[-1]

    def step(self, x, y, i: int) -> torch.Tensor:
        return self.step_fn(x, y, self.lr_now.copy_(self.rates[i]))

    @torch.inference_mode()
    def evaluate(self, x, y, eval_size: int):
        self.wide.eval()
        n = len(self.cfgs)
        per_sample, correct = [], torch.zeros(n, 1, device=y.device)
        for xb, yb in data_module.eval_batches(x, y, self.data, eval_size, self.layout):
            with self.autocast():
                logits = self.forward(xb).float()
            per_sample.append(F.cross_entropy(logits.transpose(1, 2), yb.expand(n, -1), reduction="none"))
            correct += (logits.argmax(-1) == yb).sum(1, keepdim=True)
        losses = torch.cat(per_sample, dim=1)
        return losses, losses.mean(1), correct / len(y)

    def state(self, t: int) -> dict:
        """Trial t's model and optimizer state in exactly the layout a solo run saves, so that
        a solo run can resume it. The optimizer's is torch.optim.SGD's state_dict, written
        without building one: the first torch.optim call of a process imports torch._dynamo
        (seconds), which a fused program otherwise never pays. The carrier net's state_dict is
        trial t's until the next call: the caller saves it at once."""
        cfg, net = self.cfgs[t], self.model
        with torch.no_grad():
            for name, p in net.named_parameters():
                p.copy_(self.params[name][t])
            for name, b in net.named_buffers():
                b.copy_(self.buffers[name][t])
        names = [name for name, _ in net.named_parameters()]
        # SGD's param group holds every argument; the solo loop sets each step's rate in it.
        group = cuda_graph.SGD_DEFAULTS | build.optimizer_arguments(cfg)
        group |= {"lr": self.last_rates[t], "params": list(range(len(names)))}
        momentum = bool(self.velocity) and cfg.optim.momentum > 0  # a buffer per parameter only then
        state = {i: {"momentum_buffer": self.velocity[n][t].clone()} for i, n in enumerate(names) if momentum}
        return {"model": net.state_dict(), "optimizer": {"state": state, "param_groups": [group]}}


def train_group(
    cfgs: list[DictConfig], records: list[RunLog], checkpoints: list[dict | None] | None = None
) -> list[dict]:
    """Train the trials together (train.train_trials with the wide net); each trial's outcome."""
    return train.train_trials(cfgs, records, checkpoints, engine=Fused)


def run_group(
    cfgs: list[DictConfig], run_dirs, overrides, job_nums, hydra_files: str | None = ".hydra"
) -> list[dict]:
    """Like train.run for each trial: skip ended runs, set aside what cannot resume, and train
    the rest fused -- those resuming from one epoch together, any at another epoch in a group of
    their own. `hydra_files`: where each job's .hydra files were written (rundir.open_record)."""
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
    given = torch.get_num_threads()
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
        finally:
            torch.set_num_threads(given)  # as train.run: a stated count is not the next run's `auto`
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

"""The training step captured as a CUDA graph: one launch replays forward, backward and update.

A small convnet's step is a few hundred microseconds of GPU work behind about two milliseconds
of Python and kernel launches (docs/benchmarks.md has the figures). `Replay` runs the step
eagerly a few times (cuDNN picks its algorithms, workspaces are allocated), then records it once
as a CUDA graph and from then on copies each batch into the graph's input buffers and replays it.
Everything the step reads that changes between steps -- the batch and the learning rate -- lives
in tensors the graph reads at replay time; anything else would be frozen at capture.

`sgd_step` is torch.optim.SGD's update written with tensor ops only, so it can be captured: the
stock optimizer reads a tensor learning rate back to the host (a sync, which capture forbids).
It keeps its momentum buffers in the optimizer's own state, so checkpoints keep torch.optim's
format and a graph run resumes without one and vice versa.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from sweeper import build, models

log = logging.getLogger("sweeper")

WARMUP_CALLS = 3  # eager steps before capture: cuDNN benchmarking, lazy handles, workspaces


# The optimizer whose update sgd_step (and the fused trials' step, sweeper/fused.py) writes out,
# and the arguments of it they compute at any value. Every other argument of torch.optim.SGD is
# computed at its default only: the step then does what torch.optim.SGD would.
SGD_TARGETS = {"torch.optim.SGD", "torch.optim.sgd.SGD"}
SGD_COMPUTED = {"momentum", "nesterov", "weight_decay"}


def capturable(cfg: DictConfig) -> str | None:
    """None when the run's step can be captured, else why not (the graph then stays off).

    A whitelist: the optimizer's class by its `_target_` (optim.name is only a label), each of
    its arguments by value, and the loss: torch's cross-entropy (with label smoothing or not).
    A user's loss runs eagerly: a graph would freeze whatever it reads from the host."""
    loss = build.loss_config(cfg)
    if loss.get("_target_") not in build.CROSS_ENTROPY_TARGETS:
        return f"loss._target_={loss.get('_target_')}: only cross-entropy is captured as a CUDA graph"
    extra = sorted(set(loss) - build.NOT_ARGUMENTS - {"_target_", "label_smoothing"})
    if extra:
        return f"loss.{extra[0]}={loss[extra[0]]}: the captured step computes cross-entropy's label_smoothing only"
    target = cfg.optim.get("_target_")
    if target not in SGD_TARGETS:
        return (
            f"optim={cfg.optim.get('name')} (optim._target_={target}): only sgd's update "
            "(torch.optim.SGD) is written capture-safe"
        )
    defaults = {
        k: p.default
        for k, p in inspect.signature(torch.optim.SGD).parameters.items()
        if k not in ("params", "lr") and p.default is not inspect.Parameter.empty
    }
    for key, value in build.optimizer_arguments(cfg).items():
        if key in SGD_COMPUTED:
            continue
        if key not in defaults:
            return f"optim.{key}={value}: not an argument the sgd step computes"
        if value != defaults[key]:
            return f"optim.{key}={value}: the sgd step computes only its default ({defaults[key]})"
    return None


def wanted(cfg: DictConfig, device: torch.device) -> bool:
    """trainer.cuda_graph: auto = on CUDA when capturable; true = on CUDA (validated capturable)."""
    return device.type == "cuda" and cfg.trainer.cuda_graph in ("auto", True) and capturable(cfg) is None


class Replay:
    """Calls `fn(*inputs)`; on CUDA, after WARMUP_CALLS eager calls, captures it and replays it.

    Inputs of another shape than the captured ones (the short last batch of an epoch) run
    eagerly. The returned tensor is the graph's output buffer: the next call overwrites it, so
    use it (or enqueue work on it) before calling again. If the capture fails and it was not
    `required` (trainer.cuda_graph=auto), the step goes on eagerly: capture runs no kernels, so
    nothing was changed by the failed attempt.
    """

    def __init__(self, fn: Callable[..., torch.Tensor], enabled: bool, required: bool = False):
        self.fn, self.enabled, self.required = fn, enabled, required
        self.graph: torch.cuda.CUDAGraph | None = None
        self.static_in: tuple[torch.Tensor, ...] = ()
        self.static_out: torch.Tensor | None = None
        self.shapes = None
        self.calls = 0

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return self.fn(*inputs)
        shapes = [(t.shape, t.stride(), t.dtype) for t in inputs]
        if self.shapes is None:
            self.shapes = shapes
        if shapes != self.shapes:
            return self.fn(*inputs)
        if self.graph is None and self.calls >= WARMUP_CALLS:
            try:
                self._capture(inputs)
            except RuntimeError as e:
                if self.required:
                    raise
                log.warning("CUDA graph capture failed, training on without it: %s", str(e).splitlines()[0])
                self.enabled = False
                return self.fn(*inputs)
        if self.graph is None:
            self.calls += 1
            return self._on_side_stream(inputs)
        for buffer, t in zip(self.static_in, inputs, strict=True):
            buffer.copy_(t)
        self.graph.replay()
        return self.static_out

    def _on_side_stream(self, inputs):
        # Warm-up off the default stream, as torch.cuda.graph's documentation asks. Streams and
        # capture act on the current device: the caller has made the run's device current.
        side, main = torch.cuda.Stream(), torch.cuda.current_stream()
        side.wait_stream(main)
        with torch.cuda.stream(side):
            out = self.fn(*inputs)
        main.wait_stream(side)
        return out

    def _capture(self, inputs):
        torch.cuda.synchronize()
        self.static_in = tuple(t.clone() for t in inputs)  # clone keeps the layout (channels_last)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self.static_out = self.fn(*self.static_in)
        self.graph = graph  # capture records the step without running it: replay runs this one


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast, l1: float, loss_fn=None):
    """fn(x, y, lr) -> loss: one SGD step of `model`, reading lr (a 0-d tensor) at run time.

    The same arithmetic as torch.optim.SGD with dampening 0: g += wd*p; v = mu*v + g;
    g = g + mu*v (nesterov) or v; p -= lr*g. A zero momentum buffer gives torch's first step
    exactly (mu*0 + g = g), so buffers are created up front, in the optimizer's state.
    `loss_fn`: the run's build.Loss (cross-entropy when None).
    """
    mean_loss = F.cross_entropy if loss_fn is None else loss_fn.mean
    params = [p for p in model.parameters() if p.requires_grad]
    group = optimizer.param_groups[0]
    decay, momentum, nesterov = (
        float(group["weight_decay"]),
        float(group["momentum"]),
        bool(group["nesterov"]),
    )
    velocity = []
    if momentum:
        for p in params:
            state = optimizer.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            velocity.append(state["momentum_buffer"])

    def step(x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        with autocast():
            logits = model(x)
        loss = mean_loss(logits.float(), y)
        if l1 > 0:
            loss = loss + l1 * models.weight_l1(model)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            if decay:
                grads = torch._foreach_add(grads, params, alpha=decay)
            if momentum:
                torch._foreach_mul_(velocity, momentum)
                torch._foreach_add_(velocity, grads)
                grads = torch._foreach_add(grads, velocity, alpha=momentum) if nesterov else velocity
            torch._foreach_sub_(params, torch._foreach_mul(grads, lr))
        return loss.detach()

    return step

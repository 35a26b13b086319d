"""The training step: forward, loss, gradients and one SGD update, and its capture as a CUDA graph.

`sgd_update` is the one SGD update: a solo run's step (eager or captured) and the fused trials'
step (sweeper/fused.py) all call it. It is torch.optim.SGD's arithmetic, written so that it can
also read its rate (and a fused group's per-trial values) from tensors at run time: the stock
optimizer reads a tensor rate back to the host, a sync that capture forbids.

A small convnet's step is launch-bound on a GPU. `Replay` runs the step eagerly a few times, then
records it once as a CUDA graph and from then on copies each batch into the graph's input
buffers and replays it. Everything the step reads that changes between steps -- the batch and
the rate -- lives in tensors the graph reads at replay time; anything else is frozen at capture.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import torch
from omegaconf import DictConfig

from sweeper import build, models

log = logging.getLogger("sweeper")

WARMUP_CALLS = 3  # eager steps before capture: cuDNN benchmarking, lazy handles, workspaces

# The optimizer sgd_update computes, and its arguments computed at any value (the others at
# their defaults only).
SGD_TARGETS = {"torch.optim.SGD", "torch.optim.sgd.SGD"}
SGD_COMPUTED = {"momentum", "nesterov", "weight_decay"}
# torch.optim.SGD's arguments with their defaults (maximize, foreach, ... as the installed torch has them).
SGD_DEFAULTS = {
    k: p.default for k, p in inspect.signature(torch.optim.SGD).parameters.items() if k != "params"
}


def plain_sgd(cfg: DictConfig) -> str | None:
    """None when the run's optimizer is what sgd_update computes, else why not: the class by its
    `_target_` (optim.name is only a label), each argument by value."""
    target = cfg.optim.get("_target_")
    if target not in SGD_TARGETS:
        return (
            f"optim={cfg.optim.get('name')} (optim._target_={target}): only sgd's update "
            "(torch.optim.SGD) is written capture-safe"
        )
    for key, value in build.optimizer_arguments(cfg).items():
        if key in SGD_COMPUTED:
            continue
        if key == "lr" or key not in SGD_DEFAULTS:  # the rate is the schedule's
            return f"optim.{key}={value}: not an argument the sgd step computes"
        if value != SGD_DEFAULTS[key]:
            return f"optim.{key}={value}: the sgd step computes only its default ({SGD_DEFAULTS[key]})"
    return None


def capturable(cfg: DictConfig) -> str | None:
    """None when the run's step can be captured, else why not: sgd's update and torch's
    cross-entropy. A user's loss runs eagerly: a graph would freeze whatever it reads from the host."""
    loss = build.loss_config(cfg)
    if loss.get("_target_") not in build.CROSS_ENTROPY_TARGETS:
        return f"loss._target_={loss.get('_target_')}: only cross-entropy is captured as a CUDA graph"
    extra = sorted(set(loss) - build.NOT_ARGUMENTS - {"_target_", "label_smoothing"})
    if extra:
        return f"loss.{extra[0]}={loss[extra[0]]}: the captured step computes cross-entropy's label_smoothing only"
    return plain_sgd(cfg)


def wanted(cfg: DictConfig, device: torch.device) -> bool:
    """trainer.cuda_graph: auto = on CUDA when capturable; true = on CUDA (validated capturable)."""
    return device.type == "cuda" and cfg.trainer.cuda_graph in ("auto", True) and capturable(cfg) is None


def _shaped(value, like: torch.Tensor):
    """A per-trial vector [T] viewed to broadcast against a stacked [T, ...] parameter."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        return value.view(-1, *([1] * (like.dim() - 1)))
    return value


def _plus(a: list, x: list, s, sign: float = 1.0, inplace: bool = False) -> list:
    """a + sign*s*x for lists of tensors. A number s goes in add's alpha, as torch.optim.SGD
    passes it (one fused multiply-add: bit for bit its result); a tensor s is read at run time."""
    if isinstance(s, torch.Tensor):
        shaped = [_shaped(s, t) for t in x]
        add = torch._foreach_addcmul_ if inplace else torch._foreach_addcmul
        return add(a, x, shaped, value=sign)
    return (torch._foreach_add_ if inplace else torch._foreach_add)(a, x, alpha=sign * s)


@torch.no_grad()
def sgd_update(params, grads, velocity: list, lr, weight_decay=0.0, momentum=0.0, nesterov=False):
    """torch.optim.SGD's update with dampening 0, in place: g += wd*p; v = mu*v + g (v = g at the
    first step); g = g + mu*v (nesterov) or v; p -= lr*g, in torch's _foreach ops as torch.optim's.

    lr, weight_decay, momentum: numbers, or tensors read at run time: a 0-d rate (a captured
    step's), or a [T] vector of per-trial values against stacked [T, ...] parameters (fused
    trials). nesterov: a bool, or a [T] bool vector. `velocity`: each parameter's momentum
    buffer (None: started at this step, and set in the list), or [] without momentum. A
    parameter without a gradient (unused by the loss) is left alone, as torch.optim leaves it.
    """
    used = [i for i, g in enumerate(grads) if g is not None]
    params, grads = [params[i] for i in used], [grads[i] for i in used]
    if not (isinstance(weight_decay, (int, float)) and weight_decay == 0):
        grads = _plus(grads, params, weight_decay)
    if velocity:
        bufs = [velocity[i] for i in used]
        if any(v is None for v in bufs):  # the first step: torch.optim starts each buffer so
            bufs = [
                g.detach().clone() if v is None else v.mul_(_shaped(momentum, v)).add_(g)
                for v, g in zip(bufs, grads, strict=True)
            ]
            for i, v in zip(used, bufs, strict=True):
                velocity[i] = v
        elif isinstance(momentum, torch.Tensor):
            torch._foreach_mul_(bufs, [_shaped(momentum, v) for v in bufs])
            torch._foreach_add_(bufs, grads)
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads)
        if isinstance(nesterov, torch.Tensor):
            ahead = _plus(grads, bufs, momentum)
            grads = [torch.where(_shaped(nesterov, v), a, v) for a, v in zip(ahead, bufs, strict=True)]
        else:
            grads = _plus(grads, bufs, momentum) if nesterov else bufs
    _plus(params, grads, lr, sign=-1.0, inplace=True)


def sgd_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast, l1: float, loss_fn=None):
    """fn(x, y, lr) -> loss: one step of `model` with sgd_update, lr a number or a 0-d tensor.

    The optimizer (a torch.optim.SGD of plain_sgd's arguments) holds the hyper-parameters and
    the momentum buffers in its own state, so checkpoints keep torch.optim's format. `loss_fn`:
    the run's build.Loss (cross-entropy when None)."""
    loss_of = forward_loss(model, autocast, l1, loss_fn)
    params = [p for p in model.parameters() if p.requires_grad]
    group = optimizer.param_groups[0]
    decay, momentum, nesterov = (
        float(group["weight_decay"]),
        float(group["momentum"]),
        bool(group["nesterov"]),
    )

    def step(x: torch.Tensor, y: torch.Tensor, lr) -> torch.Tensor:
        loss = loss_of(x, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        velocity = [optimizer.state[p].get("momentum_buffer") for p in params] if momentum else []
        sgd_update(params, grads, velocity, lr, decay, momentum, nesterov)
        for p, v in zip(params, velocity, strict=False):
            if v is not None:
                optimizer.state[p]["momentum_buffer"] = v
        return loss.detach()

    return step


def optimizer_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, autocast, l1: float, loss_fn=None
):
    """fn(x, y, lr) -> loss: one step of any other optimizer (the caller sets its rate)."""
    loss_of = forward_loss(model, autocast, l1, loss_fn)

    def step(x: torch.Tensor, y: torch.Tensor, lr) -> torch.Tensor:
        loss = loss_of(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def forward_loss(model: torch.nn.Module, autocast, l1: float, loss_fn=None):
    """fn(x, y) -> the step's loss: the forward in the run's precision, the loss in float32."""
    mean_loss = torch.nn.functional.cross_entropy if loss_fn is None else loss_fn.mean

    def loss_of(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with autocast():
            logits = model(x)
        loss = mean_loss(logits.float(), y)
        return loss + l1 * models.weight_l1(model) if l1 > 0 else loss

    return loss_of


class Replay:
    """Calls `fn(*inputs)`; on CUDA, after WARMUP_CALLS eager calls, captures it and replays it.

    Inputs of another shape than the captured ones (the short last batch of an epoch) run
    eagerly. The returned tensor is the graph's output buffer: the next call overwrites it. If
    the capture fails and was not `required` (trainer.cuda_graph=auto), the step goes on
    eagerly: capture runs no kernels, so the failed attempt changed nothing.
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

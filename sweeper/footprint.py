"""The memory a run needs, estimated from its config, against the memory where it will train.

The estimate counts what the training loop holds at once:

- the parameters in float32, their gradients and the optimizer's state (SGD's momentum buffer,
  Adam's two moments); the net is built on the host first, so its weights pass through there too;
- the data set: its uint8 copy and the float32 copy that `data.stage` normalises once (5 bytes a
  value), on the training device, and on the host while it is loaded;
- one batch's activations: every layer's output for a training batch (kept for the backward),
  or the widest layer's input and output for an evaluation batch, whichever is larger.

It leaves out the framework's own overhead (a CUDA context, the allocator's slack, kernels'
workspaces), so it is a floor: a run it refuses cannot fit; one it passes may still not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from sweeper import data as data_module

VALUE = 4  # bytes of a float32
STAGED = 5  # bytes a data value takes once staged: its uint8 copy and its float32 copy
MAX_LAYERS = 6000  # conv layers of the largest net estimated (ResNet-1202 has 1200)
OPTIMIZER_STATES = {"adam": 2, "adamw": 2}  # per parameter; sgd: its momentum buffer, if any


@dataclass
class Footprint:
    """Bytes the run needs, by part, and the knob that sets each part's size (key=value)."""

    model: int  # parameters, gradients and the optimizer's state
    weights: int  # the parameters alone (on the host while the net is built)
    data: int
    activations: int
    model_key: str
    data_key: str
    activations_key: str

    @property
    def total(self) -> int:
        return self.model + self.data + self.activations

    def too_large(self, limit: str) -> str:
        """The line that refuses the run, naming the knob of its largest part and `limit`."""
        key = max((self.model, self.model_key), (self.data, self.data_key), (self.activations, self.activations_key))[1]  # fmt: skip
        return (
            f"{key} is too large for this machine: the run needs at least {size(self.total)} (weights, "
            f"gradients and optimizer state {size(self.model)}, data {size(self.data)}, activations "
            f"{size(self.activations)}), and {limit}"
        )


def size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


class Unsizable(ValueError):
    """A net so large that torch cannot even compute the size of its weights."""


def _model_key(cfg: DictConfig, head_heavier: bool = False) -> str:
    """The knob that sizes the net: its widths, or its hidden fc widths where those weigh more."""
    from sweeper.validate import _shown  # validate imports this module

    if head_heavier and "units" in cfg.model:
        return f"model.units={_shown(cfg.model.units)}"
    if "channels" not in cfg.model:  # a user's model: named by its class
        return f"model._target_={cfg.model.get('_target_')}"
    channels, growth, layers = cfg.model.channels, cfg.model.get("growth"), cfg.model.get("conv_layers")
    # Where growth over the layers widens the net far beyond its base width, name them too.
    if (
        isinstance(channels, int)
        and isinstance(layers, int)
        and isinstance(growth, int | float)
        and growth > 1
        and math.log2(growth) * (layers - 1) > 4  # more than 16x from the first layer to the last
    ):
        return f"model.channels={channels} x model.growth={growth} over model.conv_layers={layers}"
    return f"model.channels={_shown(channels)}"


def meta_net(cfg: DictConfig, ext: data_module.Extent | None = None) -> torch.nn.Module | None:
    """The run's net built on torch's meta device: shapes, no memory. None where it cannot be
    built so (a `_target_` of the user's own, say: the run then speaks for itself); Unsizable for
    a net whose size overflows torch's counts. `ext`: the data's extent, where already known."""
    from sweeper import build

    layers = cfg.model.get("conv_layers") or 2 * 3 * (cfg.model.get("blocks") or 0)
    if isinstance(layers, int) and layers > MAX_LAYERS:
        return None  # building it, even on the meta device, would take minutes (about 0.5 ms a layer)
    try:
        ext = ext or data_module.extent(cfg.data)
        # The input as training will pass it (CIFAR's where it is unknown before loading).
        c, h, w, classes = (*ext.shape, ext.classes) if ext else (3, data_module.IMAGE_SIZE, data_module.IMAGE_SIZE, 10)  # fmt: skip
        channels, image_size = c, h if h == w else (h, w)
        with torch.device("meta"):
            return build.model(cfg, channels, image_size, classes).eval()
    except Exception as e:  # noqa: BLE001 -- an estimate must never refuse a run it cannot read
        why = str(e.__cause__ or e)
        if "overflow" in why.lower():  # "Storage size calculation overflowed", "Overflow when unpacking"
            raise Unsizable(f"{_model_key(cfg)} is too large for any machine: torch cannot size its weights ({why.strip().splitlines()[0]})") from None  # fmt: skip
        return None


def estimate(cfg: DictConfig) -> Footprint:
    """The run's footprint, from its config alone. Where its net cannot be built on the meta
    device (see meta_net) its parts count as 0: the data set is still held to the limit."""
    from sweeper import models

    ext = data_module.extent(cfg.data)
    net = meta_net(cfg, ext)
    params = features = per_sample_outputs = widest = states = 0
    if net is not None:
        per_sample_outputs, widest = models.activations(net)
        features = sum(p.numel() for p in net.features.parameters()) if hasattr(net, "features") else 0
        params = sum(p.numel() for p in net.parameters())
        states = OPTIMIZER_STATES.get(
            str(cfg.optim.get("name")), 1 if float(cfg.optim.get("momentum") or 0) > 0 else 0
        )
    # a net not built here is not sized, and may have no widths to name
    model_key = _model_key(cfg, features < params - features) if net is not None else "the model"

    data_bytes, data_key, value_count = _data_bytes(cfg.data, ext)
    batch, eval_batch = int(cfg.trainer.batch_size), int(cfg.trainer.eval_batch_size)
    value = 2 if cfg.trainer.get("precision") == "bf16" else VALUE  # autocast's activations are bf16
    train = (value_count + per_sample_outputs) * batch * value
    evaluation = widest * eval_batch * value
    activations_key = (  # a batch's activations: as many as its samples, each as wide as the net
        f"trainer.batch_size={batch}" if train >= evaluation else f"trainer.eval_batch_size={eval_batch}"
    ) + f" with {model_key}"
    return Footprint(
        model=params * VALUE * (2 + states),
        weights=params * VALUE,
        data=data_bytes,
        activations=max(train, evaluation),
        model_key=model_key,
        data_key=data_key,
        activations_key=activations_key,
    )


def _data_bytes(d: DictConfig, ext: data_module.Extent | None) -> tuple[int, str, int]:
    """(bytes, the knob that sizes them, values per image) of the data set on the device: the
    set as loaded (uint8, before the split and any subset) and the staged float32 copy of what
    the run keeps (training part, validation split and test set). 0 where its extent is unknown."""
    if ext is None:
        return 0, f"data={d.get('name')}", 3 * data_module.IMAGE_SIZE**2
    value_count = math.prod(ext.shape)
    n_val = data_module.val_count(d.get("val_size"), ext.n_train)[0]
    kept = int(d.train_size) + n_val if d.get("train_size") is not None else ext.n_train
    data_bytes = (ext.n_train + ext.n_test) * value_count + (kept + ext.n_test) * value_count * (STAGED - 1)
    if d.get("_target_"):
        key = f"data._target_={d._target_}"
    elif d.name != "synthetic":
        key = f"data.root={d.root}" if d.name == "image_folder" else f"data={d.name}"
    else:
        key = (
            f"data.generated_train={ext.n_train}"
            if ext.n_train >= ext.n_test
            else f"data.generated_test={ext.n_test}"
        )
    return data_bytes, key, value_count


def host_available() -> int | None:
    """Bytes this process can still take from the host: the kernel's MemAvailable, or less where
    a cgroup v2 (a container, a SLURM job's --mem) caps the process. None where neither is known."""
    limits = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                limits.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            group = Path("/sys/fs/cgroup") / line[3:].strip().lstrip("/")
            if line.startswith("0::") and (cap := (group / "memory.max").read_text().strip()) != "max":
                limits.append(int(cap) - int((group / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        pass
    return min(limits) if limits else None


def problem(cfg: DictConfig, trains_on: str) -> str | None:
    """One line naming the knob that makes the run too large for `trains_on` (cpu, cuda, cuda:N,
    mps), with the estimate and the limit; None where it may fit or nothing is known."""
    need = estimate(cfg)
    host = host_available()
    device = torch.device(trains_on)
    if device.type == "cuda":
        index = device.index if device.index is not None else 0
        # The card's whole memory, read without creating a CUDA context in this process (a sweep
        # checks its jobs before it launches them): what is free now is the job's to find out.
        try:
            total = torch.cuda.get_device_properties(index).total_memory
        except (RuntimeError, AssertionError):  # a driver torch cannot talk to: the job will say
            return None
        if need.total > total:
            return need.too_large(f"cuda:{index} has {size(total)} in all")
        on_host = need.weights + need.data  # the net is built, and the data loaded, on the host first
        if host is not None and on_host > host:
            key = need.model_key if need.weights >= need.data else need.data_key
            return f"{key} is too large for this machine: loading the run needs at least {size(on_host)} of host memory (the net's weights {size(need.weights)}, data {size(need.data)}), and {size(host)} is available"  # fmt: skip
        return None
    if device.type == "cpu" and host is not None and need.total > host:
        return need.too_large(f"this machine has {size(host)} available")
    return None

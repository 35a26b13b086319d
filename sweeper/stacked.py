"""One network that computes several trials' copies of a net at once, a kernel per layer.

Fused trials (sweeper/fused.py) stack each parameter of T copies of a net along a new leading
dimension (`torch.func.stack_module_state`). `widen(net, T)` rewrites a copy of the net so that
one forward pass over those stacked parameters computes all T copies: each convolution becomes
one grouped convolution, each fully connected layer one batched matmul, and every channel-wise
layer runs unchanged on the wide tensor (torch.vmap is several times slower on the CPU).

Shapes:
    images        [B, C, H, W], shared by every trial, or [T, B, C, H, W], a batch per trial
    feature maps  [B, T*C, H, W]: trial t's channels are t*C ... (t+1)*C - 1
    after Flatten [T, B, F]; logits [T, B, classes]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sweeper import models


class UnsupportedLayer(TypeError):
    """A layer that widen() cannot stack."""


# Layers that act on each channel (or element) alone: the wide tensor passes through unchanged.
# (Dropout computes each trial's net in eval mode only; fused.fusable refuses it for training.)
CHANNELWISE = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Dropout, nn.Identity)
# Modules whose forward only chains and adds their children's outputs.
CONTAINERS = (nn.Sequential, models.ConvNet, models.ResNet, models.BasicBlock)


def _stacked(p: torch.Tensor | None, n_trials: int) -> nn.Parameter | None:
    # A placeholder of the stacked shape: the values are the ones functional_call is given.
    return None if p is None else nn.Parameter(p.new_empty(n_trials, *p.shape))


class TrialConv2d(nn.Module):
    """T convolutions of one shape as one grouped convolution; weight [T, out, in, k, k]."""

    def __init__(self, conv: nn.Conv2d, n_trials: int):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros":
            raise UnsupportedLayer("fused trials stack plain convolutions only (groups=1, zero padding)")
        self.n_trials, self.in_channels = n_trials, conv.in_channels
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = _stacked(conv.weight, n_trials)
        self.bias = _stacked(conv.bias, n_trials)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:  # a batch per trial: put the trials' images side by side as channels
            x = torch.cat(x.unbind(0), dim=1)
        # One batch for every trial (a first layer fed shared images) needs no groups: T*out
        # filters over the same input give trial t's maps at t*out ... (t+1)*out - 1.
        groups = 1 if x.shape[1] == self.in_channels else self.n_trials
        bias = None if self.bias is None else self.bias.flatten()
        weight = self.weight.flatten(0, 1)
        if x.is_contiguous(memory_format=torch.channels_last):
            # The stacked weight is NCHW; with NHWC images the CPU's kernels are several times
            # slower on a mixed pair than on two NHWC tensors. The copy is a few hundred kB.
            weight = weight.contiguous(memory_format=torch.channels_last)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class TrialLinear(nn.Module):
    """T fully connected layers as one batched matmul over [T, B, in]; weight [T, out, in]."""

    def __init__(self, linear: nn.Linear, n_trials: int):
        super().__init__()
        self.weight = _stacked(linear.weight, n_trials)
        self.bias = _stacked(linear.bias, n_trials)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class TrialFlatten(nn.Module):
    """[B, T*C, H, W] -> [T, B, C*H*W]: each trial's features in the order its own Flatten gives."""

    def __init__(self, n_trials: int):
        super().__init__()
        self.n_trials = n_trials

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], self.n_trials, -1).transpose(0, 1)


def widen(net: nn.Module, n_trials: int) -> nn.Module:
    """Rewrite `net` in place (a copy on the meta device, say) to compute n_trials copies of it.

    Its parameters keep their names, each with a leading trial dimension, so the dict that
    stack_module_state builds from the T solo nets is what functional_call feeds it. Raises
    UnsupportedLayer naming a layer it cannot stack (batch norm: its statistics are per trial).
    """
    # Exact classes, not subclasses: a subclass may compute something else in its forward.
    if type(net) not in CONTAINERS:
        raise UnsupportedLayer(f"fused trials cannot stack a {type(net).__name__}")
    for name, child in net.named_children():
        kind = type(child)
        if kind is nn.Conv2d:
            setattr(net, name, TrialConv2d(child, n_trials))
        elif kind is nn.Linear:
            setattr(net, name, TrialLinear(child, n_trials))
        elif kind is nn.Flatten and (child.start_dim, child.end_dim) == (1, -1):
            setattr(net, name, TrialFlatten(n_trials))
        elif kind in CHANNELWISE:
            continue
        elif kind in CONTAINERS:
            widen(child, n_trials)
        else:
            raise UnsupportedLayer(f"fused trials cannot stack a {kind.__name__} layer")
    return net

"""The networks: a feature extractor (`model.features`) followed by a classifier head (`model.head`).

Every capacity knob is a constructor argument, so a Hydra config group can set it. Geometry
(feature-map sizes, receptive field) is computed by pure functions so that validate.py can
refuse a bad combination before anything is built.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class GeometryError(ValueError):
    """A combination of knobs whose feature map shrinks to nothing."""


def per_layer(value, n: int, key: str) -> list[int]:
    """One value per conv layer: a scalar applies to every layer, a list must have n entries."""
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = list(value)
        if len(values) != n:
            raise GeometryError(
                f"{key} has {len(values)} entries but model.conv_layers={n}; give {n} entries or one number"
            )
        return [int(v) for v in values]
    return [int(value)] * n


def conv_widths(channels, growth: float, n: int) -> list[int]:
    """Per-layer widths: an explicit list, or a base width multiplied by `growth` at each layer."""
    if isinstance(channels, Sequence) and not isinstance(channels, str):
        return per_layer(channels, n, "model.channels")
    widths = []
    for i in range(n):
        try:
            widths.append(max(1, round(int(channels) * growth**i)))
        except OverflowError:  # growth**i past a float's range
            raise GeometryError(
                f"model.growth={growth} makes conv layer {i + 1} of model.conv_layers={n} wider than any "
                f"number (model.channels={channels} x {growth}^{i}); use a smaller model.growth or fewer layers"
            ) from None
    return widths


def convnet_geometry(image_size: int, kernel_sizes: list[int], pools: list[int], padding: str) -> list[int]:
    """Spatial size after each (conv, pool) stage; raises GeometryError when a map vanishes."""
    size, sizes = image_size, []
    for i, (k, p) in enumerate(zip(kernel_sizes, pools, strict=True)):
        # With padding=valid a kernel wider than its map leaves no output. With same, an output
        # at the map's edge still reaches k//2 pixels in; only beyond 2*size - 1 do the kernel's
        # outer weights meet no pixel at any output.
        if padding == "valid" and k > size:
            raise GeometryError(
                f"model.kernel_size={k} at conv layer {i + 1} is larger than its {size}x{size} input "
                f"(image {image_size}px, model.pool={pools}, model.padding=valid); "
                "use fewer model.conv_layers, a smaller model.kernel_size or model.pool, or model.padding=same"
            )
        if padding == "same" and k > 2 * size - 1:
            raise GeometryError(
                f"model.kernel_size={k} at conv layer {i + 1} is wider than its {size}x{size} input can use "
                f"with model.padding=same (at most {2 * size - 1}: its outer weights would meet no pixel; "
                f"image {image_size}px, model.pool={pools}); use fewer model.conv_layers, a smaller "
                "model.kernel_size or model.pool"
            )
        if padding == "valid":
            size = size - k + 1
        if p > size:
            raise GeometryError(
                f"model.pool={p} at conv layer {i + 1} is larger than its {size}x{size} feature map "
                f"(image {image_size}px, model.kernel_size={kernel_sizes}, model.padding={padding}); "
                "use fewer model.conv_layers or smaller model.pool"
            )
        size //= p
        sizes.append(size)
    return sizes


def receptive_field(layers: list[tuple[int, int]]) -> int:
    """Receptive field in input pixels of a chain of (kernel, stride) layers."""
    field, jump = 1, 1
    for kernel, stride in layers:
        field += (kernel - 1) * jump
        jump *= stride
    return field


def square(image_size, model: str) -> None:
    """The project's nets work out their geometry for square images (image_size an int)."""
    if not isinstance(image_size, int):
        h, w = image_size
        raise GeometryError(f"model={model} needs square images; these are {h}x{w} (height x width)")


def head_values(units: Sequence[int], num_classes: int, dropout: float) -> list[int]:
    """Values per sample of each output of mlp_head's layers after its Flatten."""
    out = []
    for u in units:
        out += [int(u)] * (3 if dropout > 0 else 2)  # Linear, ReLU (, Dropout)
    return [*out, num_classes]


def mlp_head(in_features: int, units: Sequence[int], num_classes: int, dropout: float) -> nn.Sequential:
    """The classifier: hidden fc layers with ReLU (and dropout), then the output layer."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for u in units:
        layers += [nn.Linear(width, int(u)), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        width = int(u)
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


class ConvNet(nn.Module):
    """The lecture's small convnet, generalised; its defaults are the lecture's net:
    conv 3→32 k5, maxpool 3, relu; conv 32→64 k5, maxpool 2, relu; fc 256→200, relu; fc 200→10.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        num_classes: int,
        conv_layers: int = 2,
        channels: int | Sequence[int] = 32,
        growth: float = 2.0,
        kernel_size: int | Sequence[int] = 5,
        pool: int | Sequence[int] = (3, 2),
        padding: str = "valid",
        units: Sequence[int] = (200,),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ):
        super().__init__()
        square(image_size, "convnet")
        widths = conv_widths(channels, growth, conv_layers)
        kernels = per_layer(kernel_size, conv_layers, "model.kernel_size")
        pools = per_layer(pool, conv_layers, "model.pool")
        sizes = convnet_geometry(image_size, kernels, pools, padding)  # each stage's output
        layers: list[nn.Module] = []
        c_in, size = in_channels, image_size
        tensors = [in_channels * image_size**2]  # values per sample of each layer's output, in order
        for width, k, p, pooled in zip(widths, kernels, pools, sizes, strict=True):
            # Batch norm makes the conv bias redundant.
            layers.append(nn.Conv2d(c_in, width, k, padding=padding, bias=not batch_norm))
            tensors += [width * (size - k + 1 if padding == "valid" else size) ** 2] * (
                2 if batch_norm else 1
            )
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            if p > 1:
                layers.append(nn.MaxPool2d(p))
                tensors.append(width * pooled**2)
            layers.append(nn.ReLU())  # the lecture's order: conv, pool, relu
            tensors.append(width * pooled**2)
            c_in, size = width, pooled
        self.features = nn.Sequential(*layers)
        self.head = mlp_head(c_in * size**2, units, num_classes, dropout)
        self.activation_values = tensors + head_values(units, num_classes, dropout)
        self.receptive_field_px = receptive_field_px(self.features, image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity (or 1x1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, kernel_size: int, batch_norm: bool):
        super().__init__()
        norm = nn.BatchNorm2d if batch_norm else (lambda c: nn.Identity())
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(c_in, c_out, kernel_size, stride, pad, bias=not batch_norm)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, kernel_size, 1, pad, bias=not batch_norm)
        self.bn2 = norm(c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=not batch_norm), norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth 6*blocks+2; blocks=3 is ResNet-20): three stages of
    `blocks` residual blocks of widths channels, 2*channels, 4*channels, the last two
    downsampling by 2, then global average pooling and the classifier head.
    """

    def __init__(
        self,
        *,
        in_channels: int,
        image_size: int,
        num_classes: int,
        channels: int = 16,
        blocks: int = 3,
        kernel_size: int = 3,
        units: Sequence[int] = (),
        dropout: float = 0.0,
        batch_norm: bool = True,
    ):
        super().__init__()
        square(image_size, "resnet")
        norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
        pad = kernel_size // 2
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, channels, kernel_size, 1, pad, bias=not batch_norm),
            norm,
            nn.ReLU(),
        ]
        rf_layers = [(kernel_size, 1)]
        c_in, size = channels, image_size
        tensors = [in_channels * size**2] + [channels * size**2] * (3 if batch_norm else 2)
        for stage in range(3):
            width = channels * 2**stage
            for b in range(blocks):
                stride = 2 if (stage > 0 and b == 0) else 1
                layers.append(BasicBlock(c_in, width, stride, kernel_size, batch_norm))
                rf_layers += [(kernel_size, stride), (kernel_size, 1)]
                size = (size - 1) // stride + 1
                projected = stride != 1 or c_in != width
                # conv1, (bn1,) relu, conv2, (bn2,) (the shortcut's conv (and bn),) the sum, relu
                per_block = (6 if batch_norm else 4) + (2 if batch_norm else 1) * projected
                tensors += [width * size**2] * per_block
                c_in = width
        layers += [nn.AdaptiveAvgPool2d(1)]
        self.features = nn.Sequential(*layers)
        self.head = mlp_head(c_in, units, num_classes, dropout)
        self.activation_values = [*tensors, c_in, *head_values(units, num_classes, dropout)]
        self.receptive_field_px = min(receptive_field(rf_layers), image_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def activations(model: nn.Module) -> tuple[int, int]:
    """(the values per sample of all its layers' outputs, the most that one layer's input and
    output hold together), from the shapes the model worked out when built; (0, 0) for a model
    that did not (one of the user's own): what memory estimates then leave out."""
    tensors = getattr(model, "activation_values", None)
    if not tensors:
        return 0, 0
    return sum(tensors[1:]), max(a + b for a, b in zip(tensors, tensors[1:], strict=False))


# Layers that act on each pixel alone (or on each channel's values alone): they leave the
# receptive field as it is.
POINTWISE = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus,
    nn.BatchNorm1d, nn.BatchNorm2d, nn.Dropout, nn.Dropout2d, nn.Identity,
)  # fmt: skip
# Where the spatial part of a chain ends: what follows sees the whole map.
SPATIAL_END = (nn.Flatten, nn.Linear, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def _square(value) -> int | None:
    """A layer's kernel, stride or dilation as one number; None when it differs per dimension."""
    values = value if isinstance(value, tuple) else (value,)
    return values[0] if len(set(values)) == 1 else None


def _chain(net: nn.Module) -> list[nn.Module] | None:
    """The layers an nn.Sequential applies in order, nested Sequentials opened; None for another
    module, whose forward may apply its children in any order."""
    if type(net).forward is not nn.Sequential.forward:
        return None
    layers = []
    for child in net:
        inner = _chain(child)
        layers += [child] if inner is None else inner
    return layers


def receptive_field_px(net: nn.Module, image_size=None) -> int | None:
    """The model's receptive field in input pixels, at most the image's size: its own
    `receptive_field_px` attribute (the project's nets compute theirs), else the field of an
    nn.Sequential chain of convolutions, pooling and pointwise layers up to its first Flatten,
    Linear or adaptive pooling. None where it cannot be told (another module, a layer of
    another kind, a kernel that differs per dimension)."""
    own = getattr(net, "receptive_field_px", None)
    if own is not None:
        return own if type(own) is int else None
    layers = _chain(net)
    if layers is None:
        return None
    chain: list[tuple[int, int]] = []
    for layer in layers:
        if isinstance(layer, SPATIAL_END):
            break
        if isinstance(layer, POINTWISE):
            continue
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel, stride = _square(layer.kernel_size), _square(layer.stride)
            dilation = _square(getattr(layer, "dilation", 1))
            if None in (kernel, stride, dilation):
                return None
            chain.append((dilation * (kernel - 1) + 1, stride))
        else:
            return None
    field = receptive_field(chain)
    if image_size is not None:
        field = min(field, max(image_size) if isinstance(image_size, tuple | list) else int(image_size))
    return field


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_l1(model: nn.Module) -> torch.Tensor:
    """Sum of |w| over weight matrices and kernels (not biases or norms): the sparsity penalty."""
    return sum(p.abs().sum() for p in model.parameters() if p.dim() > 1)

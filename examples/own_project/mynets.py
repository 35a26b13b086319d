"""The example project's own networks: plain PyTorch modules, no import of the framework.

Their YAML files (conf/model/*.yaml) hold only static knobs (`width`, `depth`); the framework
passes what depends on the data where it builds the model -- `in_channels`, `num_classes` and
`image_size` (an int for square images, (H, W) otherwise) -- because these signatures accept them.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn


def _height_width(image_size) -> tuple[int, int]:
    return (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)


class TinyVGG(nn.Sequential):
    """`depth` VGG blocks (two 3x3 convs and a 2x2 max-pool each, width doubling per block), then
    a linear classifier. An nn.Sequential of convs and pools (`features`, then `head`), so the
    framework computes its receptive field from the layers."""

    def __init__(self, in_channels: int, num_classes: int, image_size, width: int = 16, depth: int = 2):
        height, wide = _height_width(image_size)
        if min(height, wide) >> depth < 1:
            raise ValueError(
                f"model.depth={depth} halves a {image_size}px image to nothing; use at most "
                f"{min(height, wide).bit_length() - 1} blocks"
            )
        layers, channels = [], in_channels
        for block in range(depth):
            out = width * 2**block
            layers += [
                nn.Conv2d(channels, out, 3, padding=1),
                nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            channels, height, wide = out, height // 2, wide // 2
        super().__init__(
            OrderedDict(
                features=nn.Sequential(*layers),
                head=nn.Sequential(nn.Flatten(), nn.Linear(channels * height * wide, num_classes)),
            )
        )


class MLP(nn.Module):
    """The pixels flattened, then `depth` hidden layers of `width` units with ReLU: a baseline
    without convolutions (no receptive field to compute)."""

    def __init__(self, in_channels: int, num_classes: int, image_size, width: int = 128, depth: int = 1):
        super().__init__()
        height, wide = _height_width(image_size)
        layers, inputs = [nn.Flatten()], in_channels * height * wide
        for _ in range(depth):
            layers += [nn.Linear(inputs, width), nn.ReLU()]
            inputs = width
        layers.append(nn.Linear(inputs, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)

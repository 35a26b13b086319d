"""The lecture's net exactly, the capacity knobs, receptive fields and refused geometries."""

import pytest
import torch
from torch import nn

from sweeper import build, models
from tests.conftest import compose_cfg


def lecture_net():
    return build.model(compose_cfg(tiny=False), in_channels=3, image_size=32, num_classes=10)


def test_default_model_is_the_lecture_convnet():
    net = lecture_net()
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    pools = [m.kernel_size for m in net.features if isinstance(m, nn.MaxPool2d)]
    fcs = [m for m in net.head if isinstance(m, nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [
        (3, 32, (5, 5)),
        (32, 64, (5, 5)),
    ]
    assert pools == [3, 2]
    assert [(f.in_features, f.out_features) for f in fcs] == [(256, 200), (200, 10)]
    # conv, pool, relu order as in the lecture
    kinds = [type(m).__name__ for m in net.features]
    assert kinds == ["Conv2d", "MaxPool2d", "ReLU", "Conv2d", "MaxPool2d", "ReLU"]
    assert models.n_params(net) == 2432 + 51264 + 51400 + 2010
    assert net.receptive_field_px == 22
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_channels_grow_per_layer_or_follow_an_explicit_list():
    assert models.conv_widths(16, 2.0, 3) == [16, 32, 64]
    assert models.conv_widths([8, 8, 40], 2.0, 3) == [8, 8, 40]
    net = models.ConvNet(
        in_channels=3,
        image_size=32,
        num_classes=10,
        conv_layers=3,
        channels=[8, 8, 40],
        pool=2,
        padding="same",
        kernel_size=[3, 3, 5],
        units=[],
    )
    convs = [m for m in net.features if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 8, 40]
    assert [c.kernel_size[0] for c in convs] == [3, 3, 5]
    assert net.head[-1].in_features == 40 * 4 * 4


def test_receptive_field_of_a_chain():
    assert models.receptive_field([(3, 1)]) == 3
    assert models.receptive_field([(3, 1), (3, 1)]) == 5
    assert models.receptive_field([(3, 1), (2, 2), (3, 1)]) == 3 + 1 + 2 * 2


def test_batch_norm_and_dropout_knobs():
    net = models.ConvNet(
        in_channels=3, image_size=32, num_classes=10, batch_norm=True, dropout=0.5, units=[20, 20]
    )
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.features) == 2
    assert sum(isinstance(m, nn.Dropout) for m in net.head) == 2


def test_l1_penalty_counts_weights_not_biases():
    net = nn.Sequential(nn.Linear(2, 2))
    with torch.no_grad():
        net[0].weight.fill_(-1.0)
        net[0].bias.fill_(5.0)
    assert models.weight_l1(net).item() == 4.0


def test_resnet_is_resnet20_by_default():
    net = build.model(compose_cfg("model=resnet", tiny=False), in_channels=3, image_size=32, num_classes=10)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19  # 6*3 + 1 conv layers, + the fc = 20 weighted layers
    assert 260_000 < models.n_params(net) < 280_000
    assert net.receptive_field_px == 32
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(conv_layers=3, pool=[3, 2, 2]), ["model.kernel_size=5", "conv layer 3", "model.padding=valid"]),
        (dict(conv_layers=2, pool=[3, 2], kernel_size=[5, 11]), ["model.kernel_size=11", "conv layer 2"]),
        (dict(conv_layers=3, pool=[2, 2, 16], padding="same"), ["model.pool=16", "conv layer 3"]),
        (dict(conv_layers=3, pool=[3, 2]), ["model.pool has 2 entries", "model.conv_layers=3"]),
    ],
)
def test_a_vanishing_feature_map_is_refused_naming_the_knobs(kwargs, words):
    with pytest.raises(models.GeometryError) as err:
        models.ConvNet(in_channels=3, image_size=32, num_classes=10, **kwargs)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [
        [],
        ["model.batch_norm=true", "model.dropout=0.5"],
        ["model.padding=same", "model.conv_layers=3", "model.pool=[2,2,2]"],
    ],
)
def test_the_convnet_knows_its_activations_as_a_forward_pass_sees_them(overrides):
    # What the memory pre-check counts without running the net: each layer's output per sample
    # (Flatten's is a view of the last one, not counted), and the widest layer's input + output.
    net = build.model(compose_cfg(*overrides), 3, 32, 10).eval()
    seen = []
    for m in net.modules():
        if not list(m.children()) and not isinstance(m, torch.nn.Flatten):
            m.register_forward_hook(lambda m, i, o: seen.append((i[0][0].numel(), o[0].numel())))
    with torch.no_grad():
        net(torch.zeros(1, 3, 32, 32))
    assert models.activations(net) == (sum(o for _, o in seen), max(i + o for i, o in seen))

"""One wide net (sweeper/stacked.py) computes what each trial's own net computes, forward and backward."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state

from sweeper import models, stacked

NETS = {
    "lecture-convnet": dict(cls=models.ConvNet),
    "convnet-same-3-layers-no-hidden": dict(
        cls=models.ConvNet, conv_layers=3, channels=[8, 8, 16], pool=[2, 2, 1], padding="same", units=[]
    ),
    "convnet-dropout": dict(cls=models.ConvNet, channels=8, units=[32, 16], dropout=0.5),
    "resnet-no-batch-norm": dict(cls=models.ResNet, channels=8, blocks=1, batch_norm=False, units=[16]),
}
T = 3


def build(spec, seed):
    torch.manual_seed(seed)
    kwargs = {k: v for k, v in spec.items() if k != "cls"}
    return spec["cls"](in_channels=3, image_size=32, num_classes=10, **kwargs)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_the_wide_net_gives_each_trial_its_own_nets_logits_and_gradients(name, layout, device, monkeypatch):
    # cuDNN's grouped kernels against its solo ones, in full fp32 (TF32 would round both
    # differently), with its default algorithms: benchmark mode, which an earlier run in this
    # process may have turned on, picks them by timing, so the kernels compared would vary.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    nets = [build(NETS[name], seed).to(device, memory_format=layout).eval() for seed in range(T)]
    params, buffers = stack_module_state(nets)
    wide = stacked.widen(copy.deepcopy(nets[0]).to("meta"), T).eval()
    # the same names as the solo nets, each with a leading trial dimension
    assert {k: v.shape for k, v in wide.named_parameters()} == {k: v.shape for k, v in params.items()}
    g = torch.Generator().manual_seed(0)
    shared = torch.randn(20, 3, 32, 32, generator=g).to(device).contiguous(memory_format=layout)
    own = torch.randn(T, 20, 3, 32, 32, generator=g).to(device)
    y = torch.randint(0, 10, (T, 20), generator=g).to(device)
    for images, per_trial in ((shared, [shared] * T), (own, list(own))):
        logits = functional_call(wide, (params, buffers), (images,))
        assert logits.shape == (T, 20, 10)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(T, -1).mean(1)
        grads = torch.autograd.grad(loss.sum(), list(params.values()))
        for t, net in enumerate(nets):
            solo = net(per_trial[t])
            torch.testing.assert_close(logits[t], solo, rtol=1e-5, atol=1e-5)
            solo_grads = torch.autograd.grad(F.cross_entropy(solo, y[t]), list(net.parameters()))
            for g_wide, g_solo in zip(grads, solo_grads, strict=True):
                torch.testing.assert_close(g_wide[t], g_solo, rtol=1e-4, atol=1e-6)


def test_layers_it_cannot_stack_are_named():
    net = build(dict(cls=models.ConvNet, batch_norm=True), 0)
    with pytest.raises(stacked.UnsupportedLayer, match="BatchNorm2d"):
        stacked.widen(net, 2)
    with pytest.raises(stacked.UnsupportedLayer, match="groups=1"):
        stacked.widen(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), 2)
    with pytest.raises(stacked.UnsupportedLayer, match="GRU"):
        stacked.widen(nn.GRU(4, 4), 2)

"""What the machine that trains refuses before the run starts (validate.check_device): bf16 on a
CPU, and a run whose net, data or batches cannot fit in the memory there; each in one line."""

from pathlib import Path

import pytest
import torch

from sweeper import build, footprint, models, validate
from tests.conftest import TINY, compose_cfg, run_cli


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("device", ["auto", "cpu"])
def test_bf16_on_a_cpu_is_refused_with_the_reason(device, no_cuda):
    # It ran about 10x slower than fp32, without a word.
    with pytest.raises(validate.ConfigError) as err:
        validate.check_device(compose_cfg(f"trainer.device={device}", "trainer.precision=bf16"))
    assert str(err.value) == (
        "trainer.precision=bf16 is invalid here: this run trains on cpu, where bf16 autocast runs about "
        "10x slower than fp32; use fp32, or bf16 on a CUDA device"
    )
    validate.check_device(compose_cfg(f"trainer.device={device}"))  # fp32 runs


@pytest.mark.parametrize(
    "overrides, key, part",
    [
        (
            ["model.channels=200000"],
            "model.channels=200000",
            "weights, gradients and optimizer state 14.6 TiB",
        ),
        (["data.generated_train=200000000"], "data.generated_train=200000000", "data 2.8 TiB"),
        (["model.units=[100000,100000,100000]"], "model.units=[100000,100000,100000]", "weights"),
        (
            ["trainer.eval_batch_size=1000000", "model.channels=64"],
            "trainer.eval_batch_size=1000000 with model.channels=64",
            "activations",
        ),
    ],
)
def test_a_run_too_large_for_this_machine_is_refused_naming_the_knob_the_estimate_and_the_limit(
    overrides, key, part, no_cuda, monkeypatch
):
    monkeypatch.setattr(footprint, "host_available", lambda: 16 << 30)
    cfg = compose_cfg(*overrides)
    validate.check(cfg)  # the values themselves are allowed: it is this machine that is too small
    with pytest.raises(validate.ConfigError) as err:
        validate.check_device(cfg)
    message = str(err.value)
    assert message.startswith(f"{key} is too large for this machine: the run needs at least ")
    assert part in message and message.endswith("and this machine has 16.0 GiB available")
    assert "\n" not in message


def test_the_lecture_run_fits_and_a_machine_without_memory_figures_refuses_nothing(no_cuda, monkeypatch):
    monkeypatch.setattr(footprint, "host_available", lambda: 4 << 30)
    validate.check_device(compose_cfg("data=synthetic", tiny=False))  # the lecture net on 6k images
    monkeypatch.setattr(footprint, "host_available", lambda: None)
    validate.check_device(compose_cfg("model.channels=200000"))


def test_a_gpu_run_is_held_to_the_cards_memory_and_its_loading_to_the_hosts(monkeypatch):
    class Card:
        total_memory = 80 << 30

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: Card)
    monkeypatch.setattr(footprint, "host_available", lambda: 1 << 40)
    with pytest.raises(
        validate.ConfigError, match=r"^model.channels=200000 is too large .* cuda:0 has 80.0 GiB in all$"
    ):
        validate.check_device(compose_cfg("model.channels=200000"))
    validate.check_device(compose_cfg())
    # The card could hold it, the host that loads the data set first could not.
    monkeypatch.setattr(footprint, "host_available", lambda: 1 << 30)
    with pytest.raises(
        validate.ConfigError, match=r"^data.generated_train=1000000 is too large .* of host memory"
    ):
        validate.check_device(compose_cfg("data.generated_train=1000000"))


def test_the_estimate_counts_the_parameters_the_built_net_has():
    for overrides in ([], ["model=resnet"], ["optim=adam"], ["optim.momentum=0.9"]):
        cfg = compose_cfg(*overrides)
        net = build.model(cfg, 3, 32, 10)
        states = {"adam": 2}.get(cfg.optim.name, 1 if cfg.optim.get("momentum") else 0)
        assert footprint.estimate(cfg).model == models.n_params(net) * 4 * (2 + states), overrides


def test_a_single_run_too_large_is_refused_before_its_dir_is_made(tmp_path: Path):
    # It was accepted, then its job died in the allocator with a traceback.
    result = run_cli(*TINY, "model.channels=200000", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith("error: model.channels=200000 is too large for this machine: the run needs at least 15.")
    )
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "overrides, message",
    [
        (  # 4 x 2^49 channels at the last of 50 layers: torch's size count overflows
            ["model.padding=same", "model.conv_layers=50", "model.pool=1"],
            "model.channels=4 x model.growth=2.0 over model.conv_layers=50 is too large for any machine: "
            "torch cannot size its weights (Storage size "
            "calculation overflowed",
        ),
        (
            ["model.channels=99999999999999999999"],
            "model.channels=99999999999999999999 is too large for any machine: torch cannot size its weights",
        ),
        (  # growth**i past a float's range: OverflowError before
            ["model.growth=1e308"],
            "model.growth=1e+308 makes conv layer 2 of model.conv_layers=2 wider than any number",
        ),
    ],
)
def test_a_net_no_machine_can_hold_is_refused_by_the_value_check_itself(overrides, message):
    # validate.check, which a SLURM login node runs before it submits, not only the machine's check.
    with pytest.raises(validate.ConfigError) as err:
        validate.check(compose_cfg(*overrides))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)

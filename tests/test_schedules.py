"""Each schedule's values at its boundaries, warmup, and that the optimizer steps at exactly those rates."""

import math

import pytest
import torch

from sweeper import build, schedules
from tests.conftest import CONF, compose_cfg

SPE = 10  # steps per epoch


def test_constant_is_lr_everywhere():
    at = schedules.constant(lr=0.1, steps_per_epoch=SPE, total_steps=100)
    assert {at(s) for s in range(100)} == {0.1}


def test_step_switches_after_epoch_k():
    # "0.1 for 25 epochs, then lr2": the last step of epoch 25 still runs at 0.1.
    kw = dict(lr=0.1, steps_per_epoch=SPE, total_steps=500, lr2=0.05, switch_epoch=25)
    assert schedules.step(**kw)(25 * SPE - 1) == 0.1
    assert schedules.step(**kw)(25 * SPE) == 0.05
    assert schedules.step(**kw)(0) == 0.1
    assert schedules.step(**kw)(499) == 0.05


def test_multistep_multiplies_by_gamma_at_each_milestone():
    kw = dict(lr=1.0, steps_per_epoch=SPE, total_steps=500, milestones=[10, 20], gamma=0.1)
    assert schedules.multistep(**kw)(10 * SPE - 1) == 1.0
    assert schedules.multistep(**kw)(10 * SPE) == pytest.approx(0.1)
    assert schedules.multistep(**kw)(20 * SPE - 1) == pytest.approx(0.1)
    assert schedules.multistep(**kw)(20 * SPE) == pytest.approx(0.01)


def test_geometric_decays_once_per_epoch():
    kw = dict(lr=0.1, steps_per_epoch=SPE, total_steps=500, gamma=0.5)
    assert schedules.geometric(**kw)(SPE - 1) == 0.1
    assert schedules.geometric(**kw)(SPE) == pytest.approx(0.05)
    assert schedules.geometric(**kw)(3 * SPE + 5) == pytest.approx(0.1 * 0.5**3)


def test_cosine_runs_from_lr_to_lr_min():
    kw = dict(lr=0.1, steps_per_epoch=SPE, total_steps=101, lr_min=0.001)
    assert schedules.cosine(**kw)(0) == pytest.approx(0.1)
    assert schedules.cosine(**kw)(50) == pytest.approx((0.1 + 0.001) / 2)
    assert schedules.cosine(**kw)(100) == pytest.approx(0.001)


def test_warmup_ramps_linearly_then_hands_over():
    fn = schedules.with_warmup(lambda s: 0.1, warmup_epochs=2, steps_per_epoch=SPE)
    assert fn(0) == pytest.approx(0.1 / 20)
    assert fn(9) == pytest.approx(0.1 * 10 / 20)
    assert fn(19) == pytest.approx(0.1)
    assert fn(200) == pytest.approx(0.1)
    assert schedules.with_warmup(math.sqrt, 0, SPE) is math.sqrt


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            ["schedule=step", "trainer.epochs=4", "schedule.switch_epoch=2", "schedule.lr2=0.02"],
            [0.1] * 20 + [0.02] * 20,
        ),
        (
            ["schedule=geometric", "trainer.epochs=3", "schedule.gamma=0.5"],
            [0.1] * 10 + [0.05] * 10 + [0.025] * 10,
        ),
        (
            ["schedule=multistep", "trainer.epochs=3", "schedule.milestones=[1,2]", "schedule.gamma=0.1"],
            [0.1] * 10 + [0.01] * 10 + [0.001] * 10,
        ),
    ],
)
def test_optimizer_sees_the_configured_rate_at_every_step(overrides, expected):
    # The path train.py uses: config -> build.schedule -> each step's rate set on the optimizer.
    from sweeper.train import set_lr

    cfg = compose_cfg(*overrides)
    model = torch.nn.Linear(2, 2)
    optimizer = build.optimizer(cfg, model.parameters())
    lr_at = build.schedule(cfg, steps_per_epoch=SPE, total_steps=SPE * cfg.trainer.epochs)
    seen = []
    for step in range(len(expected)):
        set_lr(optimizer, lr_at(step))
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
    assert seen == pytest.approx(expected)


def test_the_built_schedule_is_a_plain_function_of_the_step():
    # It runs at every step: a Hydra partial would re-authorise its target on each call
    # (hydra-core's target policy, about as long as a replayed GPU step).
    import types

    for name in ("constant", "step", "multistep", "geometric", "cosine"):
        lr_at = build.schedule(compose_cfg(f"schedule={name}"), steps_per_epoch=SPE, total_steps=SPE * 50)
        assert type(lr_at) is types.FunctionType and lr_at(0) == pytest.approx(0.1), name


def test_a_record_written_with_partial_schedules_still_resumes():
    # Records before schedules were factories carry schedule._partial_; it changes nothing computed.
    from sweeper.rundir import config_difference

    old = {"schedule": {"_target_": "sweeper.schedules.step", "_partial_": True, "lr2": 0.05}}
    assert config_difference(old, {"schedule": {"_target_": "sweeper.schedules.step", "lr2": 0.05}}) == []
    assert config_difference(old, {"schedule": {"_target_": "sweeper.schedules.step", "lr2": 0.02}}) != []


@pytest.mark.parametrize(
    "fraction, epochs, expected", [(0.5, 50, 25), (0.5, 4, 2), (0.5, 3, 1), (0.3, 10, 3), (0.5, 1, 1)]
)
def test_fraction_of_epochs_is_that_epoch_of_the_run_rounded_down(fraction, epochs, expected):
    cfg = compose_cfg(
        "schedule=step",
        f"trainer.epochs={epochs}",
        f"schedule.switch_epoch=${{fraction_of_epochs:{fraction}}}",
    )
    assert cfg.schedule.switch_epoch == expected


def test_the_lecture_switches_at_epoch_25_of_50_and_halfway_through_a_shortened_run():
    # "0.1 for 25 epochs, then lr2": what the record keeps is the epoch, as before.
    assert compose_cfg("experiment=lecture_lr2", tiny=False).schedule.switch_epoch == 25
    short = compose_cfg("experiment=lecture_lr2", "trainer.epochs=4", tiny=False)
    assert short.schedule.switch_epoch == 2
    lr_at = build.schedule(short, steps_per_epoch=SPE, total_steps=4 * SPE)
    assert [lr_at(e * SPE) for e in range(4)] == [0.1, 0.1, 0.05, 0.05]


def test_the_lecture_grid_can_be_shortened_for_a_quick_look():
    # Both experiments' jobs pass the checks at trainer.epochs=4: before, lecture_lr2's switch at
    # epoch 25 was refused (it must come before the end), and schedule.switch_epoch=2 could not be set
    # for the pair (lecture_lr has no schedule.switch_epoch).
    from sweeper import overrides, validate

    arguments = ["-m", "experiment=lecture_lr,lecture_lr2", "trainer.epochs=4", "data=synthetic"]
    overrides.check_overrides(arguments, str(CONF))
    for experiment in ("lecture_lr", "lecture_lr2"):
        validate.check(
            compose_cfg(f"experiment={experiment}", "trainer.epochs=4", "data=synthetic", tiny=False)
        )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["schedule=step", "trainer.epochs=1"],
            "schedule.switch_epoch=${fraction_of_epochs:0.5} (epoch 1 here) is invalid: the switch to schedule.lr2 "
            "must come before the end, 1 <= schedule.switch_epoch < trainer.epochs=1",
        ),
        (
            ["schedule=step", "schedule.switch_epoch=${fraction_of_epochs:1.5}"],
            "schedule.switch_epoch=${fraction_of_epochs:1.5} is invalid: fraction_of_epochs takes a number "
            "between 0 and 1 (0.5: halfway), not 1.5",
        ),
        (["schedule=step", "trainer.epochs=abc"], "trainer.epochs='abc' is invalid: must be an integer >= 1"),
    ],
)
def test_a_switch_stated_as_a_fraction_is_refused_in_one_line_where_it_cannot_work(overrides, message):
    from sweeper import validate
    from sweeper.overrides import check_overrides

    with pytest.raises(validate.ConfigError) as err:
        check_overrides(overrides, str(CONF))  # the trainer's types: refused as Hydra composes them
        validate.check(compose_cfg(*overrides))
    assert str(err.value) == message

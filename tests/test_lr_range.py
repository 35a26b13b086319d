"""experiment=lr_range: the geometric lr sweep, steps.jsonl, the suggested lr and its figure."""

import json

import numpy as np
import pytest
import torch

from analysis import load_sweep, lr_range, write_report
from sweeper import build, fused, rundir, train
from sweeper.runlog import RunLog
from sweeper.validate import ConfigError, check
from tests.conftest import compose_cfg, run_cli
from tests.test_train import interrupt_at_checkpoint

# TINY: 300 images in batches of 50 = 6 steps per epoch, 2 epochs.
STEPS = 12


def steps(run_dir):
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def test_the_schedule_grows_geometrically_from_lr_min_at_the_first_step_to_lr_max_at_the_last():
    cfg = compose_cfg("schedule=lr_range", "schedule.lr_min=1e-4", "schedule.lr_max=1")
    lr_at = build.schedule(cfg, steps_per_epoch=5, total_steps=5)
    rates = [lr_at(s) for s in range(5)]
    assert rates == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1, 1])  # a decade per step: 4 steps, 4 decades


def test_the_experiment_sweeps_1e_5_to_10_with_steps_logged_and_the_optimizer_follows_it():
    cfg = compose_cfg("experiment=lr_range")
    assert cfg.schedule.name == "lr_range" and cfg.trainer.log_steps is True
    assert (cfg.schedule.lr_min, cfg.schedule.lr_max) == (1e-5, 10)
    # The trainer's path: LambdaLR multiplies the optimizer's lr (= cfg.lr) by lr_at(s) / lr.
    optimizer = build.optimizer(cfg, torch.nn.Linear(2, 2).parameters())
    lr_at = build.schedule(cfg, steps_per_epoch=50, total_steps=100)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_at(s) / cfg.lr)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert seen[0] == pytest.approx(1e-5) and seen[-1] == pytest.approx(10)
    assert np.diff(np.log(seen)) == pytest.approx(np.full(99, np.log(1e6) / 99))


@pytest.mark.parametrize(
    "override, key",
    [("schedule.lr_max=1e-6", "schedule.lr_max"), ("schedule.lr_min=0", "schedule.lr_min")],
)
def test_a_range_that_does_not_grow_is_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        check(compose_cfg("experiment=lr_range", override))


def test_a_run_with_log_steps_writes_one_line_per_step_with_the_growing_lr(tmp_path):
    summary = train.run(compose_cfg("experiment=lr_range", "trainer.epochs=2"), tmp_path)
    rows = steps(tmp_path)
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    assert [r["epoch"] for r in rows] == [1] * 6 + [2] * 6
    lrs = [r["step_lr"] for r in rows]
    assert lrs[0] == pytest.approx(1e-5) and all(b > a for a, b in zip(lrs, lrs[1:], strict=False))
    if summary["status"] == "completed":  # lr 10 may blow the loss up (null), which ends it diverged
        assert lrs[-1] == pytest.approx(10)
    assert all(r["loss"] is None or r["loss"] > 0 for r in rows)


def test_steps_are_not_logged_by_default(tmp_path):
    train.run(compose_cfg("trainer.epochs=1"), tmp_path)
    assert not (tmp_path / "steps.jsonl").exists()


def test_a_resume_drops_the_steps_past_the_checkpoint_and_ends_with_each_step_once(tmp_path, monkeypatch):
    cfg = compose_cfg("trainer.log_steps=true")  # TINY: 2 epochs of 6 steps
    train.run(cfg, tmp_path / "straight")
    # Killed after epoch 2's steps and metrics line, before its checkpoint: resumes from epoch 1.
    interrupt_at_checkpoint(monkeypatch, cfg, tmp_path / "run", 2)
    assert [r["step"] for r in steps(tmp_path / "run")] == list(range(1, 13))
    assert train.run(cfg, tmp_path / "run")["status"] == "completed"
    assert steps(tmp_path / "run") == steps(tmp_path / "straight")


def test_keeping_epochs_up_to_a_checkpoint_cuts_steps_jsonl_at_its_step(tmp_path):
    record = RunLog(tmp_path)
    record.append_metrics({"epoch": 1, "step": 3})
    record.append_metrics({"epoch": 2, "step": 6})
    record.append_steps([{"step": s, "epoch": 1 + (s > 3), "lr": 0.1, "loss": 1.0} for s in range(1, 8)])
    (tmp_path / "steps.jsonl").open("a").write('{"step": 8, "ep')  # a crash mid-write
    record.keep_epochs_up_to(1)
    assert [r["step"] for r in steps(tmp_path)] == [1, 2, 3]


def test_a_log_steps_job_is_not_fused_and_says_why():
    cfgs = [compose_cfg("trainer.log_steps=true", f"lr={lr}") for lr in (0.1, 0.2)]
    assert "trainer.log_steps" in fused.fusable(cfgs)
    assert fused.fusable([compose_cfg(f"lr={lr}") for lr in (0.1, 0.2)]) is None


def falling_then_exploding(n=100, center=-2.0):
    """A range test's loss without noise: flat at 2.3, a sigmoid fall to 0.3 centred at
    lr = 10**center (its steepest point), then a blow-up past lr = 1."""
    lrs = np.geomspace(1e-5, 10, n)
    x = np.log10(lrs)
    loss = 0.3 + 2.0 / (1 + np.exp(4 * (x - center))) + np.where(x > 0, 50 * x**2, 0.0)
    return lrs, loss


def test_the_suggestion_is_the_steepest_descent_of_the_loss():
    lrs, loss = falling_then_exploding()
    s = lr_range.suggest(lrs, loss, beta=0)  # no smoothing: the curve's own steepest point
    assert s.lr == pytest.approx(1e-2, rel=0.1)
    assert lrs[s.end] > 1  # the curve the rule reads ends at the blow-up


def test_the_smoothed_suggestion_ignores_a_steeper_fall_after_the_loss_blew_up():
    lrs, loss = falling_then_exploding()
    loss[-10:] = np.linspace(400, 1, 10)  # after the blow-up: a steep fall that is no descent
    s = lr_range.suggest(lrs, loss)
    assert s.lr is not None and 1e-3 < s.lr < 1  # the fall around 1e-2, the smoothing's lag after it
    assert s.index < s.end and lrs[s.end] > 1


def test_a_loss_that_is_null_from_the_start_has_no_suggestion_and_says_why():
    lrs, loss = falling_then_exploding(n=30)
    loss[5:] = np.nan
    s = lr_range.suggest(lrs, loss)
    assert s.lr is None and "too few" in s.why_none


def test_the_report_draws_the_range_test_and_states_the_suggestion(tmp_path):
    run_dir = tmp_path / "run"
    lrs, loss = falling_then_exploding()
    train.run(compose_cfg("trainer.epochs=1"), run_dir)  # a real record; its steps replaced
    (run_dir / "steps.jsonl").write_text(
        "".join(
            json.dumps({"step": i + 1, "epoch": 1, "lr": lr, "loss": v}) + "\n"
            for i, (lr, v) in enumerate(zip(lrs, loss, strict=True))
        )
    )
    expected = lr_range.suggest(lrs, loss).lr
    report = write_report(load_sweep([run_dir]), tmp_path / "report").read_text()
    assert (tmp_path / "report" / "lr_range.png").stat().st_size > 0
    assert f"suggested lr {expected:.3g}" in report and "steepest descent" in report


def test_the_analysis_command_prints_the_suggested_lr(tmp_path):
    run_dir = tmp_path / "run"
    train.run(compose_cfg("experiment=lr_range"), run_dir)
    out = run_cli(str(run_dir), cwd=tmp_path, module="analysis", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LR range test, run run: " in out.stdout
    assert (run_dir / "report" / "lr_range.png").exists()


def test_a_damaged_steps_line_is_dropped_and_named_in_the_figures_note(tmp_path):
    run_dir = tmp_path / "run"
    lrs, loss = falling_then_exploding()
    train.run(compose_cfg("trainer.epochs=1"), run_dir)
    lines = [
        json.dumps({"step": i + 1, "lr": lr, "loss": v})
        for i, (lr, v) in enumerate(zip(lrs, loss, strict=True))
    ]
    lines[3] = '{"step": 4, "lr": "fast"}'
    (run_dir / "steps.jsonl").write_text("\n".join(lines) + "\n")
    report = write_report(load_sweep([run_dir]), tmp_path / "report").read_text()
    assert "steps.jsonl: line 4 is not a step" in report
    assert (tmp_path / "report" / "lr_range.png").exists()


def test_a_record_written_before_trainer_log_steps_existed_still_resumes():
    # Such a record logged no steps: it compares as log_steps=false, and only as that.
    assert rundir.config_difference({"trainer": {}}, {"trainer": {"log_steps": False}}) == []
    assert rundir.config_difference({"trainer": {}}, {"trainer": {"log_steps": True}}) == [
        "trainer.log_steps: False -> True"
    ]

"""Fused trials (one wide net over stacked models) compute what solo runs compute, each with its own record."""

import contextlib
import gc
import json
import os
import subprocess
import sys
import weakref

import pytest
import torch

from sweeper import build, data, fused, models, train
from tests.conftest import REPO, compose_cfg

TRIALS = [
    ["lr=0.1"],
    ["lr=0.05", "optim.momentum=0.9"],
    ["lr=0.1", "trainer.seed=1", "schedule=step", "schedule.switch_epoch=1", "schedule.lr2=0.02"],
]
COMMON = ["trainer.epochs=2", "data.augment=true", "trainer.channels_last=false"]


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_fused_trials_match_the_same_trials_run_alone(tmp_path):
    cfgs = [compose_cfg(*COMMON, *t) for t in TRIALS]
    assert fused.fusable(cfgs) is None
    fused_dirs = [tmp_path / "fused" / str(i) for i in range(len(cfgs))]
    summaries = fused.run_group(cfgs, fused_dirs, [[]] * len(cfgs), [0, 1, 2])
    assert [s["status"] for s in summaries] == ["completed"] * 3
    assert all(s["fused_trials"] == 3 for s in summaries)
    for i, cfg in enumerate(cfgs):
        train.run(cfg, tmp_path / "solo" / str(i))
        solo, together = rows(tmp_path / "solo" / str(i)), rows(fused_dirs[i])
        assert [r["epoch"] for r in together] == [1, 2]
        for a, b in zip(solo, together, strict=True):
            for key in ("epoch_lr", "step", "samples"):
                assert a[key] == b[key]
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert b[key] == pytest.approx(a[key], rel=2e-3, abs=2e-3), (i, key)
        # a complete record, in the solo format
        assert {p.name for p in fused_dirs[i].iterdir()} >= {
            "config.json",
            "job.json",
            "metrics.jsonl",
            "losses.npz",
            "summary.json",
            "checkpoint.pt",
        }


def test_bf16_fused_trials_match_their_bf16_solo_runs(tmp_path):
    # Autocast wraps the wide net's forward as it wraps the solo net's. The wide net's kernels
    # round differently in bf16, so the tolerance is bf16's; and the trials did train in bf16:
    # their curves are not the fp32 runs'.
    trials = [["lr=0.1"], ["lr=0.05", "optim.momentum=0.9"]]
    cfgs = [compose_cfg(*COMMON, "trainer.precision=bf16", *t) for t in trials]
    assert fused.fusable(cfgs) is None
    dirs = [tmp_path / "fused" / str(i) for i in range(2)]
    assert [s["status"] for s in fused.run_group(cfgs, dirs, [[]] * 2, [0, 1])] == ["completed"] * 2
    for i, t in enumerate(trials):
        train.run(cfgs[i], tmp_path / "solo" / str(i))
        train.run(compose_cfg(*COMMON, *t), tmp_path / "fp32" / str(i))
        together, solo, fp32 = (
            rows(d / str(i)) for d in (tmp_path / "fused", tmp_path / "solo", tmp_path / "fp32")
        )
        for a, b in zip(solo, together, strict=True):
            for key in ("train_loss", "test_loss"):
                assert b[key] == pytest.approx(a[key], rel=2e-3), (i, key)
        assert max(abs(b["train_loss"] - c["train_loss"]) for b, c in zip(together, fp32, strict=True)) > 5e-5


def test_trials_of_one_seed_draw_one_batch_for_all_and_still_match_their_solo_runs(tmp_path, monkeypatch):
    # The lecture's lr grid: one seed, so every trial's solo run sees the same batches.
    cfgs = [compose_cfg(*COMMON, f"lr={lr}") for lr in (0.2, 0.1, 0.01)]
    draws, draw = [], data.train_batches
    monkeypatch.setattr(data, "train_batches", lambda *a, **k: draws.append(1) or draw(*a, **k))
    dirs = [tmp_path / "fused" / str(i) for i in range(3)]
    assert [s["status"] for s in fused.run_group(cfgs, dirs, [[]] * 3, [0, 1, 2])] == ["completed"] * 3
    assert len(draws) == 2  # one epoch's batches per epoch, not one per trial
    monkeypatch.undo()
    for i, cfg in enumerate(cfgs):
        train.run(cfg, tmp_path / "solo" / str(i))
        for a, b in zip(rows(tmp_path / "solo" / str(i)), rows(dirs[i]), strict=True):
            assert (a["epoch_lr"], a["step"]) == (b["epoch_lr"], b["step"])
            for key in ("train_loss", "train_acc", "test_loss", "test_acc"):
                assert b[key] == pytest.approx(a[key], rel=2e-3, abs=2e-3), (i, key)


@pytest.mark.parametrize("trials", [TRIALS, TRIALS[:2]], ids=["own-batches", "one-seed-shared-batches"])
def test_an_interrupted_group_resumes_as_a_group_and_ends_as_if_never_stopped(tmp_path, monkeypatch, trials):
    # It resumed trial by trial, solo and one after another: 6 trials resuming 2 of 4 epochs took
    # longer than the whole fused run.
    from sweeper.runlog import RunLog

    cfgs = [compose_cfg(*COMMON, "trainer.epochs=4", *t) for t in trials]
    n = len(cfgs)
    straight = [tmp_path / "straight" / str(i) for i in range(n)]
    fused.run_group(cfgs, straight, [[]] * n, list(range(n)))
    real = RunLog.save_checkpoint

    def save(self, state):  # stopped at the first trial's epoch-3 checkpoint, as by a kill
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        real(self, state)

    dirs = [tmp_path / "stopped" / str(i) for i in range(n)]
    monkeypatch.setattr(RunLog, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        fused.run_group(cfgs, dirs, [[]] * n, list(range(n)))
    monkeypatch.setattr(RunLog, "save_checkpoint", real)
    assert [len(rows(d)) for d in dirs] == [3] + [2] * (n - 1)  # trial 0's epoch 3 line, no checkpoint

    calls = []
    monkeypatch.setattr(
        fused, "train_group", lambda c, *rest, real=fused.train_group: calls.append(len(c)) or real(c, *rest)
    )
    summaries = fused.run_group(cfgs, dirs, [[]] * n, list(range(n)))
    assert calls == [n]  # one group, not n solo runs
    assert [s["status"] for s in summaries] == ["completed"] * n
    for d, s in zip(dirs, straight, strict=True):
        resumed, once = rows(d), rows(s)
        assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]
        drop = ("time_s", "epoch_time_s")
        assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
            {k: v for k, v in r.items() if k not in drop} for r in once
        ]
        assert resumed[2]["time_s"] > resumed[1]["time_s"]  # the clock goes on from the checkpoint's


def test_a_fused_checkpoint_resumes(tmp_path):
    cfgs = [compose_cfg(*COMMON, *t) for t in TRIALS[:2]]
    dirs = [tmp_path / str(i) for i in range(2)]
    fused.run_group(
        [compose_cfg(*COMMON[1:], "trainer.epochs=1", "trainer.channels_last=false", *t) for t in TRIALS[:2]],
        dirs,
        [[]] * 2,
        [0, 1],
    )
    for d in dirs:  # pretend the 2-epoch group was interrupted after epoch 1
        (d / "summary.json").unlink()
        config = json.loads((d / "config.json").read_text())
        config["trainer"]["epochs"] = 2
        (d / "config.json").write_text(json.dumps(config))
    fused.run_group(cfgs, dirs, [[]] * 2, [0, 1])
    for i, cfg in enumerate(cfgs):
        train.run(cfg, tmp_path / f"solo{i}")
        resumed, solo = rows(dirs[i]), rows(tmp_path / f"solo{i}")
        assert [r["epoch"] for r in resumed] == [1, 2]
        assert resumed[-1]["test_loss"] == pytest.approx(solo[-1]["test_loss"], rel=2e-3)


def test_unfusable_groups_say_why():
    assert "optim=sgd" in fused.fusable([compose_cfg("optim=adam"), compose_cfg()])
    assert "share model" in fused.fusable([compose_cfg("model.channels=8"), compose_cfg()])
    assert "batch_norm" in fused.fusable([compose_cfg("model.batch_norm=true")])
    assert "dropout=0" in fused.fusable([compose_cfg("model.dropout=0.5")] * 2)
    assert fused.fusable([compose_cfg("model=resnet", "model.batch_norm=false")] * 2) is None
    # precision is the group's, not a trial's: bf16 and fp32 jobs cannot share the step
    assert "share model" in fused.fusable([compose_cfg("trainer.precision=bf16"), compose_cfg()])
    assert fused.fusable([compose_cfg("trainer.precision=bf16")] * 2) is None


def test_a_fused_trials_checkpoint_is_the_one_its_solo_run_writes(tmp_path):
    # Same layout and values, key by key: the optimizer's groups (the last step's rate of a step
    # schedule after its switch included) and momentum, the step count and the batch generator.
    # Without augmentation: with it, a max-pool window of the momentum trial holds two values
    # within 1e-6 at step 7, which the wide net's rounding (1e-8 apart) can order the other way;
    # the gradient then goes to the other pixel and the weights drift 4e-4 apart by epoch 2
    # (traced step by step). That is rounding, not the checkpoint: the curves test above covers it.
    cfgs = [compose_cfg(*COMMON, "data.augment=false", *t) for t in TRIALS]
    fused_dirs = [tmp_path / "fused" / str(i) for i in range(len(cfgs))]
    fused.run_group(cfgs, fused_dirs, [[]] * len(cfgs), [0, 1, 2])
    for i, cfg in enumerate(cfgs):
        train.run(cfg, tmp_path / "solo" / str(i))
        solo = torch.load(tmp_path / "solo" / str(i) / "checkpoint.pt", weights_only=True)
        together = torch.load(fused_dirs[i] / "checkpoint.pt", weights_only=True)
        assert set(together) == set(solo) - {"cuda_rng"}  # (a solo CUDA run also keeps its CUDA RNG)
        assert together["epoch"] == solo["epoch"] == 2
        assert together["step"] == solo["step"] == 12, i
        assert torch.equal(together["generator"], solo["generator"]), i
        assert together["optimizer"]["param_groups"] == solo["optimizer"]["param_groups"], i
        assert together["optimizer"]["state"].keys() == solo["optimizer"]["state"].keys(), i
        for k, v in solo["optimizer"]["state"].items():
            torch.testing.assert_close(
                together["optimizer"]["state"][k]["momentum_buffer"],
                v["momentum_buffer"],
                rtol=1e-3,
                atol=1e-4,
            )
        assert together["model"].keys() == solo["model"].keys()
        for k, v in solo["model"].items():
            torch.testing.assert_close(together["model"][k], v, rtol=1e-3, atol=1e-4)


def test_a_fused_group_keeps_one_solo_net_not_one_per_trial(monkeypatch):
    """The trials train in their stacked parameters: of the solo nets that initialise them only
    one stays (the carrier of each trial's checkpoint), so a group does not hold its weights twice."""
    built, real = [], build.model
    monkeypatch.setattr(
        build, "model", lambda *a, **k: built.append(weakref.ref(net := real(*a, **k))) or net
    )
    cfgs = [compose_cfg(*COMMON, *t) for t in TRIALS]
    engine = fused.Fused(
        cfgs,
        data.load(cfgs[0].data),
        torch.device("cpu"),
        torch.contiguous_format,
        contextlib.nullcontext,
        [None] * 3,
    )
    gc.collect()
    assert len(built) == 3 and [r() is not None for r in built] == [True, False, False]
    assert engine.model is built[0]()


def test_fused_checkpoints_build_no_torch_optim_object(tmp_path):
    # A torch.optim call imports torch._dynamo (seconds of start-up): a fused
    # program writes its trials' solo-format checkpoints without one. In a fresh process, since
    # this one has imported it already.
    script = f"""
import sys
from pathlib import Path
from sweeper import fused
from tests.conftest import REPO, compose_cfg
cfgs = [compose_cfg("trainer.epochs=1", "lr=0.1"), compose_cfg("trainer.epochs=1", "lr=0.05", "optim.momentum=0.9")]
dirs = [Path({str(tmp_path)!r}) / str(i) for i in range(2)]
assert [s["status"] for s in fused.run_group(cfgs, dirs, [[], []], [0, 1])] == ["completed"] * 2
print("torch._dynamo" in sys.modules)
"""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False"]
    assert (tmp_path / "0" / "checkpoint.pt").exists() and (tmp_path / "1" / "checkpoint.pt").exists()


def test_a_trial_whose_summary_cannot_be_written_leaves_the_others_closed_as_they_ended(
    tmp_path, monkeypatch
):
    # One try around training and closing: trial 1's failing summary re-closed trial 0 as failed
    # (with trial 1's error) and left trial 2 without a summary.
    from sweeper.runlog import RunLog

    cfgs = [compose_cfg(*COMMON, *t) for t in TRIALS]
    dirs = [tmp_path / str(i) for i in range(3)]
    real = RunLog.write_summary

    def write_summary(self, summary):
        if self.dir.name == "1":
            raise OSError(28, "No space left on device")
        real(self, summary)

    monkeypatch.setattr(RunLog, "write_summary", write_summary)
    summaries = fused.run_group(cfgs, dirs, [[]] * 3, [0, 1, 2])
    assert [s["status"] for s in summaries] == ["completed", "failed", "completed"]
    assert summaries[1]["error"] == "OSError: [Errno 28] No space left on device"
    for i in (0, 2):
        assert json.loads((dirs[i] / "summary.json").read_text())["status"] == "completed"
    assert not (dirs[1] / "summary.json").exists()


class ConvNetVariant(models.ConvNet):
    """The convnet's layers, another forward: stacking its layers would not compute it."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        # optim: torch.optim.SGD's update only, by its class, not its label (optim.name)
        ("optim._target_=torch.optim.ASGD", "optim._target_=torch.optim.ASGD"),
        ("optim._target_=torch.optim.Adam", "optim._target_=torch.optim.Adam"),
        # ... and its arguments that the step does not compute, at any value but the default
        ("+optim.dampening=0.5", "optim.dampening=0.5"),
        ("+optim.maximize=true", "optim.maximize=True"),
        ("+optim.foreach=true", "optim.foreach=True"),
        ("+optim.differentiable=true", "optim.differentiable=True"),
        ("+optim.fused=true", "optim.fused=True"),
        ("+optim.lr=0.3", "optim.lr=0.3"),  # the rate is the top-level lr
        ("+optim.betas=[0.9,0.99]", "optim.betas=[0.9, 0.99]"),
        # model: a net of the layers and classes stacked.widen stacks, with l1 (the loop's)
        ("model._target_=tests.test_fused.ConvNetVariant", "ConvNetVariant"),
        ("model.batch_norm=true", "model.batch_norm=false"),
        ("model.dropout=0.5", "model.dropout=0"),
        ("+model.width_multiplier=2", "its model cannot be built"),
    ],
)
def test_a_field_the_fused_step_does_not_compute_makes_the_job_run_alone(override, named):
    """Fusing is a whitelist: a job whose optimizer, or model, is not what the fused step
    computes exactly runs alone (as its solo run, which trains it or fails with the reason),
    never fused as if it were plain SGD."""
    reason = fused.fusable([compose_cfg(override)] * 2)
    assert reason is not None and named in reason, reason


@pytest.mark.parametrize(
    "overrides",
    [
        ["optim.momentum=0.9", "optim.nesterov=true", "optim.weight_decay=1e-4"],
        ["+optim.dampening=0", "+optim.maximize=false", "+optim.foreach=null"],  # SGD's defaults
        ["optim._target_=torch.optim.sgd.SGD"],
        ["model.l1=1e-5"],
        ["model=resnet", "model.batch_norm=false"],
        *[[f"schedule={name}"] for name in ("constant", "step", "multistep", "geometric", "cosine")],
        ["schedule.warmup_epochs=1"],
    ],
)
def test_what_the_fused_step_computes_fuses(overrides):
    # Every schedule: a trial's rates are the very function build.schedule gives its solo run.
    assert fused.fusable([compose_cfg(*overrides)] * 2) is None


def test_a_config_that_is_not_a_training_runs_alone():
    from omegaconf import OmegaConf

    assert "not a training config of this project (no lr, model, optim" in fused.fusable(
        [OmegaConf.create({"foo": 10, "bar": 100})]
    )


def test_a_fused_group_computes_each_epochs_rates_as_it_starts_not_the_whole_runs(tmp_path, monkeypatch):
    """trainer.epochs=1e9 fused: every step's rate was tabulated before the first step (a
    MemoryError after 48 s). Now one epoch's at its start: the group trains its first epoch at
    once, having asked the schedule for that epoch's steps only (6 of 50 images)."""
    from sweeper.runlog import RunLog

    asked, schedule = [], build.schedule

    def counted(cfg, steps_per_epoch, total_steps):
        at = schedule(cfg, steps_per_epoch, total_steps)

        def rate(step):
            asked.append(step)
            assert step < 100, f"the rate of step {step} asked before its epoch"
            return at(step)

        return rate

    class EpochWritten(BaseException):
        """Ends the run after its first epoch's metrics (a BaseException: not a failure of it)."""

    def written(self, row):
        raise EpochWritten(row["epoch"])

    monkeypatch.setattr(build, "schedule", counted)
    monkeypatch.setattr(RunLog, "append_metrics", written)
    cfgs = [compose_cfg("trainer.epochs=1000000000", f"lr={lr}") for lr in (0.1, 0.05)]
    with pytest.raises(EpochWritten) as ended:
        fused.run_group(cfgs, [tmp_path / "0", tmp_path / "1"], [[], []], [0, 1])
    assert ended.value.args == (1,)
    assert max(asked) < 12 and set(range(6)) <= set(asked)


def test_a_fused_group_gives_the_process_its_thread_count_back(tmp_path):
    """A group trains with trainer.threads as a solo run does, and, as train.run, leaves the
    process its own count for the next run's `auto`."""
    given = torch.get_num_threads()
    cfgs = [compose_cfg("trainer.epochs=1", "++trainer.threads=1", f"lr={lr}") for lr in (0.1, 0.05)]
    summaries = fused.run_group(cfgs, [tmp_path / "0", tmp_path / "1"], [[], []], [0, 1])
    assert [(s["status"], s["threads"]) for s in summaries] == [("completed", 1)] * 2
    assert torch.get_num_threads() == given

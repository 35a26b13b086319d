"""A user's own model, optimizer, schedule, loss and metrics train through config, a validation
split is measured every epoch, and fused trials take only what they compute exactly."""

import dataclasses
import importlib
import json
import re
import sys

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sweeper import build, fused, load_model, models, rundir, train
from sweeper import data as data_module
from sweeper.validate import ConfigError
from tests.conftest import REPO, compose_cfg


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary_of(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def with_section(cfg, key, section: dict):
    """cfg with its `key` section replaced whole, as a user's own config group option gives it."""
    cfg = cfg.copy()
    OmegaConf.update(cfg, key, section, merge=False)
    return cfg


# -- a user's models: each takes only some of the runtime values


def mlp(in_channels, image_size, num_classes, hidden=16):
    """A plain function returning a module, taking every runtime value."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_channels * image_size**2, hidden),
        nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


class OnlyClasses(nn.Module):
    """Takes num_classes only (fixed 3-channel input); no receptive_field_px, not a Sequential."""

    def __init__(self, num_classes, width=4):
        super().__init__()
        self.conv = nn.Conv2d(3, width, 3)
        self.out = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.out(torch.relu(self.conv(x)).mean((2, 3)))


class Everything(nn.Module):
    """Takes **kwargs: given every runtime value."""

    def __init__(self, width=4, **runtime):
        super().__init__()
        self.runtime = runtime
        self.net = nn.Sequential(nn.Conv2d(runtime["in_channels"], width, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, runtime["num_classes"]))  # fmt: skip

    def forward(self, x):
        return self.net(x)


def test_a_model_target_is_given_only_the_runtime_values_its_signature_takes():
    cfg = compose_cfg()
    built = build.model(
        with_section(cfg, "model", {"_target_": f"{__name__}.OnlyClasses", "width": 2}), 3, 32, 7
    )
    assert built.out.out_features == 7 and built.conv.out_channels == 2
    built = build.model(with_section(cfg, "model", {"_target_": f"{__name__}.Everything"}), 1, 28, 5)
    assert built.runtime == {"in_channels": 1, "image_size": 28, "num_classes": 5}
    built = build.model(with_section(cfg, "model", {"_target_": f"{__name__}.mlp", "hidden": 3}), 3, 8, 4)
    assert built[1].in_features == 3 * 64 and built[-1].out_features == 4


def test_a_user_model_trains_and_records_its_size_with_a_null_receptive_field(tmp_path, caplog):
    cfg = with_section(
        compose_cfg(), "model", {"_target_": f"{__name__}.OnlyClasses", "name": "only_classes"}
    )
    with caplog.at_level("INFO", logger="sweeper"):
        summary = train.run(cfg, tmp_path)
    assert summary["status"] == "completed", summary.get("traceback")
    assert summary["n_params"] == models.n_params(OnlyClasses(10)) and summary["receptive_field_px"] is None
    assert "only_classes: 162 params, receptive field not computed" in caplog.text
    assert load_model(tmp_path).model.out.out_features == 10  # rebuilt the same way for inference


def test_the_receptive_field_of_a_sequential_chain_is_computed_and_of_anything_else_absent():
    chain = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2, stride=1),
        nn.Sequential(nn.BatchNorm2d(4), nn.Conv2d(4, 4, 3, dilation=2)),
        nn.Flatten(), nn.Linear(4, 2), nn.Conv2d(1, 1, 99),  # past the Flatten: not spatial
    )  # fmt: skip
    # 3, then +1 (pool 2, stride 1), then +4 (kernel 3 dilated by 2 = 5)
    assert models.receptive_field_px(chain) == 8
    assert models.receptive_field_px(chain, image_size=6) == 6  # at most the image
    strided = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 4, 3), nn.AdaptiveAvgPool2d(1))
    assert models.receptive_field_px(strided) == 3 + 2 * 2
    assert models.receptive_field_px(OnlyClasses(3)) is None  # its forward is its own
    assert models.receptive_field_px(nn.Sequential(nn.Conv2d(3, 4, (3, 5)))) is None
    assert models.receptive_field_px(nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(3, 3, 3))) is None
    assert models.receptive_field_px(mlp(3, 8, 2)) == 1
    assert models.receptive_field_px(models.ConvNet(in_channels=3, image_size=32, num_classes=10)) == 22


def test_keys_that_are_not_constructor_arguments_are_named_for_the_signature_check():
    assert {"name", "l1", "warmup_epochs"} <= build.NOT_ARGUMENTS
    assert build.RUNTIME["model"] == ("in_channels", "image_size", "num_classes")
    assert "reduction" in build.RUNTIME["loss"] and "total_steps" in build.RUNTIME["schedule"]


def test_any_torch_optimizer_by_its_target_trains_with_the_top_level_lr(tmp_path):
    cfg = with_section(
        compose_cfg("lr=0.01"), "optim", {"_target_": "torch.optim.RMSprop", "name": "rmsprop", "alpha": 0.9}
    )
    optimizer = build.optimizer(cfg, nn.Linear(2, 2).parameters())
    assert type(optimizer) is torch.optim.RMSprop
    assert optimizer.param_groups[0]["lr"] == 0.01 and optimizer.param_groups[0]["alpha"] == 0.9
    assert train.run(cfg, tmp_path)["status"] == "completed"


def documented_schedule(tmp_path, monkeypatch):
    """The schedule file docs/components.md shows, written where a user would keep it."""
    text = (REPO / "docs" / "components.md").read_text()
    (code,) = re.findall(r"```python\n# myschedules.py\n(.*?)```", text, re.S)
    (tmp_path / "myschedules.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("myschedules", None)
    return importlib.import_module("myschedules")


def test_the_documented_user_schedule_trains_at_the_rates_it_gives(tmp_path, monkeypatch):
    module = documented_schedule(tmp_path, monkeypatch)
    cfg = compose_cfg(
        "trainer.epochs=3", "schedule._target_=myschedules.warmup_cosine", "+schedule.warmup_steps=4"
    )
    summary = train.run(cfg, tmp_path / "run")
    assert summary["status"] == "completed"
    at = module.warmup_cosine(lr=0.1, steps_per_epoch=6, total_steps=18, warmup_steps=4)
    # each metrics line's epoch_lr: its epoch's last step's rate
    assert [r["epoch_lr"] for r in rows(tmp_path / "run")] == pytest.approx([at(5), at(11), at(17)])
    assert at(0) == pytest.approx(0.025) and at(17) == pytest.approx(0.0)


def test_the_documented_schedule_command_passes_the_pre_check_and_a_misspelt_key_is_refused(
    tmp_path, monkeypatch
):
    # +schedule.warmup_steps: the option's keys do not have it, the user's target (set on the same
    # command line) takes it; a key it does not take is refused naming what it takes.
    from sweeper import overrides, validate

    documented_schedule(tmp_path, monkeypatch)
    target = "schedule._target_=myschedules.warmup_cosine"
    cfg = overrides.check_overrides([target, "+schedule.warmup_steps=50"], str(REPO / "conf"))
    validate.check(cfg)
    cfg = overrides.check_overrides([target, "+schedule.warmup_stepz=50"], str(REPO / "conf"))
    with pytest.raises(ConfigError) as err:
        validate.check(cfg)
    assert str(err.value) == (
        "schedule.warmup_stepz is not an argument of myschedules.warmup_cosine: it takes warmup_steps, lr_min"
    )


def four_images(n_train, n_test=4):
    """A user's data function without **kwargs: the data section's own keys are not its arguments."""
    x = torch.zeros(n_train + n_test, 3, 8, 8, dtype=torch.uint8)
    y = torch.arange(n_train + n_test) % 2
    return {"train": (x[:n_train], y[:n_train]), "test": (x[n_train:], y[n_train:])}


def test_a_users_data_function_takes_its_own_keys_and_not_the_sections_own():
    from sweeper import signatures

    own = {"name": "mine", "seed": 0, "val_size": 0.25, "train_size": None, "cache_dir": None}
    data = {"_target_": f"{__name__}.four_images", **own, "normalize": True, "augment": False, "n_train": 8}
    assert signatures.problem(OmegaConf.create({"data": data}), "data") is None
    typo = OmegaConf.create({"data": {**data, "n_tests": 2}})
    assert signatures.problem(typo, "data") == (
        f"data.n_tests is not an argument of {__name__}.four_images: it takes n_train, n_test"
    )


# -- loss


def test_label_smoothing_changes_the_loss_trained_on_and_evaluated(tmp_path):
    plain = train.run(compose_cfg(), tmp_path / "plain")
    smooth = train.run(compose_cfg("loss.label_smoothing=0.1"), tmp_path / "smooth")
    assert plain["status"] == smooth["status"] == "completed"
    a = torch.load(tmp_path / "plain" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "smooth" / "checkpoint.pt", weights_only=True)["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the weights trained on another loss
    assert rows(tmp_path / "plain")[0]["train_loss"] != rows(tmp_path / "smooth")[0]["train_loss"]


def test_cross_entropy_built_from_the_loss_group_is_torchs_own_bit_for_bit():
    logits, y = torch.randn(6, 4), torch.tensor([0, 1, 2, 3, 0, 1])
    loss = build.loss(compose_cfg("loss.label_smoothing=0.2"))
    assert torch.equal(
        loss.per_sample(logits, y), nn.CrossEntropyLoss(reduction="none", label_smoothing=0.2)(logits, y)
    )
    assert torch.equal(loss.mean(logits, y), nn.CrossEntropyLoss(label_smoothing=0.2)(logits, y))


def batch_mean_loss():
    """A loss factory whose function gives one number per batch: no per-sample losses."""
    return lambda logits, y: nn.functional.multi_margin_loss(logits, y)


def test_a_per_sample_loss_by_target_trains_and_one_that_reduces_fails_in_one_line(tmp_path):
    margin = with_section(
        compose_cfg(), "loss", {"_target_": "torch.nn.MultiMarginLoss", "name": "margin", "margin": 0.5}
    )
    assert train.run(margin, tmp_path / "margin")["status"] == "completed"
    assert rows(tmp_path / "margin")[0]["train_loss"] < 1.0  # a margin loss, not cross-entropy's ~2.3
    reduced = with_section(compose_cfg(), "loss", {"_target_": f"{__name__}.batch_mean_loss"})
    summary = train.run(reduced, tmp_path / "reduced")
    assert summary["status"] == "failed"
    assert "one loss per sample (reduction='none')" in summary["error"] and "\n" not in summary["error"]


# -- metrics


def test_each_metric_is_a_column_of_every_split_in_order_and_in_the_summary(tmp_path):
    summary = train.run(compose_cfg("trainer.metrics=[acc,top3]"), tmp_path)
    line = rows(tmp_path)[-1]
    assert list(line) == ["epoch", "step", "epoch_lr", "train_loss", "train_acc", "train_top3", "test_loss",
                          "test_acc", "test_top3", "samples", "time_s", "epoch_time_s"]  # fmt: skip
    assert line["train_acc"] <= line["train_top3"] <= 1
    assert summary["metrics"] == ["acc", "top3"] and summary["final_test_top3"] == line["test_top3"]
    assert train.run(compose_cfg("trainer.metrics=[acc,top3]"), tmp_path)["status"] == "completed"  # skipped


@pytest.mark.parametrize(
    ("metrics", "words"),
    [
        ("[acc,top1]", "'top1' is not a metric"),
        ("[f1]", "allowed are acc and top<k>"),
        ("[top11]", "at least 11 classes"),
    ],
)
def test_a_metric_that_cannot_be_measured_fails_in_one_line(tmp_path, metrics, words):
    summary = train.run(compose_cfg(f"trainer.metrics={metrics}"), tmp_path)
    assert (
        summary["status"] == "failed" and words in summary["error"] and "trainer.metrics" in summary["error"]
    )


def test_a_record_without_the_loss_and_metrics_keys_compares_as_plain_cross_entropy_and_acc():
    new = json.loads(json.dumps(OmegaConf.to_container(compose_cfg(), resolve=True)))
    old = {k: v for k, v in new.items() if k != "loss"}
    old["trainer"] = {k: v for k, v in new["trainer"].items() if k != "metrics"}
    assert rundir.config_difference(old, new) == []
    smoothed = json.loads(
        json.dumps(OmegaConf.to_container(compose_cfg("loss.label_smoothing=0.1"), resolve=True))
    )
    assert rundir.config_difference(old, smoothed) == ["loss.label_smoothing: 0.0 -> 0.1"]
    assert (
        rundir.config_difference(old, {**new, "trainer": {**new["trainer"], "metrics": ["acc", "top5"]}})
        != []
    )


# -- a validation split


if "val_x" in {f.name for f in dataclasses.fields(data_module.Data)}:
    SplitData = data_module.Data
else:  # a Data without the split's fields: the same with them

    @dataclasses.dataclass
    class SplitData(data_module.Data):
        """The data with a validation split, as sweeper.data gives it with data.val_size."""

        val_x: torch.Tensor = None
        val_y: torch.Tensor = None

        def to(self, device):
            return self


@pytest.fixture
def with_val_split(monkeypatch):
    """data.load gives the synthetic set with its last 60 training images held out as val."""
    real = data_module.load

    def load(cfg):
        d = real(cfg)
        return SplitData(train_x=d.train_x[:-60], train_y=d.train_y[:-60], val_x=d.train_x[-60:],
                         val_y=d.train_y[-60:], test_x=d.test_x, test_y=d.test_y, classes=d.classes,
                         mean=d.mean, std=d.std)  # fmt: skip

    monkeypatch.setattr(data_module, "load", load)


def test_a_validation_split_is_measured_every_epoch_and_summarised(tmp_path, with_val_split):
    summary = train.run(compose_cfg("trainer.epochs=3", "trainer.metrics=[acc,top2]"), tmp_path)
    lines = rows(tmp_path)
    assert list(lines[0])[3:12] == ["train_loss", "train_acc", "train_top2", "val_loss", "val_acc", "val_top2",
                                    "test_loss", "test_acc", "test_top2"]  # fmt: skip
    assert summary["n_val"] == 60 and summary["n_train"] == 240
    assert summary["final_val_top2"] == lines[-1]["val_top2"]
    best = max(lines, key=lambda r: r["val_acc"])
    assert (summary["best_val_acc"], summary["best_val_acc_epoch"]) == (best["val_acc"], best["epoch"])
    assert summary["min_val_loss"] == min(r["val_loss"] for r in lines)
    # an ended run with a split is skipped on a rerun: its record supports its summary
    assert train.run(compose_cfg("trainer.epochs=3", "trainer.metrics=[acc,top2]"), tmp_path) == summary


def test_early_stopping_watches_a_validation_column(tmp_path, with_val_split):
    cfg = compose_cfg("trainer.epochs=6", "lr=1e-9", "trainer.early_stopping.metric=val_acc",
                      "trainer.early_stopping.patience=1", "trainer.early_stopping.min_delta=0.5")  # fmt: skip
    summary = train.run(cfg, tmp_path)
    assert summary["status"] == "stopped_early" and summary["stopped_epoch"] == 2
    assert "val_acc did not improve" in summary["stop_reason"]


def test_early_stopping_on_a_column_the_run_does_not_measure_fails_in_one_line(tmp_path):
    summary = train.run(compose_cfg("trainer.early_stopping.metric=val_loss"), tmp_path)
    assert summary["status"] == "failed" and "needs data.val_size" in summary["error"]


def test_fused_trials_measure_a_validation_split_as_their_solo_runs(tmp_path, with_val_split):
    cfgs = [compose_cfg("trainer.channels_last=false", f"lr={lr}") for lr in (0.1, 0.05)]
    assert fused.fusable(cfgs) is None
    dirs = [tmp_path / "fused" / str(i) for i in range(2)]
    assert [s["n_val"] for s in fused.run_group(cfgs, dirs, [[]] * 2, [0, 1])] == [60, 60]
    for i, cfg in enumerate(cfgs):
        train.run(cfg, tmp_path / "solo" / str(i))
        for a, b in zip(rows(tmp_path / "solo" / str(i)), rows(dirs[i]), strict=True):
            assert list(a) == list(b)
            for key in ("val_loss", "val_acc", "test_loss"):
                assert b[key] == pytest.approx(a[key], rel=2e-3, abs=2e-3), (i, key)


# -- fused trials take only what they compute exactly


class Doubled(nn.Sequential):
    """A Sequential with a forward of its own."""

    def forward(self, x):
        return 2 * super().forward(x)


def sequential_net(drop=0.0, doubled=False, num_classes=10):
    layers = [
        nn.Conv2d(3, 4, 5),
        nn.ReLU(),
        nn.MaxPool2d(4),
        nn.Flatten(),
        nn.Dropout(drop),
        nn.Linear(4 * 7 * 7, num_classes),
    ]
    return Doubled(*layers) if doubled else nn.Sequential(*layers)


@pytest.mark.parametrize(
    ("overrides", "section", "named"),
    [
        (["loss.label_smoothing=0.1"], None, "label_smoothing"),
        ([], ("loss", {"_target_": "torch.nn.MultiMarginLoss"}), "plain cross-entropy"),
        (["trainer.metrics=[acc,top5]"], None, "trainer.metrics=[acc] only"),
        ([], ("model", {"_target_": f"{__name__}.OnlyClasses"}), "OnlyClasses"),
        ([], ("model", {"_target_": f"{__name__}.sequential_net", "doubled": True}), "Doubled"),
        ([], ("model", {"_target_": f"{__name__}.sequential_net", "drop": 0.5}), "Dropout"),
    ],
)
def test_a_job_the_fused_step_does_not_compute_exactly_runs_alone_saying_why(overrides, section, named):
    cfg = compose_cfg(*overrides)
    if section:
        cfg = with_section(cfg, *section)
    reason = fused.fusable([cfg, cfg])
    assert reason is not None and named in reason, reason


def test_a_user_sequential_of_stackable_layers_fuses_and_matches_its_solo_runs(tmp_path):
    model = {"_target_": f"{__name__}.sequential_net", "name": "seq"}
    cfgs = [
        with_section(compose_cfg("trainer.channels_last=false", f"lr={lr}"), "model", model)
        for lr in (0.1, 0.05)
    ]
    assert fused.fusable(cfgs) is None
    dirs = [tmp_path / "fused" / str(i) for i in range(2)]
    assert [s["status"] for s in fused.run_group(cfgs, dirs, [[]] * 2, [0, 1])] == ["completed"] * 2
    train.run(cfgs[1], tmp_path / "solo")
    for a, b in zip(rows(tmp_path / "solo"), rows(dirs[1]), strict=True):
        assert b["test_loss"] == pytest.approx(a["test_loss"], rel=2e-3)


def test_the_metric_names_are_checked_in_one_line():
    from sweeper import metrics

    assert metrics.check(["acc", "top5"], num_classes=10) == ["acc", "top5"]
    for bad in ("acc", ["acc", "acc"], ["top"], [5]):
        with pytest.raises(ConfigError, match="trainer.metrics"):
            metrics.check(bad)


def test_the_pre_check_refuses_an_unknown_metric_and_a_stopping_metric_the_run_does_not_measure():
    from sweeper import validate

    with pytest.raises(ConfigError, match=r"trainer.metrics=\['f1'\] is invalid"):
        validate.check(compose_cfg("trainer.metrics=[f1]"))
    with pytest.raises(
        ConfigError,
        match="trainer.early_stopping.metric='val_loss' is invalid: allowed values are train_loss",
    ):
        validate.check(compose_cfg("trainer.early_stopping.metric=val_loss"))
    validate.check(compose_cfg("trainer.metrics=[acc,top5]", "trainer.early_stopping.metric=test_top5"))


# -- the schedule sets each step's rate; checkpoints hold the step


def test_each_step_runs_at_the_schedules_own_rate_not_a_rescaled_one(tmp_path):
    """The rate is the schedule's value itself: LambdaLR's lr * (rate / lr) differs from it in
    the last bit at some steps."""
    cfg = compose_cfg(
        "schedule=lr_range", "schedule.lr_min=1e-4", "schedule.lr_max=1", "trainer.log_steps=true"
    )
    train.run(cfg, tmp_path)
    steps = [json.loads(line) for line in (tmp_path / "steps.jsonl").read_text().splitlines()]
    rates = [build.schedule(cfg, 6, 12)(s) for s in range(12)]
    assert [s["step_lr"] for s in steps] == rates
    assert any(0.1 * (r / 0.1) != r for r in rates)
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == 12


def test_a_checkpoint_written_with_lambdalr_resumes_as_if_never_stopped(tmp_path, monkeypatch):
    """A checkpoint of the LambdaLR loop (a "scheduler" entry, no "step") resumes: the rate of
    each step comes from the schedule, the step count from the record."""
    from sweeper.runlog import RunLog

    cfg = compose_cfg("trainer.epochs=3", "optim.momentum=0.9")
    train.run(cfg, tmp_path / "straight")
    real = RunLog.save_checkpoint

    def save(self, state):
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        old = {k: v for k, v in state.items() if k != "step"}
        old["scheduler"] = {"base_lrs": [0.1], "last_epoch": state["step"], "_step_count": state["step"] + 1,
                            "_get_lr_called_within_step": False, "_last_lr": [0.1], "lr_lambdas": [None]}  # fmt: skip
        real(self, old)

    monkeypatch.setattr(RunLog, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path / "run")
    monkeypatch.setattr(RunLog, "save_checkpoint", real)
    assert "scheduler" in torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert train.run(cfg, tmp_path / "run")["status"] == "completed"
    straight, resumed = rows(tmp_path / "straight"), rows(tmp_path / "run")
    drop = ("time_s", "epoch_time_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed] == [
        {k: v for k, v in r.items() if k not in drop} for r in straight
    ]


def test_a_users_loss_is_not_captured_as_a_cuda_graph_and_smoothed_cross_entropy_is():
    """A graph would freeze whatever a user's loss reads from the host: it runs eagerly."""
    from sweeper import cuda_graph

    margin = with_section(compose_cfg(), "loss", {"_target_": "torch.nn.MultiMarginLoss"})
    assert "loss._target_=torch.nn.MultiMarginLoss" in cuda_graph.capturable(margin)
    assert cuda_graph.capturable(compose_cfg("loss.label_smoothing=0.1")) is None

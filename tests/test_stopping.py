"""Early stopping (status stopped_early) and the divergence threshold (status diverged): where a
run ends, why its summary says it ended, that a resume ends it where the straight run ended, and
that the sweep summary, the status table, the report and the fused path all know both."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from omegaconf import OmegaConf

from analysis import load_sweep
from analysis.status import format_job_table, job_table
from sweeper import fused, rundir, stopping, sweep, train
from sweeper.runlog import RunLog
from sweeper.validate import ConfigError, check
from tests.conftest import compose_cfg
from tests.fake_runs import base_config, metric_rows, summary_record, write_run

# test_loss never improves by more than 1 on a 10-class problem: the best stays epoch 1, and the
# run stops `patience` epochs later, whatever the tiny net learns.
STALLS = ["trainer.early_stopping.metric=test_loss", "trainer.early_stopping.min_delta=1"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def fed(trainer: dict, values: dict[str, list], n_classes: int = 10) -> dict | None:
    """The verdict of a Stopping fed lines with these values per key, epochs 1, 2, ..."""
    stop = stopping.Stopping(OmegaConf.create({"epochs": 100, **trainer}), n_classes)
    n = len(next(iter(values.values())))
    for i in range(n):
        verdict = stop.update({"epoch": i + 1, **{k: v[i] for k, v in values.items()}})
        if verdict:
            return verdict
    return None


# --------------------------------------------------------------------------- the rules


def test_early_stopping_ends_patience_epochs_after_the_best_a_loss_falling_an_accuracy_rising():
    rule = {
        "early_stopping": {"metric": "test_loss", "patience": 2, "min_delta": 0.0},
        "diverge_factor": None,
    }
    # best at epoch 3 (0.7); epochs 4 and 5 do not beat it: stops at 5
    verdict = fed(rule, {"test_loss": [1.0, 0.8, 0.7, 0.75, 0.71, 0.5]})
    assert (verdict["status"], verdict["stopped_epoch"], verdict["best_epoch"]) == ("stopped_early", 5, 3)
    assert "test_loss did not improve on 0.7 (epoch 3)" in verdict["stop_reason"]
    # an accuracy is maximised: a falling accuracy is no improvement
    rule["early_stopping"]["metric"] = "test_acc"
    verdict = fed(rule, {"test_acc": [0.5, 0.6, 0.55, 0.58, 0.9]})
    assert (verdict["stopped_epoch"], verdict["best_epoch"]) == (4, 2)
    # improving by less than min_delta does not count as improving
    rule["early_stopping"] |= {"metric": "train_loss", "min_delta": 0.1}
    verdict = fed(rule, {"train_loss": [1.0, 0.95, 0.91, 0.5]})
    assert (verdict["stopped_epoch"], verdict["best_epoch"]) == (3, 1)
    # metric null: off
    rule["early_stopping"]["metric"] = None
    assert fed(rule, {"train_loss": [1.0, 1.0, 1.0, 1.0]}) is None


def test_divergence_needs_that_many_epochs_in_a_row_above_the_multiple_of_chance():
    rule = {"diverge_factor": 10, "diverge_epochs": 2}
    threshold = 10 * math.log(10)
    high = threshold + 1
    # one epoch above, then below, then one above: never two in a row
    assert fed(rule, {"train_loss": [high, 2.0, high, 2.0]}) is None
    verdict = fed(rule, {"train_loss": [2.0, high, high, 2.0]})
    assert verdict["status"] == "diverged" and verdict["stopped_epoch"] == 3
    assert verdict["diverged_epochs"] == [2, 3] and verdict["diverge_threshold"] == pytest.approx(threshold)
    assert "epochs 2, 3" in verdict["stop_reason"] and "ln 10 classes" in verdict["stop_reason"]
    # chance depends on the class count: 100 classes allow a higher loss
    assert fed(rule, {"train_loss": [high, high]}, n_classes=100) is None
    assert fed({"diverge_factor": None, "diverge_epochs": 2}, {"train_loss": [1e6, 1e6, 1e6]}) is None


# --------------------------------------------------------------------------- solo runs


@pytest.fixture(scope="module")
def ended(tmp_path_factory):
    """Two real tiny runs: one stopped by its early stopping, one diverged at lr=1000."""
    root = tmp_path_factory.mktemp("ended")
    train.run(compose_cfg("trainer.epochs=6", *STALLS, "trainer.early_stopping.patience=2"), root / "stopped")
    train.run(compose_cfg("lr=1000", "trainer.epochs=4"), root / "diverged")
    return root


def test_early_stopping_stops_the_run_at_the_epoch_its_metric_stalled(ended):
    run = ended / "stopped"
    done = summary(run)
    assert done["status"] == "stopped_early"
    assert (done["stopped_epoch"], done["best_epoch"], done["epochs_done"]) == (3, 1, 3)
    assert "test_loss did not improve" in done["stop_reason"]
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    assert RunLog(run).load_checkpoint()["epoch"] == 3  # its weights at the end are kept
    # a rerun skips it like a completed run: nothing trained, nothing rewritten
    before = (run / "metrics.jsonl").read_bytes()
    cfg = compose_cfg("trainer.epochs=6", *STALLS, "trainer.early_stopping.patience=2")
    assert train.run(cfg, run)["status"] == "stopped_early"
    assert (run / "metrics.jsonl").read_bytes() == before and not (run / "attempts").exists()


def test_a_stopped_early_run_whose_last_epoch_is_not_a_kept_one_is_still_skipped_whole(tmp_path):
    # Its last epoch's histograms are kept, as a completed run's last epoch's are: the rerun's
    # check of losses.npz against the kept epochs must expect them, not set the run aside.
    cfg = compose_cfg(
        "trainer.epochs=6", "trainer.sample_loss_epochs=[1]", *STALLS, "trainer.early_stopping.patience=1"
    )
    assert train.run(cfg, tmp_path)["status"] == "stopped_early"
    assert train.run(cfg, tmp_path)["stopped_epoch"] == 2
    assert not (tmp_path / "attempts").exists()


def test_a_train_loss_far_above_chance_ends_the_run_diverged_and_says_why(ended):
    # lr=1000 on the tiny set: a train loss in the hundreds, every value finite (it ended
    # `completed` before the threshold existed)
    run = ended / "diverged"
    done = summary(run)
    rows = metrics(run)
    assert all(math.isfinite(r["train_loss"]) for r in rows)
    assert done["status"] == "diverged" and done["diverged_epochs"] == [1, 2] and len(rows) == 2
    assert done["diverge_threshold"] == pytest.approx(10 * math.log(10))
    assert done["stop_reason"].startswith(
        "train_loss above 23.03 (trainer.diverge_factor=10 x ln 10 classes)"
    )


def test_the_divergence_threshold_off_lets_the_huge_lr_run_to_its_end(tmp_path):
    done = train.run(compose_cfg("lr=1000", "trainer.epochs=2", "trainer.diverge_factor=null"), tmp_path)
    assert done["status"] == "completed"


def test_an_early_stopped_run_resumed_midway_ends_as_the_uninterrupted_one(tmp_path, monkeypatch):
    # patience 3 with the best at epoch 1: stops at 4. Killed before epoch 3's checkpoint, it
    # resumes after epoch 2 and must still count epoch 1 as its best (from metrics.jsonl).
    cfg = compose_cfg("trainer.epochs=8", *STALLS, "trainer.early_stopping.patience=3")
    straight = train.run(cfg, tmp_path / "straight")
    assert straight["status"] == "stopped_early" and straight["stopped_epoch"] == 4

    real = RunLog.save_checkpoint

    def killed_at_epoch_3(self, state):
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        real(self, state)

    monkeypatch.setattr(RunLog, "save_checkpoint", killed_at_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        train.run(cfg, tmp_path / "resumed")
    monkeypatch.setattr(RunLog, "save_checkpoint", real)
    resumed = train.run(cfg, tmp_path / "resumed")

    assert without_times(metrics(tmp_path / "resumed")) == without_times(metrics(tmp_path / "straight"))
    for key in ("status", "stopped_epoch", "best_epoch", "stop_reason", "epochs_done"):
        assert resumed[key] == straight[key], key


def test_a_run_stopped_after_its_last_checkpoint_but_before_its_summary_ends_without_training_on(
    ended, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(ended / "stopped", run)
    (run / "summary.json").unlink()  # a kill between the stopping epoch's checkpoint and the summary
    cfg = compose_cfg("trainer.epochs=6", *STALLS, "trainer.early_stopping.patience=2")
    done = train.run(cfg, run)
    assert (done["status"], done["stopped_epoch"], done["epochs_done"]) == ("stopped_early", 3, 3)
    assert metrics(run) == metrics(ended / "stopped")


def test_a_bad_early_stopping_metric_is_refused_in_one_line_naming_the_allowed_values():
    with pytest.raises(ConfigError) as refused:
        check(compose_cfg("trainer.early_stopping.metric=val_acc"))
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("trainer.early_stopping.metric='val_acc' is invalid")
    assert "train_loss, train_acc, test_loss, test_acc, or null (off)" in message
    for override, start in (
        ("trainer.early_stopping.patience=0", "trainer.early_stopping.patience=0 is invalid"),
        ("trainer.diverge_factor=-1", "trainer.diverge_factor=-1.0 is invalid"),  # a float in the schema
        ("trainer.diverge_epochs=0", "trainer.diverge_epochs=0 is invalid"),
    ):
        with pytest.raises(ConfigError, match=f"^{start.replace('.', '[.]')}"):
            check(compose_cfg("trainer.early_stopping.metric=test_acc", override))


def test_a_record_from_before_the_stopping_knobs_resumes_under_todays_defaults():
    # Such a record never stopped early: it compares as early_stopping off, and as the default
    # divergence threshold, so an old sweep rerun as it was typed resumes instead of being refused.
    old = {"trainer": {"epochs": 3}}
    off = {"epochs": 3, "early_stopping": {"metric": None, "patience": 5, "min_delta": 0.0}}
    assert (
        rundir.config_difference(old, {"trainer": {**off, "diverge_factor": 10, "diverge_epochs": 2}}) == []
    )
    assert rundir.config_difference(
        old, {"trainer": {**off, "diverge_factor": None, "diverge_epochs": 2}}
    ) == ["trainer.diverge_factor: 10 -> None"]
    on = {**off, "early_stopping": {"metric": "test_loss", "patience": 5, "min_delta": 0.0}}
    assert rundir.config_difference(old, {"trainer": {**on, "diverge_factor": 10, "diverge_epochs": 2}}) == [
        "trainer.early_stopping.metric: None -> 'test_loss'"
    ]


# --------------------------------------------------------------------------- fused trials


def test_fused_trials_each_end_at_the_epoch_and_with_the_status_of_their_solo_run(tmp_path):
    trials = [
        [*STALLS, "trainer.early_stopping.patience=1"],  # stops at epoch 2
        [*STALLS, "trainer.early_stopping.patience=3"],  # would stop at 4, the last epoch: completed
        ["lr=1000"],  # diverged at epoch 2
    ]  # another patience, another lr: still one fused group
    cfgs = [compose_cfg("trainer.epochs=4", "trainer.channels_last=false", *t) for t in trials]
    assert fused.fusable(cfgs) is None
    dirs = [tmp_path / "fused" / str(i) for i in range(len(cfgs))]
    together = fused.run_group(cfgs, dirs, [[]] * len(cfgs), list(range(len(cfgs))))
    assert [s["status"] for s in together] == ["stopped_early", "completed", "diverged"]
    assert together[0]["fused_trials"] == 3
    for i, cfg in enumerate(cfgs):
        alone = train.run(cfg, tmp_path / "solo" / str(i))
        for key in ("status", "stopped_epoch", "best_epoch", "diverged_epochs", "epochs_done"):
            assert together[i].get(key) == alone.get(key), (i, key)
        assert [r["epoch"] for r in metrics(dirs[i])] == [
            r["epoch"] for r in metrics(tmp_path / "solo" / str(i))
        ]


# --------------------------------------------------------------------------- what the user sees


def test_the_status_table_and_the_sweep_summary_show_both_with_their_reasons(ended):
    table = job_table([ended / "stopped", ended / "diverged"])
    assert sorted(table["status"]) == ["diverged", "stopped_early"]
    text = format_job_table(table, width=200)
    assert text.splitlines()[0].endswith(": 2 jobs: 1 diverged, 1 stopped_early")
    assert "[test_loss did not improve on" in text and "[train_loss above 23.03" in text
    assert sweep.job_state(ended / "stopped")[0] == "stopped_early"
    state, detail = sweep.job_state(ended / "diverged")
    assert state == "diverged" and "train_loss above 23.03" in detail


def test_a_sweep_of_completed_and_stopped_early_runs_succeeds(tmp_path, capsys):
    rows = metric_rows([1.0, 0.5], [1.1, 0.9], [0.6, 0.8], [0.55, 0.6])
    root = tmp_path / "sweep"
    (root).mkdir()
    jobs = []
    for i, status in enumerate(("completed", "stopped_early")):
        write_run(root / str(i), base_config(), rows, summary_record(rows, status, epochs=4))
        jobs.append({"num": i, "dir": str(i), "overrides": [f"lr={i}"]})
    (root / "sweep.json").write_text(json.dumps({"jobs": jobs}))
    assert sweep.report_end(root, ended=True)
    assert "2 jobs: 1 completed, 1 stopped_early" in capsys.readouterr().out


def test_a_stopped_early_run_is_ranked_as_a_result_a_diverged_one_is_not(tmp_path):
    rows = metric_rows([1.0, 0.5], [1.1, 0.9], [0.6, 0.8], [0.55, 0.62])
    for lr, status in ((0.1, "completed"), (0.2, "stopped_early"), (0.3, "diverged")):
        write_run(tmp_path / f"lr{lr}", base_config(lr=lr), rows, summary_record(rows, status, epochs=4))
    swept = load_sweep(tmp_path)
    assert sorted(swept.rank("final_test_acc")["lr"]) == [0.1, 0.2]
    reasons = [reason for _, reason in swept.problems]
    assert not any("stopped_early" in r for r in reasons)  # an end as planned, not a problem
    assert any(r.startswith("diverged at epoch 2") for r in reasons)

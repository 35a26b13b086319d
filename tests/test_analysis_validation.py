"""The analysis of a sweep whose runs hold a validation split out (data.val_size): it ranks,
selects and diagnoses on the validation split and shows test alongside; every `<split>_<m>` of the
metrics lines is a column. Without a split, it ranks on test as before."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis import load_sweep
from analysis.__main__ import main as cli
from analysis.plots import metric_label, plot_curves
from tests.fake_runs import write_split_run, write_sweep_json

EPOCHS = 4


def _columns(val_acc: float | None, test_acc: float, train_acc: float = 0.9) -> dict:
    """Curves that rise linearly to the given final accuracies; a val split when val_acc is given."""
    ramp = np.linspace(0.5, 1.0, EPOCHS)
    columns = {
        "train_loss": 1.0 / (1 + np.arange(EPOCHS)),
        "train_acc": train_acc * ramp,
        "train_top5": np.minimum(1.0, 1.2 * train_acc * ramp),
    }
    if val_acc is not None:
        columns |= {
            "val_loss": 1.2 - 0.1 * np.arange(EPOCHS),
            "val_acc": val_acc * ramp,
            "val_top5": 0.95 * ramp,
        }
    columns |= {
        "test_loss": 1.3 - 0.1 * np.arange(EPOCHS),
        "test_acc": test_acc * ramp,
        "test_top5": 0.9 * ramp,
    }
    return columns


def _sweep(tmp_path, val: bool):
    """lr=0.1 is best on validation (0.80 vs 0.70) and worst on test (0.70 vs 0.80)."""
    sweep_dir = tmp_path / ("val" if val else "noval")
    finals = {0.1: (0.80, 0.70), 0.2: (0.70, 0.80)}
    jobs = [[f"lr={lr}"] for lr in finals]
    write_sweep_json(sweep_dir, jobs)
    for num, (lr, (val_acc, test_acc)) in enumerate(finals.items()):
        write_split_run(
            sweep_dir / str(num),
            _columns(val_acc if val else None, test_acc),
            {"lr": lr, "data.val_size": 500 if val else None},
            [f"lr={lr}"],
            num,
            n_val=500 if val else 0,
        )
    return sweep_dir


def test_every_split_metric_is_a_curve_column_and_its_final_value_a_runs_column(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, val=True))
    for column in ("train_top5", "val_loss", "val_acc", "val_top5", "test_top5"):
        assert column in sweep.curves, column
    run = sweep.runs.set_index("lr").loc[0.1]
    assert run["final_val_acc"] == pytest.approx(0.80)
    assert run["final_test_top5"] == pytest.approx(0.9)
    assert run["best_val_top5"] == pytest.approx(0.95)  # a top-k is an accuracy: its best is its max
    assert run["min_val_loss_epoch"] == EPOCHS
    assert run["n_val"] == 500


def test_a_sweep_with_a_validation_split_ranks_and_selects_on_it(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, val=True))
    assert sweep.split == "val" and sweep.selection_metric == "final_val_acc"
    ranking = sweep.rank()
    assert ranking["metric"].iloc[0] == "final_val_acc"
    assert ranking["lr"].iloc[0] == 0.1  # best on validation, though worse on test


def test_without_a_split_ranking_stays_on_test(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, val=False))
    assert sweep.split == "test" and sweep.selection_metric == "final_test_acc"
    assert "final_val_acc" not in sweep.runs
    assert sweep.rank()["lr"].iloc[0] == 0.2


def test_the_report_says_it_selects_on_validation_and_shows_test_alongside(tmp_path, capsys):
    sweep_dir = _sweep(tmp_path, val=True)
    assert cli([str(sweep_dir)]) == 0
    printed = capsys.readouterr().out
    assert "ranked by final_val_acc (the validation split; final_test_acc alongside)" in printed
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "ranked by `final_val_acc` (the validation split; `final_test_acc` alongside)" in report
    ranking = pd.read_csv(sweep_dir / "report" / "ranking.csv")
    assert list(ranking["lr"]) == [0.1, 0.2]
    assert ranking["final_test_acc"].tolist() == pytest.approx([0.70, 0.80])  # test, alongside
    assert "### Validation loss rises while validation accuracy still improves" in report
    diagnostics = pd.read_csv(sweep_dir / "report" / "diagnostics.csv")
    assert {"min_val_loss_epoch", "best_val_acc_epoch", "final_val_acc", "final_test_acc"} <= set(diagnostics)
    runs = pd.read_csv(sweep_dir / "report" / "runs.csv")
    assert {"final_val_acc", "final_test_top5", "final_val_top5"} <= set(runs)


def test_the_capacity_state_reads_the_validation_accuracy(tmp_path):
    """train 0.9 vs validation 0.60: overfits (> 20 points); vs test 0.85 it would not."""
    from analysis.report import diagnostics_table

    sweep_dir = tmp_path / "s"
    write_sweep_json(sweep_dir, [["lr=0.1"]])
    write_split_run(sweep_dir / "0", _columns(0.60, 0.85), {"lr": 0.1}, ["lr=0.1"], 0, n_val=500)
    table = diagnostics_table(load_sweep(sweep_dir))
    assert table["state"].iloc[0] == "overfits"
    assert load_sweep(sweep_dir).runs["final_gen_gap_acc"].iloc[0] == pytest.approx(0.9 - 0.60)


def test_without_a_split_the_report_line_is_unchanged(tmp_path, capsys):
    sweep_dir = _sweep(tmp_path, val=False)
    assert cli([str(sweep_dir)]) == 0
    assert "ranked by final_test_acc\n" in capsys.readouterr().out
    report = (sweep_dir / "report" / "report.md").read_text()
    assert "ranked by `final_test_acc`\n" in report
    assert "### Test loss rises while test accuracy still improves" in report
    assert "final_test_acc" not in pd.read_csv(sweep_dir / "report" / "ranking.csv")


def test_selecting_on_test_is_allowed_and_said_when_a_split_exists(tmp_path, capsys):
    sweep_dir = _sweep(tmp_path, val=True)
    assert cli([str(sweep_dir), "--metric", "final_test_acc"]) == 0
    assert "selecting on test, though the runs hold a validation split out" in capsys.readouterr().out


def test_the_curves_plot_takes_any_split_metric(tmp_path):
    sweep = load_sweep(_sweep(tmp_path, val=True))
    fig = plot_curves(sweep.curves, metrics=("val_acc", "test_top5"), hue="lr")
    labels = [ax.get_ylabel() for ax in fig.axes if ax.get_ylabel()]
    assert labels == ["validation accuracy", "test top-5 accuracy"]
    assert metric_label("train_top5") == "train top-5 accuracy"


def test_runs_without_a_split_in_a_sweep_with_one_are_said_to_be_left_out(tmp_path):
    """Two sweeps combined, one without data.val_size: its runs have no validation accuracy to
    rank on, and the report says so rather than ranking the others as if they were all."""
    from analysis.report import split_note

    sweep = load_sweep([_sweep(tmp_path, val=True), _sweep(tmp_path, val=False)])
    assert sweep.split == "val"
    assert len(sweep.rank()) == 2  # the two configurations of the sweep with a split
    assert split_note(sweep, "final_val_acc").endswith("; 2 runs without a validation split not ranked")


@pytest.mark.slow
def test_a_real_sweep_with_a_validation_split_is_selected_on_it(tmp_path):
    from tests.conftest import TINY, run_cli

    sweep_dir = tmp_path / "s"
    result = run_cli(
        "-m", *TINY, "data.val_size=60", "lr=0.05,0.1", f"hydra.sweep.dir={sweep_dir}", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = load_sweep(sweep_dir)
    assert sweep.split == "val" and sweep.runs["final_val_acc"].notna().all()
    assert cli([str(sweep_dir)]) == 0
    assert (
        "ranked by `final_val_acc` (the validation split" in (sweep_dir / "report" / "report.md").read_text()
    )

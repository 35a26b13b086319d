"""analysis.diagnostics on hand-built curves and runs whose answers are known."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.diagnostics import (
    add_gaps,
    capacity_verdict,
    fit_state,
    loss_acc_decoupling,
    lower_is_better,
    rank_configs,
    reduce_curves,
    seed_aggregate,
    t_critical,
)

NAN = math.nan


def curves_of(**runs: dict[str, list[float]]) -> pd.DataFrame:
    """{run: {metric: values per epoch}} -> a curves frame (epochs 1..n)."""
    frames = []
    for run, metrics in runs.items():
        n = len(next(iter(metrics.values())))
        frames.append(pd.DataFrame({"run": run, "epoch": np.arange(1, n + 1), **metrics}))
    return pd.concat(frames, ignore_index=True).astype({"run": "str"})


# --------------------------------------------------------------------------- confidence intervals


@pytest.mark.parametrize(
    ("level", "dof", "expected"),
    [
        (0.95, 1, 12.7062),
        (0.95, 2, 4.3027),
        (0.95, 3, 3.1824),
        (0.95, 4, 2.7764),
        (0.95, 9, 2.2622),
        (0.95, 29, 2.0452),
        (0.99, 10, 3.1693),
        (0.90, 5, 2.0150),
        (0.95, 5000, 1.9604),
    ],
)
def test_t_critical_matches_the_tables(level, dof, expected):
    assert t_critical(level, dof) == pytest.approx(expected, abs=2e-4)


def test_t_critical_is_undefined_without_spread():
    assert math.isnan(t_critical(0.95, 0))


def test_seed_aggregate_gives_mean_std_n_and_a_t_band_per_configuration():
    runs = pd.DataFrame(
        {
            "lr": [0.1, 0.1, 0.1, 0.2],
            "schedule.lr2": [NAN, NAN, NAN, 0.01],  # missing keys still form a group
            "trainer.seed": [0, 1, 2, 0],
            "final_test_acc": [0.70, 0.72, 0.74, 0.50],
        }
    )
    stats = seed_aggregate(runs, "final_test_acc", ["lr", "schedule.lr2"]).set_index("lr")
    a, b = stats.loc[0.1], stats.loc[0.2]
    assert a["final_test_acc_mean"] == pytest.approx(0.72)
    assert a["final_test_acc_std"] == pytest.approx(0.02)
    assert a["final_test_acc_n"] == 3
    half = 4.3027 * 0.02 / math.sqrt(3)
    assert (a["final_test_acc_ci_lo"], a["final_test_acc_ci_hi"]) == pytest.approx(
        (0.72 - half, 0.72 + half), abs=1e-5
    )
    assert b["final_test_acc_n"] == 1 and math.isnan(b["final_test_acc_ci_lo"])  # one seed: no band


def test_seed_aggregate_over_curves_is_per_epoch_and_counts_the_runs_present():
    curves = curves_of(a=dict(test_acc=[0.1, 0.3]), b=dict(test_acc=[0.3, NAN]))
    curves["lr"] = 0.1
    stats = seed_aggregate(curves, "test_acc", ["lr", "epoch"]).set_index("epoch")
    assert stats["test_acc_mean"].tolist() == pytest.approx([0.2, 0.3])
    assert stats["test_acc_n"].tolist() == [2, 1]  # the diverged seed is not counted at epoch 2


def test_seed_aggregate_without_keys_is_one_group():
    stats = seed_aggregate(pd.DataFrame({"x": [1.0, 3.0]}), "x", [])
    assert stats[["x_mean", "x_n"]].iloc[0].tolist() == [2.0, 2]


# --------------------------------------------------------------------------- reducers


def test_reduce_curves_final_best_and_first_epoch_of_the_best():
    curves = curves_of(
        a=dict(
            train_loss=[2.0, 1.0, 0.5, 0.5],
            test_loss=[2.1, 1.2, 1.1, 1.4],
            train_acc=[0.3, 0.6, 0.8, 0.8],
            test_acc=[0.3, 0.5, 0.6, 0.6],
        ),
        diverged=dict(
            train_loss=[2.0, 1.5, NAN],
            test_loss=[2.0, 1.6, NAN],
            train_acc=[0.2, 0.4, NAN],
            test_acc=[0.2, 0.35, NAN],
        ),
    )
    out = reduce_curves(curves)
    a, d = out.loc["a"], out.loc["diverged"]
    assert a["epochs_done"] == 4
    assert (a["final_test_acc"], a["best_test_acc"], a["best_test_acc_epoch"]) == (0.6, 0.6, 3)  # first reach
    assert (a["min_test_loss"], a["min_test_loss_epoch"]) == (1.1, 3)
    assert (a["min_train_loss"], a["min_train_loss_epoch"]) == (0.5, 3)
    assert a["final_gen_gap_loss"] == pytest.approx(0.9) and a["final_gen_gap_acc"] == pytest.approx(0.2)
    # final is the last epoch even when it is NaN; best ignores the NaN
    assert pd.isna(d["final_test_acc"]) and d["best_test_acc"] == 0.35 and d["best_test_acc_epoch"] == 2


def test_gaps_per_epoch():
    curves = add_gaps(curves_of(a=dict(train_loss=[1.0], test_loss=[1.5], train_acc=[0.9], test_acc=[0.7])))
    assert curves["gen_gap_loss"].tolist() == [0.5]
    assert curves["gen_gap_acc"].tolist() == pytest.approx([0.2])


def test_decoupling_flags_test_accuracy_peaking_after_the_test_loss_minimum():
    curves = curves_of(
        # loss bottoms at epoch 2, accuracy still climbs to epoch 4 (+5 points), loss +50% by then
        lecture=dict(test_loss=[1.2, 0.8, 1.0, 1.2], test_acc=[0.5, 0.60, 0.63, 0.65]),
        # both at the same epoch
        aligned=dict(test_loss=[1.2, 1.0, 0.8, 0.9], test_acc=[0.5, 0.55, 0.6, 0.58]),
        # accuracy peaks later but only by 0.1 point: noise, not the effect
        noise=dict(test_loss=[1.2, 0.8, 1.0, 1.1], test_acc=[0.5, 0.600, 0.601, 0.59]),
    )
    out = loss_acc_decoupling(curves)
    lecture = out.loc["lecture"]
    assert (lecture["min_test_loss_epoch"], lecture["best_test_acc_epoch"], lecture["epochs_apart"]) == (
        2,
        4,
        2,
    )
    assert lecture["test_acc_at_min_loss"] == 0.60
    assert lecture["acc_gain_after_min_loss"] == pytest.approx(0.05)
    assert lecture["loss_rise_at_best_acc"] == pytest.approx(0.5)
    assert out["decoupled"].to_dict() == {"lecture": True, "aligned": False, "noise": False}


def test_capacity_verdict_says_whether_and_when_the_training_set_is_fitted():
    curves = curves_of(
        big=dict(train_loss=[1.0, 0.05, 0.008, 0.002], train_acc=[0.6, 0.99, 1.0, 1.0]),
        small=dict(train_loss=[1.5, 1.0, 0.8, 0.7], train_acc=[0.4, 0.6, 0.7, 0.75]),
        # loss under the threshold but one sample still wrong: not a fit
        almost=dict(train_loss=[1.0, 0.009, 0.008, 0.007], train_acc=[0.6, 0.99, 0.99, 0.99]),
    )
    out = capacity_verdict(curves)
    assert out["fits"].to_dict() == {"big": True, "small": False, "almost": False}
    assert out.loc["big", "fit_epoch"] == 3
    assert out.loc["big", "verdict"] == "fits its training set from epoch 3"
    assert (
        out.loc["small", "verdict"] == "does not fit in 4 epochs (min train loss 0.7, best train acc 75.0%)"
    )
    assert capacity_verdict(curves, max_train_loss=0.01, min_train_acc=0.99).loc["almost", "fit_epoch"] == 2


def test_a_net_that_gets_every_training_image_right_fits_whatever_loss_it_still_sheds():
    # lecture_overfit_subset's 32 channels: 100% of its 1,000 images right, train loss 0.04.
    curves = curves_of(memorised=dict(train_loss=[1.0, 0.2, 0.04], train_acc=[0.6, 0.98, 1.0]))
    assert capacity_verdict(curves).loc["memorised", "fit_epoch"] == 3
    assert not capacity_verdict(curves, max_train_loss=0.01).loc["memorised", "fits"]  # claim 6a's "loss ≈ 0"


def test_capacity_verdict_thresholds_are_named_not_positional():
    # The order of the two thresholds changed: capacity_verdict(curves, 0.05) meant a loss then.
    curves = curves_of(big=dict(train_loss=[1.0, 0.05], train_acc=[0.6, 1.0]))
    with pytest.raises(TypeError):
        capacity_verdict(curves, 0.05)


def test_fit_state_on_the_final_accuracies():
    assert fit_state(0.70, 0.60) == "underfits"  # below 75% of its own training images
    assert fit_state(0.95, 0.65) == "overfits"  # 30 points above its test accuracy
    assert fit_state(0.82, 0.67) == "neither"
    assert fit_state(math.nan, 0.6) == ""


# --------------------------------------------------------------------------- ranking


def ranking_runs() -> pd.DataFrame:
    rows = []
    for lr, accs in {
        0.1: [0.80, 0.82, 0.84],
        0.2: [0.79, 0.81, 0.83],
        0.05: [0.70, 0.71, 0.72],
        0.4: [0.60, 0.61, 0.62],
    }.items():
        rows += [
            {
                "lr": lr,
                "trainer.seed": s,
                "status": "completed",
                "final_test_acc": a,
                "final_test_loss": 1 - a,
            }
            for s, a in enumerate(accs)
        ]
    rows.append(
        {"lr": 0.4, "trainer.seed": 3, "status": "diverged", "final_test_acc": NAN, "final_test_loss": NAN}
    )
    rows.append(
        {"lr": 0.4, "trainer.seed": 4, "status": "failed", "final_test_acc": 0.99, "final_test_loss": 0.01}
    )
    return pd.DataFrame(rows)


def test_ranking_calls_differences_within_the_seed_spread_ties():
    ranking = rank_configs(ranking_runs(), "final_test_acc", ["lr"])
    # 0.1 (0.82 +- 0.02) and 0.2 (0.81 +- 0.02) differ by less than their std: tied for first.
    assert ranking["lr"].tolist() == [0.1, 0.2, 0.05, 0.4]
    assert ranking["rank"].tolist() == [1, 1, 3, 4]
    assert ranking["tied"].tolist() == [True, True, False, False]
    assert ranking["n"].tolist() == [3, 3, 3, 3]  # the diverged and the failed seeds do not count
    assert ranking["mean"].tolist() == pytest.approx([0.82, 0.81, 0.71, 0.61])


def test_ranking_a_loss_puts_the_lowest_first():
    ranking = rank_configs(ranking_runs(), "final_test_loss", ["lr"])
    assert ranking["lr"].tolist() == [0.1, 0.2, 0.05, 0.4]
    assert ranking["mean"].iloc[0] == pytest.approx(0.18)


def test_ranking_single_seeds_ties_only_equal_means_when_the_images_are_not_known():
    runs = pd.DataFrame({"lr": [0.1, 0.2, 0.3], "status": "completed", "final_test_acc": [0.7, 0.7, 0.69]})
    ranking = rank_configs(runs, "final_test_acc", ["lr"])
    assert ranking["rank"].tolist() == [1, 1, 3]
    assert ranking["noise"].tolist() == [0.0, 0.0, 0.0]


def test_single_seeds_within_the_accuracys_sampling_error_are_a_tie():
    # lecture_lr2 on CIFAR-10: 0.6793 against 0.6792 is one test image in 10,000, where the
    # accuracy's binomial standard error is 0.47 points; 0.6508 is 6 of them below.
    runs = pd.DataFrame(
        {
            "schedule.lr2": [0.05, 0.02, 0.07],
            "status": "completed",
            "final_test_acc": [0.6793, 0.6792, 0.6508],
            "final_test_loss": [1.0, 1.1, 1.2],
            "n_test": 10000,
        }
    )
    ranking = rank_configs(runs, "final_test_acc", ["schedule.lr2"])
    assert ranking["rank"].tolist() == [1, 1, 3]
    assert ranking["noise"].iloc[0] == pytest.approx(math.sqrt(0.6793 * 0.3207 / 10000))
    # On 100 images the same accuracies are all within the noise (about 4.7 points).
    assert rank_configs(runs.assign(n_test=100), "final_test_acc", ["schedule.lr2"])["rank"].tolist() == [
        1,
        1,
        1,
    ]
    # A loss has no such error to stand in for the seeds' std: strict ranks.
    assert rank_configs(runs, "final_test_loss", ["schedule.lr2"])["rank"].tolist() == [1, 2, 3]


def test_metric_direction_is_inferred_or_refused():
    assert lower_is_better("min_test_loss") and lower_is_better("time_s")
    assert not lower_is_better("final_test_acc")
    # Gaps shrink as a net generalises better, the accuracy gap too (the CLI offers it for --metric).
    assert lower_is_better("final_gen_gap_loss") and lower_is_better("final_gen_gap_acc")
    with pytest.raises(ValueError, match="higher_is_better"):
        lower_is_better("n_params")

"""analysis.plots, .distribution_plots, .heatmap: each figure shows the data it is given (checked on the drawn artists)."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import QuadMesh
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.distribution_plots import plot_loss_distributions, spread_below_resolution
from analysis.heatmap import plot_heatmap
from analysis.losses import read_losses
from analysis.plots import (
    NothingToPlot,
    ordered_values,
    plot_curves,
    plot_loss_vs_accuracy,
    plot_lr_switch,
)
from tests.fake_runs import losses_arrays


def curves_grid(lrs=(0.05, 0.1), channels=(32,), seeds=(0, 1, 2), epochs=4) -> pd.DataFrame:
    """train_loss = lr-dependent decay + seed offset; the mean over seeds is known exactly."""
    rows = []
    for lr in lrs:
        for ch in channels:
            for seed in seeds:
                for e in range(1, epochs + 1):
                    rows.append(
                        {
                            "run": f"{lr}-{ch}-{seed}",
                            "lr": lr,
                            "model.channels": ch,
                            "trainer.seed": seed,
                            "epoch": e,
                            "train_loss": 1.0 / (e * lr * 10) + 0.01 * seed,
                            "test_loss": 1.0 + 0.1 * abs(e - 2),
                            "test_acc": 0.1 * e + 0.01 * seed,
                        }
                    )
    return pd.DataFrame(rows).astype({"run": "str"})


def legend_texts(fig: Figure) -> list[str]:
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def data_lines(ax) -> list:
    """The curves (axvline markers have two points)."""
    return [line for line in ax.get_lines() if len(line.get_xdata()) > 2]


def test_curves_figure_has_a_log_loss_panel_and_one_mean_line_per_hue_value():
    fig = plot_curves(curves_grid(), hue="lr")
    loss_ax, acc_ax = fig.axes
    assert loss_ax.get_yscale() == "log" and acc_ax.get_yscale() == "linear"
    assert legend_texts(fig) == ["lr=0.05 (N=3)", "lr=0.1 (N=3)"]
    lines = data_lines(loss_ax)
    assert len(lines) == 2
    # the mean over seeds 0, 1, 2 adds 0.01 to the seed-free curve
    assert lines[1].get_ydata() == pytest.approx([1.0 / e + 0.01 for e in range(1, 5)])
    assert len(loss_ax.collections) == 2  # one band per line
    fig.savefig(io.BytesIO(), format="png")  # renders without a display


def test_bands_are_the_seeds_range_so_two_seeds_stay_on_the_axes():
    # Two seeds whose losses differ by 0.01: a 95% t-interval would be 12.7 standard errors wide,
    # below zero on the log axis. The band is the seeds' own range.
    fig = plot_curves(curves_grid(lrs=(0.1,), seeds=(0, 1)), hue="lr")
    loss_ax, acc_ax = fig.axes
    for ax, lowest, highest in ((loss_ax, 1.0 / 4, 1.0 + 0.01), (acc_ax, 0.1, 0.4 + 0.01)):
        (band,) = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(lowest) and ys.max() == pytest.approx(highest)


def test_curves_facet_by_a_column_key():
    fig = plot_curves(curves_grid(channels=(16, 32)), hue="lr", col="model.channels")
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:2]] == ["model.channels=16", "model.channels=32"]


def test_curves_warn_when_averaging_different_configurations_unless_keys_separate_them():
    curves = curves_grid(channels=(16, 32))
    with pytest.warns(UserWarning, match="differ in more than trainer.seed"):
        plot_curves(curves, hue="lr")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = plot_curves(curves, hue="lr", keys=["lr", "model.channels"])
    assert len(data_lines(fig.axes[0])) == 4


def test_a_key_that_does_not_vary_is_nothing_to_plot():
    with pytest.raises(NothingToPlot, match="schedule.lr2"):
        plot_curves(curves_grid(), hue="schedule.lr2")


def switch_data():
    curves = curves_grid(lrs=(0.1,), seeds=(0, 1))
    runs_rows = []
    frames = []
    for i, (name, lr2) in enumerate([("step", 0.01), ("step", 0.001), ("constant", None)]):
        part = curves[curves["trainer.seed"] == 0].assign(run=f"r{i}")
        frames.append(part)
        runs_rows.append(
            {
                "run": f"r{i}",
                "schedule.name": name,
                "schedule.switch_epoch": 2 if lr2 else None,
                "schedule.lr2": lr2,
                "lr": 0.1,
            }
        )
    return pd.concat(frames, ignore_index=True), pd.DataFrame(runs_rows)


def test_lr_switch_aligns_runs_at_the_switch_and_draws_the_no_switch_reference():
    curves, runs = switch_data()
    fig = plot_lr_switch(curves, runs)
    ax = fig.axes[0]
    assert len(data_lines(ax)) == 3
    for line in data_lines(ax):
        assert list(line.get_xdata()) == [-1, 0, 1, 2]  # epochs 1..4, switch after epoch 2
    texts = legend_texts(fig)
    assert texts == ["no switch (N=1)", "schedule.lr2=0.001 (N=1)", "schedule.lr2=0.01 (N=1)"]
    assert ax.get_xlabel() == "epochs since the switch to lr2"


def test_lr_switch_without_step_runs_is_nothing_to_plot():
    curves, runs = switch_data()
    with pytest.raises(NothingToPlot, match="schedule.name=step"):
        plot_lr_switch(curves, runs.assign(**{"schedule.name": "constant"}))


def test_loss_vs_accuracy_marks_the_test_loss_minimum_and_the_accuracy_peak():
    curves = curves_grid(lrs=(0.1,))
    fig = plot_loss_vs_accuracy(curves)
    texts = legend_texts(fig)
    assert texts[:3] == ["train loss", "test loss", "test accuracy"]
    assert "min test loss: epoch 2" in texts and "best test acc: epoch 4" in texts
    assert fig.axes[0].get_yscale() == "log"


def distributions(tmp_path, train_zero_share: int) -> pd.DataFrame:
    train = np.concatenate([np.zeros(train_zero_share), np.full(10 - train_zero_share, 0.02)])
    test = np.array([0.5, 1.0, 2.0, 4.0])
    np.savez(tmp_path / "losses.npz", **losses_arrays([1, 2], [np.full(10, 0.5), train], [test, test]))
    dists, _, reason = read_losses(tmp_path / "losses.npz", "r")
    assert reason is None
    return dists


def zero_bars(fig: Figure) -> list[float]:
    """Heights of the bars drawn in the "0" slot of each panel (train, test)."""
    heights = []
    for ax in fig.axes:
        labels = {t.get_text(): x for t, x in zip(ax.get_xticklabels(), ax.get_xticks(), strict=True)}
        zero_x = labels["0"]
        heights.append(
            [
                p.get_height()
                for p in ax.patches
                if isinstance(p, Rectangle) and p.get_x() <= zero_x <= p.get_x() + 2 * p.get_width()
            ]
        )
    return heights


def test_loss_distributions_show_exact_zeros_in_their_own_slot(tmp_path):
    fig = plot_loss_distributions(distributions(tmp_path, train_zero_share=7))
    assert [ax.get_title() for ax in fig.axes] == ["epoch 1", "epoch 2"]
    # epoch 1: no zeros; epoch 2: 7 of 10 train losses are exactly 0, no test loss is
    assert zero_bars(fig) == [[0.0, 0.0], [pytest.approx(0.7), 0.0]]
    assert "70%" in [t.get_text() for t in fig.axes[1].texts]
    assert legend_texts(fig) == ["train", "test"]
    fig.savefig(io.BytesIO(), format="png")


def test_loss_distributions_of_a_fully_memorised_training_set(tmp_path):
    fig = plot_loss_distributions(distributions(tmp_path, train_zero_share=10), epochs=[2])
    assert zero_bars(fig) == [[pytest.approx(1.0), 0.0]]


def test_the_float32_comb_under_1e_minus_6_is_spread_evenly_and_keeps_its_share(tmp_path):
    # Float32 losses of confident samples are multiples of 2**-23 (1.19e-7): under 1e-6 most of
    # the 0.1-decade bins are empty and a few full. 3 of 10 train losses land there.
    train = np.array([1.19e-7, 2.38e-7, 2.38e-7, *[0.5] * 7])
    np.savez(tmp_path / "losses.npz", **losses_arrays([1], [train], [np.full(4, 0.5)]))
    dists, _, _ = read_losses(tmp_path / "losses.npz", "r")
    mean = dists.drop(columns="run")
    spread = spread_below_resolution(mean)
    low = (spread["kind"] == "hist") & (spread["hi"] <= 1e-6 * (1 + 1e-9)) & (spread["split"] == "train")
    assert spread.loc[low, "fraction"].nunique() == 1  # flat: no comb
    assert spread.loc[low, "fraction"].sum() == pytest.approx(0.3)  # the same share of samples
    rest = ~low
    assert spread.loc[rest, "fraction"].tolist() == mean.loc[rest, "fraction"].tolist()
    labels = [t.get_text() for t in plot_loss_distributions(dists).axes[0].texts]
    assert labels == []  # no exact zeros: no share written


def test_a_share_of_exact_zeros_under_half_a_percent_is_not_written_as_0_percent(tmp_path):
    train = np.concatenate([np.zeros(1), np.full(999, 0.5)])
    np.savez(tmp_path / "losses.npz", **losses_arrays([1], [train], [np.full(4, 0.5)]))
    dists, _, _ = read_losses(tmp_path / "losses.npz", "r")
    assert [t.get_text() for t in plot_loss_distributions(dists).axes[0].texts] == ["<1%"]


def test_loss_distributions_need_data(tmp_path):
    with pytest.raises(NothingToPlot):
        plot_loss_distributions(distributions(tmp_path, 0), epochs=[7])


def heatmap_runs() -> pd.DataFrame:
    rows = [
        {
            "lr": lr,
            "model.channels": ch,
            "trainer.seed": s,
            "status": "completed",
            "final_test_acc": 0.5 + lr + ch / 1000 + 0.01 * s,
        }
        for lr in (0.1, 0.2)
        for ch in (16, 32, 64)
        for s in (0, 1)
    ]
    rows.append(
        {"lr": 0.2, "model.channels": 64, "trainer.seed": 2, "status": "diverged", "final_test_acc": 0.0}
    )
    return pd.DataFrame(rows)


def test_heatmap_cells_are_seed_means_over_two_keys():
    fig = plot_heatmap(heatmap_runs(), "lr", "model.channels")
    ax = fig.axes[0]
    mesh = next(c for c in ax.collections if isinstance(c, QuadMesh))
    expected = [[0.5 + lr + ch / 1000 + 0.005 for lr in (0.1, 0.2)] for ch in (16, 32, 64)]
    assert np.asarray(mesh.get_array()).reshape(3, 2) == pytest.approx(np.array(expected))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.1", "0.2"]
    assert ax.texts[0].get_text() == "0.621\n±0.0071"
    assert "N=2 per cell" in fig._suptitle.get_text()  # the diverged seed is left out


def test_heatmap_refuses_one_key_twice_or_a_missing_key():
    with pytest.raises(NothingToPlot):
        plot_heatmap(heatmap_runs(), "lr", "lr")
    with pytest.raises(NothingToPlot, match="schedule.lr2"):
        plot_heatmap(heatmap_runs(), "lr", "schedule.lr2")


def test_heatmap_refuses_a_grid_one_value_wide_once_unfinished_runs_are_left_out():
    runs = heatmap_runs()
    runs.loc[runs["lr"] == 0.2, "status"] = "failed"  # the completed runs all have lr=0.1
    with pytest.raises(NothingToPlot, match="the completed runs take one value of lr or of model.channels"):
        plot_heatmap(runs, "lr", "model.channels")


def test_a_legend_names_the_runs_of_a_line_that_did_not_complete():
    curves = curves_grid(lrs=(0.05, 0.1), seeds=(0, 1))
    curves["status"] = "completed"
    curves.loc[curves["run"] == "0.1-32-1", "status"] = "failed"
    fig = plot_curves(curves, hue="lr")
    assert legend_texts(fig) == ["lr=0.05 (N=2)", "lr=0.1 (N=2, 1 failed)"]


def test_values_are_ordered_naturally():
    assert ordered_values([0.2, 0.05, None, 0.1, 0.05]) == [0.05, 0.1, 0.2, None]
    assert ordered_values([(200, 100), (50,), (200,)]) == [(50,), (200,), (200, 100)]
    assert ordered_values(["step", "constant"]) == ["constant", "step"]


def test_a_run_diverged_at_its_first_epoch_is_one_marked_point_with_one_legend_entry():
    curves = curves_grid(lrs=(0.1,), seeds=(0,))
    diverged = pd.DataFrame(  # a finite train loss, no test metrics: the run stopped there
        [{"run": "big", "lr": 1e30, "model.channels": 32, "trainer.seed": 0, "epoch": 1,
          "train_loss": 5.0, "test_loss": float("nan"), "test_acc": float("nan")}]
    )  # fmt: skip
    fig = plot_curves(pd.concat([curves, diverged], ignore_index=True), hue="lr")
    # N counts the runs of a line: counted per panel, it was "(N=1)" by the loss, "(N=0)" by the accuracy.
    assert legend_texts(fig) == ["lr=0.1 (N=1)", "lr=1e+30 (N=1)"]
    loss_ax = fig.axes[0]
    point = [line for line in loss_ax.get_lines() if len(line.get_xdata()) == 1]
    assert len(point) == 1 and point[0].get_marker() == "o"
    assert all(tick == int(tick) for tick in loss_ax.get_xticks())


def test_lines_of_one_colour_that_differ_in_a_key_get_a_style_and_an_entry_each():
    # By schedule.name, the step runs differ in schedule.lr2; the constant run has none.
    rows = []
    for name, lr2 in (("constant", None), ("step", 0.02), ("step", 0.05)):
        for e in (1, 2, 3):
            rows.append({"run": f"{name}-{lr2}", "schedule.name": name, "schedule.lr2": lr2, "trainer.seed": 0,
                         "epoch": e, "train_loss": 1.0 / e, "test_acc": 0.1 * e})  # fmt: skip
    curves = pd.DataFrame(rows)
    fig = plot_curves(curves, hue="schedule.name", keys=["schedule.name", "schedule.lr2"])
    assert legend_texts(fig) == [
        "schedule.name=constant (N=1)",
        "schedule.name=step, schedule.lr2=0.02 (N=1)",
        "schedule.name=step, schedule.lr2=0.05 (N=1)",
    ]
    styles = sorted(line.get_linestyle() for line in data_lines(fig.axes[0]))
    assert styles == sorted(["-", "-", "--"])


# --------------------------------------------------------------------------- readability


def drawn(fig: Figure) -> Figure:
    """The figure rendered (tick labels and extents are made at draw time)."""
    FigureCanvasAgg(fig).draw()
    return fig


def drawn_tick_labels(fig: Figure, axis: str = "y") -> list[str]:
    drawn(fig)
    texts = []
    for ax in fig.axes:
        target = ax.yaxis if axis == "y" else ax.xaxis
        for minor in (False, True):
            texts += [t.get_text() for t in target.get_ticklabels(minor=minor) if t.get_text()]
    return texts


def test_log_loss_axes_are_labelled_with_plain_numbers():
    """A loss between 1.8 and 2.4 read "2.2×10⁰" (mathtext); a wide one 10⁻²."""
    narrow = curves_grid(lrs=(0.1,)).assign(train_loss=lambda f: 1.8 + 0.15 * (f["epoch"] - 1))
    wide = curves_grid(lrs=(0.1,)).assign(train_loss=lambda f: 2.3 / 10 ** (f["epoch"] - 1))
    for curves in (narrow, wide):
        labels = drawn_tick_labels(plot_curves(curves, metrics=("train_loss",)))
        assert labels and not [t for t in labels if "$" in t or "×" in t or "^" in t], labels
    assert "2" in drawn_tick_labels(plot_curves(narrow, metrics=("train_loss",)))
    assert "0.01" in drawn_tick_labels(plot_curves(wide, metrics=("train_loss",)))


def test_loss_vs_accuracy_keeps_its_legend_below_and_its_epochs_whole():
    curves = curves_grid(lrs=(0.1,), epochs=3)
    fig = drawn(plot_loss_vs_accuracy(curves, title="a configuration"))
    renderer = fig.canvas.get_renderer()
    legend = fig.legends[0].get_window_extent(renderer)
    plot = fig.axes[0].get_window_extent(renderer)
    assert legend.y1 <= plot.y0  # below the panel: never over the title or a curve
    assert plot.width >= 0.75 * fig.bbox.width  # the legend takes no column of its own
    ticks = [float(t.replace("−", "-")) for t in drawn_tick_labels(fig, "x")]
    assert ticks and all(t == int(t) for t in ticks), ticks


def test_loss_vs_accuracy_shows_both_markers_when_they_fall_on_one_epoch():
    curves = curves_grid(lrs=(0.1,)).assign(test_loss=lambda f: 1.0 + 0.1 * abs(f["epoch"] - 4))
    fig = plot_loss_vs_accuracy(curves)
    texts = legend_texts(fig)
    assert "min test loss: epoch 4" in texts and "best test acc: epoch 4" in texts
    drawn(fig)
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    ax = fig.axes[0]
    x = int(round(ax.transData.transform((4, 1.0))[0]))
    box = ax.get_window_extent()
    rows = slice(int(image.shape[0] - box.y1) + 5, int(image.shape[0] - box.y0) - 5)
    column = image[rows, x - 1 : x + 2].reshape(-1, 3)

    def share(color: str) -> float:
        rgb = (np.array(to_rgb(color)) * 255).astype(int)
        return float((np.abs(column - rgb).sum(axis=1) < 60).mean())

    # each dashed marker covers a good part of the column (the curves cross it at a point)
    assert share("C3") > 0.1 and share("C2") > 0.1, (share("C3"), share("C2"))


def test_each_loss_distribution_panel_is_scaled_to_its_own_data(tmp_path):
    """Epoch 1's spike (98% in one bin) flattened the later epochs (peaks about 0.08) on a shared axis."""
    rng = np.random.default_rng(0)
    spike = np.full(1000, 2.3)
    spread = np.exp(rng.uniform(np.log(1e-3), np.log(10), 1000))
    np.savez(tmp_path / "losses.npz", **losses_arrays([1, 2], [spike, spread], [spike, spread]))
    dists, _, _ = read_losses(tmp_path / "losses.npz", "r")
    fig = plot_loss_distributions(dists)
    first, later = (ax.get_ylim()[1] for ax in fig.axes[:2])
    assert first > 0.9 and later < 0.3, (first, later)

"""The per-sample loss distribution figure: train vs test histograms of losses.npz, one panel per
kept epoch (Sweep.distributions)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from analysis.plots import NothingToPlot, _new_figure, _require, _suptitle

MAX_DISTRIBUTION_PANELS = 8
# A float32 loss near 0 is -log(p) with p one of the floats just under 1, spaced 2**-24 apart:
# below about 1e-6 a 0.1-decade bin holds no representable loss or a handful.
FLOAT32_LOSS_RESOLUTION = 1e-6


def panel_epochs(epochs: list[int], max_panels: int) -> list[int]:
    """At most max_panels of the kept epochs, spread evenly, the first and the last included."""
    if len(epochs) <= max_panels:
        return epochs
    picks = np.linspace(0, len(epochs) - 1, max_panels).round().astype(int)
    return [epochs[i] for i in dict.fromkeys(picks)]


def _bin_positions(mean: pd.DataFrame) -> tuple[dict, list[tuple[float, str]], float, float]:
    """{bin: (left, right)} in log10(loss), ticks and the x-range: histogram bins at their log10
    edges, (0, 1e-8) one decade left of 1e-8, exact zeros a separate slot after a gap."""
    hist = mean[(mean["kind"] == "hist") & (mean["fraction"] > 0)]
    lo = math.floor(np.log10(hist["lo"].min())) if not hist.empty else -1
    hi = math.ceil(np.log10(hist["hi"].max())) if not hist.empty else 1
    has_under = (mean.loc[mean["kind"] == "under", "fraction"] > 0).any()
    has_over = (mean.loc[mean["kind"] == "over", "fraction"] > 0).any()
    bins = mean.drop_duplicates("bin").set_index("bin")
    positions = {}
    for b, row in bins.iterrows():
        if row["kind"] == "hist" and np.log10(row["lo"]) >= lo - 1e-9 and np.log10(row["hi"]) <= hi + 1e-9:
            positions[b] = (np.log10(row["lo"]), np.log10(row["hi"]))
    step = 1 if hi - lo <= 6 else 2  # readable tick labels on a wide range
    ticks = [
        (float(d), f"1e{d}")
        for d in range(hi, lo - 1, -step)
        if not (d == hi and has_over) and not (d == lo and has_under)
    ]  # those slots carry a label
    left = lo
    if has_under:
        under = int(bins.index[bins["kind"] == "under"][0])
        positions[under] = (lo - 1.0, lo)
        ticks.append((lo - 0.5, f"<1e{round(np.log10(bins.loc[under, 'hi']))}"))
        left = lo - 1.0
    zero = int(bins.index[bins["kind"] == "zero"][0])
    positions[zero] = (left - 1.6, left - 0.6)  # a gap: zero is not on the log axis
    ticks.append((left - 1.1, "0"))
    right = hi
    if has_over:
        over = int(bins.index[bins["kind"] == "over"][0])
        positions[over] = (hi, hi + 1.0)
        ticks.append((hi + 0.5, f"≥1e{round(np.log10(bins.loc[over, 'lo']))}"))
        right = hi + 1.0
    return positions, ticks, left - 1.8, right + 0.2


def spread_below_resolution(mean: pd.DataFrame) -> pd.DataFrame:
    """Each (epoch, split)'s histogram bins under FLOAT32_LOSS_RESOLUTION get their mean fraction:
    the same share of samples, without the comb of the few values a float32 loss takes there."""
    comb = (mean["kind"] == "hist") & (mean["hi"] <= FLOAT32_LOSS_RESOLUTION * (1 + 1e-9))
    out = mean.copy()
    out.loc[comb, "fraction"] = out[comb].groupby(["epoch", "split"])["fraction"].transform("mean")
    return out


def plot_loss_distributions(
    dists: pd.DataFrame,
    epochs: Sequence[int] | None = None,
    max_panels: int = MAX_DISTRIBUTION_PANELS,
    title: str | None = None,
    ncols: int = 4,
) -> Figure:
    """Per-sample loss histograms, train against test, through the kept epochs (small multiples).

    x is log10(loss) on the bins of losses.npz; losses exactly 0 in float32 (a memorised sample:
    -log p with p rounding to 1) get their own slot at the left, labelled "0". y is the fraction of
    that split's samples, averaged over the runs in `dists`. Below FLOAT32_LOSS_RESOLUTION a float32
    loss takes only multiples of 2**-23: those bins' fractions are spread evenly over them (the same
    total) instead of drawing that comb as spikes.
    """
    _require(
        dists, ["run", "epoch", "split", "bin", "kind", "lo", "hi", "fraction"], "plot_loss_distributions"
    )
    if epochs is not None:
        dists = dists[dists["epoch"].isin(list(epochs))]
        if dists.empty:
            raise NothingToPlot("plot_loss_distributions: none of those epochs was kept")
    n_runs = dists["run"].nunique()
    mean = dists.groupby(["epoch", "split", "bin", "kind", "lo", "hi"], as_index=False)["fraction"].mean()
    mean = spread_below_resolution(mean)
    shown = panel_epochs(sorted(mean["epoch"].unique().tolist()), max_panels)
    positions, ticks, x_lo, x_hi = _bin_positions(mean[mean["epoch"].isin(shown)])
    zero_bin = int(mean.loc[mean["kind"] == "zero", "bin"].iloc[0])
    zero_top = mean[mean["kind"] == "zero"].groupby("epoch")["fraction"].max()
    ncols = max(1, min(ncols, len(shown)))
    nrows = math.ceil(len(shown) / ncols)
    # Each panel on its own y scale: the first epoch's spike (most samples in a few bins) would
    # flatten the later epochs, whose spread is the point of the figure.
    fig, axes = _new_figure(nrows, ncols, 3.4, 2.4, sharex=True, sharey=False)
    colors = {"train": "C0", "test": "C1"}
    for ax, epoch in zip(axes.flat, shown, strict=False):
        for split, color in colors.items():
            part = mean[(mean["epoch"] == epoch) & (mean["split"] == split)].set_index("bin")
            hist = part[(part["kind"] == "hist") & part.index.isin(list(positions))]
            if len(hist):
                edges = [positions[b][0] for b in hist.index] + [positions[hist.index[-1]][1]]
                ax.stairs(hist["fraction"].to_numpy(), edges, fill=True, alpha=0.35, color=color)
                ax.stairs(hist["fraction"].to_numpy(), edges, color=color, lw=1, label=split)
            offset = 0.0 if split == "train" else 0.5  # special slots: train left half, test right half
            for b in part.index[part["kind"] != "hist"]:
                if b not in positions:
                    continue
                left, right = positions[b]
                width = (right - left) / 2
                value, x = part.loc[b, "fraction"], left + offset * (right - left)
                ax.bar(x, value, width=width, align="edge", color=color, alpha=0.7)
                if part.loc[b, "kind"] == "zero" and value > 0:
                    ax.annotate(  # both above the taller bar, test's above train's: the halves are narrow
                        f"{value:.0%}" if value >= 0.005 else "<1%",
                        (x + width / 2, zero_top[epoch]),
                        xytext=(0, 1 if split == "train" else 8),
                        textcoords="offset points",
                        ha="center",
                        va="bottom",
                        fontsize="x-small",
                        color=color,
                    )
        ax.axvline(
            positions[zero_bin][1] + 0.3, color="0.6", lw=0.8, ls=(0, (2, 2))
        )  # zero: off the log axis
        ax.set_title(f"epoch {epoch}", fontsize="medium")
        ax.set_xlim(x_lo, x_hi)
        ax.set_xticks([t for t, _ in ticks], [label for _, label in ticks], fontsize="x-small")
    for ax in axes.flat[len(shown) :]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("fraction of samples")
    for ax in axes[-1, :]:
        ax.set_xlabel("per-sample loss")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize="small")
    runs_note = f"mean of {n_runs} runs" if n_runs > 1 else "1 run"
    _suptitle(fig, f"{title or 'per-sample loss, train vs test'} ({runs_note})")
    return fig

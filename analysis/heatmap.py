"""The heatmap figure: a final metric over two knobs, averaged over seeds (one cell per pair)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from analysis.diagnostics import lower_is_better, seed_aggregate
from analysis.knobs import format_knob, format_value
from analysis.load import SEED_KEY
from analysis.plots import (
    NothingToPlot,
    _check_replicates,
    _new_figure,
    _require,
    _suptitle,
    ordered_values,
    plain,
)


def plot_heatmap(
    runs: pd.DataFrame,
    x: str,
    y: str,
    value: str = "final_test_acc",
    seed_key: str = SEED_KEY,
    statuses: Sequence[str] | None = ("completed",),
    title: str | None = None,
) -> Figure:
    """Mean `value` over seeds on two varied keys (x="lr", y="model.channels"), over the runs of
    `statuses`; cells show the mean and the seeds' std, N is in the title (in the cell when it varies)."""
    _require(runs, [x, y, value, "status"], "plot_heatmap")
    if x == y:
        raise NothingToPlot("plot_heatmap: x and y are the same key")
    pool = runs if statuses is None else runs[runs["status"].isin(list(statuses))]
    pool = pool[pool[value].notna()]
    if pool.empty:
        raise NothingToPlot(f"plot_heatmap: no {'/'.join(statuses or ['any'])} run has {value}")
    if min(pool[x].nunique(dropna=False), pool[y].nunique(dropna=False)) < 2:  # a 1-wide grid shows nothing
        raise NothingToPlot(
            f"plot_heatmap: the {'/'.join(statuses or ['any'])} runs take one value of {x} or of {y}"
        )
    _check_replicates(pool, [x, y], seed_key, "plot_heatmap")
    stats = seed_aggregate(pool, value, [y, x])
    xs, ys = ordered_values(pool[x]), ordered_values(pool[y])
    cell = {(format_value(r[y]), format_value(r[x])): r for r in stats.to_dict("records")}
    grid = np.full((len(ys), len(xs)), np.nan)
    labels = np.full((len(ys), len(xs)), "", dtype=object)
    uniform_n = stats[f"{value}_n"].nunique() == 1
    for i, yv in enumerate(ys):
        for j, xv in enumerate(xs):
            r = cell.get((format_value(yv), format_value(xv)))
            if r is None:
                continue
            grid[i, j] = r[f"{value}_mean"]
            n = r[f"{value}_n"]
            text = f"{grid[i, j]:.3g}" + (f"\n±{r[f'{value}_std']:.2g}" if n > 1 else "")
            labels[i, j] = text if uniform_n else f"{text}\nN={n}"
    fig, axes = _new_figure(1, 1, max(4.0, 1.1 * len(xs) + 2), max(3.0, 0.7 * len(ys) + 1.5))
    try:
        cmap = "viridis_r" if lower_is_better(value) else "viridis"
    except ValueError:
        cmap = "viridis"
    sns.heatmap(
        pd.DataFrame(
            grid,
            index=[plain(format_knob(y, v)) for v in ys],
            columns=[plain(format_knob(x, v)) for v in xs],
        ),
        annot=labels,
        fmt="",
        cmap=cmap,
        ax=axes[0, 0],
        cbar_kws={"label": plain(value)},
        annot_kws={"fontsize": "small"},
        linewidths=0.5,
    )
    axes[0, 0].set_xlabel(plain(x))
    axes[0, 0].set_ylabel(plain(y))
    n_note = f"N={int(stats[f'{value}_n'].iloc[0])} per cell" if uniform_n else "N per cell"
    _suptitle(fig, f"{title or value} ({n_note})")
    return fig

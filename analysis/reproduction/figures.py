"""One small PNG per claim, drawn by analysis.plots from the claim's runs."""

from __future__ import annotations

import warnings
from pathlib import Path

from analysis import distribution_plots, heatmap, plots
from analysis.knobs import format_value
from analysis.load import load_sweep
from analysis.reproduction.claims import Claim, distribution_epochs


def _lecture_protocol(claim: Claim, title: str):
    fig = plots.plot_curves(claim.source.curves, title=title)
    lo, hi = claim.facts["acc_band"]
    fig.axes[1].axhspan(lo, hi, color="C2", alpha=0.12, lw=0)
    return fig


def _second_rate(claim: Claim, title: str):
    paths = [
        claim.source.exp.path,
        *(Path(s.runs["run_dir"].iloc[0]) for s in claim.extra_sources if not s.runs.empty),
    ]
    both = load_sweep(paths)
    return plots.plot_lr_switch(both.curves, both.runs, keys=both.group_keys, title=title)


def _loss_distributions(claim: Claim, title: str):
    dists = claim.source.sweep.distributions()
    epochs = distribution_epochs(sorted(dists["epoch"].unique().tolist()), claim.facts["quantile_epochs"])
    return distribution_plots.plot_loss_distributions(
        dists, epochs=epochs, max_panels=4, ncols=2, title=title
    )


def _capacity_grid(claim: Claim, title: str):
    runs, keys = claim.source.runs, claim.facts["knobs_varied"]
    if len(keys) < 2:
        raise plots.NothingToPlot(f"the capacity runs vary {len(keys)} knob(s); the heatmap needs two")
    # the two knobs with the most values on the axes; any other at the best run's value
    x, y = sorted(keys, key=lambda k: -runs[k].map(format_value).nunique())[:2]
    best = runs.loc[runs["final_test_acc"].idxmax()]
    fixed = [k for k in keys if k not in (x, y)]
    for k in fixed:
        runs = runs[runs[k].map(format_value) == format_value(best[k])]
    title = "final test acc" + "".join(f", {k}={format_value(best[k])} (the best)" for k in fixed)
    return heatmap.plot_heatmap(runs, x, y, "final_test_acc", statuses=None, title=title)


FIGURES = {
    "1": _lecture_protocol,
    "2": lambda claim, title: plots.plot_curves(claim.source.curves, hue="lr", title=title),
    "3": _second_rate,
    "4": lambda claim, title: plots.plot_loss_vs_accuracy(claim.source.curves, title=title),
    "5": _loss_distributions,
    "6a": lambda claim, title: plots.plot_curves(
        claim.source.curves, metrics=("train_loss", "train_acc"), hue="model.channels", title=title
    ),
    "6b": _capacity_grid,
}


def draw_figure(claim: Claim, figures_dir: Path, dpi: int) -> None:
    """Draw the claim's figure into figures_dir; a figure that cannot be drawn leaves a note."""
    sel = claim.source
    if sel is None or sel.sweep is None or sel.curves.empty:
        return
    spec = claim.conf["figure"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fig = FIGURES[claim.key](claim, spec.get("title"))
    except plots.NothingToPlot as err:
        claim.figure_note = f"figure skipped: {err}"
        return
    fig.set_size_inches(*spec["size"])
    name = f"claim{claim.key}.png"
    fig.savefig(figures_dir / name, dpi=dpi)
    claim.figure = name

"""The curve figures (plot_curves, plot_lr_switch, plot_loss_vs_accuracy) and the helpers every
figure shares (labels, palettes, lines with seed bands, legend, title, NothingToPlot).

Figures are `matplotlib.figure.Figure`s, not pyplot's, so they work under any backend and are freed
once dropped. Seeds are replicates: a line is the mean over the runs sharing the mapped keys, with
the seeds' range (min to max) as a band, not a t-interval: that of 2 or 3 seeds is 4 to 13 standard
errors wide and would cover the figure, while the range stays on a log axis and inside [0, 1].
Slice the sweep first (`sweep.subset({...})`), or name the other knobs in `keys=` to draw one thin
line per configuration.
"""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, MaxNLocator

from analysis.diagnostics import SPLIT_NAMES, seed_aggregate
from analysis.knobs import format_knob, format_value, is_missing
from analysis.load import SEED_KEY, select_rows

LINESTYLES = ("-", "--", ":", "-.")
METRIC_LABELS = {"gen_gap_loss": "test - train loss", "gen_gap_acc": "train - test accuracy"}


class NothingToPlot(ValueError):
    """The data cannot make this figure (a key that does not vary, no such runs, ...)."""


def _rank(value) -> tuple:
    """Sort key of a config value: numbers by size, then tuples, strings, missing last."""
    if is_missing(value):
        return (3, 0)
    if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        return (0, float(value))
    return (1, value) if isinstance(value, tuple) else (2, str(value))


def _sorted(items: list, key) -> list:
    try:
        return sorted(items, key=key)
    except TypeError:  # tuples of mixed types: fall back to their written form
        return sorted(items, key=lambda item: str([format_value(v) for v in key(item)]))


def ordered_values(values) -> list:
    """Distinct values in a natural order: numbers by size, then tuples, strings, missing last."""
    distinct = list(dict.fromkeys(None if is_missing(v) else v for v in values))
    return _sorted(distinct, _rank)


def _palette(values: list) -> dict:
    numeric = all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in values if v is not None
    )
    if numeric and len(values) > 1:
        # ordered: small values light, large dark; spread over the whole map so two values contrast
        cmap = sns.color_palette("flare", as_cmap=True)
        colors = [cmap(x) for x in np.linspace(0.0, 1.0, len(values))]
    else:
        colors = sns.color_palette("deep" if len(values) <= 10 else "husl", len(values))
    return dict(zip(values, colors, strict=True))


def plain(text: str) -> str:
    """Text drawn as written: a `$` would start matplotlib's mathtext (`+tag='$x_$'` then fails
    to draw), so config values, keys and titles have theirs escaped."""
    return str(text).replace("$", r"\$")


def metric_label(metric: str) -> str:
    """train loss, validation accuracy, test top-5 accuracy; any other name as it is."""
    if metric in METRIC_LABELS:
        return METRIC_LABELS[metric]
    split, _, name = metric.partition("_")
    if split in SPLIT_NAMES and name:
        what = {"loss": "loss", "acc": "accuracy"}.get(name)
        if what is None and name.startswith("top") and name[3:].isdigit():
            what = f"top-{name[3:]} accuracy"
        return f"{SPLIT_NAMES[split]} {what or name}"
    return metric


class _PlainLogFormatter(LogFormatter):
    """Log-axis labels as plain numbers (2.2, 0.01), not matplotlib's 2.2×10⁰; which ticks get a
    label is LogFormatter's choice."""

    def _num_to_string(self, x, vmin, vmax):
        return f"{x:.4g}"


def _log_axis(ax, metric: str = "loss") -> None:
    """A loss (not a gap, which can be negative) on a log axis."""
    if "loss" not in metric or "gap" in metric:
        return
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(_PlainLogFormatter())
    ax.yaxis.set_minor_formatter(_PlainLogFormatter(labelOnlyBase=False))


def _check_replicates(frame: pd.DataFrame, keys: list[str], seed_key: str, what: str) -> None:
    """Warn when rows averaged together are not just seeds of one configuration."""
    replicate = [*keys, seed_key] if seed_key in frame else keys
    if frame.duplicated(subset=replicate).any():
        warnings.warn(
            f"{what}: some averaged runs differ in more than {seed_key}; slice the sweep "
            "first (sweep.subset) or pass keys=",
            stacklevel=3,
        )


def _n_label(n: pd.Series) -> str:
    lo, hi = int(n.min()), int(n.max())
    return f"N={hi}" if lo == hi else f"N={lo}-{hi}"


def _n_runs(frame: pd.DataFrame, by_key: dict, n: pd.Series) -> str:
    """N = the runs drawn in a line, not the values of one metric: a run that diverged has no test
    accuracy at its last epoch, and counting per panel would give it two legend entries. With a
    `status` column, the runs that did not complete are named: "N=3, 1 failed"."""
    if "run" not in frame:
        return _n_label(n)
    runs = select_rows(frame, by_key).drop_duplicates("run")
    label = f"N={len(runs)}"
    if "status" in runs:
        counts = runs.loc[runs["status"] != "completed", "status"].value_counts()
        label += "".join(f", {k} {status}" for status, k in sorted(counts.items()))
    return label


def _line_keys(
    frame: pd.DataFrame, mapped: list[str], keys: Sequence[str] | None, seed_key: str
) -> list[str]:
    """The keys drawn as separate lines: the mapped ones plus any of `keys` varying in `frame`."""
    units = [
        k
        for k in (keys or ())
        if k not in mapped and k != seed_key and k in frame and frame[k].nunique(dropna=False) > 1
    ]
    return [*mapped, *units]


def _draw_lines(
    ax, frame, y: str, x: str, line_keys: list[str], hue, style, colors, styles, default_color=None
) -> dict:
    """Mean line and seed-range band per group of `line_keys`; returns {legend label: handle}."""
    stats = seed_aggregate(frame, y, [*line_keys, x])
    handles = {}
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no tick at 1.5 on short runs
    groups = list(stats.groupby(line_keys, dropna=False, sort=False)) if line_keys else [((), stats)]
    groups = [(v if isinstance(v, tuple) else (v,), line) for v, line in groups]
    for values, line in _sorted(groups, lambda group: tuple(_rank(v) for v in group[0])):
        by_key = dict(zip(line_keys, values, strict=True))
        hue_value = None if hue is None or is_missing(by_key[hue]) else by_key[hue]
        color = colors.get(hue_value, default_color) if hue else default_color
        linestyle = (
            styles.get(None if is_missing(by_key.get(style)) else by_key.get(style), "-") if style else "-"
        )
        is_unit = len(line_keys) > len([k for k in (hue, style) if k])
        line = line.sort_values(x)
        shown = line[f"{y}_mean"].notna()
        (handle,) = ax.plot(
            line[x],
            line[f"{y}_mean"],
            color=color,
            linestyle=linestyle,
            lw=1.0 if is_unit else 1.8,
            marker="o" if shown.sum() == 1 else None,  # a run that ended after one epoch is a point
            markersize=4,
        )
        _band(ax, line, x, y, color)
        label = ", ".join(
            f"{k}={format_knob(k, by_key[k])}" for k in (hue, style) if k and not is_missing(by_key[k])
        )
        label = f"{label} ({_n_runs(frame, by_key, line[f'{y}_n'])})" if label else _n_label(line[f"{y}_n"])
        handles.setdefault(plain(label), handle)
    return handles


def _band(ax, stats: pd.DataFrame, x: str, y: str, color) -> None:
    """The seeds' range of `y` (seed_aggregate's min and max), where a line averages several."""
    if (stats[f"{y}_n"] > 1).any():
        ax.fill_between(stats[x], stats[f"{y}_min"], stats[f"{y}_max"], color=color, alpha=0.18, lw=0)


def _new_figure(nrows: int, ncols: int, width: float, height: float, **kw) -> tuple[Figure, np.ndarray]:
    with sns.axes_style("whitegrid"):
        fig = Figure(figsize=(width * ncols, height * nrows), layout="constrained")
        axes = fig.subplots(nrows, ncols, squeeze=False, **kw)
    return fig, axes


def _legend(fig: Figure, handles: dict) -> None:
    """Below the panels: it never covers a curve or the title, whatever the number of entries."""
    longest = max(len(label) for label in handles)
    fits = max(1, int(fig.get_figwidth() * 14 / (longest + 4)))  # ~14 small characters per inch
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="outside lower center",
        fontsize="small",
        ncols=min(len(handles), fits),
        frameon=False,
    )


def _suptitle(fig: Figure, text: str) -> None:
    """A title wrapped to the figure's width (config descriptions get long)."""
    chars = max(30, int(fig.get_figwidth() * 11))
    fig.suptitle(plain(textwrap.fill(text, chars)))


def _require(frame: pd.DataFrame, columns: Sequence[str | None], what: str) -> None:
    if frame.empty:
        raise NothingToPlot(f"{what}: no data")
    missing = [c for c in columns if c is not None and c not in frame]
    if missing:
        raise NothingToPlot(f"{what}: no column {', '.join(missing)} (not a varied key of this sweep?)")


def plot_curves(
    curves: pd.DataFrame,
    metrics: Sequence[str] = ("train_loss", "test_acc"),
    hue: str | None = None,
    col: str | None = None,
    style: str | None = None,
    keys: Sequence[str] | None = None,
    seed_key: str = SEED_KEY,
    title: str | None = None,
) -> Figure:
    """Metrics against epochs, one row of panels per metric, coloured by `hue`, faceted by `col`;
    with hue="lr" the lecture's learning-rate figure."""
    _require(curves, ["epoch", *metrics, hue, col, style], "curves")
    col_values = ordered_values(curves[col]) if col else [None]
    colors = _palette(ordered_values(curves[hue])) if hue else {}
    if style is None and hue:
        # Lines of one colour that differ in a key of `keys` (schedule.lr2 of the step runs, in a
        # figure by schedule.name) get a line style and a legend entry each, not one shared entry.
        units = [k for k in _line_keys(curves, [hue], keys, seed_key) if k not in (hue, col)]
        within = [k for k in units if curves.groupby(curves[hue].map(format_value))[k].nunique().max() > 1]
        style = within[0] if within else None
    values = [v for v in ordered_values(curves[style]) if not is_missing(v)] if style else []
    styles = dict(zip(values, LINESTYLES * 8, strict=False))
    width = 4.2 if len(col_values) > 1 else 5.6
    fig, axes = _new_figure(len(metrics), len(col_values), width, 3.0, sharex=True, sharey="row")
    mapped = [k for k in (hue, style) if k]
    handles = {}
    for j, col_value in enumerate(col_values):
        part = curves if col is None else select_rows(curves, {col: col_value})
        line_keys = _line_keys(part, mapped, keys, seed_key)
        if keys is None:
            _check_replicates(part, [*line_keys, "epoch"], seed_key, "plot_curves")
        for i, metric in enumerate(metrics):
            ax = axes[i, j]
            handles.update(
                _draw_lines(ax, part, metric, "epoch", line_keys, hue, style, colors, styles, "C0")
            )
            _log_axis(ax, metric)
            ax.set_ylabel(metric_label(metric) if j == 0 else "")
            ax.set_xlabel("epoch" if i == len(metrics) - 1 else "")
            if col and i == 0:
                ax.set_title(plain(f"{col}={format_knob(col, col_value)}"))
    if handles and (hue or style):
        _legend(fig, handles)
    if title:
        _suptitle(fig, title)
    return fig


def plot_lr_switch(
    curves: pd.DataFrame,
    runs: pd.DataFrame,
    hue: str = "schedule.lr2",
    metrics: Sequence[str] = ("train_loss", "test_acc"),
    keys: Sequence[str] | None = None,
    seed_key: str = SEED_KEY,
    title: str | None = None,
) -> Figure:
    """The "lr, then lr2" comparison: step-schedule runs aligned at `schedule.switch_epoch`, coloured
    by `hue`, styled by switch epoch when several; runs of another schedule in `runs` are drawn in
    grey as the no-switch reference, aligned at each switch epoch."""
    name_key, switch_key = "schedule.name", "schedule.switch_epoch"
    _require(runs, [name_key, switch_key, hue, "run"], "plot_lr_switch")
    is_step = runs[name_key] == "step"
    step_runs = runs[is_step.fillna(False).astype(bool) & runs[switch_key].notna()]
    if step_runs.empty:
        raise NothingToPlot("plot_lr_switch: no runs with schedule.name=step")
    # Run-level keys come from `runs` (curves hold only the varied ones); drop curves' copies first.
    needed = [k for k in dict.fromkeys([switch_key, hue, *(keys or ())]) if k in runs]
    step = curves.drop(columns=[k for k in needed if k in curves]).merge(
        step_runs[["run", *needed]], on="run"
    )
    step["epochs_since_switch"] = step["epoch"] - step[switch_key].astype("float64")
    switches = ordered_values(step_runs[switch_key])
    style = switch_key if len(switches) > 1 else None
    colors = _palette(ordered_values(step[hue]))
    styles = dict(zip(switches, LINESTYLES * 8, strict=False))
    mapped = [k for k in (hue, style) if k]
    line_keys = _line_keys(step, mapped, keys, seed_key)
    if keys is None:
        _check_replicates(step, [*line_keys, "epoch"], seed_key, "plot_lr_switch")
    reference = curves[curves["run"].isin(runs.loc[~is_step.fillna(False).astype(bool), "run"])]
    if not reference.empty:
        _check_replicates(reference, ["epoch"], seed_key, "plot_lr_switch reference")

    fig, axes = _new_figure(1, len(metrics), 4.6, 3.4, sharex=True)
    handles = {}
    for ax, metric in zip(axes[0], metrics, strict=True):
        for switch in switches if not reference.empty else []:
            ref = reference.assign(epochs_since_switch=reference["epoch"] - float(switch))
            ref_handles = _draw_lines(
                ax, ref, metric, "epochs_since_switch", [], None, None, {}, {}, default_color="0.55"
            )
            for label, handle in ref_handles.items():
                handle.set_linestyle(styles.get(switch, "-"))
                handles.setdefault(f"no switch ({label})", handle)
        handles.update(
            _draw_lines(ax, step, metric, "epochs_since_switch", line_keys, hue, style, colors, styles)
        )
        ax.axvline(0, color="0.2", lw=0.8, ls=":")
        _log_axis(ax, metric)
        ax.set_ylabel(metric_label(metric))
        ax.set_xlabel("epochs since the switch to lr2")
    _legend(fig, handles)
    _suptitle(fig, title or "lr, then lr2: aligned at the switch")
    return fig


def plot_loss_vs_accuracy(
    curves: pd.DataFrame, seed_key: str = SEED_KEY, title: str | None = None, split: str = "test"
) -> Figure:
    """Train loss, `split` loss and `split` accuracy of one configuration: the lecture's slide, where
    the test loss bottoms out and climbs while the test accuracy still improves (dotted lines)."""
    loss, acc = f"{split}_loss", f"{split}_acc"
    _require(curves, ["epoch", "train_loss", loss, acc], "plot_loss_vs_accuracy")
    _check_replicates(curves, ["epoch"], seed_key, "plot_loss_vs_accuracy")
    stats = seed_aggregate(curves, ["train_loss", loss, acc], ["epoch"]).sort_values("epoch")
    fig, axes = _new_figure(1, 1, 6.4, 4.0)
    ax = axes[0, 0]
    acc_ax = ax.twinx()
    acc_ax.grid(False)
    lines = []
    for axis, metric, color in ((ax, "train_loss", "C0"), (ax, loss, "C3"), (acc_ax, acc, "C2")):
        (line,) = axis.plot(
            stats["epoch"], stats[f"{metric}_mean"], color=color, lw=1.8, label=metric_label(metric)
        )
        _band(axis, stats, "epoch", metric, color)
        lines.append(line)
    _log_axis(ax)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs: no tick at 1.2
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    acc_ax.set_ylabel(metric_label(acc))
    finite = stats.dropna(subset=[f"{loss}_mean", f"{acc}_mean"])
    if not finite.empty:
        loss_epoch = finite.loc[finite[f"{loss}_mean"].idxmin(), "epoch"]
        acc_epoch = finite.loc[finite[f"{acc}_mean"].idxmax(), "epoch"]
        marks = ((loss_epoch, "C3", 0, f"min {split} loss"), (acc_epoch, "C2", 2, f"best {split} acc"))
        for epoch, color, offset, what in marks:
            # One epoch for both: the dashes alternate red and green, so neither line hides the other.
            dash = (offset, (2, 2)) if loss_epoch == acc_epoch else ":"
            lines.append(ax.axvline(epoch, color=color, ls=dash, lw=1.2, label=f"{what}: epoch {epoch}"))
    _legend(fig, {line.get_label(): line for line in lines})  # below: clear of the title and the curves
    n = _n_label(stats[f"{acc}_n"])
    _suptitle(fig, f"{title} ({n})" if title else f"{split} loss vs {split} accuracy ({n})")
    return fig

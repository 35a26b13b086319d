"""The standard figures of a sweep, and write_report: a directory with them, the tables and report.md.

The figures that need a knob to vary are drawn "at the best configuration": every other varied
key is held at the value of the best-ranked configuration that sets the drawn key (a key that
configuration leaves unset, like schedule.lr2 of a constant schedule, stays free and its values
are drawn as separate thin lines).
"""

from __future__ import annotations

import datetime as dt
import itertools
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from analysis import distribution_plots, heatmap, lr_range, plots, rungs
from analysis.diagnostics import SPLIT_NAMES, counterpart
from analysis.knobs import format_knob, format_value, is_missing
from analysis.load import Sweep
from analysis.status import status_counts
from analysis.tables import (  # diagnostics_table and markdown_table are the notebook's API here too
    diagnostics_section,
    diagnostics_table,
    exportable,
    markdown_table,
    markdown_text,
    ranking_table,
    ranking_text,
    runs_table,
    study_section,
)
from sweeper.objective import RESULTS
from sweeper.sweep import counted

MAX_HUE_FIGURES = 6
MAX_HEATMAPS = 3
MAX_HEATMAP_VALUES = 12  # more distinct values than this make an unreadable heatmap axis
PREFERRED_HEATMAP = ("lr", "model.channels")  # the lecture's capacity x learning-rate grid
# The knobs the lecture's protocol turns, in the order their figures come: when more than
# MAX_HUE_FIGURES keys vary, these are drawn first (config order would put lr last).
FIGURE_PRIORITY = ("lr", "schedule.", "model.", "optim.")
# The per-knob curves: the lecture's train loss (log) with test accuracy, and the test loss whose
# rise, at a large lr or late in training, is the overfitting the accuracy hides.
CURVE_METRICS = ("train_loss", "test_loss", "test_acc")
# With a validation split: the curves selected on, and test accuracy alongside.
VAL_CURVE_METRICS = ("train_loss", "val_loss", "val_acc", "test_acc")


@dataclass
class Drawn:
    """One standard figure: drawn, or skipped with the reason."""

    name: str
    caption: str
    figure: Figure | None = None
    skipped: str | None = None
    notes: tuple[str, ...] = ()


def split_note(sweep: Sweep, metric: str) -> str:
    """How report.md and the CLI say what a ranking selects on: "the validation split; test
    alongside" (or the test split, where the runs hold nothing out)."""
    split = next((s for s in SPLIT_NAMES if f"_{s}_" in f"_{metric}_"), None)
    if split is None or sweep.split == "test":  # no split held out: test is all there is, as ever
        return ""
    note = f"the {SPLIT_NAMES[split]} split"
    if split == "val" and counterpart(metric, "test"):
        note += f"; `{counterpart(metric, 'test')}` alongside"
    elif split == "test" and sweep.split == "val":
        note += ": selecting on test, though the runs hold a validation split out"
    if split == "val" and metric in sweep.runs:  # runs of the sweep that hold nothing out
        results = sweep.runs[sweep.runs["status"].isin(RESULTS)]
        without = int(results[metric].isna().sum())
        if without:
            note += f"; {counted(without, 'run')} without a validation split not ranked"
    return note


def ranking_for(sweep: Sweep, metric: str | None = None) -> pd.DataFrame:
    """The ranking over the runs whose numbers are results (RESULTS: completed, and stopped by
    their own early stopping), or, when there are none, over every run at its last epoch, with a
    `runs` column saying how each configuration's runs ended (`interrupted at epoch 20`): a run
    interrupted or diverged midway is not ranked as if it had finished. Ranked on a validation
    metric, each configuration's mean of the test counterpart is a column alongside
    (`final_test_acc`), never ranked on. A `seeds` column (distinct seeds among a configuration's
    n runs) when some configuration repeats a seed: two sweeps combined that both ran seed 0 give
    n=2 for one sample."""
    metric = metric or sweep.selection_metric
    keys, runs = sweep.group_keys, sweep.runs
    ranking, statuses, at_last_epoch = sweep.rank(metric), list(RESULTS), False
    if ranking.empty:  # a damaged run's numbers are not supported by its files: never ranked
        statuses = [s for s in runs["status"].unique() if s != "damaged"]
        ranking, at_last_epoch = sweep.rank(metric, statuses=None), True
    if ranking.empty:
        return ranking
    pool = runs[runs["status"].isin(statuses)]

    def per_config(frame: pd.DataFrame, column: str, how, name: str | None = None) -> pd.DataFrame:
        if not keys:
            return ranking.assign(**{name or column: how(frame[column])})
        values = frame.groupby(keys, dropna=False, sort=False)[column].agg(how).rename(name or column)
        return ranking.merge(values.reset_index(), on=keys, how="left")

    if keys and sweep.seed_key in runs:
        seeded = per_config(pool, sweep.seed_key, lambda s: s.nunique(dropna=False), "seeds")
        ranking = seeded if (seeded["seeds"] < seeded["n"]).any() else ranking
    if at_last_epoch:
        ended = [f"{s} at epoch {e}" for s, e in zip(pool["status"], pool["epochs_done"], strict=True)]
        ranking = per_config(pool.assign(runs=ended), "runs", lambda e: "; ".join(dict.fromkeys(e)))
    test = counterpart(metric, "test") if "_val_" in f"_{metric}" else None
    if test is not None and test in runs:
        ranking = per_config(pool[pool[metric].notna()], test, lambda v: v.mean())
    return ranking


def best_config(sweep: Sweep, ranking: pd.DataFrame, require: Sequence[str] = ()) -> dict:
    """Group-key values of the best configuration that sets every key in `require`."""
    rows = _setting(ranking, require)
    if rows.empty:
        rows = ranking if not ranking.empty else sweep.runs
    if rows.empty:
        return {}
    first = rows.iloc[0]
    return {k: first[k] for k in sweep.group_keys if k in first}


def _setting(ranking: pd.DataFrame, keys: Sequence[str]) -> pd.DataFrame:
    """The ranking's configurations that set every key of `keys`."""
    for key in keys:
        ranking = ranking[ranking[key].notna()] if key in ranking else ranking.iloc[:0]
    return ranking


def slice_at(sweep: Sweep, best: dict, free: Sequence[str]) -> Sweep:
    """The runs agreeing with `best` on every set key that is not `free`."""
    return sweep.subset({k: v for k, v in best.items() if k not in free and not is_missing(v)})


def dependent_keys(runs: pd.DataFrame, key: str, keys: Sequence[str]) -> list[str]:
    """Keys that exist for some values of `key` only (schedule.lr2 exists for schedule.name=step).

    For every value of `key` the other key is set in all its runs or in none, and both happen.
    Holding such a key at one configuration's value would drop the other values of `key`.
    """
    rows = runs[runs[key].notna()]
    values = rows[key].map(format_value)
    out = []
    for other in keys:
        if other == key:
            continue
        share_set = rows[other].notna().groupby(values).mean()
        if share_set.isin([0.0, 1.0]).all() and share_set.nunique() == 2:
            out.append(other)
    return out


def figure_keys(sweep: Sweep) -> list[str]:
    """Group keys worth a figure of their own: at least two set values (not just set/unset);
    the protocol's knobs (FIGURE_PRIORITY) first, the rest in config order."""
    keys = [k for k in sweep.group_keys if sweep.runs[k].nunique(dropna=True) >= 2]

    def priority(key: str) -> int:
        return next(
            (i for i, p in enumerate(FIGURE_PRIORITY) if key == p or (p.endswith(".") and key.startswith(p))),
            len(FIGURE_PRIORITY),
        )

    return _without_aliases(sweep.runs, sorted(keys, key=priority))


def _without_aliases(runs: pd.DataFrame, keys: list[str]) -> list[str]:
    """`keys` less those that split the runs exactly as an earlier one does (schedule._target_
    follows schedule.name): the same figure twice. A `_target_` gives way to a named key."""
    kept, seen = [], set()
    for key in sorted(keys, key=lambda k: k.endswith("._target_")):  # stable: order kept otherwise
        partition = frozenset(
            frozenset(group) for group in runs.groupby(runs[key].map(format_value)).groups.values()
        )
        if partition not in seen:
            seen.add(partition)
            kept.append(key)
    return [k for k in keys if k in kept]


def best_slice(
    sweep: Sweep, ranking: pd.DataFrame, free: Sequence[str], varying: Sequence[str]
) -> tuple[dict, Sweep]:
    """The best-ranked configuration at which every `varying` key still takes two or more values
    once the keys not `free` are held at its values (a sweep that is no full grid may need a
    lower-ranked one); the best configuration when there is none."""
    for row in _setting(ranking, varying).to_dict("records"):
        config = {k: row[k] for k in sweep.group_keys if k in row}
        part = slice_at(sweep, config, free)
        if all(part.runs[k].nunique() >= 2 for k in varying):
            return config, part
    config = best_config(sweep, ranking, varying)
    return config, slice_at(sweep, config, free)


def describe(config: dict, skip: Sequence[str] = ()) -> str:
    """The configuration's keys, less `skip`: "" when `skip` leaves none (no other key varies)."""
    shown = [f"{k}={format_knob(k, v)}" for k, v in config.items() if k not in skip and not is_missing(v)]
    return ", ".join(shown) or ("" if skip else "the only configuration")


def _others(where: str) -> str:
    return f"; other keys at {where}" if where else ""


def _paren(where: str) -> str:
    return f" ({where})" if where else ""


def _caught(fn) -> tuple[object, tuple[str, ...]]:
    """fn()'s result, and the warnings it gave (a damaged file read, replicates mixed) as notes."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn()
    return result, tuple(dict.fromkeys(str(w.message) for w in caught))


def _draw(name: str, caption: str, draw, read: tuple[str, ...] = ()) -> Drawn:
    """Run one figure function; NothingToPlot becomes a skip, warnings become notes. `read`: the
    notes of reading its data, named in the skip when the figure has nothing left to draw."""
    try:
        figure, notes = _caught(draw)
    except plots.NothingToPlot as err:
        return Drawn(name, caption, skipped=f"{err} ({'; '.join(read)})" if read else str(err))
    return Drawn(name, caption, figure, notes=tuple(dict.fromkeys(read + notes)))


def _heatmap_pairs(sweep: Sweep) -> list[tuple[str, str]]:
    keys = [
        k
        for k in figure_keys(sweep)
        if sweep.runs[k].nunique(dropna=True) <= MAX_HEATMAP_VALUES
        and not dependent_keys(sweep.runs, k, sweep.group_keys)
    ]  # cells would mix configurations
    pairs = list(itertools.combinations(keys, 2))
    preferred = [p for p in pairs if set(p) == set(PREFERRED_HEATMAP)]
    pairs = preferred + [p for p in pairs if p not in preferred]
    # x = the faster-varying knob reads best across; keep lr on x when it is there.
    return [(a, b) if a == "lr" or b != "lr" else (b, a) for a, b in pairs][:MAX_HEATMAPS]


def standard_figures(sweep: Sweep, metric: str | None = None) -> Iterator[Drawn]:
    """The lecture's figures for this sweep, one at a time (so a caller can save and drop each).
    `metric` (default: Sweep.selection_metric) picks the best configuration they are drawn at."""
    metric = metric or sweep.selection_metric
    split = sweep.split
    metrics = VAL_CURVE_METRICS if split == "val" else CURVE_METRICS
    held = SPLIT_NAMES[split]
    curve_text = (
        "Train loss, validation loss (both log), validation and test accuracy"
        if split == "val"
        else "Train loss, test loss (both log) and test accuracy"
    )
    ranking = ranking_for(sweep, metric)
    keys = sweep.group_keys
    found, read = _caught(lambda: lr_range.suggestions(sweep.runs))  # a damaged steps.jsonl line: a note
    if found:  # runs with trainer.log_steps (experiment=lr_range): their range test comes first
        yield _draw(
            "lr_range",
            "LR range test: the training loss of each step against its lr (log); dots: each step, "
            "line: the smoothed loss, up to where it blows up. "
            + "; ".join(lr_range.describe(run, s) for run, _, s in found)
            + f". The rule: {lr_range.RULE}.",
            lambda: lr_range.plot_lr_range(found),
            read,
        )
    halving = rungs.found(sweep.runs)  # hydra/sweeper=halving: its rungs (analysis/rungs.py)
    if halving:
        yield _draw("rungs", rungs.caption(halving), lambda: rungs.plot_rungs(halving, sweep.curves))
    hue_keys = figure_keys(sweep)[:MAX_HUE_FIGURES]
    left_out = figure_keys(sweep)[MAX_HUE_FIGURES:]
    if left_out:
        yield Drawn(
            "curves_by_more_keys",
            "",
            skipped=f"curves are drawn for {MAX_HUE_FIGURES} varied keys at most; not for "
            f"{', '.join(left_out)} (analysis.plot_curves draws any)",
        )
    for key in hue_keys:
        free = [key, *dependent_keys(sweep.runs, key, keys)]
        best, part = best_slice(sweep, ranking, free, [key])
        where = describe(best, free)
        if part.runs[key].nunique(dropna=False) < 2:
            yield Drawn(f"curves_by_{key}", "", skipped=f"one value of {key}{_others(where)}")
            continue
        yield _draw(
            f"curves_by_{key}",
            f"{curve_text} by `{key}`{_others(where)}. Lines: the mean over seeds; bands: the seeds' range.",
            lambda part=part, key=key, where=where: plots.plot_curves(
                _with_status(part),
                metrics=metrics,
                hue=key,
                keys=keys,
                seed_key=sweep.seed_key,
                title=f"by {key}{_paren(where)}",
            ),
        )
    if not hue_keys:
        yield _draw(
            "curves",
            f"{curve_text}.",
            lambda: plots.plot_curves(_with_status(sweep), metrics=metrics, seed_key=sweep.seed_key),
        )

    yield _lr_switch_figure(sweep, ranking)

    best = best_config(sweep, ranking)
    top = slice_at(sweep, best, [])
    where = describe(best)
    yield _draw(
        "loss_vs_accuracy",
        f"{held.capitalize()} loss, train loss and {held} accuracy of the best configuration ({where}); "
        "bands: the seeds' range.",
        lambda: plots.plot_loss_vs_accuracy(top.curves, seed_key=sweep.seed_key, title=where, split=split),
    )
    yield _distributions_figure("loss_distributions", top, "the best configuration", where)
    # The lecture's view of overfitting: the best configuration may not overfit (a small lr), so
    # the one whose test loss ends furthest above its train loss is drawn too.
    gaps = ranking_for(sweep, "final_gen_gap_loss") if "final_gen_gap_loss" in sweep.runs else pd.DataFrame()
    if not gaps.empty and gaps["mean"].iloc[-1] > 0:
        most = best_config(sweep, gaps.iloc[::-1])
        if describe(most) != where:
            yield _distributions_figure(
                "loss_distributions_most_overfit",
                slice_at(sweep, most, []),
                f"the configuration that overfits most (final {held} - train loss {gaps['mean'].iloc[-1]:.3g})",
                describe(most),
            )

    pairs = _heatmap_pairs(sweep)
    for x, y in pairs:
        best_xy, part = best_slice(sweep, ranking, [x, y], [x, y])
        where = describe(best_xy, [x, y])
        if min(part.runs[x].nunique(), part.runs[y].nunique()) < 2:
            yield Drawn(f"heatmap_{y}_by_{x}", "", skipped=f"one value of {x} or {y}{_others(where)}")
            continue
        yield _draw(
            f"heatmap_{y}_by_{x}",
            f"Mean `{metric}` over `{y}` x `{x}`{_others(where)}.",
            lambda part=part, x=x, y=y, where=where: heatmap.plot_heatmap(
                part.runs, x, y, metric, seed_key=sweep.seed_key, title=f"{metric}{_paren(where)}"
            ),
        )
    if not pairs:
        yield Drawn(
            "heatmap",
            f"Mean `{metric}` over two varied keys.",
            skipped="needs two varied keys (besides the seed)",
        )


def _distributions_figure(name: str, part: Sweep, what: str, where: str) -> Drawn:
    dists, read = _caught(part.distributions)  # a damaged losses.npz: a note
    kept = sorted(dists["epoch"].unique().tolist())
    shown = distribution_plots.panel_epochs(kept, distribution_plots.MAX_DISTRIBUTION_PANELS)
    left_out = [e for e in kept if e not in shown]
    epochs = f"epochs {', '.join(map(str, shown))}" if kept else "the kept epochs"
    if left_out:
        epochs += f" ({len(shown)} of the {len(kept)} kept: {', '.join(map(str, left_out))} left out)"
    return _draw(
        name,
        f"Per-sample loss distributions, train vs test, at {epochs}, of {what} ({where}); "
        "'0': losses exactly 0 in float32 (below its resolution, about 6e-8); under 1e-6, where a float32 "
        "loss takes few values, each bin shows the mean of those bins.",
        lambda: distribution_plots.plot_loss_distributions(dists, title=where),
        read,
    )


def _with_status(sweep: Sweep) -> pd.DataFrame:
    """The curves with each run's status, so a legend says which lines hold runs that failed,
    diverged or are still running (their curves stop early)."""
    return sweep.curves.assign(status=sweep.curves["run"].map(sweep.runs.set_index("run")["status"]))


def _lr_switch_figure(sweep: Sweep, ranking: pd.DataFrame) -> Drawn:
    caption = (
        "Step schedule: `lr` for `schedule.switch_epoch` epochs, then `schedule.lr2`, aligned at the switch."
    )
    runs = sweep.runs
    if "schedule.name" not in runs or not (runs["schedule.name"] == "step").any():
        return Drawn("lr_switch", caption, skipped="no runs with schedule.name=step")
    step_ranking = ranking[ranking["schedule.name"] == "step"] if "schedule.name" in ranking else ranking
    best = best_config(sweep, step_ranking if not step_ranking.empty else ranking)
    free = [k for k in sweep.group_keys if k.startswith("schedule.")]
    part = slice_at(sweep, best, free)
    where = describe(best, free)
    # plot_lr_switch draws the slice's runs of another schedule in grey, when it has some.
    reference = (part.runs["schedule.name"] != "step").any()
    caption += f" Other keys at {where}." if where else ""
    caption += " Grey: the same runs without a switch." if reference else ""
    return _draw(
        "lr_switch",
        caption,
        lambda: plots.plot_lr_switch(
            part.curves,
            part.runs,
            metrics=("train_loss", f"{sweep.split}_acc"),
            keys=sweep.group_keys,
            seed_key=sweep.seed_key,
            title=f"lr, then lr2{_paren(where)}",
        ),
    )


def write_report(
    sweep: Sweep, out_dir: str | Path, metric: str | None = None, sources: Sequence[str | Path] = ()
) -> Path:
    """Write PNG figures, tables (CSV + parquet) and report.md into `out_dir`; returns report.md.
    `metric` ranks and picks the best configuration (default: Sweep.selection_metric)."""
    metric = metric or sweep.selection_metric
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    keys = sweep.group_keys
    ranking = ranking_for(sweep, metric)
    diag = diagnostics_table(sweep)
    figures = []
    for drawn in standard_figures(sweep, metric):
        if drawn.figure is not None:
            drawn.figure.savefig(out / f"{drawn.name}.png", dpi=110)
            drawn.figure = None  # free it before drawing the next one
        figures.append(drawn)
    # After the figures: a damaged losses.npz is found when its histograms are read.
    problems = pd.DataFrame(sweep.problems, columns=["run_dir", "reason"])
    for name, frame in (
        ("runs", sweep.runs),
        ("curves", sweep.curves),
        ("ranking", ranking),
        ("diagnostics", diag),
        ("problems", problems),
    ):
        frame = exportable(frame)
        frame.to_csv(out / f"{name}.csv", index=False)
        frame.to_parquet(out / f"{name}.parquet", index=False)

    # A job listed in sweep.json with no run dir is not a run: said apart, not counted among them.
    n_missing = sum(reason.startswith("missing:") for _, reason in sweep.problems)
    missing = f"; {counted(n_missing, 'job')} not started" if n_missing else ""
    md = ["# Sweep report", ""]
    md += [
        f"- sources: {', '.join(f'`{s}`' for s in sources) or '(API)'}",
        f"- written: {dt.datetime.now().isoformat(timespec='seconds')}",
        f"- {counted(len(sweep.runs), 'run')}: {status_counts(sweep.runs['status'])}{missing}",
        f"- varied keys: {', '.join(f'`{k}`' for k in sweep.varied) or 'none'}; "
        f"{counted(len(ranking), 'configuration')} ranked by `{metric}`"
        + (f" ({split_note(sweep, metric)})" if split_note(sweep, metric) else ""),
        "",
    ]
    md += ["## Runs", "", markdown_table(runs_table(sweep), more=" in runs.csv")]
    md += ["## Problems", "", markdown_table(problems, more=" in problems.csv")]
    md += [
        f"## Ranking by `{metric}`",
        "",
        ranking_text(ranking),
        "",
        markdown_table(ranking_table(ranking, keys), more=" in ranking.csv"),
    ]
    md += rungs.section(rungs.found(sweep.runs), sweep.runs, keys)  # how far each configuration ran
    md += diagnostics_section(sweep, diag, keys)
    md += study_section(sweep)
    md += ["## Figures", ""]
    for drawn in figures:
        if drawn.skipped:
            md += [f"- `{drawn.name}` skipped: {markdown_text(drawn.skipped)}"]
    md.append("")
    for drawn in figures:
        if not drawn.skipped:
            image = f"![{drawn.name}]({drawn.name}.png)"
            md += [f"### {drawn.name}", "", markdown_text(drawn.caption), "", image, ""]
            md += [f"> note: {markdown_text(note)}" for note in drawn.notes] + ([""] if drawn.notes else [])
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path

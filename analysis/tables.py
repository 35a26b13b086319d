"""The report's tables (runs, ranking, diagnostics, an Optuna study's answer) and their markdown;
on the validation split where the runs hold one out (Sweep.split), with test alongside.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from analysis.diagnostics import (
    OVERFIT_GAP,
    SPLIT_NAMES,
    UNDERFIT_TRAIN_ACC,
    capacity_verdict,
    fit_state,
    loss_acc_decoupling,
    seed_aggregate,
)
from analysis.knobs import format_knob, format_value, is_missing
from analysis.load import Sweep
from sweeper.objective import RESULTS
from sweeper.sweep import counted

MAX_TABLE_ROWS = 100
CAPACITY_CONTEXT = ("data.train_size",)  # the subset a capacity check is run on (null = all)


def markdown_text(text: str) -> str:
    """Text from a record shown as text in report.md: HTML's special characters and `$` escaped,
    so a config value or label (`+tag='<img src=x onerror=...>'`) never becomes markup or math."""
    return html.escape(str(text), quote=False).replace("$", "\\$")  # `$...$` is math on GitHub


def _cell(value, column: str = "") -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if is_missing(value):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return markdown_text(format_knob(str(column), value)).replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, max_rows: int = MAX_TABLE_ROWS, more: str = "") -> str:
    """A GitHub-flavoured markdown table; rows past `max_rows` are counted, not shown. Cells are
    text, escaped so that a config value never becomes markup; a `_target_` named by its class."""
    if frame.empty:
        return "_none_\n"
    shown = frame.head(max_rows)
    columns = [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += [
        "| " + " | ".join(_cell(v, c) for v, c in zip(row, columns, strict=True)) + " |"
        for row in shown.itertuples(index=False)
    ]
    if len(frame) > max_rows:
        lines.append(f"\n_{counted(len(frame) - max_rows, 'more row')}{more}_")
    return "\n".join(lines) + "\n"


def exportable(frame: pd.DataFrame) -> pd.DataFrame:
    """Tuples (list-valued knobs) as written on the command line, so CSV and parquet can hold them."""
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(lambda v: None if is_missing(v) else format_value(v)).astype("str")
    return out


def diagnostics_table(sweep: Sweep) -> pd.DataFrame:
    """Per run: the loss/accuracy decoupling and the capacity verdict, next to its config; on the
    validation split where the runs hold one out (the final test accuracy then alongside)."""
    context = [c for c in CAPACITY_CONTEXT if c in sweep.runs and c not in sweep.group_keys]
    held = f"final_{sweep.split}_acc"
    finals = [c for c in ("final_train_acc", held) if c in sweep.runs]
    shown = finals + (["final_test_acc"] if sweep.split == "val" and "final_test_acc" in sweep.runs else [])
    base = sweep.runs[["run", "status", *sweep.group_keys, *context, *shown]].set_index("run")
    if sweep.curves.empty:
        return base.reset_index()
    decoupling = loss_acc_decoupling(sweep.curves, split=sweep.split)
    capacity = capacity_verdict(sweep.curves).drop(columns=["epochs_done"])
    table = base.join(decoupling).join(capacity)
    for flag in ("decoupled", "fits"):  # runs without a logged epoch have neither
        table[flag] = table[flag].fillna(False).astype(bool)
    if finals == ["final_train_acc", held]:
        table["state"] = [fit_state(a, b) for a, b in zip(table[finals[0]], table[finals[1]], strict=True)]
    return table.reset_index()


def ranking_table(ranking: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    # The columns ranking_for adds where they apply: repeated seeds, the test split's mean
    # alongside a validation ranking, how the runs ended when none completed.
    seeds, ended = [c for c in ["seeds"] if c in ranking], [c for c in ["runs"] if c in ranking]
    beside = [c for c in ranking.columns if c.startswith(("final_", "best_", "min_"))]
    columns = ["rank", *keys, "n", *seeds, "mean", "std", "noise", "ci_lo", "ci_hi", *beside, *ended]
    table = ranking[columns].copy()
    table["rank"] = [f"{r}=" if t else str(r) for r, t in zip(ranking["rank"], ranking["tied"], strict=True)]
    return table


def _capacity_by_config(diag: pd.DataFrame, keys: list[str], split: str = "test") -> pd.DataFrame:
    if "fits" not in diag:
        return pd.DataFrame()
    held = f"final_{split}_acc"
    keys = keys + [c for c in CAPACITY_CONTEXT if c in diag and c not in keys]
    grouped = diag.groupby(keys, dropna=False, sort=False) if keys else diag.groupby(lambda _: "all")
    table = grouped.agg(
        runs=("run", "size"),
        fit=("fits", "sum"),
        median_fit_epoch=("fit_epoch", "median"),
        min_train_loss=("min_train_loss", "min"),
        best_train_acc=("best_train_acc", "max"),
        **{c: (c, "mean") for c in dict.fromkeys(("final_train_acc", held, "final_test_acc")) if c in diag},
    )
    table["fit"] = [f"{int(f)}/{n}" for f, n in zip(table["fit"], table["runs"], strict=True)]
    if {"final_train_acc", held} <= set(table.columns):
        table["state"] = [fit_state(a, b) for a, b in zip(table["final_train_acc"], table[held], strict=True)]
    return table.drop(columns="runs").reset_index() if keys else table.drop(columns="runs")


OPTUNA_RESULTS = "optimization_results.yaml"  # hydra-optuna-sweeper's answer, in the sweep dir


def study_section(sweep: Sweep) -> list[str]:
    """An Optuna study's own answer (hydra/sweeper=optuna), beside the ranking above: Optuna's best
    trial is on trainer.objective, one trial each, where the ranking groups trials by config."""
    import yaml

    found = []
    for sweep_dir in sweep.runs["sweep_dir"].dropna().unique():
        try:
            results = yaml.safe_load((Path(sweep_dir) / OPTUNA_RESULTS).read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(results, dict):
            found.append((str(sweep_dir), results))
    if not found:
        return []
    objectives = (
        sweep.runs["trainer.objective"].dropna().unique() if "trainer.objective" in sweep.runs else []
    )
    md = [
        "## Optuna study",
        "",
        f"The sweeper's best trial on `trainer.objective` ({', '.join(f'`{o}`' for o in objectives) or 'unset'}), "
        f"from `{OPTUNA_RESULTS}`:",
        "",
    ]
    for sweep_dir, results in found:
        # One objective: its best trial; several: the Pareto front's trials.
        if "best_value" in results:
            trials = [(f"best value {results['best_value']:.4g}", results.get("best_params"))]
        else:
            trials = [(f"values {t.get('values')}", t.get("params")) for t in results.get("solutions") or []]
        for what, params in trials:
            shown = ", ".join(f"{k}={format_value(v)}" for k, v in (params or {}).items())
            md.append(f"- `{markdown_text(sweep_dir)}`: {what} at {markdown_text(shown)}")
    return [*md, ""]


def ranking_text(ranking: pd.DataFrame) -> str:
    text = (
        "Mean over seeds with a 95% t-interval. `1=`: tied, i.e. the means differ by less than the "
        "seed-to-seed std (`noise`: the tie threshold)"
    )
    if (ranking["n"] == 1).any():  # rank_configs always gives n
        accuracy = ranking["noise"].where(ranking["std"].isna()).dropna().gt(0).any()
        text += (
            ", or, for a configuration of one seed, than its accuracy's binomial standard error over "
            "the images it was measured on (no seed std to measure)"
            if accuracy
            else "; a configuration of one seed has no std, so its rank cannot tell a real difference "
            "from noise"
        )
    text += "."
    if "seeds" in ranking:
        text += (
            " **Repeated seeds**: where `seeds` < `n`, runs of one configuration share a seed (sweeps "
            "combined that ran it twice); they are not independent samples, so the std and interval "
            "understate the noise."
        )
    if "runs" in ranking:
        text += (
            " **No run completed**: configurations are ranked at their runs' last logged epoch, and "
            "`runs` says how each ended."
        )
    return text


def runs_table(sweep: Sweep) -> pd.DataFrame:
    val = ["final_val_acc", "best_val_acc", "final_val_loss", "min_val_loss", "min_val_loss_epoch"]
    test = [c.replace("_val_", "_test_") for c in val]
    # Every other metric of trainer.metrics (top5, ...) at the last epoch, on the held-out splits.
    extra = [
        c
        for c in sweep.runs.columns
        if c.startswith(("final_val_", "final_test_")) and c.rsplit("_", 1)[-1] not in ("acc", "loss")
    ]
    columns = ["run", "status", *sweep.varied, "epochs_done", *(val if sweep.split == "val" else []), *test]
    columns += [*extra, "final_gen_gap_acc", "slurm_job_id", "error"]
    table = sweep.runs[[c for c in columns if c in sweep.runs]]
    return table.dropna(axis=1, how="all")


def diagnostics_section(sweep: Sweep, diag: pd.DataFrame, keys: list[str]) -> list[str]:
    split = sweep.split
    held = SPLIT_NAMES[split]
    md = ["## Diagnostics", ""]
    if split == "val":
        md += ["On the validation split, which the runs hold out of their training set; test alongside.", ""]
    if "decoupled" not in diag:
        return md + ["_no epochs logged yet_", ""]
    flagged = diag[diag["decoupled"]]
    md += [
        f"### {held.capitalize()} loss rises while {held} accuracy still improves",
        "",
        f"{len(flagged)} of {counted(len(diag), 'run')}: {held} accuracy peaks after the {held}-loss minimum "
        f"(gain >= 0.5 points after it, {held} loss >= 2% above its minimum at the accuracy peak).",
        "",
    ]
    columns = ["run", *keys, f"min_{split}_loss_epoch", f"best_{split}_acc_epoch"]
    columns += ["acc_gain_after_min_loss", "loss_rise_at_best_acc"]
    md += [markdown_table(flagged[columns], max_rows=30, more=" in diagnostics.csv")]
    md += [
        "### Capacity: does the model fit its training set?",
        "",
        "`fit`: runs reaching train accuracy >= 99.9%, i.e. memorising their training set (the check "
        "on a small subset: a net that cannot is too small). `state`, on the mean final accuracies "
        f"(the check on the full set: the lecture's capacity neither over- nor underfits): underfits "
        f"below {UNDERFIT_TRAIN_ACC:.0%} train accuracy, overfits when train accuracy exceeds {held} "
        f"accuracy by more than {100 * OVERFIT_GAP:.0f} points.",
        "",
        markdown_table(_capacity_by_config(diag, keys, split), more=" in diagnostics.csv"),
    ]
    gaps = [c for c in ("final_gen_gap_loss", "final_gen_gap_acc") if c in sweep.runs]
    if gaps:
        done = sweep.runs[sweep.runs["status"].isin(RESULTS)]
        stats = seed_aggregate(done, gaps, keys)
        shown = stats[[*keys, *[f"{g}_mean" for g in gaps], f"{gaps[0]}_n"]]
        md += [
            "### Generalisation gap at the last epoch (completed and stopped_early runs)",
            "",
            f"{held} - train loss, train - {held} accuracy; mean over seeds.",
            "",
            markdown_table(shown.rename(columns={f"{gaps[0]}_n": "n"}), more=""),
        ]
    return md

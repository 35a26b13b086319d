"""Analysis of sweeper run records: tidy tables, diagnostics, the lecture's figures, reports.

    from analysis import load_sweep, plot_curves
    sweep = load_sweep("outputs/multirun/2026-11-26/23-59-00")
    plot_curves(sweep.curves, hue="lr")

    python -m analysis SWEEP_DIR [--out DIR]     # report.md, PNGs, CSV/parquet tables
    python -m analysis status SWEEP_DIR          # where the jobs stand
    python -m analysis.reproduction ROOT [--out docs]   # the lecture's claims against ROOT/lecture_*

The input format is docs/run-record.md; nothing else is read. The plotting names are imported
on first use, so loading and `status` do not pay for matplotlib and seaborn.
"""

import importlib

from analysis.diagnostics import (
    add_gaps,
    capacity_verdict,
    loss_acc_decoupling,
    rank_configs,
    reduce_curves,
    seed_aggregate,
    t_critical,
)
from analysis.discovery import NoRunsFound
from analysis.knobs import flatten_config, format_value, varied_keys
from analysis.load import Sweep, load_sweep, select_rows
from analysis.status import format_job_table, job_table

_LAZY = {
    "NothingToPlot": "analysis.plots",
    "plot_curves": "analysis.plots",
    "plot_heatmap": "analysis.heatmap",
    "plot_loss_distributions": "analysis.distribution_plots",
    "plot_loss_vs_accuracy": "analysis.plots",
    "plot_lr_switch": "analysis.plots",
    "standard_figures": "analysis.report",
    "write_report": "analysis.report",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'analysis' has no attribute {name!r}")


__all__ = [
    "NoRunsFound",
    "Sweep",
    "add_gaps",
    "capacity_verdict",
    "flatten_config",
    "format_job_table",
    "format_value",
    "job_table",
    "load_sweep",
    "loss_acc_decoupling",
    "rank_configs",
    "reduce_curves",
    "seed_aggregate",
    "select_rows",
    "t_critical",
    "varied_keys",
    *_LAZY,
]

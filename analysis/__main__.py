"""`python -m analysis SWEEP_DIR... [--out DIR] [--metric M]`: report.md, figures and tables;
`python -m analysis status SWEEP_DIR... [--all]`: the job table. Bad input (no such dir, no runs,
unknown metric, unwritable --out) prints one line on stderr and exits with 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from analysis.discovery import NoRunsFound
from analysis.load import load_sweep
from analysis.status import format_job_table, job_table, status_counts
from sweeper.sweep import counted


class UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        raise UsageError(f"{message} (see --help)")


def _arguments(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if missing := [p for p in args.sweep_dirs if not Path(p).is_dir()]:
        raise UsageError(f"{missing[0]}: no such directory")
    return args


def run_status(argv: list[str]) -> int:
    parser = _Parser(prog="python -m analysis status", description="Status of a sweep's jobs.")
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR")
    parser.add_argument(
        "--all", action="store_true", help="list every job even if it does not fit the screen"
    )
    args = _arguments(parser, argv)
    table = job_table(args.sweep_dirs)
    if table.empty:
        raise UsageError(f"no runs or sweep jobs under {', '.join(args.sweep_dirs)}")
    print(format_job_table(table, show_all=args.all))
    return 0


def run_report(argv: list[str]) -> int:
    parser = _Parser(
        prog="python -m analysis",
        description="Figures, tables and report.md for sweeps. "
        "Use `python -m analysis status SWEEP_DIR` for the job table.",
    )
    parser.add_argument("sweep_dirs", nargs="+", metavar="SWEEP_DIR", help="sweep dir(s) or run dir(s)")
    parser.add_argument(
        "--out", type=Path, help="output dir (default: SWEEP_DIR/report/; required for several SWEEP_DIRs)"
    )
    parser.add_argument(
        "--metric",
        help="run column to rank by (default: final_val_acc where the runs hold a validation split "
        "out, else final_test_acc)",
    )
    args = _arguments(parser, argv)
    if len(args.sweep_dirs) > 1 and args.out is None:
        raise UsageError(
            f"{len(args.sweep_dirs)} sweep dirs: name the combined report's dir with --out "
            "(the default, SWEEP_DIR/report/, holds one sweep's own report)"
        )
    try:
        sweep = load_sweep(args.sweep_dirs)
    except NoRunsFound as err:
        raise UsageError(str(err)) from None
    if sweep.runs.empty:
        first = sweep.problems[0] if sweep.problems else ("", "")
        raise UsageError(f"no readable run under {', '.join(args.sweep_dirs)} ({first[0]}: {first[1]})")
    choices = [
        c
        for c in sweep.runs.columns
        if (c.startswith(("final_", "best_", "min_")) and not c.endswith("_epoch")) or c == "time_s"
    ]
    metric = args.metric or sweep.selection_metric
    if metric not in choices:
        raise UsageError(f"unknown metric {metric!r}; choose one of {', '.join(choices)}")
    out = args.out or Path(args.sweep_dirs[0]) / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"cannot write to {out}: {err.strerror}") from None
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window (imported here: `status` needs no plotting)
    from analysis import lr_range
    from analysis.report import split_note, write_report

    path = write_report(sweep, out, metric, sources=args.sweep_dirs)
    print(
        f"{counted(len(sweep.runs), 'run')} ({status_counts(sweep.runs['status'])}), "
        f"{counted(len(sweep.problems), 'problem')}"
    )
    note = split_note(sweep, metric)
    print(f"ranked by {metric}" + (f" ({note.replace('`', '')})" if note else ""))
    for run, _, suggestion in lr_range.suggestions(sweep.runs):  # an LR range test's answer, at once
        print(f"LR range test, {lr_range.describe(run, suggestion)}")
    print(f"report: {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv and argv[0] == "status":
            return run_status(argv[1:])
        return run_report(argv)
    except UsageError as err:
        print(f"analysis: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `... | head`: the reader has what it wanted; no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush must not fail too
        return 1


if __name__ == "__main__":
    sys.exit(main())

"""Does the lecture reproduce? One report over the lecture's experiments, claim by claim.

    python -m analysis.reproduction ROOT [--out docs]

ROOT holds sweep dirs named after conf/experiment/lecture_*.yaml (`ROOT/lecture_lr`, ...; any
subset). Writes OUT/reproduction.md and OUT/figures/claim*.png. Verdicts: supported (every check
passes), partly supported, not supported, "partial: N/E epochs" (a run the claim needs has not
ended) or not run. The claims are data: claims.yaml holds each one's runs, thresholds, checks and
wording; claims.py its statistics and figure; render.py the one renderer. Only the run records are
read (docs/run-record.md), through analysis.load.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from analysis.reproduction.claims import Claim, Context, evaluate
from analysis.reproduction.render import write_reproduction
from analysis.reproduction.runs import load_experiments, read_conf

__all__ = ["Claim", "Context", "evaluate", "load_experiments", "main", "read_conf", "write_reproduction"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m analysis.reproduction",
        description="The lecture's claims checked against the runs under ROOT "
        "(sweep dirs named after the lecture_* experiments).",
    )
    parser.add_argument("root", metavar="ROOT", help="dir holding lecture_lr/, lecture_lr2/, ... sweep dirs")
    parser.add_argument(
        "--out", default="docs", help="where reproduction.md and figures/ go (default: %(default)s)"
    )
    parser.add_argument(
        "--note", help="how the runs were made, for the Machine section (load, threads, nice)"
    )
    args = parser.parse_args(argv)
    experiments, root, problem = read_conf()["experiments"], Path(args.root), None
    if not root.is_dir():
        problem = f"{args.root}: no such directory"
    elif not any((root / name).is_dir() for name in experiments):
        # A sweep dir given for ROOT, or a typo: a report of seven "not run" claims helps nobody.
        expected = ", ".join(n + "/" for n in experiments)
        problem = f"{args.root}: no lecture sweep under it (expected one of {expected})"
    else:
        try:
            Path(args.out).mkdir(parents=True, exist_ok=True)
        except OSError as err:
            problem = f"cannot write to {args.out}: {err.strerror}"
    if problem:
        print(f"analysis.reproduction: error: {problem}", file=sys.stderr)
        return 2
    import matplotlib

    matplotlib.use("Agg")
    # ROOT as typed, never resolved: the report names the sweep dirs relative to it.
    path = write_reproduction(args.root, args.out, shown_root=args.root, note=args.note)
    print(f"reproduction report: {path}")
    return 0

"""The report: every claim by one generic section renderer, plus the machine, the experiments, the
wall times, the differences from the lecture and how to rerun (wording: claims.yaml's `report`)."""

from __future__ import annotations

import datetime as dt
import math
import os
import shlex
import socket
from pathlib import Path

import pandas as pd

from analysis.knobs import RECORD_KEEPING, format_value, is_missing
from analysis.reproduction.claims import Claim, Context, base_fields, draw_figure, evaluate
from analysis.reproduction.runs import (
    Experiment,
    Selection,
    grid_jobs,
    load_experiments,
    pick_source,
    read_conf,
)
from analysis.reproduction.text import fill, frame_table, minutes, table
from sweeper.objective import RESULTS

MARKS = {True: "yes", False: "**no**", None: "n/a"}
# Overrides that change where or how a run is done, not what it computes.
NOT_PROTOCOL = ("experiment", "data.root", *RECORD_KEEPING, "trainer.device", "trainer.eval_batch_size",
                "trainer.cuda_graph", "trainer.channels_last")  # fmt: skip


def data_root(exps: dict[str, Experiment]) -> tuple[str | None, str | None]:
    """(data.name, data.root) of the first run that records them."""
    for exp in exps.values():
        if exp.sweep is not None and "data.name" in exp.sweep.runs:
            row = exp.sweep.runs.iloc[0]
            return row.get("data.name"), row.get("data.root")
    return None, None


def command(exp: Experiment, data: str) -> str:
    return f"SWEEPER_DATA={shlex.quote(data)} python -m sweeper -m experiment={exp.name} hydra.sweep.dir={shlex.quote(exp.shown)}"


def _state(exp: Experiment) -> str:
    if not exp.present:
        return "not run"
    counts = exp.sweep.runs["status"].value_counts().items() if exp.sweep is not None else []
    return ", ".join(
        [f"{n} {s}" for s, n in counts] + ([f"{len(exp.missing)} not started"] if exp.missing else [])
    )


def _machine(exps: dict[str, Experiment], note: str | None) -> list[str]:
    frames = [exp.sweep.runs for exp in exps.values() if exp.sweep is not None]
    if not frames:
        return ["_no runs_", ""]
    runs = pd.concat(frames, ignore_index=True)

    def values(column: str) -> list[str]:
        return sorted({str(v) for v in runs[column].dropna()}) if column in runs else []

    hosts, here = values("host"), socket.gethostname()
    recorded = runs.dropna(subset=["cpu_count"]) if "cpu_count" in runs else runs.iloc[:0]
    if not recorded.empty:
        threads = {
            f"{int(r.cpu_count)} ({int(r.torch_threads)} torch threads)" for r in recorded.itertuples()
        }
        cpus = ", ".join(sorted(threads)) + " (summary.json)"
    elif hosts == [here]:
        cpus = f"{os.cpu_count()} (os.cpu_count() on `{here}`, where this report was written; the run record does not hold it)"
    else:
        cpus = "not recorded in the run record"
    name, root = data_root(exps)
    torch, python = (", ".join(values(f"versions.{k}")) or "not recorded" for k in ("torch", "python"))
    return [
        f"- host: {', '.join(f'`{h}`' for h in hosts) or 'not recorded'}",
        f"- CPU cores: {cpus}",
        f"- device: {', '.join(values('device')) or 'not recorded (no run has finished)'}",
        f"- torch {torch}; python {python} (summary.json `versions`)",
        f"- data: `{name}` from `{root}`" if root is not None else f"- data: `{name}` (generated, no files)",
        *([f"- conditions: {note}"] if note else []),
        "",
    ]  # fmt: skip


def _wall_times(exps: dict[str, Experiment], words: dict) -> list[str]:
    rows = []
    for exp in (e for e in exps.values() if e.sweep is not None):
        sel, target = Selection(exp, {}, exp.sweep, []), exp.epochs_target()
        for row in exp.sweep.runs.itertuples():
            seconds, done = sel.wall_time(row.run), int(row.epochs_done)
            rows.append([
                exp.name, sel.label(row.run), row.status, f"{done}/{target}",
                "–" if math.isnan(seconds) else f"{seconds:.0f}", minutes(seconds),
                "–" if math.isnan(seconds) or not done else f"{seconds / done:.1f}",
                "summary.json" if not is_missing(row.time_s) else "last metrics line",
            ])  # fmt: skip
    if not rows:
        return ["_no runs_", ""]
    header = ["experiment", "run", "status", "epochs", "time_s", "wall time", "s / epoch", "from"]
    return [words["wall_times"], "", table(header, rows)]


def _tables(claim: Claim) -> list[str]:
    """The claim's tables; those with a `group` come per run, after the others, each run's together."""
    facts, out, grouped = claim.facts, [], {}
    for spec in claim.conf.get("tables", []):
        rows = facts.get(spec.get("of", "rows"))
        if "text" in spec:
            out.append(fill(spec["text"], facts, facts))
        elif rows is None or rows.empty:
            continue
        elif "group" not in spec:
            out.append(frame_table(spec, rows, facts, facts))
        else:
            for key, part in rows.groupby(spec["group"], sort=False):
                fields = {**facts, **part.iloc[0].to_dict()}
                table_md = frame_table(spec, part, fields, facts)
                grouped.setdefault(key, []).append(f"{fill(spec['caption'], fields)}\n\n{table_md}")
    return out + [text for tables in grouped.values() for text in tables]


def _notes(claim: Claim) -> list[str]:
    """The claim's notes; one whose numbers are missing is left out."""
    facts, rows = claim.facts, claim.facts.get("rows")
    each = [{**facts, **row} for row in rows.to_dict("records")] if rows is not None else []
    notes = [fill(t, f, facts, skip_missing=True) for t in claim.conf.get("notes_each", []) for f in each]
    notes += [fill(t, facts, facts, skip_missing=True) for t in claim.conf.get("notes", []) if facts]
    return [note for note in notes if note is not None]


def not_run_note(claim: Claim, ctx: Context) -> str:
    sentences = (fill(t, base_fields(ctx), skip_missing=True) for t in claim.conf.get("not_run", []))
    return " ".join(s for s in sentences if s is not None)


def _not_passed(claim: Claim, passed: bool | None) -> str:
    return "; ".join(c.rule for c in claim.checks if c.passed is passed)


def _claim_section(claim: Claim, ctx: Context, data: str, words: dict) -> list[str]:
    md = [f"## Claim {claim.key}: {claim.title}", "", f"> {claim.statement}", ""]
    sel, exps = claim.source, ctx.exps
    if sel is None:
        return md + [
            f"**Verdict: not run.** {not_run_note(claim, ctx)}".rstrip(), "", "Run it with:", "",
            "```bash", command(exps[claim.experiments[0]], data), "```", "",
        ]  # fmt: skip
    where = ", ".join(f"{k}={format_value(v)}" for k, v in sel.where.items() if k in sel.runs)
    md += [
        f"Runs: `{sel.exp.name}`" + (f" ({where})" if where else "") + f", {len(sel.runs)} run(s) in `{sel.exp.name}`.",
        "", "```bash", command(sel.exp, data), "```", "",
    ]  # fmt: skip
    # The recorded sweep dir is a path of the machine that ran it: the command above gives it.
    if typed := [a for a in sel.exp.argv if not a.startswith("hydra.sweep.dir=")]:
        md += [f"As recorded in sweep.json: `python -m sweeper {' '.join(typed)}`", ""]
    others = [n for n in claim.experiments if n != sel.exp.name and not exps[n].present]
    if others and claim.experiments.index(sel.exp.name) > 0:
        dedicated = command(exps[others[0]], data)
        md += [f"The dedicated experiment `{others[0]}` was not run; `{dedicated}` runs it.", ""]
    if claim.figure or claim.figure_note:
        md += [
            f"![claim {claim.key}](figures/{claim.figure})" if claim.figure else f"_{claim.figure_note}_",
            "",
        ]
    md += [line for text in _tables(claim) for line in (text, "")]
    verdict, tail = claim.verdict, ""
    if claim.checks:
        so_far = " so far" if verdict.startswith("partial") else ""
        checks = [[c.rule, c.observed, MARKS[c.passed]] for c in claim.checks]
        md += [words["rules"], "", table(["check", f"observed{so_far}", f"passes{so_far}"], checks), ""]
    md += [line for note in _notes(claim) for line in (note, "")]
    if verdict == "partly supported":
        tail = "".join(f" — {label}: {rules}" for label, passed in (("fails", False), ("undecided", None))
                       if (rules := _not_passed(claim, passed)))  # fmt: skip
    return md + [f"**Verdict: {verdict}**{tail}", ""]


def _user_overrides(argv: list[str]) -> list[str]:
    """The overrides typed after `experiment=...` that change the protocol (not hydra.*, not paths)."""
    keys = [
        (item, item.partition("=")[0].lstrip("+~"))
        for item in argv
        if "=" in item and not item.startswith("-")
    ]
    return [
        item for item, key in keys if key not in NOT_PROTOCOL and not key.startswith(("hydra.", "hydra/"))
    ]


def _differences(claims: list[Claim], ctx: Context, words: dict) -> list[str]:
    exps, items = ctx.exps, []
    name, root = data_root(exps)
    if name is not None and name != "cifar10":
        items.append(fill(words["not_cifar"], {"name": name}))
    elif root is not None and "jpeg" in str(root).lower():
        items.append(fill(words["jpeg"], {"root": root}))
    seeded = {n: e.sweep.runs["trainer.seed"].nunique() for n, e in exps.items()
              if e.sweep is not None and "trainer.seed" in e.sweep.runs}  # fmt: skip
    if single := [n for n, count in seeded.items() if count == 1]:
        several = [n for n, count in seeded.items() if count > 1]
        measured = fill(words["measured"], {"several": several[0], "noise": ctx.noise}) if several and ctx.noise is not None else ""  # fmt: skip
        items.append(
            fill(words["one_seed"], {"single": ", ".join(f"`{n}`" for n in single), "measured": measured})
        )
    items += [fill(words["overrides"], {"name": n, "extra": " ".join(extra)})
              for n, e in exps.items() if e.present and (extra := _user_overrides(e.argv))]  # fmt: skip
    for claim in claims:
        verdict = claim.verdict
        if verdict in ("not supported", "partly supported"):
            failed = "; ".join(
                f"{c.rule}: {'undecided, ' if c.passed is None else ''}observed {c.observed}"
                for c in claim.checks
                if c.passed is not True
            )
            items.append(f"Claim {claim.key} ({claim.title}) is **{verdict}**: {failed}.")
        elif verdict == "not run":
            note = not_run_note(claim, ctx)
            items.append(
                f"Claim {claim.key} ({claim.title}) was not tested: `{claim.experiments[0]}` was not run"
                + (f" — {note}" if note else ".")
            )
        elif verdict.startswith("partial"):
            items.append(f"Claim {claim.key} has no verdict yet ({verdict}).")
    return ["## Differences from the lecture", "", *([f"- {item}" for item in items] or ["- none found"]), ""]


def context(exps: dict[str, Experiment], conf: dict) -> Context:
    """The seed-to-seed noise, the lecture run's pace and the experiments' job counts."""
    sweep, noise = exps[conf["noise_from"]].sweep, None
    if sweep is not None:
        done = sweep.runs.loc[sweep.runs["status"].isin(RESULTS), "final_test_acc"].dropna()
        noise = float(done.std()) if len(done) >= 2 else None
    baseline = pick_source(exps, conf["lecture_run"])
    complete = baseline is not None and baseline.complete
    baseline_s = baseline.wall_time(baseline.runs["run"].iloc[0]) if complete else None
    return Context(exps, noise, baseline_s, {name: grid_jobs(name) for name in conf["experiments"]})


def _anchor(title: str) -> str:
    """GitHub's heading anchor for the part after 'Claim N: '."""
    return "".join(c for c in title.lower() if c.isalnum() or c in " -_").replace(" ", "-")


def write_reproduction(root, out="docs", shown_root: str | None = None, note: str | None = None) -> Path:
    """Write OUT/reproduction.md and OUT/figures/claim*.png for the experiments under ROOT."""
    conf, root, out = read_conf(), Path(root), Path(out)
    words, shown_root = conf["report"], shown_root or str(root)
    exps = load_experiments(root, shown_root, conf)
    ctx = context(exps, conf)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    claims = [evaluate(claim_conf, ctx) for claim_conf in conf["claims"]]
    for claim in claims:
        (figures_dir / f"claim{claim.key}.png").unlink(missing_ok=True)  # no figure outlives its runs
        draw_figure(claim, figures_dir, conf["figure_dpi"])
    data = data_root(exps)[1] or conf["data_placeholder"]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = fill(words["header"], {"shown_root": shown_root, "out": out, "date": date})
    summary = [
        [f"[{c.key}](#claim-{c.key}-{_anchor(c.title)}) {c.title}", c.verdict,
         f"`{c.source.exp.name}`" if c.source is not None else f"`{c.experiments[0]}` not run"]
        for c in claims
    ]  # fmt: skip
    described = {n: fill(text, base_fields(ctx)) for n, text in conf["experiments"].items()}
    experiments = [
        [f"`{n}`", described[n], _state(e), f"`{n}`" if e.present else "–"] for n, e in exps.items()
    ]
    md = [
        "# Reproducing the lecture on CIFAR-10",
        "",
        header,
        "",
        table(["claim", "verdict", "runs"], summary),
    ]
    md += ["## Machine", "", *_machine(exps, note), "## Experiments", ""]
    md += [table(["experiment", "tests", "state", "sweep dir"], experiments), ""]
    for claim in claims:
        md += _claim_section(claim, ctx, data, words)
    md += ["## Wall time per run", "", *_wall_times(exps, words), *_differences(claims, ctx, words)]
    ran = [n for n, e in exps.items() if e.present] or words["rerun_default"]
    absent = ", ".join(f"`{n}`" for n, e in exps.items() if not e.present)
    quoted = {k: shlex.quote(v) for k, v in (("data", data), ("root", shown_root.rstrip("/")), ("shown_root", shown_root), ("out", str(out)))}  # fmt: skip
    md += [fill(words["rerun"], {**quoted, "ran": " ".join(ran), "absent": absent}), ""]
    path = out / "reproduction.md"
    path.write_text("\n".join(md))
    return path

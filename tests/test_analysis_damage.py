"""Damaged run records, table-driven: each record file x (truncate, garbage, wrong JSON shape, bit
flip, delete). The analysis completes, the good runs load unchanged, and the damaged run is named
with its file and never reported completed with numbers its files do not support."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis import load_sweep
from analysis.__main__ import main
from analysis.status import job_table
from tests.fake_runs import make_sweep

FILES = ("config.json", "job.json", "metrics.jsonl", "summary.json", "losses.npz")
MODES = ("truncate", "garbage", "shape", "bitflip", "delete")


def _flip_digit(data: bytes, after: bytes) -> bytes:
    """Flip the low bit of the first digit after the last `after`: 0.58 reads 0.48 (valid JSON)."""
    at = data.rindex(after) + len(after)
    while not data[at : at + 1].isdigit() or data[at : at + 1] == b"0":
        at += 1
    return data[:at] + bytes([data[at] ^ 1]) + data[at + 1 :]


def damage(path: Path, mode: str) -> None:
    data = path.read_bytes()
    if mode == "delete":
        path.unlink()
    elif mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "garbage":
        path.write_bytes(b"#garbage\x00\xff\n")
    elif mode == "shape":
        if path.suffix == ".npz":  # a zip of arrays, not the ones losses.npz holds
            np.savez(path, epochs=np.array(["one"]))
        elif path.suffix == ".jsonl":  # a value of the wrong type in the last line
            lines = data.decode().splitlines()
            last = json.loads(lines[-1]) | {"test_acc": "high"}
            path.write_text("\n".join([*lines[:-1], json.dumps(last)]) + "\n")
        else:
            path.write_text("[]")
    elif mode == "bitflip":
        if path.suffix == ".npz":
            middle = len(data) // 2
            path.write_bytes(data[:middle] + bytes([data[middle] ^ 0x10]) + data[middle + 1 :])
        elif path.name == "summary.json":
            path.write_bytes(_flip_digit(data, b'"final_test_acc": '))
        elif path.suffix == ".jsonl":
            path.write_bytes(_flip_digit(data, b'"test_acc": '))
        else:  # config.json, job.json: the opening brace turns into a letter
            path.write_bytes(bytes([data[0] ^ 1]) + data[1:])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, pd.DataFrame, str]:
    """Three completed runs; the one damaged is the best (the report draws its loss histograms),
    and it ran on this host, its process gone."""
    sweep = make_sweep(
        tmp_path_factory.mktemp("clean") / "sweep",
        {"lr": [0.2, 0.1, 0.05]},
        seeds=(0,),
        epochs=4,
        n_train=200,
    )
    clean = load_sweep(sweep)
    runs = clean.runs.set_index("run")
    best = clean.rank()["lr"].iloc[0]
    target = runs.index[runs["lr"] == best][0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    job = json.loads((sweep / target / "job.json").read_text())
    (sweep / target / "job.json").write_text(
        json.dumps(job | {"host": socket.gethostname(), "pid": dead.pid})
    )
    return sweep, runs, target


def damaged_copy(pristine, tmp_path, name: str, mode: str) -> Path:
    import shutil

    sweep = Path(shutil.copytree(pristine[0], tmp_path / "sweep"))
    shutil.rmtree(sweep / ".analysis_cache", ignore_errors=True)
    damage(sweep / pristine[2] / name, mode)
    return sweep


def check(sweep: Path, loaded, clean: pd.DataFrame, target_run: str, name: str) -> None:
    runs = loaded.runs.set_index("run")
    for good in {"0", "1", "2"} - {target_run}:  # untouched
        assert runs.loc[good, "status"] == "completed"
        assert runs.loc[good, "final_test_acc"] == clean.loc[good, "final_test_acc"]
        assert runs.loc[good, "epochs_done"] == clean.loc[good, "epochs_done"]
    target = str((sweep / target_run).resolve())
    reasons = [reason for run_dir, reason in loaded.problems if run_dir == target]
    assert any(name in reason for reason in reasons), reasons  # named, with its file
    if target_run in runs.index and runs.loc[target_run, "status"] == "completed":
        # completed only with the numbers its record supports: the undamaged run's
        assert runs.loc[target_run, "final_test_acc"] == clean.loc[target_run, "final_test_acc"]
    ranking = loaded.rank()
    ranked = ranking[ranking["lr"] == clean.loc[target_run, "lr"]]
    assert ranked.empty or ranked["mean"].iloc[0] == clean.loc[target_run, "final_test_acc"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_record_file_is_named_and_the_good_runs_load_unchanged(pristine, tmp_path, name, mode):
    sweep = damaged_copy(pristine, tmp_path, name, mode)
    loaded = load_sweep(sweep)
    loaded.distributions()  # losses.npz is read on demand: its damage is named then
    check(sweep, loaded, pristine[1], pristine[2], name)
    again = load_sweep(sweep)  # from the cache: the same verdict
    again.distributions()
    assert again.runs["status"].tolist() == loaded.runs["status"].tolist()
    assert sorted(again.problems) == sorted(loaded.problems)
    table = job_table(sweep).set_index("job")
    job = int(pristine[2])
    assert (table.drop(index=job)["status"] == "completed").all()
    status = loaded.runs.set_index("run")["status"].get(pristine[2])
    if status not in (None, "completed"):
        assert table.loc[job, "status"] == status  # `status` says what the report says
    if status == "damaged":
        assert name in table.loc[job, "error"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", FILES)
def test_the_report_of_a_sweep_with_a_damaged_record_completes(pristine, tmp_path, name, mode, capsys):
    sweep = damaged_copy(pristine, tmp_path, name, mode)
    assert main([str(sweep)]) == 0
    problems = pd.read_csv(sweep / "report" / "problems.csv")
    target = str((sweep / pristine[2]).resolve())
    assert problems.loc[problems["run_dir"] == target, "reason"].str.contains(name, regex=False).any()


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("summary.json", "[]", "damaged: summary.json: not a JSON object"),
        ("summary.json", '{"status": "compl', "damaged: summary.json: not valid JSON"),
        ("job.json", "[1, 2]", "damaged: job.json: not a JSON object"),
    ],
)
def test_damage_reads_as_damage_not_as_a_run_still_going(pristine, tmp_path, name, content, reason):
    """`[]` in summary.json read as "interrupted"; a garbage job.json made a dead run "running"."""
    sweep = damaged_copy(pristine, tmp_path, name, "delete")
    target = pristine[2]
    (sweep / target / name).write_text(content)
    if name == "job.json":
        (sweep / target / "summary.json").unlink()  # not ended: only job.json could tell it ran here
    loaded = load_sweep(sweep)
    assert loaded.runs.set_index("run").loc[target, "status"] == "damaged"
    assert any(r.startswith(reason) for _, r in loaded.problems)
    assert job_table(sweep).set_index("job").loc[int(target), "status"] == "damaged"


def test_a_completed_run_whose_last_metrics_line_is_cut_is_damaged_and_not_ranked(pristine, tmp_path):
    """The analysis reported the epoch before the last as final_test_acc and ranked on it."""
    sweep, target = damaged_copy(pristine, tmp_path, "metrics.jsonl", "delete"), pristine[2]
    source = (pristine[0] / target / "metrics.jsonl").read_bytes()
    (sweep / target / "metrics.jsonl").write_bytes(source[: source.rindex(b"{") + 20])
    loaded = load_sweep(sweep)
    runs = loaded.runs.set_index("run")
    assert runs.loc[target, "status"] == "damaged"
    assert (
        runs.loc[target, "lr"] not in loaded.rank(statuses=None)["lr"].tolist()
    )  # not even at its last epoch
    assert (
        str((sweep / target).resolve()),
        "damaged: metrics.jsonl: its last line is cut short; summary.json counts 4 epochs, metrics.jsonl has 3",
    ) in loaded.problems


def test_a_bit_flipped_losses_file_of_the_best_run_is_named_and_its_panel_skipped(pristine, tmp_path, capsys):
    """`python -m analysis` exited 1 with zipfile.BadZipFile: Bad CRC-32."""
    sweep = damaged_copy(pristine, tmp_path, "losses.npz", "bitflip")
    assert main([str(sweep)]) == 0
    md = (sweep / "report" / "report.md").read_text()
    assert "damaged: losses.npz: does not load (BadZipFile" in md
    assert "1 problem" in capsys.readouterr().out


def test_one_line_parser_two_policies_the_resume_stops_the_analysis_drops_and_reads_on(tmp_path):
    """sweeper.runlog.parsed_line decodes every .jsonl line (former `lr` read as epoch_lr): a
    resume stops at a damaged middle line, the analysis drops it, names it and reads the lines
    after it; an unterminated last line that is not JSON is a write cut short for both."""
    from analysis.records import read_metrics
    from sweeper.runlog import parsed_lines

    row = {"epoch": 1, "lr": 0.1, "train_loss": 1.0}
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps(row), "[1, 2]", json.dumps({**row, "epoch": 3}), '{"epoch": 4, "tr']
    path.write_text("\n".join(lines))
    rows, why, cut = parsed_lines(path)
    assert (rows, why, cut) == (
        [{"epoch": 1, "epoch_lr": 0.1, "train_loss": 1.0}],
        "line 2 is damaged: not a JSON object (list)",
        False,
    )
    rows, notes, truncated = read_metrics(path)
    assert [r["epoch"] for r in rows] == [1, 3] and all("epoch_lr" in r and "lr" not in r for r in rows)
    assert notes == ["damaged: metrics.jsonl: line 2: not a JSON object (list), dropped"]
    assert truncated
    path.write_text("\n".join([lines[0], lines[3]]))
    assert parsed_lines(path)[1:] == ("line 2 is damaged: not valid JSON", True)

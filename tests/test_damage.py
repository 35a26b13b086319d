"""The damage table: each file of the run record (and the sweep's sweep.json) x truncate /
garbage / wrong JSON shape / bit flip / delete, on a small real sweep.

For every case: the sweep's rerun and the analysis complete without a traceback; the good runs
are untouched and loaded; the damaged run is named with its file, and never reported as
completed with numbers its files do not support.

To stay fast, the run-level cases share one sweep: each case damages its own job's run dir, and
one rerun of the whole sweep answers them all (jobs are independent: one job's record is never
read by another's). The sweep.json cases each rerun a copy of the undamaged sweep.
"""

from __future__ import annotations

import json
import shutil

import pytest
from omegaconf import OmegaConf

from analysis import load_sweep
from sweeper import rundir, train
from sweeper.runlog import RunLog
from tests.conftest import run_cli

# One sweep of 44 tiny jobs, 24 of them stopped and rebuilt in-process, then its rerun: about
# 80 s on an idle 2-core machine.
pytestmark = pytest.mark.slow

SIZES = [
    "data=synthetic",
    "data.generated_train=100",
    "data.generated_test=50",
    "data.cache_dir=null",
    "trainer.epochs=3",
    "trainer.batch_size=50",
    "model.channels=2",
    "model.units=[8]",
]
MODES = ("truncate", "garbage", "shape", "bitflip", "delete")
JSON_FILES = ("config.json", "job.json", "summary.json", "metrics.jsonl")

# (file, target run): "stopped" runs were interrupted after epoch 2 (a checkpoint to resume
# from), "ended" runs completed. Each file where its damage matters: a stopped run has no
# summary.json, and an ended run's checkpoint.pt and job.json are read by neither a rerun nor the
# analysis (sweeper.load_model reads that checkpoint, and refuses a damaged one: test_load_model.py).
TARGETS = [
    ("config.json", "stopped"),
    ("job.json", "stopped"),
    ("metrics.jsonl", "stopped"),
    ("losses.npz", "stopped"),
    ("checkpoint.pt", "stopped"),
    ("config.json", "ended"),
    ("metrics.jsonl", "ended"),
    ("losses.npz", "ended"),
    ("summary.json", "ended"),
]
CASES = [
    (name, target, mode)
    for name, target in TARGETS
    for mode in MODES
    if mode != "shape" or name in JSON_FILES  # a binary file has no JSON shape to get wrong
]
GOOD = {"ended": len(CASES), "stopped": len(CASES) + 1}  # job numbers of the undamaged runs

# A deleted summary.json is what a kill between the last checkpoint and the summary leaves:
# resuming from the last epoch (no retraining) is the right answer, and nothing is damaged.
NOT_DAMAGE = {("summary.json", "delete")}


def damage(path, mode: str) -> None:
    if mode == "delete":
        path.unlink()
        return
    data = path.read_bytes()
    if mode == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif mode == "garbage":
        path.write_bytes(b"\x00garbage\xff\n" * 8)
    elif mode == "shape":  # valid JSON, not what the file holds: an array where an object goes
        if path.name == "metrics.jsonl":
            lines = data.splitlines(keepends=True)
            path.write_bytes(b"[1, 2]\n" + b"".join(lines[1:]))
        else:
            path.write_bytes(b"[1, 2]\n")
    elif mode == "bitflip":  # 16 bytes in the middle XORed: loads, for torch, as other weights
        middle = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[middle : middle + 16])
        path.write_bytes(data[:middle] + flipped + data[middle + 16 :])


def case_id(case) -> str:
    return "-".join(case)


def stop_after_epoch_2(run_dir) -> None:
    """Replace the completed record in `run_dir` by one stopped as a kill would just before
    epoch 3's checkpoint (metrics and losses hold epoch 3, checkpoint.pt epoch 2), keeping the
    sweep's .hydra/ and its job.json (whose process has ended)."""
    config = json.loads((run_dir / "config.json").read_text())
    job = (run_dir / "job.json").read_bytes()
    for name in [*rundir.RECORD_FILES, "train.log"]:
        if (run_dir / name).is_file():
            (run_dir / name).unlink()
    real = RunLog.save_checkpoint

    def save(self, state):
        if state["epoch"] == 3:
            raise KeyboardInterrupt
        real(self, state)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(RunLog, "save_checkpoint", save)
        with pytest.raises(KeyboardInterrupt):
            train.run(OmegaConf.create(config), run_dir)  # .hydra/ stays the sweep's
    (run_dir / "job.json").write_bytes(job)  # the sweep's: a live pid (this one) would be "running"


def files(run_dir) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.suffix != ".log"}


def metrics_without_times(run_dir) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """The sweep (one job per case, plus one good run of each kind), its undamaged copy, the
    rerun of its damaged copy, and each job's straight (uninterrupted) metrics."""
    base = tmp_path_factory.mktemp("damage")
    n_jobs = len(CASES) + 2
    args = ["-m", *SIZES, f"trainer.seed=range(0,{n_jobs})", f"hydra.sweep.dir={base / 'sweep'}"]
    made = run_cli(*args, cwd=base)
    assert made.returncode == 0, made.stderr[-3000:]
    sweep = base / "sweep"
    straight = {n: metrics_without_times(sweep / str(n)) for n in range(n_jobs)}
    summaries = {n: json.loads((sweep / str(n) / "summary.json").read_text()) for n in range(n_jobs)}
    stopped = [n for n, (_, target, _) in enumerate(CASES) if target == "stopped"] + [GOOD["stopped"]]
    for n in stopped:
        stop_after_epoch_2(sweep / str(n))
    pristine = base / "pristine"
    shutil.copytree(sweep, pristine, symlinks=True)
    before = {n: files(sweep / str(n)) for n in range(n_jobs)}
    for n, (name, _, mode) in enumerate(CASES):
        damage(sweep / str(n) / name, mode)
    damaged = {n: files(sweep / str(n)) for n in range(len(CASES))}
    before_rerun = {}  # the analysis of each damaged run, before the rerun repairs it
    for n in range(len(CASES)):
        try:
            before_rerun[n] = load_sweep(sweep / str(n))
        except Exception as err:  # noqa: BLE001 -- asserted on below, case by case
            before_rerun[n] = err
    rerun = run_cli(*args, cwd=base)
    return {
        "base": base,
        "args": args,
        "sweep": sweep,
        "pristine": pristine,
        "straight": straight,
        "summaries": summaries,
        "before": before,
        "damaged": damaged,
        "before_rerun": before_rerun,
        "rerun": rerun,
        "output": rerun.stdout + rerun.stderr,
        "analysis": load_sweep(sweep),
    }


def named(output: str, run_dir, name: str) -> bool:
    """A line of the rerun's output, or of the run's train.log, names the run dir and the file."""
    logs = "".join(p.read_text() for p in run_dir.glob("train.log"))
    return any(str(run_dir) in line and name in line for line in (output + logs).splitlines())


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_a_damaged_record_is_named_set_aside_and_rerun_to_the_numbers_of_an_undamaged_run(table, case):
    name, target, mode = case
    num = CASES.index(case)
    run_dir = table["sweep"] / str(num)
    rerun = table["rerun"]
    assert rerun.returncode in (0, 1) and "Traceback" not in table["output"], table["output"][-3000:]

    if (name, mode) in NOT_DAMAGE:
        assert not (run_dir / "attempts").exists()
    elif name == "job.json":  # who ran it: only the restart count is lost; the run resumes
        assert named(table["output"], run_dir, name), table["output"][-3000:]
        assert not (run_dir / "attempts").exists()
    else:  # set aside whole, damaged bytes and all, with the file named; then trained over
        assert named(table["output"], run_dir, name), table["output"][-3000:]
        kept = run_dir / "attempts" / "1"
        assert files(kept) == table["damaged"][num]

    # Never completed with numbers its files do not support: they are an undamaged run's.
    runs = table["analysis"].runs.set_index("run_dir")
    row = runs.loc[str(run_dir)]
    assert row["status"] == "completed"
    assert metrics_without_times(run_dir) == table["straight"][num]
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("final_test_acc", "final_train_loss", "best_test_acc", "epochs_done"):
        assert summary[key] == table["summaries"][num][key], key
        if key in row:
            assert row[key] == pytest.approx(summary[key]), key


# Ended runs whose summary's numbers the damaged file carries or must agree with.
ANALYSED = [
    c
    for c in CASES
    if c[1] == "ended" and c[0] in ("summary.json", "metrics.jsonl") and c[::2] not in NOT_DAMAGE
]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_the_analysis_of_a_damaged_sweep_completes_and_ranks_no_unsupported_number(table, case):
    name, target, mode = case
    loaded = table["before_rerun"][CASES.index(case)]
    assert not isinstance(loaded, Exception), f"load_sweep raised {type(loaded).__name__}: {loaded}"
    run_dir = str(table["sweep"] / str(CASES.index(case)))
    runs = loaded.runs.set_index("run_dir")
    status = runs.loc[run_dir, "status"] if run_dir in runs.index else None
    if target == "stopped":  # no summary: never completed, whatever the damage
        assert status != "completed"
    if case in ANALYSED:
        problems = [reason for where, reason in loaded.problems if where == run_dir]
        # `damaged` is never ranked (rank counts `completed` runs only).
        assert status == "damaged" and any(r.startswith(f"damaged: {name}") for r in problems), (
            status,
            problems,
        )


def test_the_good_runs_are_untouched_and_loaded(table):
    assert table["rerun"].returncode in (0, 1) and "Traceback" not in table["output"]
    ended, stopped = (table["sweep"] / str(GOOD[k]) for k in ("ended", "stopped"))
    assert files(ended) == table["before"][GOOD["ended"]]  # skipped, byte for byte
    assert not (stopped / "attempts").exists()  # resumed, not set aside
    assert metrics_without_times(stopped) == table["straight"][GOOD["stopped"]]
    runs = table["analysis"].runs.set_index("run_dir")
    assert runs.loc[str(ended), "status"] == runs.loc[str(stopped), "status"] == "completed"
    assert runs.loc[str(ended), "final_test_acc"] == pytest.approx(
        table["summaries"][GOOD["ended"]]["final_test_acc"]
    )
    assert not [p for p in table["analysis"].problems if p[0] in (str(ended), str(stopped))]


SWEEP_JSON_SHAPES = {"shape": b"[1, 2]\n", "jobs": b'{"jobs": [1, 2, 3]}\n', "keys": b'{"jobs": [{}, {}]}\n'}


@pytest.mark.parametrize("mode", [*MODES, "jobs", "keys"])
def test_a_damaged_sweep_json_is_named_in_one_line_and_the_runs_stay_loadable(table, tmp_path, mode):
    # The job list decides which run dir is whose: a damaged one is refused in one line naming
    # it (exit 2), or, deleted, each run dir is checked against its job's config and resumed.
    sweep = tmp_path / "sweep"
    shutil.copytree(table["pristine"], sweep, symlinks=True)
    before = {n: files(sweep / str(n)) for n in GOOD.values()}
    path = sweep / "sweep.json"
    if mode in SWEEP_JSON_SHAPES:
        path.write_bytes(SWEEP_JSON_SHAPES[mode])
    else:
        damage(path, mode)
    args = [a if not a.startswith("hydra.sweep.dir=") else f"hydra.sweep.dir={sweep}" for a in table["args"]]
    rerun = run_cli(*args, cwd=tmp_path)
    output = rerun.stdout + rerun.stderr
    assert "Traceback" not in output, output[-3000:]
    if mode == "delete":
        assert rerun.returncode in (0, 1)
        assert json.loads(path.read_text())["jobs"]  # written anew
    else:
        assert rerun.returncode == 2 and "sweep.json" in rerun.stderr and "damaged" in rerun.stderr, output
        assert files(sweep / str(GOOD["stopped"])) == before[GOOD["stopped"]]  # nothing ran
    loaded = load_sweep(sweep)
    runs = loaded.runs.set_index("run_dir")
    ended = str(sweep / str(GOOD["ended"]))
    assert runs.loc[ended, "status"] == "completed"
    assert files(sweep / str(GOOD["ended"])) == before[GOOD["ended"]]


def test_the_table_covers_every_file_of_the_record():
    names = {name for name, _, _ in CASES}
    assert names == {
        "config.json",
        "job.json",
        "metrics.jsonl",
        "losses.npz",
        "checkpoint.pt",
        "summary.json",
    }
    assert {m for _, _, m in CASES} == set(MODES)

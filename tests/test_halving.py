"""Successive halving (hydra/sweeper=halving) and what it stands on: a run paused at
trainer.until_epoch and resumed later equals one trained straight through."""

from __future__ import annotations

import json

import torch

from sweeper import train
from sweeper.runlog import RunLog
from tests.conftest import compose_cfg


def rows_without_times(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def test_a_run_paused_at_until_epoch_and_resumed_equals_one_trained_straight_through(tmp_path):
    base = ("trainer.epochs=4", "trainer.threads=1", "data.augment=true", "schedule=cosine")
    train.run(compose_cfg(*base), tmp_path / "straight")

    paused = tmp_path / "paused"
    first = train.run(compose_cfg(*base, "trainer.until_epoch=1"), paused)
    assert first["status"] == "paused" and first["epochs_done"] == 1 and first["epochs"] == 4
    assert first["status"] not in train.ENDED  # a rerun with a later until_epoch resumes it
    mtime = (paused / "checkpoint.pt").stat().st_mtime_ns
    again = train.run(compose_cfg(*base, "trainer.until_epoch=1"), paused)
    assert again == first and (paused / "checkpoint.pt").stat().st_mtime_ns == mtime  # skipped, not retrained
    assert train.run(compose_cfg(*base, "trainer.until_epoch=3"), paused)["epochs_done"] == 3
    last = train.run(compose_cfg(*base), paused)  # until_epoch null: to trainer.epochs

    assert last["status"] == "completed" and last["epochs_done"] == 4
    assert rows_without_times(paused) == rows_without_times(tmp_path / "straight")
    weights = [RunLog(tmp_path / d).load_checkpoint()["model"] for d in ("straight", "paused")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert (
        json.loads((paused / "job.json").read_text())["restarts"] == 2
    )  # two resumes; the skipped rerun started nothing

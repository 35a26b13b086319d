"""A parquet cache of a sweep's parsed run records, in `<sweep dir>/.analysis_cache/`.

One row per run dir holds the raw JSON of config/job/summary and a fingerprint of the record
files (size and mtime of each); the curves sit in a second file, named in every row of the first,
so a reader never pairs records with curves from another write. A run whose fingerprint changed
is re-read: a sweep still running reloads only its running jobs. Nothing here may break a load:
an unreadable cache is ignored, an unwritable sweep dir simply gets no cache.
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path

import pandas as pd

from sweeper.runlog import atomic_write

CACHE_DIR = ".analysis_cache"
CACHE_VERSION = 3  # bump when what is cached changes meaning (3: metrics' lr read as epoch_lr)
RECORDS_FILE = f"records-v{CACHE_VERSION}.parquet"


def read_cache(sweep_dir: Path) -> tuple[dict[str, dict], pd.DataFrame | None]:
    """{run dir name: cached record row}, cached curves; ({}, None) when absent or unusable."""
    base = sweep_dir / CACHE_DIR
    try:
        records = pd.read_parquet(base / RECORDS_FILE)
        curves = pd.read_parquet(base / records["curves_file"].iloc[0])
    except Exception:  # absent, half-written, other version: a cache must never break a load
        return {}, None
    return {row["name"]: row for row in records.to_dict("records")}, curves


def write_cache(sweep_dir: Path, records: pd.DataFrame, curves: pd.DataFrame) -> None:
    """Curves first, then the records naming them: the records file is the commit."""
    base = sweep_dir / CACHE_DIR
    curves_file = f"curves-v{CACHE_VERSION}-{uuid.uuid4().hex[:12]}.parquet"
    try:
        base.mkdir(exist_ok=True)
        atomic_write(base / curves_file, curves.to_parquet(index=False))
        atomic_write(base / RECORDS_FILE, records.assign(curves_file=curves_file).to_parquet(index=False))
    except (OSError, ValueError, TypeError):  # read-only dir, or a metric arrow cannot store: no cache
        return
    for old in base.glob("curves-*.parquet"):  # earlier writes; a reader holding one open keeps it
        if old.name != curves_file:
            with contextlib.suppress(OSError):
                old.unlink(missing_ok=True)

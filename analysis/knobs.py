"""Config knobs as columns: a run's config.json flattened to dotted names (`model.channels`),
typed columns, which keys vary, and how a knob's value is written in tables and legends."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from sweeper.rundir import NOT_COMPARED
from sweeper.schema import SECTIONS, flatten

# Hydra's instantiate flags: how a component is built, never what it computes (`_target_`, the
# class, is a knob like any other).
HYDRA_SPECIAL_KEYS = frozenset({"_partial_", "_recursive_", "_convert_", "_args_"})


def _freeze(value):
    """Lists become tuples (hashable, comparable, ordered like numbers); dicts JSON."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return value


def flatten_config(config: dict) -> dict[str, object]:
    """A config's knobs (schema.flatten) as table values: lists -> tuples; Hydra's flags
    (`_partial_`, ...) and empty sections dropped, `_target_` kept (`optim._target_`)."""
    return {
        key: _freeze(value)
        for key, value in flatten(config).items()
        if value != {} and HYDRA_SPECIAL_KEYS.isdisjoint(key.split("."))
    }


def merged_key_order(key_lists: Iterable[list[str]]) -> list[str]:
    """All keys, in config order: a key first seen in a later run goes right after the key that
    precedes it there (schedule.lr2 next to schedule.name, not after trainer.*)."""
    order: list[str] = []
    seen: set[str] = set()
    for keys in key_lists:
        if seen.issuperset(keys):  # the common case: nothing new, no list surgery
            continue
        at = 0
        for key in keys:
            if key in seen:
                at = order.index(key) + 1
            else:
                order.insert(at, key)
                seen.add(key)
                at += 1
    return order


def typed_column(values: Sequence) -> pd.Series:
    """A column with the dtype the JSON values really have (None: missing): int64 (Int64 with some
    missing), float64 (mixed ints and floats too: `lr=1` vs `lr=0.5`), bool, str, or object."""
    present = [v for v in values if v is not None]
    kinds = {type(v) for v in present}
    missing = len(present) < len(values)
    if not present:
        return pd.Series(list(values), dtype=object)
    if kinds == {bool}:
        return pd.Series(list(values), dtype="boolean" if missing else bool)
    if kinds == {int}:
        return pd.Series(list(values), dtype="Int64" if missing else "int64")
    if kinds <= {int, float}:
        return pd.Series([np.nan if v is None else float(v) for v in values], dtype="float64")
    if kinds == {str}:
        return pd.Series(list(values), dtype="str")
    return pd.Series(list(values), dtype=object)


# Keys that say how a run is carried out or what its record keeps, never what it computes: runs
# differing only in them are one configuration. A resume compares those beyond NOT_COMPARED, since
# a resumed record must keep what it kept.
RECORD_KEEPING = frozenset(NOT_COMPARED) | {
    "trainer.keep_sample_losses",
    "trainer.sample_loss_epochs",
    "trainer.checkpoint",
    "data.download",
}


# A key under the config sections (schema.SECTIONS) is a knob every run has, unless its record
# predates it; any other top-level key is a label given to some runs (`+tag=baseline`).
TOP_LEVEL_KNOBS = ("lr",)
ABSENT = object()  # a key a run's config.json does not have (null is a value: data.train_size=null)


def fill_older_records(key: str, flat: list[dict]) -> list:
    """The values of `key` in the runs' flattened configs, None where a config lacks it.

    A record written before the knob existed lacks it: among the runs of one option of the key's
    section (`schedule.lr2` is absent by design from other schedules than `step`), when every
    record that has it agrees on one value, the older ones ran at it too (the knob came with its
    default). A label (`+tag=...`), or a knob whose records disagree, stays absent."""
    values = [row.get(key, ABSENT) for row in flat]
    section = key.split(".")[0]
    if section not in SECTIONS and key not in TOP_LEVEL_KNOBS:
        return [None if v is ABSENT else v for v in values]
    by_option: dict[str, list[int]] = {}
    for i, row in enumerate(flat):
        by_option.setdefault(json.dumps(row.get(f"{section}.name")), []).append(i)
    for rows in by_option.values():
        given = [values[i] for i in rows if values[i] is not ABSENT]
        fill = given[0] if given and len({json.dumps(v) for v in given}) == 1 else None
        for i in rows:
            if values[i] is ABSENT:
                values[i] = fill
    return values


def varied_keys(runs: pd.DataFrame, keys: Iterable[str]) -> list[str]:
    """The keys whose value is not the same in every row (a key absent in some rows counts),
    record-keeping keys left out."""
    return [k for k in keys if k in runs and k not in RECORD_KEEPING and runs[k].nunique(dropna=False) > 1]


def is_missing(value) -> bool:
    """None, NaN and pd.NA: how a config key absent from a run shows in a frame."""
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def format_knob(key: str, value) -> str:
    """How tables and legends show a value of `key`: a `_target_` by its class name (Adam, not
    torch.optim.Adam), any other as format_value does."""
    if key.rsplit(".", 1)[-1] == "_target_" and isinstance(value, str):
        return value.rsplit(".", 1)[-1]
    return format_value(value)


def format_value(value) -> str:
    """How a config value is written on the command line: [200], 0.1, none."""
    if isinstance(value, tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if is_missing(value):
        return "none"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):g}"
    return str(value)

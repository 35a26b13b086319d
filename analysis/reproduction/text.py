"""The report's wording: claims.yaml's templates filled with a claim's numbers."""

from __future__ import annotations

import math
import string
from collections.abc import Mapping, Sequence

import pandas as pd

from analysis.knobs import format_value, is_missing


def _num(value, digits: str = "3") -> str:
    """Significant digits; '–' for a missing value."""
    if is_missing(value):
        return "–"
    value = float(value)
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return "0" if value == 0 else f"{value:.{digits}g}"


def minutes(seconds) -> str:
    if is_missing(seconds) or math.isnan(seconds):
        return "–"
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"  # not "0.0 min" for 3 s


def _dash(fn):
    return lambda v, arg: "–" if is_missing(v) else fn(v, arg)


FORMATS = {
    "num": lambda v, arg: _num(v, arg or "3"),
    "acc": _dash(lambda v, arg: f"{float(v):.3f}"),
    "int": _dash(lambda v, arg: str(int(v))),
    "count": _dash(lambda v, arg: f"{int(round(float(v))):,}"),
    "time": lambda v, arg: minutes(v),
    "hours": lambda v, arg: format(float(v) / 3600, arg),
    "value": lambda v, arg: format_value(v),
    "pts": _dash(lambda v, arg: format(100 * float(v), arg)),
    "opt": lambda v, arg: "" if is_missing(v) else f" ({v})",
}


class Whole(Exception):
    """A field whose `nan=`/`inf=` text stands for the whole template."""


class Skip(Exception):
    """A missing number in a template that is left out when its numbers are missing."""


class _Formatter(string.Formatter):
    def __init__(self, skip_missing: bool):
        super().__init__()
        self.skip_missing = skip_missing

    def format_field(self, value, spec: str) -> str:
        while spec.startswith(("nan=", "inf=")):
            head, _, spec = spec.partition("|")
            if head.startswith("nan=") and is_missing(value):
                raise Whole(head[4:])
            if head.startswith("inf=") and not is_missing(value) and math.isinf(float(value)):
                raise Whole(head[4:])
        if self.skip_missing and is_missing(value):
            raise Skip
        name, _, arg = spec.partition(":")
        return FORMATS[name](value, arg) if name in FORMATS else format(value, spec)


def fill(template, fields: Mapping, frames: Mapping | None = None, skip_missing: bool = False) -> str | None:
    """A template (a string, a {case: ...} choice or an {each: ...} list) filled from `fields`;
    None for a skip_missing template whose numbers are missing."""
    if isinstance(template, Mapping) and "case" in template:
        chosen = fields[template["case"]]
        return fill(
            template[chosen] if chosen in template else template["else"], fields, frames, skip_missing
        )
    if isinstance(template, Mapping):
        rows = (frames or {})[template["of"]]
        items = [fill(template["each"], {**fields, **row}, frames) for row in rows.to_dict("records")]
        return template.get("sep", ", ").join(items) or template.get("empty", "")
    try:
        return _Formatter(skip_missing).vformat(template, (), fields)
    except Whole as whole:
        return str(whole)
    except Skip:
        return None


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def frame_table(spec: Mapping, rows: pd.DataFrame, fields: Mapping, frames: Mapping) -> str:
    """A table of claims.yaml (`columns`: header template -> cell template; `knobs`: the varied
    knobs first, by value) over the rows of a frame."""
    records = rows.to_dict("records")
    first = {**fields, **(records[0] if records else {})}
    knobs = list(fields["knobs_varied"]) if spec.get("knobs") else []
    header = [*knobs, *(fill(h, first) for h in spec["columns"])]
    body = [
        [
            *(format_value(row[k]) for k in knobs),
            *(fill(c, {**fields, **row}, frames) for c in spec["columns"].values()),
        ]
        for row in records
    ]
    return table(header, body)

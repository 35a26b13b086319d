"""Reducers and diagnostics on the tidy tables of analysis.load.

Every function takes `curves` (one row per run x epoch) or `runs` (one row per run) and
returns a DataFrame, so they work the same on a loaded sweep and on hand-built frames.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Sequence
from statistics import NormalDist

import numpy as np
import pandas as pd

# The splits a metrics line logs, in its order (docs/run-record.md): `<split>_<m>` for the loss and
# each name m in trainer.metrics (acc, top5, ...); val_* only in runs with a validation split.
SPLIT_NAMES = {"train": "train", "val": "validation", "test": "test"}
SPLIT_METRIC = re.compile(r"^(train|val|test)_(?!gen_gap)[a-z0-9_]+$")


def held_out_split(frame: pd.DataFrame) -> str:
    """ "val" when some run of `frame` (curves or runs) logged a validation split, else "test"."""
    for column in ("val_loss", "val_acc", "final_val_loss", "final_val_acc"):
        if column in frame and frame[column].notna().any():
            return "val"
    if "n_val" in frame and (pd.to_numeric(frame["n_val"], errors="coerce").fillna(0) > 0).any():
        return "val"
    return "test"


def counterpart(metric: str, split: str) -> str | None:
    """The same reduction of the same metric on `split`: final_val_acc -> final_test_acc; None
    when `metric` names no split."""
    match = re.match(r"^((?:final|best|min)_)?(train|val|test)_(.+)$", metric)
    if not match or match.group(2) == split:
        return None
    return f"{match.group(1) or ''}{split}_{match.group(3)}"


def lower_is_better(metric: str) -> bool:
    """Losses, gaps and times go down, accuracies go up; anything else must be said explicitly."""
    name = metric.lower()
    if "gap" in name:  # before "acc": final_gen_gap_acc is a gap between accuracies
        return True
    if "acc" in name or re.search(r"(^|_)top\d+($|_)", name):  # top5: an accuracy too
        return False
    if "loss" in name or name.endswith("_s"):
        return True
    raise ValueError(f"cannot tell whether {metric!r} should be high or low: pass higher_is_better")


def _t_coverage(t: float, dof: int) -> float:
    """P(|T| < t) for Student's t with integer dof: Abramowitz & Stegun 26.7.3 (odd), 26.7.4 (even)."""
    theta = math.atan(t / math.sqrt(dof))
    cos2, sin = math.cos(theta) ** 2, math.sin(theta)
    if dof % 2 == 0:
        term = total = 1.0
        for k in range(1, (dof - 2) // 2 + 1):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return sin * total
    if dof == 1:
        return 2 * theta / math.pi
    term = total = math.cos(theta)
    for k in range(1, (dof - 3) // 2 + 1):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + sin * total)


@functools.lru_cache(maxsize=512)
def t_critical(level: float, dof: int) -> float:
    """The t with P(|T| < t) = level: the half-width of a `level` CI is t * std / sqrt(n)."""
    if dof < 1:
        return math.nan
    z = NormalDist().inv_cdf((1 + level) / 2)
    if dof > 1000:  # first Cornish-Fisher term: error < 1e-6 here, and the series gets long
        return z + (z**3 + z) / (4 * dof)
    lo, hi = 0.0, 2 * z
    while _t_coverage(hi, dof) < level:
        hi *= 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_coverage(mid, dof) < level else (lo, mid)
    return (lo + hi) / 2


def seed_aggregate(
    frame: pd.DataFrame, values: str | Sequence[str], by: Sequence[str], level: float = 0.95
) -> pd.DataFrame:
    """Per group of `by` (the varied keys but the seed, plus "epoch" for curves: a configuration's
    seeds): `<value>_mean`, `_std`, `_n`, a `level` t-interval `_ci_lo`, `_ci_hi` (NaN for N = 1:
    no spread to measure) and the seeds' range `_min`, `_max`, for each of `values`."""
    values = [values] if isinstance(values, str) else list(values)
    by = list(by)
    keys = by if by else np.zeros(len(frame), dtype=int)
    stats = frame.groupby(keys, dropna=False, sort=False, observed=True)[values].agg(
        ["mean", "std", "count", "min", "max"]
    )
    out = stats.index.to_frame(index=False) if by else pd.DataFrame(index=range(len(stats)))
    for value in values:
        mean, std = stats[(value, "mean")].to_numpy(), stats[(value, "std")].to_numpy()
        n = stats[(value, "count")].to_numpy().astype("int64")
        t = np.array([t_critical(level, int(k) - 1) for k in n], dtype=float)
        half = t * std / np.sqrt(np.maximum(n, 1))
        out[f"{value}_mean"], out[f"{value}_std"], out[f"{value}_n"] = mean, std, n
        out[f"{value}_ci_lo"], out[f"{value}_ci_hi"] = mean - half, mean + half
        for bound in ("min", "max"):  # the seeds' range
            out[f"{value}_{bound}"] = stats[(value, bound)].to_numpy()
    return out


def add_gaps(curves: pd.DataFrame, split: str | None = None) -> pd.DataFrame:
    """Generalisation gaps per epoch: gen_gap_loss = held-out - train loss, gen_gap_acc = train -
    held-out acc, the held-out split being `split` (default: val where the runs hold one out, else
    test: the gap a sweep diagnoses is measured on the split it selects on)."""
    held = split or held_out_split(curves)
    extra = {}
    if {f"{held}_loss", "train_loss"} <= set(curves.columns):
        extra["gen_gap_loss"] = curves[f"{held}_loss"] - curves["train_loss"]
    if {f"{held}_acc", "train_acc"} <= set(curves.columns):
        extra["gen_gap_acc"] = curves["train_acc"] - curves[f"{held}_acc"]
    return curves.assign(**extra)


def reduce_curves(curves: pd.DataFrame, metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Per run (index `run`): epochs_done, and for each metric (default: every `<split>_<m>`
    column, train_loss ... test_top5) its final value, its best value (min for a loss, max for an
    accuracy) and the first epoch reaching it; final gaps (on the split add_gaps used).

    `final_*` is the last logged epoch, even if it is NaN (a diverged run's last line).
    """
    if metrics is None:
        metrics = [str(c) for c in curves.columns if SPLIT_METRIC.match(str(c))]
    by_run = curves.groupby("run", sort=False)
    out = pd.DataFrame({"epochs_done": by_run["epoch"].max()})
    last = curves.loc[by_run["epoch"].idxmax().to_numpy()].set_index("run") if len(curves) else curves
    for metric in [m for m in metrics if m in curves]:
        out[f"final_{metric}"] = last[metric].astype("float64")
        finite = curves.loc[curves[metric].notna(), ["run", "epoch", metric]]
        group = finite.groupby("run", sort=False)[metric]
        # idxmin/idxmax return the first occurrence: the earliest epoch reaching the best value.
        at = group.idxmin() if lower_is_better(metric) else group.idxmax()
        best = finite.loc[at.to_numpy()].set_index("run")
        name = f"min_{metric}" if lower_is_better(metric) else f"best_{metric}"  # summary.json's names
        out[name] = best[metric].astype("float64")
        out[f"{name}_epoch"] = best["epoch"].astype("Int64")
    held = held_out_split(curves)  # as add_gaps chooses
    if {f"final_{held}_loss", "final_train_loss"} <= set(out.columns):
        out["final_gen_gap_loss"] = out[f"final_{held}_loss"] - out["final_train_loss"]
    if {f"final_{held}_acc", "final_train_acc"} <= set(out.columns):
        out["final_gen_gap_acc"] = out["final_train_acc"] - out[f"final_{held}_acc"]
    out.index = out.index.astype("str")
    return out


def _value_at(curves: pd.DataFrame, epochs: pd.Series, metric: str) -> pd.Series:
    """curves[metric] of each run at the epoch given per run by `epochs` (index run)."""
    table = curves.set_index(["run", "epoch"])[metric]
    keys = [(run, int(e)) for run, e in epochs.dropna().items()]
    values = (
        table.reindex(pd.MultiIndex.from_tuples(keys, names=["run", "epoch"])) if keys else table.iloc[:0]
    )
    return pd.Series(values.to_numpy(), index=[k[0] for k in keys], dtype="float64").reindex(epochs.index)


def loss_acc_decoupling(
    curves: pd.DataFrame, min_acc_gain: float = 0.005, min_loss_rise: float = 0.02, split: str = "test"
) -> pd.DataFrame:
    """The lecture's "test loss goes up while test accuracy still improves", per run, on `split`
    (the report passes val where the runs hold one out).

    `decoupled` is True when the accuracy peaks after the loss bottoms out, gaining at least
    `min_acc_gain` (absolute) after the loss minimum while the loss at the accuracy peak is at
    least `min_loss_rise` (relative) above its minimum: the model keeps getting more samples right
    while growing over-confident on the ones it gets wrong.
    """
    loss, acc = f"{split}_loss", f"{split}_acc"
    reduced = reduce_curves(curves, (loss, acc))
    out = reduced[[f"min_{loss}", f"min_{loss}_epoch", f"best_{acc}", f"best_{acc}_epoch"]].copy()
    out[f"{acc}_at_min_loss"] = _value_at(curves, out[f"min_{loss}_epoch"], acc)
    out[f"{loss}_at_best_acc"] = _value_at(curves, out[f"best_{acc}_epoch"], loss)
    out["epochs_apart"] = out[f"best_{acc}_epoch"] - out[f"min_{loss}_epoch"]
    out["acc_gain_after_min_loss"] = out[f"best_{acc}"] - out[f"{acc}_at_min_loss"]
    out["loss_rise_at_best_acc"] = out[f"{loss}_at_best_acc"] / out[f"min_{loss}"] - 1
    decoupled = (out["epochs_apart"] > 0) & (out["acc_gain_after_min_loss"] >= min_acc_gain)
    out["decoupled"] = (
        (decoupled & (out["loss_rise_at_best_acc"] >= min_loss_rise)).fillna(False).astype(bool)
    )
    return out


def capacity_verdict(
    curves: pd.DataFrame, *, min_train_acc: float = 0.999, max_train_loss: float | None = None
) -> pd.DataFrame:
    """Did each run fit (memorise) its training set — train accuracy >= min_train_acc, and, when
    given, train loss <= max_train_loss — and from which epoch? The lecture's capacity check on a
    small subset: a model that cannot memorise a few hundred images is too small (or its
    optimiser is broken). Accuracy alone decides by default: a net that gets every training image
    right has memorised them, whatever its loss is still shedding."""
    fit = curves["train_acc"] >= min_train_acc
    if max_train_loss is not None:
        fit &= curves["train_loss"] <= max_train_loss
    by_run = curves.groupby("run", sort=False)
    out = by_run.agg(min_train_loss=("train_loss", "min"), best_train_acc=("train_acc", "max"))
    out["epochs_done"] = by_run["epoch"].max()
    first_fit = curves[fit.fillna(False).astype(bool)].groupby("run", sort=False)["epoch"].min()
    out["fit_epoch"] = first_fit.reindex(out.index).astype("Int64")
    out["fits"] = out["fit_epoch"].notna().astype(bool)
    out["verdict"] = [
        f"fits its training set from epoch {int(row.fit_epoch)}"
        if row.fits
        else f"does not fit in {int(row.epochs_done)} epochs "
        f"(min train loss {row.min_train_loss:.3g}, best train acc {row.best_train_acc:.1%})"
        for row in out.itertuples()
    ]
    out.index = out.index.astype("str")
    return out


# The full training set's capacity check (the lecture: neither overfit nor underfit), on final
# accuracies: a configuration that cannot reach UNDERFIT_TRAIN_ACC on its own training images
# underfits; one whose train accuracy exceeds its test accuracy by more than OVERFIT_GAP overfits.
UNDERFIT_TRAIN_ACC = 0.75
OVERFIT_GAP = 0.20


def fit_state(train_acc: float, test_acc: float) -> str:
    """The run's state: "underfits", "overfits" or "neither"; "" when an accuracy is unknown.
    `test_acc`: the held-out accuracy (the validation split's where the runs have one)."""
    if not (math.isfinite(train_acc) and math.isfinite(test_acc)):
        return ""
    if train_acc < UNDERFIT_TRAIN_ACC:
        return "underfits"
    return "overfits" if train_acc - test_acc > OVERFIT_GAP else "neither"


def _sampling_error(runs: pd.DataFrame, metric: str, accuracy: pd.Series) -> pd.Series:
    """The binomial standard error of an accuracy `metric` measured on the images of its split
    (the runs' median `n_test` or `n_train`); NaN for other metrics or an unknown count."""
    name = metric.lower()
    split = next((s for s in SPLIT_NAMES if f"{s}_acc" in name or re.search(rf"{s}_top\d+", name)), None)
    if split is None or "gap" in name or f"n_{split}" not in runs or runs[f"n_{split}"].isna().all():
        return pd.Series(np.nan, index=accuracy.index)
    images = float(runs[f"n_{split}"].median())
    return np.sqrt(accuracy.clip(0, 1) * (1 - accuracy.clip(0, 1)) / images)


def rank_configs(
    runs: pd.DataFrame,
    metric: str,
    by: Sequence[str],
    statuses: Sequence[str] | None = ("completed",),
    higher_is_better: bool | None = None,
    level: float = 0.95,
) -> pd.DataFrame:
    """Configurations (rows sharing `by`: the seeds of one config) ranked by mean `metric`, over
    the runs whose status is in `statuses` (a diverged seed has no final accuracy).

    Means that differ by less than the larger `noise` are a tie: not evidence. The noise is the
    seed-to-seed std; a configuration of one seed has none, so for an accuracy it is the binomial
    standard error over the images it was measured on (`n_test`/`n_train`: ±0.47 points at 68% on
    10,000 test images), else 0. Ties share the rank of the better configuration (1, 1, 3, ...).
    """
    pool = runs if statuses is None else runs[runs["status"].isin(list(statuses))]
    pool = pool[pool[metric].notna()]
    higher = (not lower_is_better(metric)) if higher_is_better is None else higher_is_better
    stats = seed_aggregate(pool, metric, by, level)
    stats = stats.rename(columns={f"{metric}_{s}": s for s in ("mean", "std", "n", "ci_lo", "ci_hi")})
    stats = stats.sort_values("mean", ascending=not higher, kind="stable").reset_index(drop=True)
    stats["noise"] = stats["std"].fillna(_sampling_error(pool, metric, stats["mean"])).fillna(0.0)
    ranks, leader = [], None
    spread = stats["noise"].to_numpy()
    means = stats["mean"].to_numpy()
    for i in range(len(stats)):
        if leader is None or abs(means[i] - means[leader]) > max(spread[i], spread[leader]):
            leader = i
        ranks.append(leader + 1)
    stats.insert(0, "rank", np.array(ranks, dtype="int64"))
    stats.insert(1, "tied", stats["rank"].duplicated(keep=False))
    stats.insert(2, "metric", metric)
    return stats

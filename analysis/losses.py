"""Read losses.npz (per-sample loss histograms, docs/run-record.md) into long DataFrames."""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

# A truncated or bit-flipped zip (BadZipFile: a bad CRC, no central directory; zlib.error), a
# pickled object, a missing array, arrays of the wrong shape or kind (IndexError, TypeError).
UNREADABLE = (OSError, ValueError, EOFError, KeyError, IndexError, TypeError, zipfile.BadZipFile, zlib.error)
DISTRIBUTION_DTYPES = {"run": "str", "epoch": "int64", "split": "str", "bin": "int64", "kind": "str"}
DISTRIBUTION_DTYPES |= {"lo": "float64", "hi": "float64", "count": "int64", "fraction": "float64"}


def empty_distributions() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype=t) for c, t in DISTRIBUTION_DTYPES.items()})


def read_losses(path: Path, run: str) -> tuple[pd.DataFrame | None, pd.DataFrame | None, str | None]:
    """(histograms, quantiles, None) of one losses.npz in long form, or (None, None, reason).

    A missing file is normal (a run before its first kept epoch): its reason is None.
    """
    if not path.exists():
        return None, None, None
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
        return _hist_frame(arrays, run), _quantile_frame(arrays, run), None
    except UNREADABLE as err:
        return None, None, f"damaged: losses.npz: does not load ({type(err).__name__}: {err})"


def read_sample_losses(run_dir: Path, epoch: int) -> dict[str, np.ndarray] | None:
    """The raw per-sample losses of one kept epoch (sample_losses/epoch_NNN.npz), data-set order:
    {"train": (N_train,), "test": (N_test,)} float32, or None when the run did not keep them
    (trainer.keep_sample_losses=false) or the file is unreadable."""
    path = Path(run_dir) / "sample_losses" / f"epoch_{int(epoch):03d}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {split: npz[split] for split in ("train", "test")}
    except UNREADABLE:
        return None


def _hist_frame(a: dict, run: str) -> pd.DataFrame:
    """Columns: run, epoch, split, bin, kind, lo, hi, count, fraction (of that split's samples)."""
    epochs, edges = a["epochs"].astype("int64"), a["bin_edges"].astype("float64")
    k = len(edges) - 1
    # Bin layout: 0 = exact zeros, 1 = (0, edges[0]), 2..k+1 = the histogram, k+2 = >= edges[-1].
    lo = np.concatenate([[0.0, 0.0], edges[:-1], [edges[-1]]])
    hi = np.concatenate([[0.0, edges[0]], edges[1:], [np.inf]])
    kind = np.array(["zero", "under"] + ["hist"] * k + ["over"])
    frames = []
    for split in ("train", "test"):
        counts = np.column_stack(
            [a[f"{split}_zero"], a[f"{split}_under"], a[f"{split}_hist"], a[f"{split}_over"]]
        )
        totals = counts.sum(axis=1, keepdims=True)
        fraction = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
        n_bins = counts.shape[1]
        frames.append(
            pd.DataFrame(
                {
                    "run": run,
                    "epoch": np.repeat(epochs, n_bins),
                    "split": split,
                    "bin": np.tile(np.arange(n_bins), len(epochs)),
                    "kind": np.tile(kind, len(epochs)),
                    "lo": np.tile(lo, len(epochs)),
                    "hi": np.tile(hi, len(epochs)),
                    "count": counts.ravel().astype("int64"),
                    "fraction": fraction.ravel(),
                }
            )
        )
    frame = pd.concat(frames, ignore_index=True)
    return frame.astype({"run": "str", "split": "str", "kind": "str"})


def _quantile_frame(a: dict, run: str) -> pd.DataFrame:
    levels = a["quantile_levels"]
    frames = []
    for split in ("train", "test"):
        frame = pd.DataFrame(a[f"{split}_quantiles"], columns=[f"q{q:g}" for q in levels])
        frame.insert(0, "mean", a[f"{split}_mean"])
        frame.insert(0, "split", split)
        frame.insert(0, "epoch", a["epochs"].astype("int64"))
        frame.insert(0, "run", run)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True).astype({"run": "str", "split": "str"})

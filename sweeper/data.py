"""The data set of a run as uint8 tensors resident on the training device, and the batches drawn
from them: a device-side permutation indexed per batch, whole batches augmented on the device (no
per-sample Python, no host-device copy per step). `load` holds `data.val_size` images out (by
`data.seed`) before any `data.train_size` subset; the statistics are the training part's only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import torch
from omegaconf import OmegaConf

from sweeper import datasets
from sweeper.data_cache import DataError, _described, first_line  # noqa: F401 -- the data's errors, for callers
from sweeper.datasets import CIFAR10_CLASSES, cifar10  # noqa: F401 -- for callers
from sweeper.synthetic import synthetic, synthetic_cached  # noqa: F401 -- for callers

IMAGE_SIZE = 32  # CIFAR's and the synthetic set's; a run's own is Data.image_size
KINDS = (*datasets.TORCHVISION, "image_folder", "synthetic")
REQUIRED_KEYS = ("name", "seed", "normalize", "augment")


@dataclass
class Data:
    train_x: torch.Tensor  # (N, C, H, W) uint8, or float32 normalised once `stage`d
    train_y: torch.Tensor  # (N,) int64
    val_x: torch.Tensor  # 0 rows without data.val_size
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: torch.Tensor  # (1, C, 1, 1) float32, in [0, 255] units
    std: torch.Tensor

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int | tuple[int, int]:
        """H where the images are square, (H, W) otherwise."""
        h, w = self.train_x.shape[-2:]
        return h if h == w else (h, w)

    def to(self, device) -> Data:
        keys = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y", "mean", "std")
        return Data(classes=self.classes, **{k: getattr(self, k).to(device) for k in keys})


_MEMO: dict[str, Data] = {}


def load(cfg) -> Data:
    """The `data` section's data set on the CPU, split, subset and statistics applied. Memoised
    (the last config only): the jobs of a sweep run in one process decode or generate it once."""
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    if key not in _MEMO:
        _MEMO.clear()
        _MEMO[key] = _load(cfg)
    return _MEMO[key]


def _load(cfg) -> Data:
    arrays = datasets.read(cfg)
    train_x, train_y = arrays["train_x"], arrays["train_y"]
    where = f"the training set at data.root={cfg.root}" if cfg.get("root") else "the training set"
    n_val, problem = val_count(cfg.get("val_size"), len(train_y), where)
    if problem:  # the pre-check knows the release's size only: a smaller copy shows up here
        raise DataError(problem)
    train_size = cfg.get("train_size")
    if train_size is not None and train_size > len(train_y) - n_val:
        raise DataError(f"data.train_size={train_size} is invalid: {where} has only {len(train_y) - n_val} images" + (f" after data.val_size={cfg.val_size}" if n_val else ""))  # fmt: skip
    # Seeded random picks, sorted back into the set's order: data sets are often sorted by class.
    val_x, val_y = train_x[:0], train_y[:0]
    if n_val:
        order = torch.randperm(len(train_y), generator=torch.Generator().manual_seed(int(cfg.seed)))
        held, rest = order[:n_val].sort().values, order[n_val:].sort().values
        val_x, val_y, train_x, train_y = train_x[held], train_y[held], train_x[rest], train_y[rest]
    if train_size is not None and train_size < len(train_y):
        g = torch.Generator().manual_seed(int(cfg.seed))
        keep = torch.randperm(len(train_y), generator=g)[: int(train_size)].sort().values
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.normalize:  # the training part's statistics only: the held-out images stay unseen
        pixels = train_x.float()
        mean, std = pixels.mean(dim=(0, 2, 3), keepdim=True), pixels.std(dim=(0, 2, 3), keepdim=True)
    else:  # scale to [0, 1] only
        mean, std = torch.zeros(1, train_x.shape[1], 1, 1), torch.full((1, train_x.shape[1], 1, 1), 255.0)
    test_x, test_y = arrays["test_x"], arrays["test_y"]
    return Data(train_x, train_y, val_x, val_y, test_x, test_y, list(arrays["classes"]), mean, std)


def val_count(val_size, n: int, where: str = "the training set") -> tuple[int, str | None]:
    """(images held out, None) for data.val_size over n training images, or (0, why not)."""
    allowed = "must be null, a count >= 1 or a fraction in (0, 1)"
    if val_size is None:
        return 0, None
    if isinstance(val_size, bool) or not isinstance(val_size, int | float) or not math.isfinite(val_size):
        return 0, f"data.val_size={val_size!r} is invalid: {allowed}"
    if isinstance(val_size, float) and not 0 < val_size < 1:
        return 0, f"data.val_size={val_size} is invalid: {allowed} (a count is an integer)"
    if isinstance(val_size, int) and val_size < 1:
        return 0, f"data.val_size={val_size} is invalid: {allowed}"
    count = round(val_size * n) if isinstance(val_size, float) else val_size
    if count == 0:
        return 0, f"data.val_size={val_size} is invalid: it holds out no image of the {n} images of {where}"
    if count >= n:
        return 0, f"data.val_size={val_size} is invalid: it holds out {count} of the {n} images of {where} and leaves none to train on"  # fmt: skip
    return count, None


# ----------------------------------------------------------------------------- the pre-check


def check(cfg) -> int:
    """The `data` section checked before any job starts; the run's training-set size after the
    split and the subset. Raises sweeper.validate.ConfigError in one line."""
    from sweeper.validate import ConfigError

    d = cfg.data
    missing = [k for k in REQUIRED_KEYS if k not in d]
    if missing:
        raise ConfigError(f"data.{missing[0]} is missing: a data option sets {', '.join(REQUIRED_KEYS)}")
    if not d.get("_target_") and d.name not in KINDS:
        raise ConfigError(f"data.name={d.name!r} is invalid: allowed values are {', '.join(KINDS)} (or a data._target_ of your own)")  # fmt: skip
    for key in ("normalize", "augment", *(("download",) if "download" in d else ())):
        if not isinstance(d[key], bool):
            raise ConfigError(f"data.{key}={d[key]!r} is invalid: must be true or false")
    if isinstance(d.seed, bool) or not isinstance(d.seed, int) or not 0 <= d.seed <= 2**64 - 1:
        raise ConfigError(f"data.seed={d.seed!r} is invalid: must be an integer >= 0 and <= {2**64 - 1}")
    cache_dir = d.get("cache_dir")
    if cache_dir is not None and not (isinstance(cache_dir, str) and cache_dir.strip()):
        raise ConfigError(
            f"data.cache_dir={cache_dir!r} is invalid: must be a directory, or null for no cache"
        )
    n = _train_count(d, ConfigError)
    n_val, problem = val_count(d.get("val_size"), n)
    if problem:
        raise ConfigError(problem)
    train_size = d.get("train_size")
    if train_size is None:
        return n - n_val
    if isinstance(train_size, bool) or not isinstance(train_size, int) or not 1 <= train_size <= n - n_val:
        raise ConfigError(f"data.train_size={train_size!r} is invalid: must be an integer >= 1 and <= {n - n_val}" + (f" (the {n} training images less data.val_size={d.val_size})" if n_val else ""))  # fmt: skip
    return train_size


def _train_count(d, ConfigError) -> int:
    """The training set's size before the split: generated, counted, the release's, or (a user's
    data set) materialised once here, into the cache the jobs read."""
    if d.get("_target_"):
        try:
            return len(datasets.read(d)["train_y"])
        except DataError as e:
            raise ConfigError(str(e)) from None
    if d.name == "synthetic":
        for key in ("generated_train", "generated_test"):
            if isinstance(d[key], bool) or not isinstance(d[key], int) or d[key] < 1:
                raise ConfigError(f"data.{key}={d[key]!r} is invalid: must be an integer >= 1")
        noise = d.label_noise
        if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise <= 1:
            raise ConfigError(f"data.label_noise={noise!r} is invalid: must be a number >= 0 and <= 1")
        return d.generated_train
    root = d.get("root")
    try:
        return datasets.train_count(d.name, root, d.get("download", False), d.get("cache_dir"))
    except DataError as e:
        raise ConfigError(f"data.root={root if root else repr(root)} is invalid: {e}") from None


@dataclass
class Extent:  # what a data set takes, known before it is loaded
    n_train: int  # before the split
    n_test: int
    shape: tuple[int, int, int]  # (C, H, W)
    classes: int


def extent(d) -> Extent | None:
    """The data set's extent from its config (and a look at its files); None where unknown."""
    try:
        if d.get("_target_"):
            arrays = datasets.read(d)
            return Extent(len(arrays["train_y"]), len(arrays["test_y"]), tuple(arrays["train_x"].shape[1:]), len(arrays["classes"]))  # fmt: skip
        if d.name == "synthetic":
            return Extent(int(d.generated_train), int(d.generated_test), (3, IMAGE_SIZE, IMAGE_SIZE), 10)
        if d.name == "image_folder":
            return datasets.folder_extent(d.root, Extent)
        spec = datasets.TORCHVISION[d.name]
        return Extent(*spec.sizes, spec.shape, spec.classes)
    except (DataError, KeyError, OSError):
        return None


# ----------------------------------------------------------------------------- batches


def prepare(x_uint8: torch.Tensor, data: Data, dtype=torch.float32) -> torch.Tensor:
    if x_uint8.is_floating_point():  # staged: normalised once already
        return x_uint8.to(dtype)
    return (x_uint8.to(dtype) - data.mean.to(dtype)) / data.std.to(dtype)


def stage(data: Data, memory_format=torch.contiguous_format) -> Data:
    """The data set normalised to float32 once, in the training layout, on its device: a batch is
    then one index op instead of five kernels per step, bitwise what `prepare` gives per batch (the
    same elementwise ops, done earlier), for 4x the uint8 memory; the uint8 copy stays the cache."""

    def normalised(x):
        # Layout first (on uint8, cheap), then one float copy normalised in place: half the peak memory.
        out = x.contiguous(memory_format=memory_format).to(torch.float32)
        return out.sub_(data.mean.to(torch.float32)).div_(data.std.to(torch.float32))

    return replace(
        data, train_x=normalised(data.train_x), val_x=normalised(data.val_x), test_x=normalised(data.test_x)
    )


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, fill=0.0) -> torch.Tensor:
    """Random crop (padding of `pad` px filled with `fill`) and horizontal flip, for a whole batch.
    `fill` is black in x's units ((1, C, 1, 1)): a plain 0 after normalising would pad with the
    mean colour, not black as torchvision's RandomCrop(padding=4) does on the raw pixels."""
    n, c, h, w = x.shape
    padded = (
        torch.as_tensor(fill, dtype=x.dtype, device=x.device).expand(n, c, h + 2 * pad, w + 2 * pad).clone()
    )
    padded[:, :, pad : pad + h, pad : pad + w] = x
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(c, device=x.device)[None, :, None, None]
    cropped = padded[batch, chans, rows, cols]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def train_batches(
    data: Data, batch_size: int, generator, do_augment: bool, memory_format=torch.contiguous_format
):
    """One epoch of (x, y) training batches in a fresh random order; the last batch may be short."""
    n = len(data.train_y)
    order = torch.randperm(n, device=data.train_y.device, generator=generator)
    # Black as training sees it: 0 in every channel, normalised like x.
    zero = torch.zeros((1, data.in_channels, 1, 1), dtype=torch.uint8, device=data.mean.device)
    fill = prepare(zero, data) if do_augment else None
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x = prepare(data.train_x[idx], data)
        if do_augment:
            x = augment(x, generator, fill=fill)
        yield x.contiguous(memory_format=memory_format), data.train_y[idx]


def eval_batches(
    x_uint8: torch.Tensor, y: torch.Tensor, data: Data, batch_size: int, memory_format=torch.contiguous_format
):
    for start in range(0, len(y), batch_size):
        x = prepare(x_uint8[start : start + batch_size], data)
        yield x.contiguous(memory_format=memory_format), y[start : start + batch_size]

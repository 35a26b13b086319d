"""Data sets as uint8 tensors resident on the training device, and the batches drawn from them.

Two sources:
- `cifar10`: the real data set, from torchvision's download, a local copy in the standard
  python-batches format (`cifar-10-batches-py/`), an ImageFolder tree (`train/<class>/*.jpg`,
  `test/...`) or a `.tar.gz` of such a tree. Decoding happens once; the uint8 arrays are cached
  as a tensor file so the jobs of a sweep do not decode 60k images each.
- `synthetic`: a CIFAR-shaped, 10-class set generated from a seed in a second, with no download.
  It is learnable but not trivially (class textures shifted, blended with a distractor class,
  noisy, and a fraction of training labels wrong), so a convnet overfits it the way the lecture's
  net overfits CIFAR-10: train loss collapses, test loss turns up, per-sample losses split.

The hot path (`train_batches`) indexes a device-side permutation and augments whole batches on
the device: no per-sample Python, no host-device copies per step.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import io
import json
import logging
import os
import pickle
import socket
import tarfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

log = logging.getLogger("sweeper")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR10_SIZES = {"train": 50_000, "test": 10_000}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SIZE = 32  # both sources are CIFAR-shaped: 3x32x32


class DataError(RuntimeError):
    """The data cannot be found or read; the message says where to put it."""


@dataclass
class Data:
    train_x: torch.Tensor  # (N, C, H, W) uint8, or float32 normalised once `stage`d
    train_y: torch.Tensor  # (N,) int64
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: torch.Tensor  # (1, C, 1, 1) float32, in [0, 255] units
    std: torch.Tensor

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    @property
    def image_size(self) -> int:
        return self.train_x.shape[-1]

    def to(self, device) -> Data:
        move = {
            k: getattr(self, k).to(device) for k in ("train_x", "train_y", "test_x", "test_y", "mean", "std")
        }
        return Data(classes=self.classes, **move)


def dataset_size(cfg) -> int:
    """Number of training images before any subset: what data.train_size is checked against."""
    return CIFAR10_SIZES["train"] if cfg.name == "cifar10" else int(cfg.n_train)


_MEMO: dict[str, Data] = {}


def load(cfg) -> Data:
    """The data set named by the `data` config group, on the CPU, subset and statistics applied.

    Memoised per process (the last data config only): the jobs of a sweep that run in one
    process -- the basic launcher, or a pool worker -- decode or generate it once.
    """
    key = json.dumps(OmegaConf.to_container(cfg, resolve=True), sort_keys=True)
    if key not in _MEMO:
        _MEMO.clear()
        _MEMO[key] = _load(cfg)
    return _MEMO[key]


def _load(cfg) -> Data:
    if cfg.name == "synthetic":
        train_x, train_y, test_x, test_y = synthetic_cached(
            cfg.n_train, cfg.n_test, cfg.seed, cfg.label_noise, cfg.get("cache_dir")
        )
        classes = [f"class{i}" for i in range(10)]
    else:
        train_x, train_y, test_x, test_y = cifar10(cfg.root, cfg.download, cfg.cache_dir)
        classes = CIFAR10_CLASSES
    if cfg.train_size is not None and cfg.train_size < len(train_y):
        # A seeded random subset: CIFAR copies are often sorted by class.
        g = torch.Generator().manual_seed(int(cfg.seed))
        keep = torch.randperm(len(train_y), generator=g)[: int(cfg.train_size)].sort().values
        train_x, train_y = train_x[keep], train_y[keep]
    if cfg.normalize:
        pixels = train_x.float()
        mean = pixels.mean(dim=(0, 2, 3), keepdim=True)
        std = pixels.std(dim=(0, 2, 3), keepdim=True)
    else:  # scale to [0, 1] only
        mean = torch.zeros(1, train_x.shape[1], 1, 1)
        std = torch.full((1, train_x.shape[1], 1, 1), 255.0)
    return Data(train_x, train_y, test_x, test_y, classes, mean, std)


# ----------------------------------------------------------------------------- batches


def prepare(x_uint8: torch.Tensor, data: Data, dtype=torch.float32) -> torch.Tensor:
    if x_uint8.is_floating_point():  # staged: normalised once already
        return x_uint8.to(dtype)
    return (x_uint8.to(dtype) - data.mean.to(dtype)) / data.std.to(dtype)


def stage(data: Data, memory_format=torch.contiguous_format) -> Data:
    """The data set normalised to float32 once, in the training layout, on its device.

    A batch is then a single index op instead of index, convert, subtract, divide and re-layout:
    on a launch-bound GPU those are kernels per step, on the CPU about 5% of a step. The values
    are bitwise those `prepare` gives per batch (the same elementwise ops, done earlier). Costs
    4x the uint8 memory (CIFAR-10: 0.74 GB), for the run only; the uint8 copy stays the cache.
    """

    def normalised(x):
        # Layout first (on uint8, cheap), then one float copy normalised in place: the same
        # elementwise ops as `prepare`, with half its peak memory.
        out = x.contiguous(memory_format=memory_format).to(torch.float32)
        return out.sub_(data.mean.to(torch.float32)).div_(data.std.to(torch.float32))

    return replace(data, train_x=normalised(data.train_x), test_x=normalised(data.test_x))


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding of `pad` px) and horizontal flip, for a whole batch at once."""
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device)[None, :] + dy[:, None])[:, None, :, None]
    cols = (torch.arange(w, device=x.device)[None, :] + dx[:, None])[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    cropped = padded[batch, chans, rows, cols]
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)


def train_batches(
    data: Data, batch_size: int, generator, do_augment: bool, memory_format=torch.contiguous_format
):
    """One epoch of (x, y) training batches in a fresh random order; the last batch may be short."""
    n = len(data.train_y)
    order = torch.randperm(n, device=data.train_y.device, generator=generator)
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        x = prepare(data.train_x[idx], data)
        if do_augment:
            x = augment(x, generator)
        yield x.contiguous(memory_format=memory_format), data.train_y[idx]


def eval_batches(
    x_uint8: torch.Tensor, y: torch.Tensor, data: Data, batch_size: int, memory_format=torch.contiguous_format
):
    for start in range(0, len(y), batch_size):
        x = prepare(x_uint8[start : start + batch_size], data)
        yield x.contiguous(memory_format=memory_format), y[start : start + batch_size]


# ----------------------------------------------------------------------------- synthetic


def _smooth_field(g: torch.Generator, n: int, channels: int, low: int, size: int) -> torch.Tensor:
    """Random low-resolution noise upsampled bilinearly: blobs of colour at scale size/low."""
    field = torch.randn(n, channels, low, low, generator=g)
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)


def synthetic(n_train: int, n_test: int, seed: int, label_noise: float, size: int = IMAGE_SIZE):
    """A learnable 10-class data set of CIFAR's shape, generated deterministically from `seed`.

    Each class has a prototype (smooth colour blobs plus an oriented grating). An image is its
    class prototype, randomly shifted and scaled, blended with a random other class's prototype,
    plus smooth and pixel noise. A `label_noise` fraction of the training labels is replaced by
    random classes: a net that fits those has memorised, which is what makes test loss rise.
    """
    g = torch.Generator().manual_seed(int(seed))
    k = 10
    yy, xx = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    angles = torch.rand(k, generator=g) * torch.pi
    freqs = 2 * torch.pi * (0.08 + 0.12 * torch.rand(k, generator=g))
    colours = torch.randn(k, 3, 1, 1, generator=g)
    grating = torch.sin(
        freqs[:, None, None] * (xx * torch.cos(angles)[:, None, None] + yy * torch.sin(angles)[:, None, None])
    )
    protos = 0.8 * _smooth_field(g, k, 3, 4, size) + 0.6 * colours * grating[:, None]

    def images(n: int):
        y = torch.randint(0, k, (n,), generator=g)
        other = (y + torch.randint(1, k, (n,), generator=g)) % k
        # Tuned so the lecture's convnet reaches ~0.6 test accuracy and then overfits.
        blend = 0.8 * torch.rand(n, 1, 1, 1, generator=g)
        scale = 0.35 + 0.5 * torch.rand(n, 1, 1, 1, generator=g)
        x = scale * protos[y] + blend * protos[other]
        shifts = torch.randint(-4, 5, (n, 2), generator=g)
        # Roll each image by its own shift: one gather over precomputed index grids.
        rows = (torch.arange(size)[None, :] - shifts[:, :1]) % size
        cols = (torch.arange(size)[None, :] - shifts[:, 1:]) % size
        x = x[
            torch.arange(n)[:, None, None, None],
            torch.arange(3)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        ]
        x = x + 0.8 * _smooth_field(g, n, 3, 8, size) + 0.6 * torch.randn(n, 3, size, size, generator=g)
        pixels = (128 + 45 * x).round().clamp(0, 255).to(torch.uint8)
        return pixels, y

    train_x, train_y = images(int(n_train))
    test_x, test_y = images(int(n_test))
    wrong = torch.rand(len(train_y), generator=g) < label_noise
    train_y = torch.where(wrong, torch.randint(0, k, train_y.shape, generator=g), train_y)
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------- CIFAR-10


def cifar10(root: str, download: bool, cache_dir: str):
    """(train_x, train_y, test_x, test_y) as uint8/int64 tensors, decoded once and cached."""
    src = Path(os.path.expanduser(str(root)))
    if not src.exists() or not _find_format(src):
        if not download:
            raise DataError(
                f"data.root={root}: no CIFAR-10 there. Put the python batches (cifar-10-batches-py/) or an "
                "ImageFolder tree (train/<class>/*.png, test/...) or its .tar.gz there, set data.download=true, "
                "or use data=synthetic"
            )
        _download(src, root)
    arrays = _cached(_cache_path(src, cache_dir), lambda: _decode(src))
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


def _find_format(src: Path) -> str | None:
    if src.is_file() and src.name.endswith((".tar.gz", ".tgz", ".tar")):
        return "tar"
    if (src / "cifar-10-batches-py" / "data_batch_1").exists() or (src / "data_batch_1").exists():
        return "batches"
    if (src / "train").is_dir() and (src / "test").is_dir():
        return "folder"
    return None


def _download(src: Path, root: str) -> None:
    import torchvision

    try:
        torchvision.datasets.CIFAR10(root=str(src), train=True, download=True)
    except Exception as e:  # no network, proxy, disk full: one line says what and where
        raise DataError(
            f"data.root={root}: CIFAR-10 is not there and the download failed ({type(e).__name__}: {e}). "
            "Put the python batches (cifar-10-batches-py/) or an ImageFolder tree (train/<class>/*.png, test/...) "
            "or its .tar.gz at data.root, or use data=synthetic"
        ) from None


def _cache_path(src: Path, cache_dir: str | None) -> Path | None:
    """A cache file keyed by the source's path, size and modification time; None if not writable."""
    stat = src.stat()
    key = hashlib.sha256(f"{src.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return _cache_file(cache_dir, f"cifar10-{key}.pt")


def _cache_file(cache_dir: str | None, name: str) -> Path | None:
    """cache_dir/name, or None when there is no cache dir or it cannot be written."""
    if cache_dir is None:
        return None
    directory = Path(os.path.expanduser(str(cache_dir)))
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return directory / name if os.access(directory, os.W_OK) else None


def _cached(cache: Path | None, make) -> dict:
    """The arrays in `cache`, or make() them once and store them there (atomically).

    One job makes them while the others of a sweep (pool workers, array tasks) wait for the file.
    A cache is only ever a shortcut: an unreadable file is made again, and a full disk or quota
    leaves the run with its arrays and a warning, not an error.
    """
    arrays = _read_cache(cache)
    if arrays is not None:
        return arrays
    lock = _lock(cache)
    try:
        arrays = _read_cache(cache)
        if arrays is not None:
            return arrays
        arrays = make()
        if cache is not None:
            tmp = cache.with_name(f"{cache.name}.tmp-{socket.gethostname()}-{os.getpid()}")
            try:
                torch.save(arrays, tmp)
                os.replace(tmp, cache)
            except OSError as e:
                tmp.unlink(missing_ok=True)
                log.warning("could not write the data cache %s (%s); going on without it", cache, e)
        return arrays
    finally:
        if lock is not None:
            lock.close()


def _read_cache(cache: Path | None) -> dict | None:
    if cache is None or not cache.exists():
        return None
    try:
        return torch.load(cache, weights_only=True)
    except Exception as e:  # truncated or corrupt (a crash mid-write elsewhere): make it again
        log.warning("data cache %s is unreadable (%s: %s); making it again", cache, type(e).__name__, e)
        return None


def synthetic_cached(n_train: int, n_test: int, seed: int, label_noise: float, cache_dir: str | None):
    """synthetic(), generated once per machine and then read from cache_dir (60k images: ~8 s -> ~0.2 s).

    The file is keyed by the arguments and by the generator's own source, so a change to the
    generator never serves stale images.
    """
    try:
        code = "".join(inspect.getsource(f) for f in (synthetic, _smooth_field))
    except OSError:  # installed without sources: the package version stands in for the code
        from sweeper import __version__ as code
    # torch's version too: its random streams and interpolation define the images
    key = f"{code}|{torch.__version__}|{IMAGE_SIZE}|{n_train}|{n_test}|{seed}|{float(label_noise)!r}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]

    def make():
        x, y, tx, ty = synthetic(n_train, n_test, seed, label_noise)
        return {"train_x": x, "train_y": y, "test_x": tx, "test_y": ty}

    arrays = _cached(_cache_file(cache_dir, f"synthetic-{key}.pt"), make)
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


def _lock(cache: Path | None):
    if cache is None:
        return None
    handle = open(cache.with_suffix(".lock"), "w")  # noqa: SIM115 - held until decoding ends
    fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _decode(src: Path) -> dict[str, torch.Tensor]:
    kind = _find_format(src)
    if kind == "batches":
        base = src / "cifar-10-batches-py" if (src / "cifar-10-batches-py").is_dir() else src
        train = [_read_batch(base / f"data_batch_{i}") for i in range(1, 6)]
        test = [_read_batch(base / "test_batch")]
    elif kind == "folder":
        train = [_read_folder(src / "train")]
        test = [_read_folder(src / "test")]
    else:
        train, test = _read_tar(src)
    out = {}
    for split, parts in (("train", train), ("test", test)):
        out[f"{split}_x"] = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        out[f"{split}_y"] = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    return out


def _read_batch(path: Path):
    """One file of the python-batches format, read the way torchvision reads it.

    That format is a pickle by definition; it is only ever read from the user's own data path.
    """
    if not path.exists():
        raise DataError(f"data.root: {path} is missing from the CIFAR-10 python batches")
    with open(path, "rb") as f:
        entry = pickle.load(f, encoding="latin1")
    x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    return x, y


def _decode_image(data) -> np.ndarray:
    from PIL import Image

    with Image.open(data) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1)


def _read_folder(split_dir: Path):
    """An ImageFolder split, enumerated by torchvision (class = sorted sub-directory index)."""
    import torchvision

    folder = torchvision.datasets.ImageFolder(str(split_dir), loader=lambda p: p)
    x = np.stack([_decode_image(path) for path, _ in folder.samples])
    y = np.array([label for _, label in folder.samples], dtype=np.int64)
    return x, y


def _read_tar(src: Path):
    """train/<class>/<file> and test/<class>/<file> read straight from a tarball (any top folder)."""
    found: dict[str, list[tuple[str, str, bytes]]] = {"train": [], "test": []}
    with tarfile.open(src) as tar:
        for member in tar:
            parts = member.name.split("/")
            if not member.isfile() or len(parts) < 3 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
                continue
            split, cls = parts[-3], parts[-2]
            if split in found:
                found[split].append((cls, member.name, tar.extractfile(member).read()))
    if not found["train"] or not found["test"]:
        raise DataError(
            f"data.root={src}: the archive has no train/<class>/<image> and test/<class>/<image> files"
        )
    classes = sorted({cls for cls, _, _ in found["train"]})
    result = []
    for split in ("train", "test"):
        items = sorted(found[split])
        x = np.stack([_decode_image(io.BytesIO(blob)) for _, _, blob in items])
        y = np.array([classes.index(cls) for cls, _, _ in items], dtype=np.int64)
        result.append([(x, y)])
    return result[0], result[1]

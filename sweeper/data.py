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

import contextlib
import fcntl
import hashlib
import inspect
import io
import json
import logging
import os
import pickle
import shutil
import socket
import tarfile
import time
import zlib
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
    if cfg.train_size is not None and cfg.train_size > len(train_y):
        # the pre-check knows only CIFAR-10's nominal 50,000; a smaller copy shows up here
        raise DataError(
            f"data.train_size={cfg.train_size} is invalid: the training set at data.root={cfg.get('root')} "
            f"has only {len(train_y)} images"
        )
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


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 4, fill=0.0) -> torch.Tensor:
    """Random crop (padding of `pad` px filled with `fill`) and horizontal flip, for a whole batch.

    `fill` is black in x's units, per channel ((1, C, 1, 1)) once x is normalised: padding with a
    plain 0 after normalising would pad with the mean colour, not black as torchvision's
    RandomCrop(padding=4) does on the raw pixels.
    """
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


def black(data: Data, dtype=torch.float32) -> torch.Tensor:
    """A black pixel (0 in every channel) as training sees it: (1, C, 1, 1), normalised like x."""
    zero = torch.zeros((1, data.in_channels, 1, 1), dtype=torch.uint8, device=data.mean.device)
    return prepare(zero, data, dtype)


def train_batches(
    data: Data, batch_size: int, generator, do_augment: bool, memory_format=torch.contiguous_format
):
    """One epoch of (x, y) training batches in a fresh random order; the last batch may be short."""
    n = len(data.train_y)
    order = torch.randperm(n, device=data.train_y.device, generator=generator)
    fill = black(data) if do_augment else None
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


# ----------------------------------------------------------------------------- synthetic


def _smooth_field(g: torch.Generator, n: int, channels: int, low: int, size: int) -> torch.Tensor:
    """Random low-resolution noise upsampled bilinearly: blobs of colour at scale size/low."""
    field = torch.randn(n, channels, low, low, generator=g)
    return F.interpolate(field, size=(size, size), mode="bilinear", align_corners=False)


# Images are generated in chunks of this many, each from its own stream: a split's first n images
# are the same whatever its size, and the test set does not depend on the training set's size.
SYNTHETIC_CHUNK = 1000


def _stream(seed: int, *names) -> torch.Generator:
    """A random stream of its own for each (seed, names...)."""
    digest = hashlib.sha256("|".join(map(str, (seed, *names))).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


def synthetic(n_train: int, n_test: int, seed: int, label_noise: float, size: int = IMAGE_SIZE):
    """A learnable 10-class data set of CIFAR's shape, generated deterministically from `seed`.

    Each class has a prototype (smooth colour blobs plus an oriented grating). An image is its
    class prototype, randomly shifted and scaled, blended with a random other class's prototype,
    plus smooth and pixel noise. A `label_noise` fraction of the training labels is replaced by
    random classes: a net that fits those has memorised, which is what makes test loss rise.
    The training set of n_train=2000 is the first 2000 of n_train=5000's, with the same labels,
    and the test set is the same for any n_train: runs of another size are judged on the same images.
    """
    g = _stream(seed, "prototypes")
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

    def chunk(g: torch.Generator, noise: float):
        n = SYNTHETIC_CHUNK
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
        wrong = torch.rand(n, generator=g) < noise
        return pixels, torch.where(wrong, torch.randint(0, k, (n,), generator=g), y)

    def split(name: str, n: int, noise: float):
        # Whole chunks, cut to n: a chunk's first m images do not depend on how many are kept.
        parts = [chunk(_stream(seed, name, c), noise) for c in range(-(-int(n) // SYNTHETIC_CHUNK))]
        if not parts:
            return torch.empty(0, 3, size, size, dtype=torch.uint8), torch.empty(0, dtype=torch.int64)
        return torch.cat([x for x, _ in parts])[:n], torch.cat([y for _, y in parts])[:n]

    train_x, train_y = split("train", n_train, label_noise)
    test_x, test_y = split("test", n_test, 0.0)
    return train_x, train_y, test_x, test_y


# ----------------------------------------------------------------------------- CIFAR-10

BATCH_FILES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")
# A writer killed mid-save (SIGKILL, power loss) leaves its temp file; another writer removes it
# once it is this old, so a slow writer on another host sharing the cache dir is never cut short.
STALE_TEMP_S = 24 * 3600


def cifar10(root: str, download: bool, cache_dir: str | None):
    """(train_x, train_y, test_x, test_y) as uint8/int64 tensors, decoded once and cached.

    One lock per source (in the cache dir) covers the download and the decoding: the jobs of a
    sweep that start together wait for the first one instead of racing it.
    """
    try:
        problem = _root_problem(root)
        if problem:
            raise DataError(problem)
        src = _path(root)
        directory = _cache_directory(cache_dir)
        lock = _lock_path(directory, f"cifar10-{_digest(str(src.resolve()))}.lock")
        if _find_format(src) is None:
            if src.name.endswith(ARCHIVE_SUFFIXES) or src.is_file():
                raise DataError(_missing_archive(src))
            if not download:
                raise DataError(
                    "no CIFAR-10 there. Put the python batches (cifar-10-batches-py/) or an ImageFolder tree "
                    "(train/<class>/*.png, test/...) or its .tar.gz there, set data.download=true, or use data=synthetic"
                )
            with _locked(lock):
                if _find_format(src) is None:  # not downloaded meanwhile by a job that held the lock
                    _download(src)
        arrays = _cached(lambda: _cache_path(src, directory), lambda: _decode(src), lock)
    except DataError as e:
        raise DataError(f"data.root={root}: {e}") from None
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


def _path(root) -> Path:
    return Path(os.path.expanduser(str(root)))


def _root_problem(root) -> str | None:
    """Why `root` is no path at all: null, or an empty SWEEPER_DATA (which would read the cwd)."""
    if root is None:
        return "must be the path of the data (a directory or a .tar.gz), not null"
    if not str(root).strip():
        empty_env = os.environ.get("SWEEPER_DATA") == ""
        return "must be the path of the data (a directory or a .tar.gz), not empty" + (
            " (SWEEPER_DATA is set but empty: unset it or set it to the data's path)" if empty_env else ""
        )
    return None


def _missing_archive(src: Path) -> str:
    if src.exists():
        return f"{src} is a file but not a .tar.gz, .tgz or .tar archive"
    # torchvision would make a directory of that name and put the python batches in it
    return f"no such archive {src} (data.download fetches into a directory, not an archive: give an existing archive or a directory)"


def source_problem(root, download: bool, cache_dir) -> str | None:
    """Why data.root cannot give CIFAR-10, in one line, or None: the pre-check's look at it.

    Cheap where it can be: directories are listed, not read. An archive is scanned once per
    process (member names only, ~1 s for CIFAR-10's), unless a cache decoded from it exists.
    """
    problem = _root_problem(root)
    if problem:
        return problem
    src = _path(root)
    if src.name.endswith(ARCHIVE_SUFFIXES) or src.is_file():
        if not src.is_file() or not src.name.endswith(ARCHIVE_SUFFIXES):
            return _missing_archive(src)
        try:
            # looked up, not made: the pre-check writes nothing
            cache = _cache_path(src, None if cache_dir is None else _path(cache_dir))
            if cache is None or not cache.is_file():
                _scan_archive(src)
        except DataError as e:
            return str(e)
        return None
    try:
        kind = _find_format(src)
        if kind == "folder":
            for split in ("train", "test"):
                _class_folders(src / split)
        elif kind == "batches":
            base = _batches_dir(src)
            missing = [name for name in BATCH_FILES if not (base / name).is_file()]
            if missing:
                return f"{base} lacks {', '.join(missing)} of the CIFAR-10 python batches"
    except DataError as e:
        return str(e)
    if kind is None and not download:
        return (
            "no CIFAR-10 there (python batches, ImageFolder train/ and test/, or a .tar.gz of them) "
            "and data.download=false"
        )
    return None


def _find_format(src: Path) -> str | None:
    if src.is_file() and src.name.endswith(ARCHIVE_SUFFIXES):
        return "tar"
    if (src / "cifar-10-batches-py" / "data_batch_1").exists() or (src / "data_batch_1").exists():
        return "batches"
    if (src / "train").is_dir() and (src / "test").is_dir():
        return "folder"
    return None


def _batches_dir(src: Path) -> Path:
    return src / "cifar-10-batches-py" if (src / "cifar-10-batches-py").is_dir() else src


class _Quiet:
    """Stands in for torchvision's download progress bar: it writes a line per chunk to the log."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        pass

    def close(self):
        pass


@contextlib.contextmanager
def _progress_bar(module, bar):
    """torchvision's downloader draws `module.tqdm`; the run's log gets `bar` instead, meanwhile."""
    had, old = hasattr(module, "tqdm"), getattr(module, "tqdm", None)
    module.tqdm = bar
    try:
        yield
    finally:
        if had:
            module.tqdm = old
        else:
            del module.tqdm


def _download(src: Path) -> None:
    """torchvision's download, into a private folder first and then renamed into place, so no
    process ever reads a half-extracted batch file (the lock keeps a second download away)."""
    import torchvision
    from torchvision.datasets import utils as tv_utils

    src.mkdir(parents=True, exist_ok=True)
    tmp = src / f".download-{socket.gethostname()}-{os.getpid()}"
    url = getattr(torchvision.datasets.CIFAR10, "url", "torchvision's mirror")
    log.info("CIFAR-10 is not in %s: downloading it (163 MB) from %s", src, url)
    start = time.perf_counter()
    try:
        with _progress_bar(tv_utils, _Quiet):
            torchvision.datasets.CIFAR10(root=str(tmp), train=True, download=True)
        for name in ("cifar-10-python.tar.gz", "cifar-10-batches-py"):
            if (tmp / name).exists() and not (src / name).exists():
                os.rename(tmp / name, src / name)
    except Exception as e:  # no network, proxy, disk full: one line says what and where
        raise DataError(
            f"CIFAR-10 is not there and the download failed ({_described(e)}). "
            "Put the python batches (cifar-10-batches-py/) or an ImageFolder tree (train/<class>/*.png, test/...) "
            "or its .tar.gz at data.root, or use data=synthetic"
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # our own partial download only
    log.info("downloaded CIFAR-10 into %s in %.0f s", src, time.perf_counter() - start)


def first_line(e: BaseException) -> str:
    """An error's message in one line: its first (the type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _described(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_DECODER: list[str] = []


def _decoder_version() -> str:
    """The decoding code and Pillow's version: a fix to either must not be hidden by a cache."""
    if not _DECODER:
        funcs = (
            _decode,
            _batch_arrays,
            _decode_image,
            _class_folders,
            _folder_files,
            _tar_entries,
            _tar_arrays,
        )
        try:
            code = "".join(inspect.getsource(f) for f in funcs)
        except OSError:  # installed without sources: the package version stands in for the code
            from sweeper import __version__ as code
        import PIL

        _DECODER.append(_digest(f"{code}|{PIL.__version__}|{IMAGE_SIZE}"))
    return _DECODER[0]


def _source_files(src: Path) -> list[str]:
    """The files that decoding reads, in that order: what the cache key must cover."""
    kind = _find_format(src)
    if kind == "tar":
        return [str(src)]
    if kind == "batches":
        base = _batches_dir(src)
        return [str(base / name) for name in BATCH_FILES]
    return [path for split in ("train", "test") for _, path in _folder_files(src / split)]


def _cache_path(src: Path, directory: Path | None) -> Path | None:
    """The cache file for `src`, keyed by the decoder and by the name, size and modification
    time of every file decoding reads: an edited, added or removed image means a new key."""
    if directory is None:
        return None
    parts = [str(src.resolve()), _decoder_version()]
    for path in _source_files(src):  # relative to src, which parts[0] names
        try:
            stat = os.stat(path)
        except OSError:  # missing: decoding says so, by name
            parts.append(f"{path}|missing")
            continue
        parts.append(f"{path[len(str(src)) :]}|{stat.st_size}|{stat.st_mtime_ns}")
    # The source's digest first: a cache of the same source under an older key is superseded.
    return directory / f"cifar10-{_digest(parts[0])}-{_digest(chr(10).join(parts))}.pt"


def _superseded(cache: Path) -> list[Path]:
    """Caches of the same source as `cache` (cifar10-<source>-<key>.pt) under another key: made
    from files since edited, or by an older decoder, never to be read again (185 MB each)."""
    name = cache.name.removesuffix(".pt").split("-")
    if len(name) != 3 or name[0] != "cifar10":
        return []
    return [p for p in cache.parent.glob(f"cifar10-{name[1]}-*.pt") if p.name != cache.name]


_WARNED: set[str] = set()


def _cache_directory(cache_dir) -> Path | None:
    """The cache dir, made if missing; None (and one warning per process) if it is not a directory."""
    if cache_dir is None:
        return None
    directory = _path(cache_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # /dev/null, a file, a read-only parent: the run goes on, uncached
        if str(directory) not in _WARNED:
            _WARNED.add(str(directory))
            log.warning(
                "data.cache_dir=%s is not a usable directory (%s); every process decodes the data itself",
                cache_dir,
                type(e).__name__,
            )
        return None
    return directory


def _cache_file(cache_dir: str | None, name: str) -> Path | None:
    """cache_dir/name, or None when there is no cache dir. A read-only dir still serves reads."""
    directory = _cache_directory(cache_dir)
    return None if directory is None else directory / name


def _lock_path(directory: Path | None, name: str) -> Path | None:
    return None if directory is None else directory / name


@contextlib.contextmanager
def _locked(path: Path | None):
    """An exclusive flock on `path` for the block; none where it cannot be made (no cache dir, a
    read-only one: nothing gets written there then, so there is nothing to serialise)."""
    handle = None
    if path is not None:
        try:
            handle = open(path, "a")  # noqa: SIM115 - held for the block
        except OSError:
            handle = None
    try:
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        if handle is not None:
            handle.close()


def _cached(cache_path, make, lock: Path | None) -> dict:
    """The arrays in the cache file, or make() them once and store them there (atomically).

    `cache_path` is called again under the lock: a download that finished meanwhile changes the
    key. One job makes the arrays while the others of a sweep (pool workers, array tasks) wait.
    A cache is only ever a shortcut: a damaged file is made again, and a full disk or a read-only
    dir leaves the run with its arrays and a warning, not an error.
    """
    first = cache_path()
    arrays = _read_cache(first)
    if arrays is not None:
        return arrays
    with _locked(lock):
        cache = cache_path()
        arrays = _read_cache(cache, warn=cache != first)  # one warning for one damaged file
        if arrays is None:
            arrays = {k: v.contiguous() for k, v in make().items()}
            _store(cache, arrays)
        return arrays


def _checksums(arrays: dict) -> dict[str, int]:
    # crc32 of the bytes: ~45 ms for CIFAR-10's 185 MB on a 2-core VM, half a warm torch.load;
    # it catches flipped bits that the shape and range checks cannot see.
    return {k: zlib.crc32(arrays[k].contiguous().numpy()) for k in ARRAY_KEYS}


def _store(cache: Path | None, arrays: dict) -> None:
    if cache is None:
        return
    _remove_stale_temps(cache.parent)
    tmp = cache.with_name(f"{cache.name}.partial-{socket.gethostname()}-{os.getpid()}")
    try:
        torch.save({**arrays, "crc32": _checksums(arrays)}, tmp)
        os.replace(tmp, cache)
        for old in _superseded(cache):  # a reader that has one open keeps reading it
            with contextlib.suppress(OSError):
                old.unlink()
    except BaseException as e:  # an interrupt too: never leave a 185 MB temp file behind
        tmp.unlink(missing_ok=True)
        # A full disk or a file size limit comes as OSError from the file system, or as torch's
        # zip writer's RuntimeError ("enforce fail at inline_container.cc"). A cache is only a
        # shortcut: the run goes on without it. Only an interrupt is raised.
        if not isinstance(e, Exception):
            raise
        log.warning(
            "could not write the data cache %s (%s); going on without it", cache, str(e).splitlines()[0]
        )


def _remove_stale_temps(directory: Path) -> None:
    """Temp files of writers that died: this host's with no live process, anyone's after a day."""
    host = socket.gethostname()
    for tmp in directory.glob("*.pt.partial-*"):
        writer, _, pid = tmp.name.partition(".partial-")[2].rpartition("-")
        try:
            dead = writer == host and pid.isdigit() and not _alive(int(pid))
            if dead or time.time() - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
        except OSError:  # removed by another writer meanwhile, or not ours to remove
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _read_cache(cache: Path | None, warn: bool = True) -> dict | None:
    if cache is None or not cache.is_file():
        return None
    try:
        arrays = torch.load(cache, weights_only=True)
        problem = _cache_problem(arrays)
    except Exception as e:  # truncated or corrupt (a crash mid-write elsewhere): make it again
        problem = _described(e)
    if problem:
        if warn:
            log.warning("data cache %s is unusable (%s); making it again", cache, problem)
        return None
    return {k: arrays[k] for k in ARRAY_KEYS}


def _cache_problem(arrays) -> str | None:
    """What is wrong with a loaded cache file, or None: layout, dtypes, label range, checksums."""
    if not isinstance(arrays, dict) or not all(k in arrays for k in (*ARRAY_KEYS, "crc32")):
        return "not a data cache of this version"
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != (3, IMAGE_SIZE, IMAGE_SIZE):
            return f"{split}_x is {x.dtype} {tuple(x.shape)}, not uint8 (N, 3, {IMAGE_SIZE}, {IMAGE_SIZE})"
        if y.dtype != torch.int64 or y.shape != (len(x),):
            return f"{split}_y is {y.dtype} {tuple(y.shape)}, not int64 ({len(x)},)"
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= 10):
            return f"{split}_y has labels outside 0..9"
    if _checksums(arrays) != arrays["crc32"]:
        return "checksum mismatch"
    return None


def synthetic_cached(n_train: int, n_test: int, seed: int, label_noise: float, cache_dir: str | None):
    """synthetic(), generated once per machine and then read from cache_dir (60k images: ~8 s -> ~0.2 s).

    The file is keyed by the arguments and by the generator's own source, so a change to the
    generator never serves stale images.
    """
    try:
        code = "".join(inspect.getsource(f) for f in (synthetic, _smooth_field, _stream)) + str(
            SYNTHETIC_CHUNK
        )
    except OSError:  # installed without sources: the package version stands in for the code
        from sweeper import __version__ as code
    # torch's version too: its random streams and interpolation define the images
    key = f"{code}|{torch.__version__}|{IMAGE_SIZE}|{n_train}|{n_test}|{seed}|{float(label_noise)!r}"
    key = hashlib.sha256(key.encode()).hexdigest()[:16]

    def make():
        x, y, tx, ty = synthetic(n_train, n_test, seed, label_noise)
        return {"train_x": x, "train_y": y, "test_x": tx, "test_y": ty}

    cache = _cache_file(cache_dir, f"synthetic-{key}.pt")
    arrays = _cached(lambda: cache, make, None if cache is None else cache.with_suffix(".lock"))
    return arrays["train_x"], arrays["train_y"], arrays["test_x"], arrays["test_y"]


def _decode(src: Path) -> dict[str, torch.Tensor]:
    kind = _find_format(src)
    if kind == "batches":
        base = _batches_dir(src)
        arrays = {}
        for name in BATCH_FILES:
            path = base / name
            if not path.is_file():
                raise DataError(f"{path} is missing from the CIFAR-10 python batches")
            arrays[name] = _batch_arrays(path.read_bytes(), path)
    elif kind == "folder":
        arrays = {
            split: _stack([(label, path, path) for label, path in _folder_files(src / split)], src / split)
            for split in ("train", "test")
        }
    else:
        arrays = _tar_arrays(src)
    if kind == "batches" or set(arrays) == set(BATCH_FILES):
        train = [arrays[f"data_batch_{i}"] for i in range(1, 6)]
        test = [arrays["test_batch"]]
    else:
        train, test = [arrays["train"]], [arrays["test"]]
    out = {}
    for split, parts in (("train", train), ("test", test)):
        out[f"{split}_x"] = torch.from_numpy(np.ascontiguousarray(np.concatenate([p[0] for p in parts])))
        out[f"{split}_y"] = torch.from_numpy(np.concatenate([p[1] for p in parts]).astype(np.int64))
    return out


def _batch_arrays(blob: bytes, name) -> tuple[np.ndarray, np.ndarray]:
    """One file of the python-batches format, read the way torchvision reads it.

    That format is a pickle by definition; it is only ever read from the user's own data path.
    """
    try:
        entry = pickle.loads(blob, encoding="latin1")
        x = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE)
        y = np.asarray(entry.get("labels", entry.get("fine_labels")), dtype=np.int64)
    except Exception as e:  # truncated (an interrupted copy), or not a CIFAR batch at all
        raise DataError(f"{name} is not a readable CIFAR-10 batch ({_described(e)}); copy it again") from None
    if y.shape != (len(x),) or (len(y) and (y.min() < 0 or y.max() >= 10)):
        raise DataError(f"{name} is not a CIFAR-10 batch: {len(x)} images, labels {y.shape} outside 0..9")
    return x, y


def _is_image(name: str) -> bool:
    # ._name: macOS's AppleDouble metadata next to each file copied from a Mac, not an image
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith("._")


def _check_classes(found, where) -> None:
    """Labels come from the class names (torchvision's order): exactly CIFAR-10's 10 folders."""
    found = set(found)
    if found != set(CIFAR10_CLASSES):
        missing = [c for c in CIFAR10_CLASSES if c not in found]
        extra = sorted(found - set(CIFAR10_CLASSES))
        raise DataError(
            f"{where} must hold exactly the class folders {', '.join(CIFAR10_CLASSES)}"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; not CIFAR-10 classes: {', '.join(extra)}" if extra else "")
        )


def _class_folders(split_dir: Path) -> None:
    try:
        names = [e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")]
    except OSError as e:
        raise DataError(f"cannot list {split_dir} ({type(e).__name__})") from None
    _check_classes(names, split_dir)


def _folder_files(split_dir: Path) -> list[tuple[int, str]]:
    """(label, path) of an ImageFolder split, in ImageFolder's order, labelled by class name.

    Paths are strings: 60k Path objects cost 2 s, and the cache key lists them in every job.
    """
    _class_folders(split_dir)
    files = []
    for label, cls in enumerate(CIFAR10_CLASSES):
        for dirpath, _, names in sorted(os.walk(os.path.join(split_dir, cls), followlinks=True)):
            files += [(label, os.path.join(dirpath, n)) for n in sorted(names) if _is_image(n)]
    return files


def _decode_image(data, name) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(data) as im:
            pixels = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow: UnidentifiedImageError, truncated file, bad header ...
        raise DataError(f"{name} is not a readable image ({_described(e)})") from None
    if pixels.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(f"{name} is {pixels.shape[1]}x{pixels.shape[0]} px; CIFAR-10 images are 32x32")
    return pixels.transpose(2, 0, 1)


def _stack(items, where) -> tuple[np.ndarray, np.ndarray]:
    """(label, image source, name) -> decoded (x, y)."""
    if not items:
        raise DataError(f"{where} holds no images")
    x = np.stack([_decode_image(data, name) for _, data, name in items])
    return x, np.array([label for label, _, _ in items], dtype=np.int64)


def _tar_entries(src: Path, read: bool):
    """(kind, entries) of an archive: ("batches", {file: bytes}) for torchvision's tarball, or
    ("images", {split: [(label, bytes, member)]}) for train/<class>/<image> and test/... under
    any top folder. Only names are looked at when `read` is false."""
    batches, images = {}, {"train": [], "test": []}
    classes = {"train": set(), "test": set()}
    try:
        with tarfile.open(src) as tar:
            for member in tar:
                parts = member.name.split("/")
                if not member.isfile() or parts[-1].startswith("._"):
                    continue
                if parts[-1] in BATCH_FILES:
                    batches[parts[-1]] = (tar.extractfile(member).read() if read else None, member.name)
                elif len(parts) >= 3 and parts[-3] in images and _is_image(parts[-1]):
                    classes[parts[-3]].add(parts[-2])
                    blob = io.BytesIO(tar.extractfile(member).read()) if read else None
                    images[parts[-3]].append((parts[-2], blob, member.name))
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{src} is truncated or damaged ({_described(e)}); copy or download it again"
        ) from None
    if len(batches) == len(BATCH_FILES):
        return "batches", batches
    if not images["train"] or not images["test"]:
        raise DataError(
            f"{src} holds neither cifar-10-batches-py/ (data_batch_1..5, test_batch) nor "
            "train/<class>/<image> and test/<class>/<image> files"
        )
    for split in ("train", "test"):
        _check_classes(classes[split], f"{src}: its {split}/")
    labels = {c: i for i, c in enumerate(CIFAR10_CLASSES)}
    return "images", {
        s: sorted(((labels[c], blob, n) for c, blob, n in items), key=lambda item: (item[0], item[2]))
        for s, items in images.items()
    }


_SCANNED: dict[tuple, str | None] = {}


def _scan_archive(src: Path) -> None:
    """The pre-check's look into an archive, once per process and archive version."""
    stat = src.stat()
    key = (str(src.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SCANNED:
        try:
            _tar_entries(src, read=False)
            _SCANNED[key] = None
        except DataError as e:
            _SCANNED[key] = str(e)
    if _SCANNED[key]:
        raise DataError(_SCANNED[key])


def _tar_arrays(src: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    kind, entries = _tar_entries(src, read=True)
    if kind == "batches":
        return {name: _batch_arrays(blob, f"{src}: {member}") for name, (blob, member) in entries.items()}
    return {
        split: _stack(
            [(label, blob, f"{src}: {member}") for label, blob, member in items], f"{src}: {split}/"
        )
        for split, items in entries.items()
    }

"""The data sources, each read into uint8 images (N, C, H, W), int64 labels and class names,
decoded once and then read from the cache (sweeper.data_cache): torchvision's data sets, which
torchvision.datasets reads from its own layout under data.root and downloads; ImageFolder trees
(data=image_folder; data=cifar10 with CIFAR-10's 10 classes); either in a .tar.gz/.tgz/.tar; a
user's data set by `_target_` (sweeper.user_data); the synthetic set (sweeper.synthetic).
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import socket
import tarfile
import tempfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sweeper import data_cache
from sweeper.data_cache import DataError, _described, expand
from sweeper.synthetic import synthetic_arrays
from sweeper.user_data import GREY_MODES, pixels, user_dataset

log = logging.getLogger("sweeper")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
NEITHER_LAYOUT = "holds neither cifar-10-batches-py/ (data_batch_1..5, test_batch) nor train/<class>/<image> and test/<class>/<image> files"  # fmt: skip
UNREADABLE_ARCHIVE = (tarfile.TarError, EOFError, OSError, zlib.error)


@dataclass(frozen=True)
class Torchvision:
    label: str  # as messages name it
    cls: str  # torchvision.datasets.<cls>
    files: tuple[str, ...]  # what reading needs under data.root
    shape: tuple[int, int, int]  # (C, H, W)
    sizes: tuple[int, int]  # (train, test) of the official release
    classes: int = 10


def _in(folder: str, *names: str) -> tuple[str, ...]:
    return tuple(f"{folder}/{name}" for name in names)


_IDX = tuple(f"{s}-{k}-ubyte" for s in ("train", "t10k") for k in ("images-idx3", "labels-idx1"))
_CIFAR10 = _in("cifar-10-batches-py", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
_CIFAR100 = _in("cifar-100-python", "train", "test", "meta")
TORCHVISION = {
    "cifar10": Torchvision("CIFAR-10", "CIFAR10", _CIFAR10, (3, 32, 32), (50_000, 10_000)),
    "cifar100": Torchvision("CIFAR-100", "CIFAR100", _CIFAR100, (3, 32, 32), (50_000, 10_000), classes=100),
    "mnist": Torchvision("MNIST", "MNIST", _in("MNIST/raw", *_IDX), (1, 28, 28), (60_000, 10_000)),
    "fashion_mnist": Torchvision(
        "Fashion-MNIST", "FashionMNIST", _in("FashionMNIST/raw", *_IDX), (1, 28, 28), (60_000, 10_000)
    ),
    "svhn": Torchvision("SVHN", "SVHN", ("train_32x32.mat", "test_32x32.mat"), (3, 32, 32), (73_257, 26_032)),
}
FOLDER_KINDS = ("cifar10", "image_folder")  # those that read an ImageFolder tree or an archive


def read(cfg) -> dict:
    """The data set of the `data` config section: train_x, train_y, test_x, test_y, classes."""
    if cfg.get("_target_"):
        return user_dataset(cfg)
    if cfg.name == "synthetic":
        return synthetic_arrays(cfg.generated_train, cfg.generated_test, cfg.seed, cfg.label_noise, cfg.get("cache_dir"))  # fmt: skip
    try:
        return _files(cfg.name, cfg.root, bool(cfg.get("download", False)), cfg.get("cache_dir"))
    except DataError as e:
        raise DataError(f"data.root={cfg.root}: {e}") from None


def cifar10(root, download: bool, cache_dir):
    """CIFAR-10 from data.root as (train_x, train_y, test_x, test_y)."""
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "cifar10", "root": root, "download": download, "cache_dir": cache_dir})
    arrays = read(cfg)
    return tuple(arrays[k] for k in data_cache.ARRAY_KEYS)


# ----------------------------------------------------------------------------- files under data.root


def root_problem(root) -> str | None:
    """Why `root` is no path at all: null, or an empty SWEEPER_DATA (which would read the cwd)."""
    if root is None:
        return "must be the path of the data (a directory or a .tar.gz), not null"
    if not str(root).strip():
        empty_env = os.environ.get("SWEEPER_DATA") == ""
        return "must be the path of the data (a directory or a .tar.gz), not empty" + (
            " (SWEEPER_DATA is set but empty: unset it or set it to the data's path)" if empty_env else ""
        )
    return None


def _is_archive_path(src: Path) -> bool:
    return src.name.endswith(ARCHIVE_SUFFIXES) or src.is_file()


def _find_format(kind: str, src: Path) -> str | None:
    """torchvision (its layout is there, whole or partly), folder (train/ and test/) or None."""
    if kind in TORCHVISION and any(_present(src / f) for f in TORCHVISION[kind].files):
        return "torchvision"
    if kind in FOLDER_KINDS and (src / "train").is_dir() and (src / "test").is_dir():
        return "folder"
    return None


def _present(path: Path) -> bool:
    # MNIST's raw files may be there as torchvision downloads them, gzipped
    return path.is_file() or path.with_name(path.name + ".gz").is_file()


def _require_files(kind: str, src: Path) -> None:
    """Named here: torchvision would say "not found or corrupted"."""
    missing = [f for f in TORCHVISION[kind].files if not _present(src / f)]
    if missing:
        raise DataError(
            f"{src} lacks {', '.join(missing)} of {TORCHVISION[kind].label} in torchvision's layout"
        )


def _locate(kind: str, root, download: bool) -> tuple[Path, str | None]:
    """(the source's path, its format: archive, torchvision, folder, or None for one to download)."""
    problem = root_problem(root)
    if problem:
        raise DataError(problem)
    src = expand(root)
    if _is_archive_path(src):
        if kind not in FOLDER_KINDS:
            raise DataError(f"{src} is a file: data={kind} reads torchvision's layout in a directory")
        if src.exists() and not src.name.endswith(ARCHIVE_SUFFIXES):
            raise DataError(f"{src} is a file but not a .tar.gz, .tgz or .tar archive")
        if not src.exists():  # torchvision would make a directory of that name and download into it
            raise DataError(f"no such archive {src} (data.download fetches into a directory, not an archive: give an existing archive or a directory)")  # fmt: skip
        return src, "archive"
    found = _find_format(kind, src)
    if found is None and (kind not in TORCHVISION or not download):
        if kind == "image_folder":
            raise DataError("no ImageFolder there: it must hold train/<class>/<image> and test/<class>/<image>, or be a .tar.gz of them")  # fmt: skip
        spec = TORCHVISION[kind]
        where = f"torchvision's layout ({', '.join(spec.files[:2])}, ...)"
        if kind == "cifar10":
            where = "the python batches (cifar-10-batches-py/), an ImageFolder tree (train/<class>/*.png, test/...) or its .tar.gz"  # fmt: skip
        raise DataError(f"no {spec.label} there. Put {where} there, set data.download=true, or use data=synthetic (data.download=false)")  # fmt: skip
    return src, found


def train_count(kind: str, root, download: bool, cache_dir) -> int:
    """The pre-check's look at data.root: the training set's image count, or DataError in one line.

    Directories are listed, not read; an archive is scanned once per process (member names only,
    ~1 s for CIFAR-10's), unless a cache decoded from it exists. For torchvision's sets (cifar10
    in any layout) the release's count: the job counts the real images.
    """
    src, found = _locate(kind, root, download)
    count = TORCHVISION[kind].sizes[0] if kind in TORCHVISION else 0
    if found == "archive":
        cache = data_cache.cache_file(cache_dir, kind, str(src.resolve()), _files_key(kind, src), make=False)
        if kind not in TORCHVISION or cache is None or not cache.is_file():
            scanned = _scan_archive(src)
            count = count or scanned
    elif found == "folder" and kind in TORCHVISION:
        _tree_classes(src, kind)  # CIFAR-10's 10 class folders
    elif found == "folder":
        count = len(_listing(kind, src)[1])
    elif found == "torchvision":
        _require_files(kind, src)
    return count


def _files(kind: str, root, download: bool, cache_dir) -> dict:
    """A data set read from files, decoded once and cached. One lock per source (in the cache
    dir) covers the download, the extraction of gzipped files and the decoding."""
    src, found = _locate(kind, root, download)
    source, where = str(src.resolve()), data_cache.directory(cache_dir)
    if found in (None, "torchvision") and any(not (src / f).is_file() for f in TORCHVISION[kind].files):
        with data_cache.locked(data_cache.lock_file(cache_dir, kind, source)):
            if _find_format(kind, src) is None:  # not downloaded meanwhile by a job that held the lock
                _download(kind, src)
            _extract_gzipped(kind, src)
    return data_cache.cached(
        cache_dir, kind, source, lambda: _files_key(kind, src), lambda: _decode(kind, src, where)
    )


def _extract_gzipped(kind: str, src: Path) -> None:
    """Where only a raw file's .gz is there (MNIST's files as published), extract it beside it,
    as torchvision's download does."""
    from torchvision.datasets.utils import extract_archive

    _require_files(kind, src)
    for path in (src / name for name in TORCHVISION[kind].files):
        if not path.is_file():
            try:
                extract_archive(f"{path}.gz", str(path.parent))
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}.gz cannot be extracted ({_described(e)}); copy it again") from None


def _files_key(kind: str, src: Path) -> str:
    """The cache key of `src`: every file decoding reads."""
    if _is_archive_path(src):
        files = [str(src)]
    elif _find_format(kind, src) == "folder":
        _, train, test = _listing(kind, src)
        files = [p for p, _ in train + test]
    else:
        files = [str(src / f) for f in TORCHVISION[kind].files]
    return data_cache.files_key(files, src)


def _decode(kind: str, src: Path, where: Path | None) -> dict:
    if _is_archive_path(src):
        return _archive(kind, src, where)
    return _tree(src, kind) if _find_format(kind, src) == "folder" else _torchvision(kind, src)


# ----------------------------------------------------------------------------- torchvision's data sets


def _without_checksums(cls):
    """torchvision's class with the release's md5 sums dropped from the files it checks: a copy
    of the set is read as it is (a damaged file still fails the read, and the cache has its
    own checksums). Its download, where one is needed, is the unchanged class's."""
    attrs = {}
    if hasattr(cls, "train_list"):
        attrs["train_list"] = [[name, None] for name, _ in cls.train_list]
        attrs["test_list"] = [[name, None] for name, _ in cls.test_list]
        attrs["meta"] = {**cls.meta, "md5": None}
    if hasattr(cls, "split_list"):
        attrs["split_list"] = {k: [url, name, None] for k, (url, name, _) in cls.split_list.items()}
    return type(cls.__name__, (cls,), attrs)


def _splits(kind: str, cls, root: Path, download: bool = False, splits=("train", "test")):
    if kind == "svhn":
        return [cls(str(root), split=s, download=download) for s in splits]
    return [cls(str(root), train=s == "train", download=download) for s in splits]


def _torchvision(kind: str, src: Path) -> dict:
    import torchvision.datasets

    spec = TORCHVISION[kind]
    _require_files(kind, src)
    if kind == "svhn":
        try:
            import scipy.io  # noqa: F401 -- torchvision reads SVHN's .mat files with it
        except ImportError:
            raise DataError("data=svhn needs scipy to read its .mat files: pip install scipy") from None
    try:
        train, test = _splits(kind, _without_checksums(getattr(torchvision.datasets, spec.cls)), src)
    except Exception as e:  # truncated or not that data set's files: one line, not the reader's traceback
        raise DataError(
            f"the {spec.label} files in {src} cannot be read ({_described(e)}); copy them again"
        ) from None
    out = {}
    for split, ds in (("train", train), ("test", test)):
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)  # NHW (MNIST), NHWC (CIFAR) or NCHW
        x = x[:, None] if x.dim() == 3 else x if x.shape[1] == spec.shape[0] else x.permute(0, 3, 1, 2)
        out[f"{split}_x"] = x.contiguous()
        out[f"{split}_y"] = torch.as_tensor(
            np.asarray(ds.labels if kind == "svhn" else ds.targets), dtype=torch.int64
        )
    classes = [str(c) for c in getattr(train, "classes", None) or range(10)]  # SVHN names none: its digits
    return data_cache.labelled(out, classes, f"the {spec.label} files in {src}")


def _download(kind: str, src: Path) -> None:
    """torchvision's download (its checksums verified), into a private folder first and then
    renamed into place, so no process ever reads a half-extracted file."""
    import torchvision.datasets
    from torchvision.datasets import utils as tv_utils

    spec = TORCHVISION[kind]
    src.mkdir(parents=True, exist_ok=True)
    tmp = src / f".download-{socket.gethostname()}-{os.getpid()}"
    cls = getattr(torchvision.datasets, spec.cls)
    log.info("%s is not in %s: downloading it from %s", spec.label, src, getattr(cls, "url", None) or "torchvision's mirror")  # fmt: skip
    start, bar = time.perf_counter(), tv_utils.tqdm
    tv_utils.tqdm = functools.partial(bar, disable=True)  # its progress bar writes a log line per chunk
    try:
        # SVHN's splits are files of their own; the others' one archive holds both
        _splits(kind, cls, tmp, download=True, splits=("train", "test") if kind == "svhn" else ("train",))
        for entry in tmp.iterdir():
            if not (src / entry.name).exists():
                os.rename(entry, src / entry.name)
    except Exception as e:  # no network, proxy, disk full: one line says what and where
        raise DataError(
            f"{spec.label} is not there and the download failed ({_described(e)}). "
            f"Put {spec.label} in torchvision's layout at data.root, or use data=synthetic"
        ) from None
    finally:
        tv_utils.tqdm = bar
        shutil.rmtree(tmp, ignore_errors=True)  # our own partial download only
    log.info("downloaded %s into %s in %.0f s", spec.label, src, time.perf_counter() - start)


# ----------------------------------------------------------------------------- ImageFolder trees


def _is_image(path: str) -> bool:
    from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

    # ._name: macOS's AppleDouble metadata next to each file copied from a Mac, not an image
    return has_file_allowed_extension(path, IMG_EXTENSIONS) and not os.path.basename(path).startswith("._")


def _tree_classes(src: Path, kind: str) -> list[str]:
    """The class names: torchvision's find_classes of train/. The test split's must be among them,
    as labels come from names; data=cifar10 wants its own 10."""
    from torchvision.datasets.folder import find_classes

    found = {}
    for split in ("train", "test"):
        try:
            found[split] = find_classes(str(src / split))[0]
        except OSError as e:
            raise DataError(f"{src / split}: {data_cache.first_line(e)}") from None
        if kind == "cifar10" and set(found[split]) != set(CIFAR10_CLASSES):
            missing = [c for c in CIFAR10_CLASSES if c not in found[split]]
            extra = sorted(set(found[split]) - set(CIFAR10_CLASSES))
            raise DataError(
                f"{src / split} must hold exactly the class folders {', '.join(CIFAR10_CLASSES)}"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not CIFAR-10 classes: {', '.join(extra)}" if extra else "")
                + " (data=image_folder reads other trees)"
            )
    extra = sorted(set(found["test"]) - set(found["train"]))
    if extra:
        raise DataError(f"{src / 'test'} has class folders that {src / 'train'} lacks: {', '.join(extra)}")
    return found["train"]


def _listing(kind: str, src: Path) -> tuple[list[str], list, list]:
    """(classes, train samples, test samples) by torchvision's make_dataset, with the train split's
    class indices; listed once per process while no folder of it changes (the pre-check of every
    job, each load's cache key)."""
    classes = _tree_classes(src, kind)
    folders = [src / split / c for split in ("train", "test") for c in classes]
    mtimes = tuple(f.stat().st_mtime_ns if f.is_dir() else None for f in folders)
    return _listed(src, str(src.resolve()), tuple(classes), mtimes)


@functools.lru_cache(maxsize=1)  # the last tree only; keyed by its folders' mtimes too
def _listed(src: Path, resolved: str, classes: tuple[str, ...], mtimes: tuple) -> tuple:
    from torchvision.datasets.folder import make_dataset

    samples = []
    for split_dir in (src / "train", src / "test"):
        try:
            listed = make_dataset(str(split_dir), {c: i for i, c in enumerate(classes)}, is_valid_file=_is_image, allow_empty=True)  # fmt: skip
        except OSError as e:
            raise DataError(f"cannot list {split_dir} ({_described(e)})") from None
        if not listed:
            raise DataError(f"{split_dir} holds no images")
        samples.append(listed)
    return (list(classes), *samples)


def _tree(src: Path, kind: str) -> dict:
    """An ImageFolder tree: every image of one size and all grey or all colour (stacked as they are)."""
    from PIL import Image

    def described(x):
        return f"{'grey' if x.shape[0] == 1 else 'colour'} {x.shape[2]}x{x.shape[1]} px"

    classes, *listed = _listing(kind, src)
    out, first = {"classes": classes}, None
    for split, samples in zip(("train", "test"), listed, strict=True):
        images = []
        for path, _ in samples:
            try:
                with Image.open(path) as im:
                    x = pixels(im, rgb=kind == "cifar10")
            except Exception as e:  # Pillow: UnidentifiedImageError, truncated file, bad header ...
                raise DataError(f"{path} is not a readable image ({_described(e)})") from None
            if first is None:
                first = (path, x)
                if kind == "cifar10" and x.shape != (3, 32, 32):
                    raise DataError(f"{path} is {x.shape[2]}x{x.shape[1]} px; CIFAR-10 images are 32x32 (data=image_folder reads other sizes)")  # fmt: skip
            elif x.shape != first[1].shape:
                raise DataError(f"{path} is {described(x)} but {first[0]} is {described(first[1])}: all images must have one size and all be grey or all colour")  # fmt: skip
            images.append(x)
        out[f"{split}_x"] = torch.stack(images)
        out[f"{split}_y"] = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return out


def folder_extent(root, extent):
    """extent(n_train, n_test, (C, H, W), classes) of an ImageFolder tree, from its listing and
    its first image's header; None for an archive (known once extracted)."""
    from PIL import Image

    if root_problem(root) or _is_archive_path(expand(root)):
        return None
    classes, train, test = _listing("image_folder", expand(root))
    with Image.open(train[0][0]) as im:
        channels = 1 if im.mode in GREY_MODES else 3
        return extent(len(train), len(test), (channels, im.size[1], im.size[0]), len(classes))


# ----------------------------------------------------------------------------- archives


def _scan_archive(src: Path) -> int:
    """The pre-check's look into an archive (member names only), once per process and version:
    its training images' count (0 for CIFAR-10's batches), or DataError."""
    stat = src.stat()
    problem, train = _scanned(src, str(src.resolve()), stat.st_size, stat.st_mtime_ns)
    if problem:
        raise DataError(problem)
    return train


@functools.lru_cache
def _scanned(src: Path, resolved: str, size: int, mtime_ns: int) -> tuple[str | None, int]:
    try:
        with tarfile.open(src) as tar:
            names = [m.name.split("/") for m in tar if m.isfile()]
    except UNREADABLE_ARCHIVE as e:
        return f"{src} is truncated or damaged ({_described(e)}); copy or download it again", 0
    batches = any(n[-2:] == ["cifar-10-batches-py", "data_batch_1"] for n in names)
    splits = {n[-3] for n in names if len(n) >= 3}
    train = sum(1 for n in names if len(n) >= 3 and n[-3] == "train" and _is_image(n[-1]))
    return None if batches or {"train", "test"} <= splits else f"{src} {NEITHER_LAYOUT}", train


def _archive(kind: str, src: Path, where: Path | None) -> dict:
    """An archive of either layout: extracted (tarfile's data filter) into a private folder, read
    as a directory, and removed; messages name the member in the archive."""
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=where))
    try:
        try:
            with tarfile.open(src) as tar:
                tar.extractall(scratch, filter="data")
        except UNREADABLE_ARCHIVE as e:
            raise DataError(f"{src} is truncated or damaged ({_described(e)}); copy or download it again") from None  # fmt: skip
        for top in [scratch, *sorted(p for p in scratch.iterdir() if p.is_dir())]:
            found = _find_format(kind, top)
            if found:
                return _tree(top, kind) if found == "folder" else _torchvision(kind, top)
        raise DataError(f"{src} {NEITHER_LAYOUT}")
    except DataError as e:
        raise DataError(str(e).replace(f"{scratch}/", f"{src}: ").replace(str(scratch), str(src))) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # our own extraction only

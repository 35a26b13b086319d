"""The data sources: each gives its images as uint8 tensors (N, C, H, W), its int64 labels and its
class names, decoded once and then read from the cache (sweeper.data_cache).

- torchvision's data sets: cifar10, cifar100, mnist, fashion_mnist, svhn, read by
  torchvision.datasets from torchvision's own layout under data.root, and downloaded by it when
  they are absent and data.download is true. data=cifar10 also reads an ImageFolder tree of
  CIFAR-10's 10 classes, and a .tar.gz/.tgz/.tar of either layout.
- image_folder: any ImageFolder tree (train/<class>/<image>, test/<class>/<image>), or an archive
  of one: any class count, any image size (one for all), grey (1 channel) or colour (3).
- a user's data set by `_target_`: a callable returning (train, test), each a pair of tensors
  (images, labels) or a torch Dataset of (image, label).
- synthetic: a CIFAR-shaped 10-class set generated from a seed, in a second, with no download.
"""

from __future__ import annotations

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
from sweeper.data_cache import DataError, _described, digest, expand
from sweeper.synthetic import synthetic, synthetic_cached  # noqa: F401 -- data=synthetic
from sweeper.user_data import GREY_MODES, user_dataset

log = logging.getLogger("sweeper")

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


@dataclass(frozen=True)
class Torchvision:
    """One of torchvision's data sets, as it lays it out under its root."""

    label: str  # as messages name it
    cls: str  # torchvision.datasets.<cls>
    files: tuple[str, ...]  # what reading needs under data.root
    layout: str  # of the class's .data: NHWC, NCHW or NHW
    shape: tuple[int, int, int]  # (C, H, W)
    sizes: tuple[int, int]  # (train, test) of the official release


def _mnist_files(folder: str) -> tuple[str, ...]:
    names = (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    )
    return tuple(f"{folder}/raw/{n}" for n in names)


TORCHVISION = {
    "cifar10": Torchvision(
        "CIFAR-10",
        "CIFAR10",
        tuple(
            f"cifar-10-batches-py/{n}"
            for n in (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")
        ),
        "NHWC",
        (3, 32, 32),
        (50_000, 10_000),
    ),
    "cifar100": Torchvision(
        "CIFAR-100",
        "CIFAR100",
        ("cifar-100-python/train", "cifar-100-python/test", "cifar-100-python/meta"),
        "NHWC",
        (3, 32, 32),
        (50_000, 10_000),
    ),
    "mnist": Torchvision("MNIST", "MNIST", _mnist_files("MNIST"), "NHW", (1, 28, 28), (60_000, 10_000)),
    "fashion_mnist": Torchvision(
        "Fashion-MNIST", "FashionMNIST", _mnist_files("FashionMNIST"), "NHW", (1, 28, 28), (60_000, 10_000)
    ),
    "svhn": Torchvision(
        "SVHN", "SVHN", ("train_32x32.mat", "test_32x32.mat"), "NCHW", (3, 32, 32), (73_257, 26_032)
    ),
}
FOLDER_KINDS = ("cifar10", "image_folder")  # those that read an ImageFolder tree or an archive


def read(cfg) -> dict:
    """The data set of the `data` config section: train_x, train_y, test_x, test_y, classes."""
    if cfg.get("_target_"):
        return user_dataset(cfg)
    if cfg.name == "synthetic":
        arrays = synthetic_cached(
            cfg.generated_train, cfg.generated_test, cfg.seed, cfg.label_noise, cfg.get("cache_dir")
        )
        return {
            **dict(zip(data_cache.ARRAY_KEYS, arrays, strict=True)),
            "classes": [f"class{i}" for i in range(10)],
        }
    try:
        return _files(cfg.name, cfg.root, bool(cfg.get("download", False)), cfg.get("cache_dir"))
    except DataError as e:
        raise DataError(f"data.root={cfg.root}: {e}") from None


def cifar10(root, download: bool, cache_dir):
    """CIFAR-10 from data.root as (train_x, train_y, test_x, test_y)."""
    try:
        arrays = _files("cifar10", root, download, cache_dir)
    except DataError as e:
        raise DataError(f"data.root={root}: {e}") from None
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


def _archive_problem(kind: str, src: Path) -> str | None:
    if kind not in FOLDER_KINDS:
        return f"{src} is a file: data={kind} reads torchvision's layout in a directory"
    if src.exists() and not src.name.endswith(ARCHIVE_SUFFIXES):
        return f"{src} is a file but not a .tar.gz, .tgz or .tar archive"
    if not src.exists():
        # torchvision would make a directory of that name and put the data set in it
        return f"no such archive {src} (data.download fetches into a directory, not an archive: give an existing archive or a directory)"
    return None


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


def _missing(kind: str, src: Path) -> list[str]:
    return [f for f in TORCHVISION[kind].files if not _present(src / f)]


def _nothing_there(kind: str) -> str:
    if kind == "image_folder":
        return "no ImageFolder there: it must hold train/<class>/<image> and test/<class>/<image>, or be a .tar.gz of them"
    spec = TORCHVISION[kind]
    where = f"torchvision's layout ({', '.join(spec.files[:2])}, ...)"
    if kind == "cifar10":
        where = "the python batches (cifar-10-batches-py/), an ImageFolder tree (train/<class>/*.png, test/...) or its .tar.gz"
    return f"no {spec.label} there. Put {where} there, set data.download=true, or use data=synthetic"


def source_problem(kind: str, root, download: bool, cache_dir) -> str | None:
    """Why data.root cannot give data set `kind`, in one line, or None: the pre-check's look.

    Cheap where it can be: directories are listed, not read. An archive is scanned once per
    process (member names only, ~1 s for CIFAR-10's), unless a cache decoded from it exists.
    """
    problem = root_problem(root)
    if problem:
        return problem
    src = expand(root)
    try:
        if _is_archive_path(src):
            problem = _archive_problem(kind, src)
            if problem:
                return problem
            cache = _cache_path(kind, src, None if cache_dir is None else expand(cache_dir))
            if cache is None or not cache.is_file():
                _scan_archive(src)
            return None
        found = _find_format(kind, src)
        if found == "folder":
            _tree_classes(src, CIFAR10_CLASSES if kind == "cifar10" else None)
        elif found == "torchvision":
            missing = _missing(kind, src)
            if missing:
                return (
                    f"{src} lacks {', '.join(missing)} of {TORCHVISION[kind].label} in torchvision's layout"
                )
        elif kind not in TORCHVISION or not download:
            return _nothing_there(kind) + ("" if kind not in TORCHVISION else " (data.download=false)")
    except DataError as e:
        return str(e)
    return None


def train_count(kind: str, root) -> int:
    """The training set's image count as the pre-check knows it: counted in an ImageFolder tree
    or archive, the release's for torchvision's sets, CIFAR-10's in any of its layouts (the job
    counts the real images again)."""
    if kind in TORCHVISION:
        return TORCHVISION[kind].sizes[0]
    src = expand(root)
    return _scan_archive(src) if _is_archive_path(src) else len(_listing(kind, src)[1])


_LISTED: dict[tuple, tuple] = {}


def _listing(kind: str, src: Path) -> tuple[list[str], list, list]:
    """(classes, train samples, test samples) of a tree, listed once per process while no folder
    of it changes (the pre-check of every job, each load's cache key)."""
    classes = _tree_classes(src, CIFAR10_CLASSES if kind == "cifar10" else None)
    folders = [src / split / c for split in ("train", "test") for c in classes]
    key = (kind, str(src.resolve()), *(f.stat().st_mtime_ns if f.is_dir() else None for f in folders))
    if key not in _LISTED:
        _LISTED.clear()  # the last tree only
        _LISTED[key] = (classes, *(_tree_samples(src / split, classes) for split in ("train", "test")))
    return _LISTED[key]


def _files(kind: str, root, download: bool, cache_dir) -> dict:
    """A data set read from files, decoded once and cached. One lock per source (in the cache
    dir) covers the download, the extraction of gzipped files and the decoding."""
    problem = root_problem(root)
    if problem:
        raise DataError(problem)
    src = expand(root)
    where = data_cache.directory(cache_dir)
    lock = None if where is None else where / f"{kind}-{digest(str(src.resolve()))}.lock"
    if _is_archive_path(src):
        problem = _archive_problem(kind, src)
        if problem:
            raise DataError(problem)
    else:
        found = _find_format(kind, src)
        if found is None and (kind not in TORCHVISION or not download):
            raise DataError(_nothing_there(kind))
        if found != "folder" and (found is None or _unextracted(kind, src)):
            with data_cache.locked(lock):  # not downloaded meanwhile by a job that held the lock
                if _find_format(kind, src) is None:
                    _download(kind, src)
                _extract_gzipped(kind, src)
    return data_cache.cached(lambda: _cache_path(kind, src, where), lambda: _decode(kind, src, where), lock)


def _unextracted(kind: str, src: Path) -> bool:
    return kind in TORCHVISION and any(not (src / f).is_file() for f in TORCHVISION[kind].files)


def _extract_gzipped(kind: str, src: Path) -> None:
    """Where only a raw file's .gz is there (MNIST's files as published), extract it beside it,
    as torchvision's download does; a file missing altogether is named."""
    from torchvision.datasets.utils import extract_archive

    missing = _missing(kind, src)
    if missing:
        raise DataError(
            f"{src} lacks {', '.join(missing)} of {TORCHVISION[kind].label} in torchvision's layout"
        )
    for name in TORCHVISION[kind].files:
        path = src / name
        if not path.is_file():
            try:
                extract_archive(str(path) + ".gz", str(path.parent))
            except (OSError, EOFError, zlib.error) as e:
                raise DataError(f"{path}.gz cannot be extracted ({_described(e)}); copy it again") from None


def _source_files(kind: str, src: Path) -> list[str]:
    """The files that decoding reads, in that order: what the cache key must cover."""
    if _is_archive_path(src):
        return [str(src)]
    if _find_format(kind, src) == "folder":
        _, train, test = _listing(kind, src)
        return [p for p, _ in train + test]
    return [str(src / f) for f in TORCHVISION[kind].files]


def _cache_path(kind: str, src: Path, where: Path | None) -> Path | None:
    """The cache file for `src`: keyed by the readers' versions and every file decoding reads."""
    if where is None:
        return None
    import PIL
    import torchvision

    source = str(src.resolve())
    key = f"{source}|{kind}|{data_cache.FORMAT_VERSION}|{torchvision.__version__}|{PIL.__version__}\n"
    key += data_cache.files_key(_source_files(kind, src), src)
    # The source's digest first: a cache of the same source under an older key is superseded.
    return where / f"{kind}-{digest(source)}-{digest(key)}.pt"


def _decode(kind: str, src: Path, where: Path | None) -> dict:
    if _is_archive_path(src):
        return _archive(kind, src, where)
    if _find_format(kind, src) == "folder":
        return _tree(src, kind)
    return _torchvision(kind, src)


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
    missing = _missing(kind, src)
    if missing:  # named here: torchvision would say "not found or corrupted"
        raise DataError(f"{src} lacks {', '.join(missing)} of {spec.label} in torchvision's layout")
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
        x = torch.as_tensor(np.asarray(ds.data), dtype=torch.uint8)
        x = x.permute(0, 3, 1, 2) if spec.layout == "NHWC" else x[:, None] if spec.layout == "NHW" else x
        out[f"{split}_x"] = x.contiguous()
        labels = ds.labels if kind == "svhn" else ds.targets
        out[f"{split}_y"] = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    classes = [str(c) for c in getattr(train, "classes", None) or range(10)]  # SVHN names none: its digits
    return data_cache.labelled(out, classes, f"the {spec.label} files in {src}")


class _Quiet:
    """Stands in for torchvision's download progress bar, which writes a line per chunk to the log."""

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


def _download(kind: str, src: Path) -> None:
    """torchvision's download (its checksums verified), into a private folder first and then
    renamed into place, so no process ever reads a half-extracted file."""
    import torchvision.datasets
    from torchvision.datasets import utils as tv_utils

    spec = TORCHVISION[kind]
    src.mkdir(parents=True, exist_ok=True)
    tmp = src / f".download-{socket.gethostname()}-{os.getpid()}"
    cls = getattr(torchvision.datasets, spec.cls)
    log.info(
        "%s is not in %s: downloading it from %s",
        spec.label,
        src,
        getattr(cls, "url", None) or "torchvision's mirror",
    )
    start, bar = time.perf_counter(), tv_utils.tqdm
    tv_utils.tqdm = _Quiet
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


def _tree_classes(src: Path, expected: list[str] | None) -> list[str]:
    """The class names (torchvision's find_classes: the sorted folder names of train/). The test
    split's folders must be among them, as labels come from names; data=cifar10 wants its own 10."""
    from torchvision.datasets.folder import find_classes

    found = {}
    for split in ("train", "test"):
        try:
            found[split] = find_classes(str(src / split))[0]
        except (OSError, FileNotFoundError) as e:
            raise DataError(f"{src / split}: {data_cache.first_line(e)}") from None
        if expected is not None and set(found[split]) != set(expected):
            missing = [c for c in expected if c not in found[split]]
            extra = sorted(set(found[split]) - set(expected))
            raise DataError(
                f"{src / split} must hold exactly the class folders {', '.join(expected)}"
                + (f"; missing: {', '.join(missing)}" if missing else "")
                + (f"; not CIFAR-10 classes: {', '.join(extra)}" if extra else "")
                + " (data=image_folder reads other trees)"
            )
    extra = sorted(set(found["test"]) - set(found["train"]))
    if extra:
        raise DataError(f"{src / 'test'} has class folders that {src / 'train'} lacks: {', '.join(extra)}")
    return found["train"]


def _tree_samples(split_dir: Path, classes: list[str]) -> list[tuple[str, int]]:
    """(path, label) of a split, in ImageFolder's order, by torchvision's own walk."""
    from torchvision.datasets.folder import make_dataset

    try:
        samples = make_dataset(
            str(split_dir), {c: i for i, c in enumerate(classes)}, is_valid_file=_is_image, allow_empty=True
        )
    except OSError as e:
        raise DataError(f"cannot list {split_dir} ({_described(e)})") from None
    if not samples:
        raise DataError(f"{split_dir} holds no images")
    return samples


def _decode_image(path: str, rgb: bool) -> np.ndarray:
    """(C, H, W) uint8: grey modes as 1 channel (unless `rgb`), every other mode as RGB."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            grey = im.mode in GREY_MODES and not rgb
            pixels = np.asarray(im.convert("L" if grey else "RGB"), dtype=np.uint8)
    except Exception as e:  # Pillow: UnidentifiedImageError, truncated file, bad header ...
        raise DataError(f"{path} is not a readable image ({_described(e)})") from None
    return pixels[None] if grey else pixels.transpose(2, 0, 1)


def _described_image(x: np.ndarray) -> str:
    return f"{'grey' if x.shape[0] == 1 else 'colour'} {x.shape[2]}x{x.shape[1]} px"


def _tree(src: Path, kind: str) -> dict:
    """An ImageFolder tree: every image of one size and all grey or all colour (stacked as they are)."""
    cifar = kind == "cifar10"
    classes, *listed = _listing(kind, src)
    out, first = {}, None
    for split, samples in zip(("train", "test"), listed, strict=True):
        images = []
        for path, _ in samples:
            x = _decode_image(path, rgb=cifar)
            if first is None:
                first = (path, x)
                if cifar and x.shape != (3, 32, 32):
                    raise DataError(f"{path} is {x.shape[2]}x{x.shape[1]} px; CIFAR-10 images are 32x32 (data=image_folder reads other sizes)")  # fmt: skip
            elif x.shape != first[1].shape:
                raise DataError(
                    f"{path} is {_described_image(x)} but {first[0]} is {_described_image(first[1])}: "
                    "all images must have one size and all be grey or all colour"
                )
            images.append(x)
        out[f"{split}_x"] = torch.from_numpy(np.stack(images))
        out[f"{split}_y"] = torch.tensor([label for _, label in samples], dtype=torch.int64)
    return {**out, "classes": classes}


def folder_extent(root, extent):
    """extent(n_train, n_test, (C, H, W), classes) of an ImageFolder tree, from its listing and
    its first image's header; None for an archive (known once extracted)."""
    from PIL import Image

    if root_problem(root) or _is_archive_path(expand(root)):
        return None
    classes, train, test = _listing("image_folder", expand(root))
    with Image.open(train[0][0]) as im:
        width, height = im.size
        channels = 1 if im.mode in GREY_MODES else 3
    return extent(len(train), len(test), (channels, height, width), len(classes))


# ----------------------------------------------------------------------------- archives


_SCANNED: dict[tuple, tuple[str | None, int]] = {}


def _scan_archive(src: Path) -> int:
    """The pre-check's look into an archive (member names only), once per process and version:
    its training images' count (0 for CIFAR-10's batches), or DataError."""
    stat = src.stat()
    key = (str(src.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SCANNED:
        try:
            with tarfile.open(src) as tar:
                names = [m.name for m in tar if m.isfile()]
            train = sum(
                1 for n in names if n.count("/") >= 2 and n.split("/")[-3] == "train" and _is_image(n)
            )
            problem = None if _archive_layout(names) else f"{src} holds neither cifar-10-batches-py/ (data_batch_1..5, test_batch) nor train/<class>/<image> and test/<class>/<image> files"  # fmt: skip
            _SCANNED[key] = (problem, train)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            _SCANNED[key] = (f"{src} is truncated or damaged ({_described(e)}); copy or download it again", 0)
    problem, train = _SCANNED[key]
    if problem:
        raise DataError(problem)
    return train


def _archive_layout(names) -> bool:
    split_dirs = {n.split("/")[-3] for n in names if n.count("/") >= 2}
    batches = any(n.endswith("cifar-10-batches-py/data_batch_1") for n in names)
    return batches or {"train", "test"} <= split_dirs


def _archive(kind: str, src: Path, where: Path | None) -> dict:
    """An archive of either layout: extracted (tarfile's data filter) into a private folder, read
    as a directory, and removed; messages name the member in the archive."""
    scratch = Path(tempfile.mkdtemp(prefix=".extract-", dir=where))
    try:
        try:
            with tarfile.open(src) as tar:
                tar.extractall(scratch, filter="data")
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(
                f"{src} is truncated or damaged ({_described(e)}); copy or download it again"
            ) from None
        for top in [scratch, *sorted(p for p in scratch.iterdir() if p.is_dir())]:
            found = _find_format(kind, top) or (
                "folder" if (top / "train").is_dir() and (top / "test").is_dir() else None
            )
            if found == "torchvision":
                return _torchvision(kind, top)
            if found == "folder":
                return _tree(top, kind)
        raise DataError(
            f"{src} holds neither cifar-10-batches-py/ (data_batch_1..5, test_batch) nor "
            "train/<class>/<image> and test/<class>/<image> files"
        )
    except DataError as e:
        raise DataError(str(e).replace(f"{scratch}/", f"{src}: ").replace(str(scratch), str(src))) from None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # our own extraction only

"""The decoded-data cache: a data set's uint8 tensors in one file, so the jobs of a sweep read it
instead of decoding 60k images each. A file is keyed by what it was made from (every source
file's name, size and modification time, or a generator's arguments) and FORMAT_VERSION. One lock
per source serialises the download and the decoding. A cache is only a shortcut: a damaged file is
made again, and a full disk or a read-only directory leaves the run uncached with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import logging
import os
import time
import zlib
from pathlib import Path

import torch

from sweeper.runlog import atomic_write

log = logging.getLogger("sweeper")

# Raise when a reader changes what it makes of the same source files: older caches are then unused.
FORMAT_VERSION = 2
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y")
# A writer killed mid-save (SIGKILL, power loss) leaves its temp file; another writer removes it
# once it is this old, so a slow writer on another host sharing the cache dir is never cut short.
STALE_TEMP_S = 24 * 3600


class DataError(RuntimeError):
    """The data cannot be found or read; the message says where to put it."""


def first_line(e: BaseException) -> str:
    """An error's message in one line: its first (the type's name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _described(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def expand(path) -> Path:
    return Path(os.path.expanduser(str(path)))


def files_key(paths, base: Path) -> str:
    """Each file's name (relative to `base`), size and modification time: an edited, added or
    removed file gives another key (a missing one: the reader says so, by name)."""

    def stamp(path):
        with contextlib.suppress(OSError):
            stat = os.stat(path)
            return f"{stat.st_size}|{stat.st_mtime_ns}"
        return "missing"

    return "\n".join(f"{str(path)[len(str(base)) :]}|{stamp(path)}" for path in paths)


_WARNED: set[str] = set()


def directory(cache_dir) -> Path | None:
    """The cache dir, made if missing; None (and one warning per process) if it is not a directory."""
    if cache_dir is None:
        return None
    path = expand(cache_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # /dev/null, a file, a read-only parent: the run goes on, uncached
        if str(path) not in _WARNED:
            _WARNED.add(str(path))
            log.warning("data.cache_dir=%s is not a usable directory (%s); every process decodes the data itself", cache_dir, type(e).__name__)  # fmt: skip
        return None
    return path


def cache_file(cache_dir, kind: str, source: str, key: str, make: bool = True) -> Path | None:
    """<kind>-<source>-<key>.pt (digests; the key with FORMAT_VERSION) in the cache dir, or None
    without one; a read-only dir still serves reads. The source's digest first: a file of the same
    source under another key is superseded. make=False: only look (the pre-check makes no dir)."""
    where = directory(cache_dir) if make else None if cache_dir is None else expand(cache_dir)
    return (
        None if where is None else where / f"{kind}-{digest(source)}-{digest(f'{key}|{FORMAT_VERSION}')}.pt"
    )


def lock_file(cache_dir, kind: str, source: str) -> Path | None:
    """The source's lock: one job at a time downloads it or decodes it."""
    where = directory(cache_dir)
    return None if where is None else where / f"{kind}-{digest(source)}.lock"


@contextlib.contextmanager
def locked(path: Path | None):
    """An exclusive flock on `path` for the block; none where it cannot be made (no cache dir, a
    read-only one: nothing gets written there then, so there is nothing to serialise)."""
    handle = None
    with contextlib.suppress(OSError, TypeError):  # TypeError: no path
        handle = open(path, "a")  # noqa: SIM115 - held for the block
    with handle or contextlib.nullcontext():
        if handle is not None:
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def cached(cache_dir, kind: str, source: str, key, make) -> dict:
    """The arrays in the source's cache file, or make() them once and store them there.

    `key()` is asked again under the source's lock: a download that finished meanwhile changes
    it. One job makes the arrays while the others of a sweep (pool workers, array tasks) wait.
    """
    first = cache_file(cache_dir, kind, source, key())
    arrays = read(first)
    if arrays is not None:
        return arrays
    with locked(lock_file(cache_dir, kind, source)):
        cache = cache_file(cache_dir, kind, source, key())
        arrays = read(cache, warn=cache != first)  # one warning for one damaged file
        if arrays is None:
            arrays = make()
            arrays = {**{k: arrays[k].contiguous() for k in ARRAY_KEYS}, "classes": list(arrays["classes"])}
            store(cache, arrays)
        return arrays


def _checksums(arrays: dict) -> dict[str, int]:
    # It catches flipped bits that the shape and range checks cannot see, for half a warm torch.load.
    return {k: zlib.crc32(arrays[k].contiguous().numpy()) for k in ARRAY_KEYS}


def store(cache: Path | None, arrays: dict) -> None:
    if cache is None:
        return
    for tmp in cache.parent.glob(".*.pt.tmp*"):  # of writers that died mid-save
        with contextlib.suppress(OSError):  # removed by another writer meanwhile, or not ours
            if time.time() - tmp.stat().st_mtime > STALE_TEMP_S:
                tmp.unlink()
    try:
        buffer = io.BytesIO()
        torch.save({**arrays, "version": FORMAT_VERSION, "crc32": _checksums(arrays)}, buffer)
        atomic_write(cache, buffer.getbuffer())
        for old in _superseded(cache):  # a reader that has one open keeps reading it
            with contextlib.suppress(OSError):
                old.unlink()
    except Exception as e:
        # A full disk or a file size limit comes as OSError from the file system, or as torch's
        # zip writer's RuntimeError ("enforce fail at inline_container.cc"). A cache is only a
        # shortcut: the run goes on without it.
        log.warning("could not write the data cache %s (%s); going on without it", cache, first_line(e))


def _superseded(cache: Path) -> list[Path]:
    """Caches of the same source as `cache` (<kind>-<source>-<key>.pt) under another key: made
    from files since edited, or by an older reader, never to be read again."""
    name = cache.name.removesuffix(".pt").split("-")
    if len(name) != 3:
        return []
    return [p for p in cache.parent.glob(f"{name[0]}-{name[1]}-*.pt") if p.name != cache.name]


def read(cache: Path | None, warn: bool = True) -> dict | None:
    if cache is None or not cache.is_file():
        return None
    try:
        arrays = torch.load(cache, weights_only=True)
        problem = cache_problem(arrays)
    except Exception as e:  # truncated or corrupt (a crash mid-write elsewhere): make it again
        problem = _described(e)
    if problem:
        if warn:
            log.warning("data cache %s is unusable (%s); making it again", cache, problem)
        return None
    return {k: arrays[k] for k in (*ARRAY_KEYS, "classes")}


def cache_problem(arrays) -> str | None:
    """What is wrong with a loaded cache file, or None: layout, dtypes, label range, checksums."""
    if not (isinstance(arrays, dict) and arrays.get("version") == FORMAT_VERSION and all(k in arrays for k in (*ARRAY_KEYS, "classes", "crc32"))):  # fmt: skip
        return "not a data cache of this version"
    return _problem(arrays, arrays["classes"]) or (
        "checksum mismatch" if _checksums(arrays) != arrays["crc32"] else None
    )


def _problem(arrays: dict, classes: list[str]) -> str | None:
    shape = tuple(arrays["train_x"].shape[1:])
    for split in ("train", "test"):
        x, y = arrays[f"{split}_x"], arrays[f"{split}_y"]
        if x.dtype != torch.uint8 or x.dim() != 4 or tuple(x.shape[1:]) != shape:
            return f"{split}_x is {x.dtype} {tuple(x.shape)}, not uint8 (N, {', '.join(map(str, shape))})"
        if y.dtype != torch.int64:
            return f"{split}_y is {y.dtype}, not int64"
        if y.shape != (len(x),):
            return f"{split} has {len(x)} images but {len(y)} labels"
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
            return f"{split} labels outside 0..{len(classes) - 1} ({len(classes)} classes)"
    return None


def labelled(arrays: dict, classes: list[str], where: str) -> dict:
    """Labels in range, one label per image: a file of another data set is refused, not trained on."""
    problem = _problem(arrays, classes)
    if problem:
        raise DataError(f"{where}: {problem}")
    return {**arrays, "classes": classes}

"""The data sources, the CIFAR-10 loading paths on small generated files, and the device batches."""

import os
import pickle
import struct
import subprocess
import sys
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper import data as data_module
from sweeper import data_cache, datasets
from tests.conftest import REPO, compose_cfg

N_PER_CLASS = {"train": 3, "test": 2}


def fake_images(split, seed):
    rng = np.random.default_rng(seed)
    n = 10 * N_PER_CLASS[split]
    x = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    y = np.repeat(np.arange(10), N_PER_CLASS[split])
    return x, y


def write_python_batches(root):
    """The format torchvision downloads: cifar-10-batches-py/data_batch_1..5 and test_batch."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    x, y = fake_images("train", 0)
    for i, part in enumerate(np.array_split(np.arange(len(y)), 5), start=1):
        entry = {
            "batch_label": f"training batch {i} of 5",
            "labels": y[part].tolist(),
            "data": x[part].reshape(len(part), -1),
        }
        (base / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    tx, ty = fake_images("test", 1)
    (base / "test_batch").write_bytes(pickle.dumps({"labels": ty.tolist(), "data": tx.reshape(len(ty), -1)}))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": data_module.CIFAR10_CLASSES}))
    return (x, y), (tx, ty)


def write_image_folder(root, suffix=".png"):
    """train/<class>/NNNN.png and test/<class>/NNNN.png, as the shared JPEG archive is laid out."""
    out = {}
    for split, seed in (("train", 0), ("test", 1)):
        x, y = fake_images(split, seed)
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            d = root / split / data_module.CIFAR10_CLASSES[label]
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img.transpose(1, 2, 0)).save(d / f"{i:04d}{suffix}")
        out[split] = (x, y)
    return out["train"], out["test"]


def sorted_by_label(x, y):
    order = np.argsort(y, kind="stable")
    return x[order], y[order]


def test_python_batches_load_exactly(tmp_path):
    (x, y), (tx, ty) = write_python_batches(tmp_path / "cifar")
    train_x, train_y, test_x, test_y = data_module.cifar10(
        str(tmp_path / "cifar"), False, str(tmp_path / "cache")
    )
    assert train_x.dtype == torch.uint8 and train_x.shape == (30, 3, 32, 32)
    assert torch.equal(train_x, torch.from_numpy(x)) and torch.equal(train_y, torch.from_numpy(y))
    assert torch.equal(test_x, torch.from_numpy(tx)) and torch.equal(test_y, torch.from_numpy(ty))


def test_image_folder_tree_loads_losslessly_from_png(tmp_path):
    (x, y), (tx, ty) = write_image_folder(tmp_path / "cifar")
    train_x, train_y, test_x, test_y = data_module.cifar10(
        str(tmp_path / "cifar"), False, str(tmp_path / "cache")
    )
    assert torch.equal(train_y, torch.from_numpy(y))  # ImageFolder: class index = sorted folder name
    assert torch.equal(train_x, torch.from_numpy(x))
    assert torch.equal(test_x, torch.from_numpy(tx)) and torch.equal(test_y, torch.from_numpy(ty))


def test_jpeg_tarball_loads_like_the_shared_archive(tmp_path):
    write_image_folder(tmp_path / "tree", suffix=".jpg")
    archive = tmp_path / "cifar10-jpeg.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree" / "train", arcname="cifar10/train")
        tar.add(tmp_path / "tree" / "test", arcname="cifar10/test")
    train_x, train_y, test_x, test_y = data_module.cifar10(str(archive), False, str(tmp_path / "cache"))
    assert train_x.shape == (30, 3, 32, 32) and test_x.shape == (20, 3, 32, 32)
    assert train_y.bincount().tolist() == [3] * 10
    # JPEG is lossy: the same pixels as the folder's, decoded by the same code, within JPEG error
    folder_x, _, _, _ = data_module.cifar10(str(tmp_path / "tree"), False, str(tmp_path / "cache2"))
    assert torch.equal(train_x, folder_x)


def test_decoded_images_are_cached_and_the_cache_is_reused(tmp_path, monkeypatch):
    write_python_batches(tmp_path / "cifar")
    first = data_module.cifar10(str(tmp_path / "cifar"), False, str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 1

    def no_decoding(*args):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(datasets, "_decode", no_decoding)
    second = data_module.cifar10(str(tmp_path / "cifar"), False, str(tmp_path / "cache"))
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))


def test_missing_data_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(data_module.DataError, match="data.root=.*no CIFAR-10 there.*data=synthetic"):
        data_module.cifar10(str(tmp_path / "nothing"), False, str(tmp_path / "cache"))


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(data_module.DataError, match="download failed .*Name or service not known.*data.root"):
        data_module.cifar10(str(tmp_path / "nothing"), True, str(tmp_path / "cache"))


def test_synthetic_is_deterministic_cifar_shaped_and_balanced():
    a = data_module.synthetic(500, 200, seed=0, label_noise=0.1)
    b = data_module.synthetic(500, 200, seed=0, label_noise=0.1)
    c = data_module.synthetic(500, 200, seed=1, label_noise=0.1)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], c[0])
    assert a[0].shape == (500, 3, 32, 32) and a[0].dtype == torch.uint8
    assert a[1].bincount(minlength=10).min() > 20
    assert a[0].float().std() > 20  # not a flat image


def test_synthetic_sets_of_other_sizes_share_their_images_and_the_test_set():
    # Sweeping data.generated_train must not change the test set the runs are judged on (it did: the test
    # images came from the same stream, after the training images), and a smaller training set
    # is the start of a larger one, labels and their noise included.
    small = data_module.synthetic(1200, 300, seed=4, label_noise=0.3)
    large = data_module.synthetic(2500, 300, seed=4, label_noise=0.3)
    assert torch.equal(small[0], large[0][:1200]) and torch.equal(small[1], large[1][:1200])
    assert torch.equal(small[2], large[2]) and torch.equal(small[3], large[3])
    assert torch.equal(data_module.synthetic(10, 700, 4, 0.3)[2][:300], small[2])  # the test set too


def test_synthetic_data_is_generated_once_then_read_from_the_cache(tmp_path):
    first = data_module.synthetic_cached(200, 50, 3, 0.1, str(tmp_path))
    for a, b in zip(first, data_module.synthetic(200, 50, 3, 0.1), strict=True):
        assert torch.equal(a, b)  # the cache holds exactly what the generator makes
    (cache,) = tmp_path.glob("synthetic-*.pt")
    marked = torch.load(cache, weights_only=True)
    marked["train_y"] = torch.full_like(marked["train_y"], 7)
    data_cache.store(cache, {k: marked[k] for k in (*data_cache.ARRAY_KEYS, "classes")})  # a valid checksum
    again = data_module.synthetic_cached(200, 50, 3, 0.1, str(tmp_path))
    assert (again[1] == 7).all()  # read from the file, not generated again
    data_module.synthetic_cached(200, 50, 4, 0.1, str(tmp_path))  # another seed: another file
    assert len(list(tmp_path.glob("synthetic-*.pt"))) == 2
    assert data_cache.cache_file(None, "synthetic", "x", "y") is None  # cache_dir null: no file at all
    assert len(data_module.synthetic_cached(20, 5, 3, 0.1, None)[1]) == 20


def test_a_format_version_bump_gives_a_synthetic_cache_another_name_and_removes_the_old(
    tmp_path, monkeypatch
):
    """Every source's cache name holds data_cache.FORMAT_VERSION: a reader of another version
    never reads the file, and the superseded file of the same arguments is removed."""
    data_module.synthetic_cached(20, 5, 3, 0.1, str(tmp_path))
    (old,) = tmp_path.glob("synthetic-*.pt")
    monkeypatch.setattr(data_cache, "FORMAT_VERSION", data_cache.FORMAT_VERSION + 1)
    data_module.synthetic_cached(20, 5, 3, 0.1, str(tmp_path))
    (new,) = tmp_path.glob("synthetic-*.pt")
    assert new.name != old.name and torch.load(new, weights_only=True)["version"] == data_cache.FORMAT_VERSION


def test_a_broken_or_unwritable_cache_never_fails_the_run(tmp_path, monkeypatch, caplog):
    data_module.synthetic_cached(200, 50, 3, 0.1, str(tmp_path))
    (cache,) = tmp_path.glob("synthetic-*.pt")
    cache.write_bytes(b"truncated by a crash")
    again = data_module.synthetic_cached(200, 50, 3, 0.1, str(tmp_path))
    assert torch.equal(again[0], data_module.synthetic(200, 50, 3, 0.1)[0])  # made again
    assert torch.load(cache, weights_only=True)["train_x"].shape == (200, 3, 32, 32)  # and rewritten

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    fresh = data_module.synthetic_cached(100, 50, 5, 0.1, str(tmp_path))
    assert len(fresh[1]) == 100  # the run has its data
    assert "could not write the data cache" in caplog.text
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".lock", ".lock", ".pt"]  # no temp file left


def test_train_size_takes_a_seeded_subset_and_normalises_on_it():
    cfg = compose_cfg("data.train_size=100")
    d = data_module.load(cfg.data)
    assert len(d.train_y) == 100 and len(d.test_y) == cfg.data.generated_test
    assert torch.equal(d.train_x, data_module.load(cfg.data).train_x)
    x = data_module.prepare(d.train_x, d)
    assert x.mean(dim=(0, 2, 3)).abs().max() < 1e-4 and (x.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3


@pytest.mark.parametrize("do_augment", [False, True])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_staged_data_gives_bitwise_the_batches_of_per_batch_normalisation(do_augment, layout):
    d = data_module.load(compose_cfg().data)
    staged = data_module.stage(d, layout)
    assert staged.train_x.dtype == torch.float32 and staged.train_x.is_contiguous(memory_format=layout)

    def epoch(data):
        g = torch.Generator().manual_seed(3)
        return list(data_module.train_batches(data, 64, g, do_augment, layout))

    for (x, y), (xs, ys) in zip(epoch(d), epoch(staged), strict=True):
        assert torch.equal(x, xs) and torch.equal(y, ys) and xs.is_contiguous(memory_format=layout)
    plain = torch.cat([x for x, _ in data_module.eval_batches(d.test_x, d.test_y, d, 100, layout)])
    fast = torch.cat(
        [x for x, _ in data_module.eval_batches(staged.test_x, staged.test_y, staged, 100, layout)]
    )
    assert torch.equal(plain, fast)


def test_an_epoch_of_batches_covers_every_sample_once():
    d = data_module.load(compose_cfg().data)
    g = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in data_module.train_batches(d, 64, g, do_augment=False)])
    assert torch.equal(seen.sort().values, d.train_y.sort().values)
    sizes = [len(y) for _, y in data_module.train_batches(d, 64, g, do_augment=False)]
    assert sizes == [64] * (len(d.train_y) // 64) + [len(d.train_y) % 64]


def test_augment_crops_and_flips_whole_batches():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    outs = [data_module.augment(x, torch.Generator().manual_seed(s), pad=2) for s in range(30)]
    for out in outs:
        assert out.shape == x.shape
        # every output row is a contiguous window of a (maybe flipped) padded row: values step by 1
        for img in out:
            rows = img[0]
            inner = rows[(rows != 0).all(dim=1)]
            if len(inner):
                steps = (inner[:, 1:] - inner[:, :-1]).abs()
                assert torch.all(steps == 1)
    assert any(not torch.equal(o, x) for o in outs)  # something moved
    assert any(torch.equal(o[0, 0], x[0, 0].flip(-1)) for o in outs)  # an unshifted flip occurs


# ----------------------------------------------------------------------------- the reviewer's defects


def load_cifar(root, cache):
    return data_module.cifar10(str(root), False, str(cache))


def test_cache_is_made_again_when_a_read_file_or_the_decoder_changes(tmp_path, monkeypatch):
    """The key covers every file decoding reads (name, size, mtime) and the readers' format version."""
    write_image_folder(tmp_path / "tree")
    load_cifar(tmp_path / "tree", tmp_path / "cache")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "tree/train/airplane/0000.png")
    Image.fromarray(np.full((32, 32, 3), 200, np.uint8)).save(tmp_path / "tree/train/cat/new.png")
    x, y, _, _ = load_cifar(tmp_path / "tree", tmp_path / "cache")
    assert len(y) == 31 and int(x[0].sum()) == 0  # the edited image and the added one, not the old cache
    # The superseded cache of that tree (185 MB for CIFAR-10) is gone; only the new one is left.
    assert len(list((tmp_path / "cache").glob("cifar10-*.pt"))) == 1

    write_python_batches(tmp_path / "pyb")
    load_cifar(tmp_path / "pyb", tmp_path / "cache")
    batch = tmp_path / "pyb/cifar-10-batches-py/data_batch_1"
    entry = pickle.loads(batch.read_bytes())
    entry["labels"] = [9] * len(entry["labels"])
    batch.write_bytes(pickle.dumps(entry))
    assert load_cifar(tmp_path / "pyb", tmp_path / "cache")[1][:6].tolist() == [9] * 6

    monkeypatch.setattr(data_cache, "FORMAT_VERSION", data_cache.FORMAT_VERSION + 1)
    decoded = []
    real = datasets._decode
    monkeypatch.setattr(datasets, "_decode", lambda *args: decoded.append(args) or real(*args))
    load_cifar(tmp_path / "pyb", tmp_path / "cache")
    assert decoded  # another format version: decoded again


def test_folder_labels_follow_the_class_names_and_a_tree_without_the_10_classes_is_refused(tmp_path):
    """A split that lacks a class used to shift every later label by one; now it is refused."""
    write_image_folder(tmp_path / "tree")
    for f in (tmp_path / "tree/test/truck").iterdir():
        f.unlink()
    (tmp_path / "tree/test/truck").rmdir()
    with pytest.raises(
        data_module.DataError,
        match=r"tree/test must hold exactly .*; missing: truck \(data=image_folder reads other trees\)$",
    ) as e:
        load_cifar(tmp_path / "tree", tmp_path / "cache")
    assert "\n" not in str(e.value)
    (tmp_path / "tree/test/truck").mkdir()
    (tmp_path / "tree/test/lorry").mkdir()
    with pytest.raises(data_module.DataError, match="not CIFAR-10 classes: lorry"):
        load_cifar(tmp_path / "tree", tmp_path / "cache")


def test_a_train_size_larger_than_the_real_training_set_is_refused(tmp_path):
    """The pre-check knows only the nominal 50,000: a smaller copy is refused in the job, not trained on."""
    write_python_batches(tmp_path / "cifar")
    cfg = compose_cfg("data=cifar10", f"data.root={tmp_path / 'cifar'}", "data.train_size=31").data
    cfg.cache_dir = str(tmp_path / "cache")
    with pytest.raises(data_module.DataError, match=r"data.train_size=31 is invalid: .* has only 30 images"):
        data_module.load(cfg)


def fake_downloader(calls, delay=0.0):
    """Stands in for torchvision.datasets.CIFAR10's download: a progress bar as torchvision's, then the batches."""
    import time

    import torchvision

    class FakeCIFAR10(torchvision.datasets.CIFAR10):
        url = "http://example.invalid/cifar-10-python.tar.gz"

        def __init__(self, root, train=True, download=False):
            if not download:  # reading: torchvision's own
                super().__init__(root, train=train)
                return
            calls.append(root)
            with torchvision.datasets.utils.tqdm(total=100, unit="B") as bar:
                for _ in range(100):
                    bar.update(1)
            time.sleep(delay)
            write_python_batches(Path(root))

    return FakeCIFAR10


def test_jobs_starting_together_download_once_without_a_progress_bar(tmp_path, monkeypatch, capfd, caplog):
    """Both wait on the lock decoding uses; the log gets a line at start and end, not a bar."""
    import torchvision

    calls = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_downloader(calls, delay=0.5))
    caplog.set_level("INFO", logger="sweeper")
    results = []
    jobs = [
        threading.Thread(
            target=lambda: results.append(
                data_module.cifar10(str(tmp_path / "c"), True, str(tmp_path / "cache"))
            )
        )
        for _ in range(2)
    ]
    for job in jobs:
        job.start()
    for job in jobs:
        job.join()
    assert len(calls) == 1 and len(results) == 2
    assert torch.equal(results[0][0], results[1][0]) and len(results[0][1]) == 30
    assert "%" not in capfd.readouterr().err  # torchvision's bar writes "\r12.0%" per chunk
    assert "downloading it" in caplog.text and "downloaded CIFAR-10" in caplog.text
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == ["cifar-10-batches-py"]  # no temp dir left


def test_a_valid_cache_in_a_read_only_dir_is_read(tmp_path, monkeypatch):
    write_python_batches(tmp_path / "cifar")
    first = load_cifar(tmp_path / "cifar", tmp_path / "cache")
    (tmp_path / "cache").chmod(0o555)

    def no_decoding(*args):
        raise AssertionError("decoded again although a readable cache exists")

    monkeypatch.setattr(datasets, "_decode", no_decoding)
    try:
        again = load_cifar(tmp_path / "cifar", tmp_path / "cache")
    finally:
        (tmp_path / "cache").chmod(0o755)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def flip_a_pixel_byte(cache):
    """Flip one bit in the middle of the largest tensor's bytes in torch's zip file, as bit rot would."""
    with zipfile.ZipFile(cache) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    raw = bytearray(cache.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    raw[start + info.file_size // 2] ^= 0x10
    cache.write_bytes(bytes(raw))


def test_a_damaged_cache_is_detected_and_made_again(tmp_path, caplog):
    (x, _), _ = write_python_batches(tmp_path / "cifar")
    load_cifar(tmp_path / "cifar", tmp_path / "cache")
    (cache,) = (tmp_path / "cache").glob("cifar10-*.pt")
    flip_a_pixel_byte(cache)
    train_x = load_cifar(tmp_path / "cifar", tmp_path / "cache")[0]
    assert torch.equal(train_x, torch.from_numpy(x)) and "checksum mismatch" in caplog.text
    arrays = torch.load(cache, weights_only=True)
    assert data_cache.cache_problem(arrays) is None  # and rewritten whole
    arrays["train_y"][0] = 12  # a valid checksum over a bad label: the range check sees it
    data_cache.store(cache, {k: arrays[k] for k in (*data_cache.ARRAY_KEYS, "classes")})
    assert load_cifar(tmp_path / "cifar", tmp_path / "cache")[1][0] == 0
    assert "labels outside 0..9" in caplog.text


def check_data(*overrides):
    from sweeper import validate

    validate.check(compose_cfg("data=cifar10", *overrides))


def test_the_official_torchvision_tarball_is_read_and_passes_the_pre_check_which_makes_no_cache_dir(tmp_path):
    (x, y), (tx, ty) = write_python_batches(tmp_path / "tv")
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tv/cifar-10-batches-py", arcname="cifar-10-batches-py")
    check_data(f"data.root={archive}", "data.download=false", f"data.cache_dir={tmp_path / 'cache'}")
    assert not (tmp_path / "cache").exists()  # the pre-check (on a login node, say) only looks for a cache
    train_x, train_y, test_x, test_y = load_cifar(archive, tmp_path / "cache")
    assert torch.equal(train_x, torch.from_numpy(x)) and torch.equal(train_y, torch.from_numpy(y))
    assert torch.equal(test_x, torch.from_numpy(tx)) and torch.equal(test_y, torch.from_numpy(ty))


def test_bad_archives_are_refused_before_jobs_and_in_a_job_in_one_line(tmp_path, monkeypatch):
    from sweeper.validate import ConfigError

    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "cifar10.tar.gz"
    with pytest.raises(ConfigError, match=r"data.root=.*cifar10.tar.gz is invalid: no such archive"):
        check_data(f"data.root={missing}", "data.download=true")
    with pytest.raises(data_module.DataError, match="no such archive"):
        data_module.cifar10(str(missing), True, str(tmp_path / "cache"))
    assert not missing.exists()  # no directory of that name

    write_image_folder(tmp_path / "tree", suffix=".jpg")
    whole = tmp_path / "whole.tar.gz"
    with tarfile.open(whole, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="cifar10")
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(ConfigError, match=r"truncated.tar.gz is invalid: .*truncated or damaged"):
        check_data(f"data.root={truncated}", "data.download=false")
    with pytest.raises(data_module.DataError, match=r"truncated.tar.gz is truncated or damaged") as e:
        load_cifar(truncated, tmp_path / "cache")
    assert "\n" not in str(e.value)
    not_cifar = tmp_path / "other.tar"
    with tarfile.open(not_cifar, "w") as tar:
        tar.add(tmp_path / "tree/train", arcname="images")
    with pytest.raises(ConfigError, match="other.tar is invalid: .* holds neither cifar-10-batches-py/"):
        check_data(f"data.root={not_cifar}", "data.download=false")


def test_an_empty_sweeper_data_or_a_null_root_is_refused(tmp_path, monkeypatch):
    from sweeper.validate import ConfigError

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_DATA", "")
    with pytest.raises(ConfigError, match=r"data.root='' is invalid: .*SWEEPER_DATA is set but empty"):
        check_data()
    with pytest.raises(ConfigError, match="data.root=None is invalid: must be the path of the data"):
        check_data("data.root=null")
    with pytest.raises(data_module.DataError, match="data.root=None: must be the path"):
        data_module.cifar10(None, True, str(tmp_path / "cache"))
    assert list(tmp_path.iterdir()) == []  # no ./None, nothing downloaded into the cwd


def test_augment_pads_with_black_whether_or_not_the_data_is_normalised():
    """torchvision's RandomCrop(padding=4) pads raw pixels with 0: black, not the mean colour."""
    white = torch.full((64, 3, 32, 32), 255, dtype=torch.uint8)
    for mean, std in ((torch.tensor([125.0, 123.0, 114.0]), torch.tensor([63.0, 62.0, 66.0])), (0.0, 255.0)):
        d = data_module.Data(
            white,
            torch.zeros(64, dtype=torch.int64),
            white[:0],
            torch.zeros(0, dtype=torch.int64),
            white[:1],
            torch.zeros(1, dtype=torch.int64),
            [],
            torch.as_tensor(mean).reshape(1, -1, 1, 1).expand(1, 3, 1, 1),
            torch.as_tensor(std).reshape(1, -1, 1, 1).expand(1, 3, 1, 1),
        )
        x, _ = next(data_module.train_batches(d, 64, torch.Generator().manual_seed(0), True))
        raw = x * d.std + d.mean  # back to pixel units
        assert set(raw.round().unique().tolist()) == {0.0, 255.0}  # white image, black border


def test_appledouble_files_are_skipped_and_a_bad_image_is_named(tmp_path):
    write_image_folder(tmp_path / "tree", suffix=".jpg")
    (tmp_path / "tree/train/cat/._0007.jpg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    archive = tmp_path / "mac.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="cifar10")
    assert len(load_cifar(tmp_path / "tree", tmp_path / "cache")[1]) == 30
    assert len(load_cifar(archive, tmp_path / "cache")[1]) == 30

    (tmp_path / "tree/train/cat/0007.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(data_module.DataError, match=r"train/cat/0007.jpg is not a readable image"):
        load_cifar(tmp_path / "tree", tmp_path / "cache")
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tree", arcname="cifar10")
    with pytest.raises(
        data_module.DataError, match=r"mac.tar.gz: cifar10/train/cat/0007.jpg is not a readable"
    ):
        load_cifar(archive, tmp_path / "cache")


def test_an_out_of_range_seed_is_refused_and_an_unusable_cache_dir_warns_once(tmp_path, caplog):
    from sweeper.validate import ConfigError

    with pytest.raises(
        ConfigError, match=r"data.seed=99999999999999999999 is invalid: .* <= 18446744073709551615"
    ):
        validate_check("data.seed=99999999999999999999")
    validate_check(f"data.seed={2**64 - 1}")  # the largest seed torch takes
    write_python_batches(tmp_path / "cifar")
    for _ in range(2):
        assert len(data_module.cifar10(str(tmp_path / "cifar"), False, "/dev/null")[1]) == 30
    assert caplog.text.count("data.cache_dir=/dev/null is not a usable directory") == 1


def validate_check(*overrides):
    from sweeper import validate

    validate.check(compose_cfg(*overrides))


def test_an_interrupted_cache_write_leaves_no_temp_file_and_stale_ones_are_removed(tmp_path, monkeypatch):
    stale = tmp_path / ".cifar10-0123456789abcdef.pt.tmp1234"
    stale.write_bytes(b"left by a killed writer")
    os.utime(stale, (0, 0))
    fresh = tmp_path / ".cifar10-0123456789abcdef.pt.tmp1235"
    fresh.write_bytes(b"another host writing now")

    def interrupted(*args):  # the temp file written whole, then interrupted before the rename
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        data_module.synthetic_cached(20, 5, 3, 0.1, str(tmp_path))
    assert sorted(p.name for p in tmp_path.glob(".*.tmp*")) == [fresh.name]
    assert not list(tmp_path.glob("*.pt"))


def test_a_data_cache_past_the_file_size_limit_is_skipped_with_a_warning_not_a_failure(tmp_path):
    # `ulimit -f` (or a full tmpfs) made torch's zip writer raise RuntimeError ("enforce fail at
    # inline_container.cc"), which the store let through as only OSError was caught: every job
    # of the sweep failed. A cache is a shortcut; the run goes on without it.
    import resource

    script = (
        "import logging, sys\n"
        "logging.basicConfig()\n"
        "from sweeper import data\n"
        "x, y, tx, ty = data.synthetic_cached(1000, 200, 0, 0.1, sys.argv[1])\n"
        "print('images', len(x), len(tx))\n"
    )
    limit = 60_000  # bytes: far less than the cache file of 1200 images (3.7 MB)
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "cache")],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "images 1000 200" in done.stdout
    assert "could not write the data cache" in done.stderr and "going on without it" in done.stderr
    assert "Traceback" not in done.stderr
    assert not [p for p in (tmp_path / "cache").iterdir() if ".pt" in p.name]  # no partial file left

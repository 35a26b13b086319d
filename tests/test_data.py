"""The data sources, the CIFAR-10 loading paths on small generated files, and the device batches."""

import pickle
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from sweeper import data as data_module
from tests.conftest import compose_cfg

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

    def no_decoding(src):
        raise AssertionError("decoded again although a cache exists")

    monkeypatch.setattr(data_module, "_decode", no_decoding)
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


def test_synthetic_data_is_generated_once_then_read_from_the_cache(tmp_path):
    first = data_module.synthetic_cached(200, 50, 3, 0.1, str(tmp_path))
    for a, b in zip(first, data_module.synthetic(200, 50, 3, 0.1), strict=True):
        assert torch.equal(a, b)  # the cache holds exactly what the generator makes
    (cache,) = tmp_path.glob("synthetic-*.pt")
    marked = torch.load(cache, weights_only=True)
    marked["train_y"] = torch.full_like(marked["train_y"], 7)
    torch.save(marked, cache)
    again = data_module.synthetic_cached(200, 50, 3, 0.1, str(tmp_path))
    assert (again[1] == 7).all()  # read from the file, not generated again
    data_module.synthetic_cached(200, 50, 4, 0.1, str(tmp_path))  # another seed: another file
    assert len(list(tmp_path.glob("synthetic-*.pt"))) == 2
    assert data_module._cache_file(None, "synthetic-x.pt") is None  # cache_dir null: no file at all
    assert len(data_module.synthetic_cached(20, 5, 3, 0.1, None)[1]) == 20


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
    assert len(d.train_y) == 100 and len(d.test_y) == cfg.data.n_test
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

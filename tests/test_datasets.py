"""The data sets beyond CIFAR-10, each on small files written here in the format torchvision
reads; ImageFolder trees of any class count, size and channel count; a user's data set by
`_target_`; the validation split; and the pre-check's one-line refusals."""

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from sweeper import data as data_module
from sweeper import footprint, user_data, validate
from tests.conftest import compose_cfg, run_cli


def load(name, root, tmp_path, *overrides):
    offline = [] if name == "image_folder" else ["data.download=false"]
    cfg = compose_cfg(f"data={name}", f"data.root={root}", *offline, *overrides)
    cfg.data.cache_dir = str(tmp_path / "cache")
    return data_module.load(cfg.data), cfg


def pixels(n, shape, seed):
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ----------------------------------------------------------------------------- torchvision's formats


def write_cifar100(root):
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    names = [f"class{i:02d}" for i in range(100)]
    out = {}
    for split, n, seed in (("train", 200, 0), ("test", 100, 1)):
        x = pixels(n, (3, 32, 32), seed)
        y = np.arange(n) % 100
        entry = {"data": x.reshape(n, -1), "fine_labels": y.tolist(), "coarse_labels": (y // 5).tolist()}
        (base / split).write_bytes(pickle.dumps(entry))
        out[split] = (x, y)
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": names, "coarse_label_names": []}))
    return out, names


def test_cifar100_loads_its_100_classes_from_torchvisions_layout(tmp_path):
    out, names = write_cifar100(tmp_path / "c100")
    d, _ = load("cifar100", tmp_path / "c100", tmp_path)
    assert d.train_x.shape == (200, 3, 32, 32) and d.test_x.shape == (100, 3, 32, 32)
    assert torch.equal(d.train_x, torch.from_numpy(out["train"][0]))
    assert torch.equal(d.test_y, torch.from_numpy(out["test"][1]))
    assert d.classes == names and d.in_channels == 3 and d.image_size == 32


def write_idx(path, array, gz):
    """MNIST's idx format: a big-endian magic (dtype 0x08 = uint8, the dimension count), the sizes, the bytes."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        (path.parent / (path.name + ".gz")).write_bytes(gzip.compress(blob))
    else:
        path.write_bytes(blob)


def write_mnist(root, folder, gz_test=True, gz_train=False):
    raw = root / folder / "raw"
    out = {}
    for prefix, n, seed, gz in (("train", 60, 0, gz_train), ("t10k", 20, 1, gz_test)):
        x, y = pixels(n, (28, 28), seed), (np.arange(n) % 10).astype(np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", x, gz)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", y, gz)
        out[prefix] = (x, y)
    return out


@pytest.mark.parametrize(
    "name, folder, first_class",
    [("mnist", "MNIST", "0 - zero"), ("fashion_mnist", "FashionMNIST", "T-shirt/top")],
)
def test_mnist_and_fashion_mnist_load_as_one_grey_channel_from_raw_and_gzipped_files(
    tmp_path, name, folder, first_class
):
    out = write_mnist(tmp_path / "m", folder)  # test files only as .gz, as published
    d, cfg = load(name, tmp_path / "m", tmp_path)
    assert d.train_x.shape == (60, 1, 28, 28) and d.test_x.shape == (20, 1, 28, 28)
    assert torch.equal(d.train_x[:, 0], torch.from_numpy(out["train"][0]))
    assert torch.equal(d.test_y, torch.from_numpy(out["t10k"][1]).long())
    assert d.classes[0] == first_class and len(d.classes) == 10 and d.in_channels == 1
    validate.check(cfg)  # the pre-check takes the layout too


def test_svhn_loads_from_its_mat_files(tmp_path):
    sio = pytest.importorskip("scipy.io")
    root = tmp_path / "svhn"
    root.mkdir()
    out = {}
    for split, n, seed in (("train", 30, 0), ("test", 10, 1)):
        x = pixels(n, (3, 32, 32), seed)
        digits = np.arange(n) % 10
        # SVHN's own: images (32, 32, 3, N), label 10 for the digit 0
        sio.savemat(root / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": np.where(digits == 0, 10, digits)[:, None]})  # fmt: skip
        out[split] = (x, digits)
    d, _ = load("svhn", root, tmp_path)
    assert d.train_x.shape == (30, 3, 32, 32) and torch.equal(d.train_x, torch.from_numpy(out["train"][0]))
    assert d.train_y.tolist() == out["train"][1].tolist() and d.classes == [str(i) for i in range(10)]


def test_a_torchvision_layout_with_a_file_missing_is_refused_in_one_line(tmp_path):
    write_mnist(tmp_path / "m", "MNIST")
    (tmp_path / "m/MNIST/raw/train-labels-idx1-ubyte").unlink()
    with pytest.raises(validate.ConfigError, match=r"lacks MNIST/raw/train-labels-idx1-ubyte of MNIST") as e:
        validate.check(compose_cfg("data=mnist", f"data.root={tmp_path / 'm'}", "data.download=false"))
    assert "\n" not in str(e.value)
    with pytest.raises(validate.ConfigError, match=r"no Fashion-MNIST there.*data.download=false"):
        validate.check(
            compose_cfg("data=fashion_mnist", f"data.root={tmp_path / 'm'}", "data.download=false")
        )


# ----------------------------------------------------------------------------- ImageFolder trees


def write_tree(root, classes, size, mode, per_class=(3, 2), seed=0):
    """train/<class>/<i>.png and test/<class>/<i>.png, `size` = (width, height)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(
                    root / split / c / f"{i}.png"
                )


def test_a_grey_28px_tree_of_5_classes_stays_one_channel(tmp_path):
    classes = ["circle", "cross", "line", "square", "triangle"]
    write_tree(tmp_path / "t", classes, (28, 28), "L")
    d, cfg = load("image_folder", tmp_path / "t", tmp_path)
    assert d.train_x.shape == (15, 1, 28, 28) and d.test_x.shape == (10, 1, 28, 28)
    assert d.classes == classes and d.in_channels == 1 and d.image_size == 28
    assert d.mean.shape == (1, 1, 1, 1)
    first = np.array(Image.open(tmp_path / "t/train/circle/0.png"))
    assert torch.equal(d.train_x[0, 0], torch.from_numpy(first))  # lossless, not made RGB
    assert data_module.check(cfg) == 15


def test_a_100_class_tree_of_non_square_colour_images_loads(tmp_path):
    classes = [f"c{i:03d}" for i in range(100)]
    write_tree(tmp_path / "t", classes, (12, 8), "RGB", per_class=(1, 1))
    d, _ = load("image_folder", tmp_path / "t", tmp_path)
    assert d.train_x.shape == (100, 3, 8, 12) and len(d.classes) == 100
    assert d.image_size == (8, 12) and d.train_y.tolist() == list(range(100))


def test_a_tree_of_mixed_sizes_or_mixed_grey_and_colour_is_refused_naming_a_file(tmp_path):
    write_tree(tmp_path / "t", ["a", "b"], (16, 16), "L")
    Image.fromarray(np.zeros((20, 16), np.uint8), "L").save(tmp_path / "t/train/b/odd.png")
    with pytest.raises(data_module.DataError, match=r"train/b/odd.png is grey 16x20 px but .*train/a/0.png is grey 16x16 px") as e:  # fmt: skip
        load("image_folder", tmp_path / "t", tmp_path)
    assert "\n" not in str(e.value)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8), "RGB").save(tmp_path / "t/train/b/odd.png")
    with pytest.raises(data_module.DataError, match=r"odd.png is colour 16x16 px but .* is grey 16x16 px"):
        load("image_folder", tmp_path / "t", tmp_path)


def test_a_tree_in_a_tar_gz_is_read_and_counted_by_the_pre_check(tmp_path):
    import tarfile

    write_tree(tmp_path / "t", ["a", "b", "c"], (10, 10), "L", per_class=(4, 1))
    archive = tmp_path / "shapes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "t", arcname="shapes")
    d, cfg = load("image_folder", archive, tmp_path, "data.val_size=3")
    assert d.train_x.shape == (9, 1, 10, 10) and len(d.val_y) == 3 and d.classes == ["a", "b", "c"]
    assert data_module.check(cfg) == 9
    assert not list((tmp_path / "cache").glob(".extract-*"))  # the extraction is gone


def test_a_test_class_the_training_set_lacks_and_a_missing_root_are_refused(tmp_path):
    write_tree(tmp_path / "t", ["a", "b"], (8, 8), "L")
    (tmp_path / "t/test/c").mkdir()
    with pytest.raises(validate.ConfigError, match=r"data.root=.* is invalid: .*test has class folders that .*train lacks: c"):  # fmt: skip
        validate.check(compose_cfg("data=image_folder", f"data.root={tmp_path / 't'}"))
    with pytest.raises(
        validate.ConfigError, match=r"data.root=None is invalid: must be the path of the data"
    ):
        validate.check(compose_cfg("data=image_folder"))


# ----------------------------------------------------------------------------- a user's data set

CALLS = []


def tensor_pair(n: int, scale: float = 1.0):
    """A user's target: float images in [0, 1], labels 0..3, as tensors."""
    CALLS.append(n)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 3, 10, 10, generator=g) * scale
    return (x, torch.arange(n) % 4), (x[:5], torch.arange(5) % 4)


class GreyShapes(torch.utils.data.Dataset):
    classes = ["dark", "light"]

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return Image.fromarray(np.full((6, 6), 40 * i % 256, np.uint8), "L"), i % 2


def grey_shapes(n: int):
    return GreyShapes(n), GreyShapes(4)


def user_cfg(tmp_path, target, **keys):
    return OmegaConf.create(
        {
            "_target_": target,
            "name": "mine",
            "seed": 0,
            "normalize": True,
            "augment": False,
            "val_size": None,
            "train_size": None,
            "cache_dir": str(tmp_path / "cache"),
            **keys,
        }
    )


def test_a_user_target_of_float_tensors_is_materialised_once_into_the_uint8_cache(tmp_path):
    CALLS.clear()
    d = data_module.load(user_cfg(tmp_path, "tests.test_datasets.tensor_pair", n=12))
    x, _ = tensor_pair(12)[0]
    assert d.train_x.dtype == torch.uint8 and d.train_x.shape == (12, 3, 10, 10)
    assert torch.equal(d.train_x, (x * 255).round().to(torch.uint8))
    assert d.classes == ["0", "1", "2", "3"]  # no `classes`: as many as the labels say
    data_module._MEMO.clear()  # a fresh process: only the cache file is left
    user_data._MEMO.clear()
    CALLS.clear()
    again = data_module.load(user_cfg(tmp_path, "tests.test_datasets.tensor_pair", n=12))
    assert CALLS == [] and torch.equal(again.train_x, d.train_x)  # read from the cache
    with pytest.raises(
        data_module.DataError,
        match=r"its train set: float images must lie in \[0, 1\], found [0-9.]+\.\.1\.99",
    ):
        data_module.load(user_cfg(tmp_path, "tests.test_datasets.tensor_pair", n=12, scale=2.0))


def test_a_user_dataset_of_grey_pil_images_keeps_one_channel_and_its_class_names(tmp_path):
    d = data_module.load(user_cfg(tmp_path, "tests.test_datasets.grey_shapes", n=6))
    assert d.train_x.shape == (6, 1, 6, 6) and d.classes == ["dark", "light"]
    assert d.train_x[:, 0, 0, 0].tolist() == [0, 40, 80, 120, 160, 200]


def test_a_user_target_that_fails_or_does_not_exist_is_one_line(tmp_path):
    from sweeper.validate import ConfigError

    cfg = OmegaConf.create({"data": user_cfg(tmp_path, "tests.test_datasets.no_such_function")})
    with pytest.raises(
        ConfigError, match=r"data._target_=tests.test_datasets.no_such_function cannot be imported"
    ):
        data_module.check(cfg)
    cfg = OmegaConf.create({"data": user_cfg(tmp_path, "tests.test_datasets.tensor_pair", n="many")})
    with pytest.raises(
        ConfigError, match=r"data._target_=tests.test_datasets.tensor_pair failed \(TypeError"
    ):
        data_module.check(cfg)


# ----------------------------------------------------------------------------- the validation split


def test_the_validation_split_is_disjoint_reproducible_and_taken_before_the_subset():
    full = data_module.load(compose_cfg().data)
    a = data_module.load(compose_cfg("data.val_size=0.2").data)
    b = data_module.load(compose_cfg("data.val_size=60", "data.train_size=100").data)
    assert len(a.val_y) == 60 and len(a.train_y) == 240 and len(full.val_y) == 0
    # together they are the whole training set, each image once
    joined = torch.cat([a.train_x, a.val_x]).flatten(1)
    assert len(torch.unique(joined, dim=0)) == 300
    assert torch.equal(torch.unique(joined, dim=0), torch.unique(full.train_x.flatten(1), dim=0))
    assert torch.equal(a.val_x, b.val_x) and len(b.train_y) == 100  # the subset does not move the split
    other = data_module.load(compose_cfg("data.val_size=60", "data.seed=1").data)
    assert not torch.equal(other.val_x, a.val_x)
    # the statistics are the training part's alone
    assert torch.allclose(a.mean.flatten(), a.train_x.float().mean(dim=(0, 2, 3)))


@pytest.mark.parametrize(
    "value, message",
    [
        ("0", "data.val_size=0 is invalid: must be null, a count >= 1 or a fraction in (0, 1)"),
        ("1.5", "data.val_size=1.5 is invalid: must be null, a count >= 1 or a fraction in (0, 1)"),
        (
            "300",
            "data.val_size=300 is invalid: it holds out 300 of the 300 images of the training set and leaves none",
        ),
        ("0.001", "data.val_size=0.001 is invalid: it holds out no image of the 300"),
        ("true", "data.val_size=True is invalid"),
    ],
)
def test_a_bad_val_size_is_refused_in_one_line(value, message):
    with pytest.raises(validate.ConfigError) as e:
        validate.check(compose_cfg(f"data.val_size={value}"))
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_train_size_is_checked_against_what_the_split_leaves():
    assert data_module.check(compose_cfg("data.val_size=100")) == 200
    with pytest.raises(validate.ConfigError, match=r"data.train_size=250 is invalid: must be an integer >= 1 and <= 200"):  # fmt: skip
        validate.check(compose_cfg("data.val_size=100", "data.train_size=250"))


def test_a_bad_val_size_and_a_typod_data_option_are_refused_by_the_command_in_one_line(tmp_path):
    write_tree(tmp_path / "t", ["a", "b"], (8, 8), "L")
    result = run_cli("data=image_folder", f"data.root={tmp_path / 't'}", "data.val_size=1.5", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "data.val_size=1.5 is invalid: must be null, a count >= 1 or a fraction in (0, 1) (a count is an integer)"
        )
    )
    result = run_cli("data=mnsit", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr and "mnist" in result.stderr


# ----------------------------------------------------------------------------- memory


def test_a_data_set_too_large_for_the_machine_is_refused_naming_it_and_the_limit(monkeypatch):
    monkeypatch.setattr(footprint.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(footprint, "host_available", lambda: 100 << 20)
    cfg = compose_cfg("data=mnist", "trainer.device=cpu")
    need = footprint.estimate(cfg)
    assert need.data == 70_000 * 784 * 5  # uint8 as loaded, and its float32 copy
    with pytest.raises(validate.ConfigError, match=r"^data=mnist is too large for this machine: .* 100.0 MiB available$"):  # fmt: skip
        validate.check_device(cfg)


def test_an_archive_of_the_python_batches_without_batches_meta_names_the_missing_file(tmp_path):
    import tarfile

    from tests.test_data import write_python_batches

    write_python_batches(tmp_path / "tv")
    (tmp_path / "tv/cifar-10-batches-py/batches.meta").unlink()
    archive = tmp_path / "cifar.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "tv/cifar-10-batches-py", arcname="cifar-10-batches-py")
    with pytest.raises(data_module.DataError, match=r"cifar.tar.gz lacks cifar-10-batches-py/batches.meta of CIFAR-10"):  # fmt: skip
        data_module.cifar10(str(archive), False, str(tmp_path / "cache"))

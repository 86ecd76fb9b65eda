import gzip
import hashlib
import os
import pickle
import shutil
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from reprolib import data
from reprolib.config import ParameterError

# Class counts over all 200 images of cifar10-mini (its README).
MINI_COUNTS = {"airplane": 14, "automobile": 28, "bird": 22, "cat": 21, "deer": 19, "dog": 19,
               "frog": 18, "horse": 21, "ship": 15, "truck": 23}


def load_mini(folder):
    with pytest.warns(UserWarning, match="holds 160 training images, not the 50000"):
        return data.load("cifar10", folder)


def test_cifar_reader_on_the_mini_set(cifar_mini):
    train, test = load_mini(cifar_mini)
    assert (len(train), len(test)) == (160, 40)
    assert train.images.shape == (160, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64
    counts = torch.bincount(torch.cat([train.labels, test.labels]), minlength=10)
    assert dict(zip(train.classes, counts.tolist())) == MINI_COUNTS


def test_cifar_images_are_channel_major_rows(cifar_mini):
    """Each official row is 1024 red, then 1024 green, then 1024 blue values, row by row."""
    train, _ = load_mini(cifar_mini)
    with open(cifar_mini / "cifar-10-batches-py" / "data_batch_1", "rb") as f:
        raw = pickle.load(f, encoding="bytes")  # the repository's test fixture, trusted
    assert torch.equal(train.images[7].flatten(), torch.from_numpy(raw[b"data"][7]))
    assert train.images[7, 1, 0, 5] == raw[b"data"][7][1024 + 5]
    assert train.labels[7] == raw[b"labels"][7]


def test_cifar100_reader_on_files_in_the_official_layout(tmp_path):
    """Built here as the official files are: pickled dicts with bytes keys, fine and coarse labels."""
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for split, n in (("train", 30), ("test", 10)):
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"fine_labels": [i % 100 for i in range(n)], b"coarse_labels": [i % 20 for i in range(n)],
                 b"filenames": [b"x.png"] * n, b"batch_label": b"training batch 1 of 1"}
        (folder / split).write_bytes(pickle.dumps(batch, protocol=2))
        if split == "train":
            first = batch[b"data"][3]
    names = [f"class{i}".encode() for i in range(100)]
    (folder / "meta").write_bytes(pickle.dumps({b"fine_label_names": names,
                                                b"coarse_label_names": names[:20]}, protocol=2))
    with pytest.warns(UserWarning, match="holds 30 training images, not the 50000"):
        train, test = data.load("cifar100", tmp_path)
    assert train.images.shape == (30, 3, 32, 32) and len(test) == 10
    assert torch.equal(train.images[3].flatten(), torch.from_numpy(first))
    assert train.labels.tolist() == list(range(30)) and len(train.classes) == 100
    assert train.classes[42] == "class42" and train.mean == (0.5071, 0.4865, 0.4409)


def test_cifar_reader_refuses_pickles_that_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps(Evil(), protocol=2))
    with pytest.raises(data.DatasetCorrupt, match="refusing to load (posix|nt).system"):
        data.read_cifar10(folder)


def test_fashion_mnist_from_the_debian_path(fashion):
    assert data.locate("fashion-mnist", download=False) == Path("/usr/share/datasets/fashion-mnist")
    train, test = fashion
    assert (len(train), len(test)) == (60000, 10000)
    assert train.images.shape == (60000, 1, 32, 32) and train.images.dtype == torch.uint8
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert train.images[:, :, border].max() == 0          # zero padding from 28×28
    assert train.images[:, :, 2:30, 2:30].max() == 255
    pixels = train.images.float() / 255                    # the normalisation constants fit the data
    assert pixels.mean().item() == pytest.approx(train.mean[0], abs=1e-3)
    assert pixels.std().item() == pytest.approx(train.std[0], abs=1e-3)


def test_fashion_mnist_three_channels(fashion):
    train, test = data.load("fashion-mnist", channels=3, download=False)
    assert train.images.shape == (60000, 3, 32, 32)
    assert torch.equal(train.images[:, 2], fashion[0].images[:, 0])
    assert train.mean == fashion[0].mean * 3 and len(test.std) == 3
    with pytest.raises(ParameterError, match="channels=2"):
        data.load("fashion-mnist", channels=2)


def write_tiny_fashion(root: Path, n: int = 12) -> Path:
    """A made-up Fashion-MNIST folder in the idx format, `n` training images."""
    folder = root / "fashion-mnist"
    folder.mkdir(parents=True)
    for prefix, count in (("train", n), ("t10k", 5)):
        images = bytes([count]) * (count * 28 * 28)
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write((0x0803).to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in (count, 28, 28)))
            f.write(images)
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write((0x0801).to_bytes(4, "big") + count.to_bytes(4, "big") + bytes(i % 10 for i in range(count)))
    return folder


def test_lookup_order(tmp_path, monkeypatch):
    explicit, env, cache = tmp_path / "explicit", tmp_path / "env", tmp_path / "xdg-cache" / "repro" / "data"
    for root in (explicit, env, cache):
        write_tiny_fashion(root)
    monkeypatch.setenv("REPRO_DATA_DIR", str(env))
    assert data.locate("fashion-mnist", explicit) == explicit / "fashion-mnist"
    assert data.locate("fashion-mnist") == env / "fashion-mnist"
    monkeypatch.delenv("REPRO_DATA_DIR")
    assert data.locate("fashion-mnist") == cache / "fashion-mnist"
    shutil.rmtree(cache)
    assert data.locate("fashion-mnist") == Path("/usr/share/datasets/fashion-mnist")
    # An explicit folder without the files does not stop the search.
    assert data.locate("fashion-mnist", tmp_path / "empty") == Path("/usr/share/datasets/fashion-mnist")
    with pytest.warns(UserWarning, match="holds 12 training images, not the 60000"):
        train, _ = data.load("fashion-mnist", explicit)
    assert train.images.shape == (12, 1, 32, 32) and int(train.images[0, 0, 16, 16]) == 12


def test_not_found_says_where_it_looked_and_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_DATA_DIR", str(tmp_path / "env"))
    with pytest.raises(data.DatasetNotFound) as err:
        data.load("cifar100", tmp_path / "mine")
    message = str(err.value)
    for where in (f"{tmp_path / 'mine'}/cifar-100-python  (data_dir)",
                  f"{tmp_path / 'env'}/cifar-100-python  ($REPRO_DATA_DIR)",
                  "(user cache)", "/usr/share/datasets/cifar-100-python  (system)",
                  "downloading is off", "REPRO_DATA_DIR"):
        assert where in message


def test_unknown_dataset():
    with pytest.raises(ParameterError, match="dataset='mnist'.*'cifar10', 'cifar100', 'fashion-mnist'"):
        data.load("mnist")


@pytest.fixture
def mini_archive(cifar_mini, tmp_path):
    """cifar10-mini packed like the official archive, served from a file:// URL."""
    archive = tmp_path / "served" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_mini / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


def serve(monkeypatch, archive: Path, md5: str):
    source = data.DATASETS["cifar10"]
    download = data.Download((archive.as_uri(),), md5, archive.name, extract=True)
    monkeypatch.setitem(data.DATASETS, "cifar10", replace(source, downloads=(download,)))


def test_download_verifies_and_extracts(mini_archive, tmp_path, monkeypatch):
    serve(monkeypatch, *mini_archive)
    dest = tmp_path / "dest"
    with pytest.warns(UserWarning, match="160 training images"):
        train, test = data.load("cifar10", dest, download=True)
    assert (len(train), len(test)) == (160, 40)
    assert sorted(p.name for p in dest.iterdir()) == ["cifar-10-batches-py"]


def test_download_with_wrong_checksum_leaves_nothing(mini_archive, tmp_path, monkeypatch):
    archive, _ = mini_archive
    serve(monkeypatch, archive, "0" * 32)
    dest = tmp_path / "dest"
    with pytest.raises(data.DatasetNotFound, match="checksum mismatch"):
        data.load("cifar10", dest, download=True)
    assert list(dest.iterdir()) == []


def test_truncated_idx_file_is_rejected(tmp_path):
    folder = write_tiny_fashion(tmp_path)
    path = folder / "train-images-idx3-ubyte.gz"
    payload = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(payload[:-100]))
    with pytest.raises(ValueError, match="truncated"):
        data.read_idx(path)


# ------------------------------------------------------------------------------------------
# Batches


def random_set(n=50, channels=3, seed=0) -> data.ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, channels, 32, 32), dtype=torch.uint8, generator=g)
    return data.ImageSet(images, torch.arange(n) % 10, tuple("abcdefghij"),
                         (0.5,) * channels, (0.25,) * channels)


@pytest.mark.parametrize("shuffle, augment", [(False, False), (True, False), (True, True)])
def test_every_index_once_per_epoch(shuffle, augment):
    batches = data.Batches(random_set(103), 16, shuffle=shuffle, augment=augment, seed=3)
    for _ in range(3):
        sizes, seen = [], []
        for x, y, idx in batches:
            assert x.dtype == torch.float32 and x.shape == (len(idx), 3, 32, 32)
            assert torch.equal(y, idx % 10)
            sizes.append(len(idx))
            seen.append(idx)
        assert torch.equal(torch.cat(seen).sort().values, torch.arange(103))
        assert len(sizes) == len(batches) == 7 and max(sizes) <= 16 and max(sizes) - min(sizes) <= 1


def test_batches_deterministic_for_a_seed_and_fresh_each_epoch():
    def epochs(seed):
        batches = data.Batches(random_set(), 8, shuffle=True, augment=True, seed=seed)
        return [[(x.clone(), idx.clone()) for x, _, idx in batches] for _ in range(2)]
    a, b, c = epochs(1), epochs(1), epochs(2)
    flat = lambda run: (torch.cat([x for e in run for x, _ in e]), torch.cat([i for e in run for _, i in e]))  # noqa: E731
    assert all(torch.equal(u, v) for u, v in zip(flat(a), flat(b)))
    assert not torch.equal(flat(a)[1], flat(c)[1])
    assert not torch.equal(torch.cat([i for _, i in a[0]]), torch.cat([i for _, i in a[1]]))


def test_plain_batches_are_the_normalised_images():
    ds = random_set()
    x, _, idx = next(iter(data.Batches(ds, 50)))
    assert torch.equal(idx, torch.arange(50))
    assert torch.allclose(x, (ds.images.float() / 255 - 0.5) / 0.25)


def test_augmentation_is_a_padded_crop_and_optional_flip_per_image():
    ds = random_set(40)
    padded = torch.nn.functional.pad(ds.images, (4, 4, 4, 4))
    seen_shifts, flipped = set(), 0
    for x, _, idx in data.Batches(ds, 10, shuffle=True, augment=True, seed=5):
        pixels = torch.round((x * 0.25 + 0.5) * 255).to(torch.uint8)
        for image, i in zip(pixels, idx):
            matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
                       if torch.equal(image, padded[i, :, dy:dy + 32, dx:dx + 32].flip(-1)
                                      if flip else padded[i, :, dy:dy + 32, dx:dx + 32])]
            assert len(matches) == 1, f"image {i} is not one crop of its padded original"
            seen_shifts.add(matches[0][:2])
            flipped += matches[0][2]
    assert len(seen_shifts) > 20 and 5 < flipped < 35


def test_flip_only_augmentation_moves_no_pixel_and_flips_about_half():
    ds = random_set(40)
    flipped = 0
    for x, _, idx in data.Batches(ds, 10, shuffle=True, augment="flip", seed=5):
        pixels = torch.round((x * 0.25 + 0.5) * 255).to(torch.uint8)
        for image, i in zip(pixels, idx):
            same, mirrored = torch.equal(image, ds.images[i]), torch.equal(image, ds.images[i].flip(-1))
            assert same != mirrored, f"image {i} is neither itself nor its mirror image"
            flipped += mirrored
    assert 5 < flipped < 35

"""CIFAR-10 read from image folders and archives (reprolib.imagefolder), built at test time from
the 200-image fixture: PNG for the lossless path, JPEG at quality 75 for the lossy one."""
import shutil
import tarfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reprolib import data, imagefolder
from reprolib.cli import main
from reprolib.config import Recipe
from reprolib.jobs import canonical
from reprolib.victims import trained_victim
from reprolib.train import trained
from reprolib.zoo import Zoo, key as zoo_key

FIXTURE = Path(__file__).resolve().parent / "data" / "cifar10-mini" / "cifar-10-batches-py"


@pytest.fixture(scope="module")
def official():
    """The fixture's images and labels, as the official-batch reader gives them."""
    train_x, train_y, test_x, test_y, classes = data.read_cifar10(FIXTURE)
    assert classes == imagefolder.CLASSES
    return {"train": (train_x, train_y), "test": (test_x, test_y)}


def write_folder(root: Path, official: dict, suffix: str = ".png", **save) -> Path:
    """`official` as an image folder under `root`: split/class/NNNN.suffix, files of a class
    numbered in the fixture's order."""
    for split, (images, labels) in official.items():
        for k, name in enumerate(imagefolder.CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i, image in enumerate(images[labels == k]):
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(folder / f"{i:04d}{suffix}",
                                                                     **save)
    return root


def by_class(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The images grouped by class in class order, each class in its original order."""
    order = torch.cat([(labels == k).nonzero().flatten() for k in range(10)])
    return images[order], labels[order]


def test_a_png_folder_reads_back_pixel_equal_to_the_official_batches(tmp_path, official):
    folder = write_folder(tmp_path / "cifar10-png", official)
    train_x, train_y, test_x, test_y, formats, _ = imagefolder.read(folder, allow_partial=True)
    for (x, y), (ox, oy) in (((train_x, train_y), official["train"]),
                             ((test_x, test_y), official["test"])):
        ex, ey = by_class(ox, oy)
        assert torch.equal(x, ex) and torch.equal(y, ey)
    assert formats == {"PNG"}


def test_a_jpeg_folder_is_recorded_as_a_lossy_copy_with_its_quality(tmp_path, official):
    folder = write_folder(tmp_path / "cifar10-jpeg", official, ".jpg", quality=75)
    copy = imagefolder.decode(folder, tmp_path / "decoded", allow_partial=True, progress=False)
    assert not copy.lossless and copy.format == "JPEG" and copy.quality == 75
    assert copy.describe() == "JPEG copy, quality 75"
    tensors, again = imagefolder.load_decoded(tmp_path / "decoded" / imagefolder.DECODED)
    assert again == copy
    png = imagefolder.decode(write_folder(tmp_path / "cifar10-png", official),
                             tmp_path / "png", allow_partial=True, progress=False)
    assert png.lossless and png.describe().startswith("lossless PNG image folder")
    assert [imagefolder.jpeg_quality(imagefolder.scaled_table(q)) for q in (10, 50, 75, 95)] == \
        [10, 50, 75, 95]


@pytest.mark.parametrize("kind", [".tar.xz", ".tar.gz", ".zip"])
def test_an_archive_of_a_folder_reads_as_the_folder(tmp_path, official, kind):
    folder = write_folder(tmp_path / "cifar10-png", official)
    archive = tmp_path / f"cifar10-png{kind}"
    if kind == ".zip":
        with zipfile.ZipFile(archive, "w") as z:
            for file in sorted(folder.rglob("*.png")):
                z.write(file, file.relative_to(tmp_path).as_posix())
    else:
        with tarfile.open(archive, "w:xz" if kind == ".tar.xz" else "w:gz") as t:
            t.add(folder, arcname="cifar10-png")
    expected = imagefolder.read(folder, allow_partial=True)
    found = imagefolder.read(archive, allow_partial=True)
    assert all(torch.equal(a, b) for a, b in zip(found[:4], expected[:4]))


def test_each_bad_copy_ends_with_one_line_naming_the_file_or_folder(tmp_path, official):
    def copy_of(name):
        return write_folder(tmp_path / name, official)

    def refused(folder, match, **options):
        with pytest.raises(imagefolder.ImageFolderError, match=match) as err:
            imagefolder.read(folder, **options)
        assert "\n" not in str(err.value)

    refused(copy_of("full"), r"train/ holds 160 images, CIFAR-10's has 50000.*--allow-partial")
    folder = copy_of("missing")
    shutil.rmtree(folder / "test" / "frog")
    refused(folder, r"missing: test/ has no folder for frog \(expected one folder per class: "
                    r"airplane", allow_partial=True)
    folder = copy_of("extra")
    (folder / "train" / "dragon").mkdir()
    Image.new("RGB", (32, 32)).save(folder / "train" / "dragon" / "0000.png")
    refused(folder, "folders that are not CIFAR-10 classes: dragon", allow_partial=True)
    folder = copy_of("size")
    Image.new("RGB", (28, 28)).save(folder / "train" / "cat" / "0000.png")
    refused(folder, r"size/train/cat/0000.png: a 28×28 RGB image; CIFAR-10's are 32×32 RGB",
            allow_partial=True)
    folder = copy_of("grey")
    Image.new("L", (32, 32)).save(folder / "test" / "ship" / "0001.png")
    refused(folder, r"grey/test/ship/0001.png: a 32×32 L image", allow_partial=True)
    folder = copy_of("broken")
    (folder / "train" / "dog" / "0002.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    refused(folder, r"broken/train/dog/0002.png: not a readable image", allow_partial=True)
    refused(tmp_path / "nowhere", "nowhere does not exist")


def test_a_copy_in_a_data_folder_is_found_decoded_once_and_read_from_its_file(
        tmp_path, official, monkeypatch):
    monkeypatch.setenv("REPRO_OFFLINE", "1")
    monkeypatch.setattr(data, "SYSTEM_ROOTS", ())
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = tmp_path / "data"
    full = {split: (torch.cat([x] * (n // len(x))), torch.cat([y] * (n // len(y))))
            for (split, (x, y)), n in zip(official.items(), (50_000, 10_000))}
    write_folder(root / "cifar10-png", {s: (x[:2000], y[:2000]) for s, (x, y) in full.items()})
    with pytest.raises(imagefolder.ImageFolderError, match="holds 2000 images"):
        data.load("cifar10", root)          # found, but not all of CIFAR-10
    main(["data", "cifar10", "--data-dir", str(root), "--from", str(root / "cifar10-png"),
          "--allow-partial"])
    decoded = root / imagefolder.FOLDER / imagefolder.DECODED
    assert decoded.is_file()
    shutil.rmtree(root / "cifar10-png")     # read from the decoded file from now on
    start = time.perf_counter()
    with pytest.warns(UserWarning, match="2000 training images"):
        train, test = data.load("cifar10", root)
    assert time.perf_counter() - start < 2 and len(train) == 2000 and len(test) == 2000
    assert train.classes == imagefolder.CLASSES and train.images.shape[1:] == (3, 32, 32)
    assert data.source_of("cifar10", root).startswith("lossless PNG image folder")
    decoded.write_bytes(decoded.read_bytes()[:-10] + b"0123456789")     # damaged after it
    with pytest.raises(imagefolder.ImageFolderError, match="no longer match the checksum"):
        data.load("cifar10", root)


def test_two_copies_with_different_pixels_never_share_a_zoo_key(tmp_path, official):
    png = imagefolder.read(write_folder(tmp_path / "cifar10-png", official), allow_partial=True)
    jpeg = imagefolder.read(write_folder(tmp_path / "cifar10-jpeg", official, ".jpg", quality=75),
                            allow_partial=True)
    assert torch.equal(png[1], jpeg[1]) and not torch.equal(png[0], jpeg[0])
    recipe = Recipe(epochs=1, batch_size=64, lr=0.1, schedule="constant", augment=False)
    zoo, keys = Zoo(tmp_path / "zoo"), []
    for x, y, *_ in (png, jpeg):
        images = data.ImageSet(x, y, imagefolder.CLASSES, (0.5,) * 3, (0.25,) * 3)
        _, card = trained("small_cnn", images, recipe, device="cpu", zoo=zoo, progress=False,
                          about={"dataset": "cifar10"})
        keys.append(card["key"])
    assert keys[0] != keys[1]
    assert np.abs(png[0].float().numpy() - jpeg[0].float().numpy()).mean() > 1    # truly lossy


def test_a_victim_and_every_job_built_on_it_are_keyed_by_the_copy_they_read(tmp_path, official):
    """`data_dir` is not part of a job's key, so the copy's pixels must be."""
    roots = {}
    for name, suffix, save in (("png", ".png", {}), ("jpeg", ".jpg", {"quality": 75})):
        root = tmp_path / name
        folder = write_folder(tmp_path / f"cifar10-{name}", official, suffix, **save)
        data.decode_cifar10(folder, [(root, "given")], allow_partial=True)
        roots[name] = str(root)
    roots["official"] = str(FIXTURE.parent)
    victims = {name: dict(dataset="cifar10", attack="badnets", profile="smoke", data_dir=root)
               for name, root in roots.items()}
    victim_keys = {name: trained_victim.job(**args).key for name, args in victims.items()}
    assert len(set(victim_keys.values())) == 3
    on_top = {name: zoo_key(canonical({"victim": args, "defense": "npd"}))
              for name, args in victims.items()}
    assert len(set(on_top.values())) == 3
    assert "dataset_copy" not in canonical(victims["official"])   # its keys are as they were

"""Datasets as uint8 tensors, found or downloaded, and a batch iterator that works on the device.

Images are uint8 (N, C, 32, 32); triggers are meant to be applied to them in uint8 before any
augmentation. `Batches` keeps everything on the data's device: shuffling, random crop with 4-px
zero padding, horizontal flip and normalisation happen there, and each batch carries the indices
of its samples.

Where files are looked for, in order: the explicit `data_dir`, `$REPRO_DATA_DIR`, the user cache
(`~/.cache/repro/data`), the system folder `/usr/share/datasets` (Debian's `dataset-fashion-mnist`).
When none holds the files they are downloaded, checksum-verified, into the first of the first three.
CIFAR-10 is also read from an image-folder copy (PNG or JPEG files, or an archive of them) in
those folders, decoded once into a file of its own (`reprolib.imagefolder`); the official batches
come first, then a decoded copy, then a copy still to decode, then the download.
"""
from __future__ import annotations

import codecs
import gzip
import hashlib
import math
import os
import pickle
import tarfile
import tempfile
import urllib.request
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from . import imagefolder
from .config import ParameterError, cache_home, check_choice, check_range

SYSTEM_ROOTS = (Path("/usr/share/datasets"),)


class DatasetNotFound(FileNotFoundError):
    """No location holds the dataset and it could not be downloaded."""


class DatasetCorrupt(ValueError):
    """A dataset file is there but cannot be read: truncated, garbage, or a pickle that asks
    for something a CIFAR batch never holds."""


@dataclass(frozen=True)
class ImageSet:
    """Images (uint8, N×C×32×32) with integer labels, and the normalisation of their dataset."""
    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""          # which copy of the dataset (`source_of`); not part of the digest

    def __post_init__(self):
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ParameterError(f"images must be a uint8 tensor of shape (N, C, H, W), got "
                                 f"{self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.shape != (len(self.images),):
            raise ParameterError(f"labels must have shape ({len(self.images)},), "
                                 f"got {tuple(self.labels.shape)}")
        if len(self.mean) != self.images.shape[1] or len(self.std) != self.images.shape[1]:
            raise ParameterError(f"mean/std need one value per channel ({self.images.shape[1]})")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to(self, device) -> "ImageSet":
        return replace(self, images=self.images.to(device), labels=self.labels.to(device))

    def subset(self, indices: torch.Tensor) -> "ImageSet":
        indices = torch.as_tensor(indices, device=self.labels.device)
        return replace(self, images=self.images[indices], labels=self.labels[indices])

    def sample(self, n: int | None, seed: int) -> "ImageSet":
        """`n` images chosen at random from `seed`, kept in their original order; all if None."""
        if n is None:
            return self
        check_range("n", n, low=1, high=len(self), integer=True)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        return self.subset(order[:n].sort().values)

    def split(self, fraction: float, seed: int) -> tuple["ImageSet", "ImageSet"]:
        """The images cut by a permutation drawn from `seed` into `fraction` of them and the
        rest, each kept in its original order."""
        check_range("fraction", fraction, low=0, high=1, low_open=True, high_open=True)
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        cut = round(fraction * len(self))
        return self.subset(order[:cut].sort().values), self.subset(order[cut:].sort().values)

    def with_images(self, images: torch.Tensor, labels: torch.Tensor | None = None) -> "ImageSet":
        return replace(self, images=images, labels=self.labels if labels is None else labels)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 255] float) images to the float inputs a model expects."""
        return normalize(images, self.mean, self.std)

    def digest(self) -> str:
        """SHA-256 of the images and labels: identifies exactly what a model was trained on."""
        h = hashlib.sha256()
        for t in (self.images, self.labels):
            h.update(str((t.dtype, tuple(t.shape))).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(images / 255 − mean) / std per channel; `mean` and `std` are sequences or tensors."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images.float() / 255 - mean) / std


# --------------------------------------------------------------------------------------------
# Readers


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches: dicts of bytes, lists and NumPy arrays, and nothing else."""
    _reconstruct = (np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
               ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR file")
        return self.ALLOWED[module, name]


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _ArrayUnpickler(f, encoding="bytes").load()
    except Exception as err:  # garbage makes the unpickler fail in many ways; all mean the same
        raise DatasetCorrupt(f"{path} is not a readable CIFAR batch ({type(err).__name__}: "
                             f"{err}); replace it with the official file") from None
    if not isinstance(batch, dict):
        raise DatasetCorrupt(f"{path} holds a {type(batch).__name__}, not a CIFAR batch (a dict)")
    return batch


def _cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """One batch file's images (N, 3, 32, 32) and labels, checked."""
    batch = _unpickle(path)
    if b"data" not in batch or label_key not in batch:
        raise DatasetCorrupt(f"{path} lacks the {label_key.decode()!r} or 'data' entry of a "
                             "CIFAR batch")
    images, labels = np.asarray(batch[b"data"]), np.asarray(batch[label_key], dtype=np.int64)
    if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(labels) != len(images):
        raise DatasetCorrupt(f"{path} holds images of shape {images.shape} and "
                             f"{len(labels)} labels; a CIFAR batch has N×3072 and N")
    return images.reshape(-1, 3, 32, 32), labels


def _cifar_split(paths: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    batches = [_cifar_batch(p, label_key) for p in paths]
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return torch.from_numpy(images.astype(np.uint8, copy=False)), torch.from_numpy(labels)


# Each reader returns (train images, train labels, test images, test labels, class names).


def read_cifar10(folder: Path) -> tuple:
    """The official `cifar-10-batches-py` folder (or a subset of its training batches), or the
    folder of an image-folder copy decoded by `imagefolder.decode`."""
    if (folder / imagefolder.DECODED).is_file():
        t, _ = imagefolder.load_decoded(folder / imagefolder.DECODED)
        return (t["train_images"], t["train_labels"], t["test_images"], t["test_labels"],
                imagefolder.CLASSES)
    names = tuple(n.decode() for n in _unpickle(folder / "batches.meta")[b"label_names"])
    train_paths = sorted(folder.glob("data_batch_[1-5]"))
    return (*_cifar_split(train_paths, b"labels"), *_cifar_split([folder / "test_batch"], b"labels"),
            names)


def read_cifar100(folder: Path) -> tuple:
    """The official `cifar-100-python` folder, fine labels."""
    names = tuple(n.decode() for n in _unpickle(folder / "meta")[b"fine_label_names"])
    return (*_cifar_split([folder / "train"], b"fine_labels"),
            *_cifar_split([folder / "test"], b"fine_labels"), names)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (`.gz` or not): uint8 images (N, H, W) or labels (N,)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:   # a broken or truncated gzip stream
        raise DatasetCorrupt(f"{path} cannot be read: {err}") from None
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08 or not 1 <= magic & 0xFF <= 3:
        raise DatasetCorrupt(f"{path} is not a uint8 idx file (magic number {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DatasetCorrupt(f"{path} is truncated: {data.size} values for shape {shape}")
    return data.reshape(shape)


def read_fashion_mnist(folder: Path) -> tuple:
    """The four idx `.gz` files, images zero-padded from 28×28 to 32×32."""
    def split(prefix):
        images = torch.from_numpy(read_idx(folder / f"{prefix}-images-idx3-ubyte.gz").copy())
        labels = torch.from_numpy(read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz").astype(np.int64))
        return F.pad(images[:, None], (2, 2, 2, 2)), labels
    return (*split("train"), *split("t10k"), FASHION_CLASSES)


FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")


# --------------------------------------------------------------------------------------------
# The datasets: where their files live, how to fetch and read them


@dataclass(frozen=True)
class Download:
    urls: tuple[str, ...]        # mirrors, tried in order
    md5: str
    filename: str
    extract: bool                # a tar.gz whose top folder is the dataset folder


@dataclass(frozen=True)
class Source:
    folder: str                  # the dataset's folder under a data root
    files: tuple[str, ...]       # what must be in it
    downloads: tuple[Download, ...]
    read: Callable
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int


_FASHION_MIRRORS = ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
_FASHION_FILES = {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                  "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                  "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                  "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}

DATASETS = {
    "cifar10": Source(
        "cifar-10-batches-py", ("batches.meta", "data_batch_1", "test_batch"),
        (Download(("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
                  "c58f30108f718f92721af3b95e74349a", "cifar-10-python.tar.gz", extract=True),),
        read_cifar10, mean=(0.4914, 0.4822, 0.4465), std=(0.247, 0.243, 0.261), train_size=50000),
    "cifar100": Source(
        "cifar-100-python", ("meta", "train", "test"),
        (Download(("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",),
                  "eb9058c3a382ffc7106e4002c42a8d85", "cifar-100-python.tar.gz", extract=True),),
        read_cifar100, mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762),
        train_size=50000),
    # mean/std of the 32×32 zero-padded training images.
    "fashion-mnist": Source(
        "fashion-mnist", tuple(_FASHION_FILES),
        tuple(Download(tuple(m + f for m in _FASHION_MIRRORS), md5, f, extract=False)
              for f, md5 in _FASHION_FILES.items()),
        read_fashion_mnist, mean=(0.2190,), std=(0.3318,), train_size=60000),
}


def data_roots(data_dir: str | Path | None = None) -> list[tuple[Path, str]]:
    """The folders searched, in order, each with where it came from."""
    roots = []
    if data_dir is not None:
        roots.append((Path(data_dir).expanduser(), "data_dir"))
    if os.environ.get("REPRO_DATA_DIR"):
        roots.append((Path(os.environ["REPRO_DATA_DIR"]).expanduser(), "$REPRO_DATA_DIR"))
    roots.append((cache_home() / "data", "user cache"))
    roots += [(root, "system") for root in SYSTEM_ROOTS]
    return roots


def locate(name: str, data_dir: str | Path | None = None, download: bool | None = None) -> Path:
    """The folder holding dataset `name`; downloads it if no location has it.

    `download=None` means: download unless `$REPRO_OFFLINE` is set."""
    source = DATASETS[check_choice("dataset", name, DATASETS)]
    roots = data_roots(data_dir)
    for root, _ in roots:
        folder = root / source.folder
        if all((folder / f).is_file() for f in source.files):
            return folder
    if name == "cifar10":
        copy = image_folder_copy(roots)
        if copy is not None:
            return copy
    if download is None:
        download = not os.environ.get("REPRO_OFFLINE")
    failure = "downloading is off (download=False or $REPRO_OFFLINE is set)"
    if download:
        try:
            return fetch(source, roots[0][0])  # data_dir, else $REPRO_DATA_DIR, else the cache
        except (OSError, ValueError) as err:
            failure = f"the download failed: {err}"
    looked = "\n".join(f"  - {root / source.folder}  ({why})" for root, why in roots)
    raise DatasetNotFound(
        f"dataset {name!r} not found. Looked for {', '.join(source.files)} in:\n{looked}\n"
        f"and {failure}.\nTo provide it, put the official files in one of those folders (or point "
        f"$REPRO_DATA_DIR or data_dir at a folder holding '{source.folder}/')"
        + (", or on Debian: apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else "")
        + ".")


def image_folder_copy(roots: list[tuple[Path, str]]) -> Path | None:
    """The folder of a decoded image-folder copy of CIFAR-10 in `roots`; else the first copy
    found there to decode (`imagefolder.candidates`), decoded now; else None."""
    for root, _ in roots:
        if (root / imagefolder.FOLDER / imagefolder.DECODED).is_file():
            return root / imagefolder.FOLDER
    for root, _ in roots:
        for found in imagefolder.candidates(root):
            return decode_cifar10(found, roots)
    return None


def decode_cifar10(path: Path, roots: list[tuple[Path, str]] | None = None, *,
                   allow_partial: bool = False) -> Path:
    """Decode the image-folder copy at `path` into the first root of `roots` that can be
    written (the source's own folder may be read-only); returns the decoded copy's folder."""
    roots = roots or data_roots()
    writable = [root for root, why in roots if why != "system"]
    for root in writable:
        try:
            imagefolder.decode(path, root / imagefolder.FOLDER, allow_partial=allow_partial)
            return root / imagefolder.FOLDER
        except PermissionError:
            continue
    raise OSError(f"no data folder could hold the decoded copy of {path} (tried "
                  f"{', '.join(str(r / imagefolder.FOLDER) for r in writable)})")


def copy_of(name: str, data_dir: str | Path | None = None) -> imagefolder.Copy | None:
    """The image-folder copy that dataset `name` is read from; None for the official files."""
    return _copy(locate(name, data_dir, download=False))


def _copy(folder: Path) -> imagefolder.Copy | None:
    decoded = folder / imagefolder.DECODED
    return imagefolder.provenance(decoded) if decoded.is_file() else None


def source_of(name: str, data_dir: str | Path | None = None) -> str:
    """What the copy of dataset `name` that `load` reads is: the official files, or an
    image-folder copy and its format (lossless, or lossy with its JPEG quality)."""
    return _source(name, locate(name, data_dir, download=False))


def _source(name: str, folder: Path) -> str:
    copy = _copy(folder)
    return official_source(name) if copy is None else copy.describe()


def official_source(name: str) -> str:
    """How a source line names dataset `name`'s official files."""
    return "official batches" if name.startswith("cifar") else "official idx files"


def copy_checksum(name: str, data_dir: str | Path | None = None) -> str | None:
    """The pixels' SHA-256 of the image-folder copy that dataset `name` is read from; None for
    the official files (or when it is not found, which `load` reports)."""
    try:
        copy = copy_of(name, data_dir)
    except DatasetNotFound:
        return None
    return copy.sha256 if copy else None


def default_dataset(data_dir: str | Path | None = None) -> tuple[str, str]:
    """The book's dataset when none is named: CIFAR-10 if it can be read or downloaded,
    otherwise Fashion-MNIST; with the reason, for the page to say."""
    try:
        locate("cifar10", data_dir)
        return "cifar10", "CIFAR-10 was found"
    except DatasetNotFound as err:
        why = "downloading is off" if "downloading is off" in str(err) else "the download failed"
        return "fashion-mnist", f"CIFAR-10 was not found locally and {why}"


def _md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _download(item: Download, dest: Path) -> None:
    """Fetch `item` to `dest` through a temporary file; `dest` appears only once verified."""
    errors = []
    for url in item.urls:
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
        try:
            with urllib.request.urlopen(url, timeout=20) as response, open(tmp, "wb") as out:
                total = int(response.headers.get("Content-Length") or 0) or None
                with tqdm(total=total, unit="B", unit_scale=True, desc=item.filename) as bar:
                    for block in iter(lambda: response.read(1 << 20), b""):
                        out.write(block)
                        bar.update(len(block))
            if _md5(tmp) != item.md5:
                raise ValueError(f"{url}: checksum mismatch (expected md5 {item.md5})")
            os.replace(tmp, dest)
            return
        except (OSError, ValueError) as err:
            errors.append(f"{url}: {err}" if url not in str(err) else str(err))
        finally:
            tmp.unlink(missing_ok=True)
    raise OSError("; ".join(errors))


def fetch(source: Source, root: Path) -> Path:
    """Download and verify `source` into `root/<folder>`; nothing partial is left behind."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / source.folder
    for item in source.downloads:
        if not item.extract:
            folder.mkdir(exist_ok=True)
            if not (folder / item.filename).is_file():
                _download(item, folder / item.filename)
            continue
        with tempfile.TemporaryDirectory(dir=root, prefix=".extract-") as tmp:
            archive = Path(tmp) / item.filename
            _download(item, archive)
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
            if folder.exists():
                raise OSError(f"{folder} exists but lacks some of {', '.join(source.files)}; "
                              "complete it or move it away, then retry")
            os.replace(Path(tmp) / source.folder, folder)
    return folder


def load(name: str, data_dir: str | Path | None = None, *, channels: int | None = None,
         download: bool | None = None) -> tuple[ImageSet, ImageSet]:
    """The (train, test) ImageSets of dataset `name` ('cifar10', 'cifar100', 'fashion-mnist').

    `channels=3` repeats a grey-scale dataset over three channels (models built for RGB)."""
    source = DATASETS[check_choice("dataset", name, DATASETS)]
    if channels is not None:
        check_choice("channels", channels, (1, 3))
    folder = locate(name, data_dir, download)
    train_x, train_y, test_x, test_y, classes = source.read(folder)
    if len(train_y) != source.train_size:
        warnings.warn(f"{folder} holds {len(train_y)} training images, not the "
                      f"{source.train_size} of the full {name}", stacklevel=2)
    mean, std = source.mean, source.std
    if channels is not None and channels != train_x.shape[1]:
        if train_x.shape[1] != 1:
            raise ParameterError(f"channels={channels} is not possible for {name}, whose images "
                                 f"have {train_x.shape[1]} channels")
        train_x, test_x = train_x.expand(-1, channels, -1, -1), test_x.expand(-1, channels, -1, -1)
        train_x, test_x = train_x.contiguous(), test_x.contiguous()
        mean, std = mean * channels, std * channels
    copy = _source(name, folder)
    return (ImageSet(train_x, train_y, classes, mean, std, copy),
            ImageSet(test_x, test_y, classes, mean, std, copy))


# --------------------------------------------------------------------------------------------
# Batches on the device


class Batches:
    """One pass over `data` per iteration, in batches of (inputs, labels, indices).

    An epoch is split into ceil(N / batch_size) batches of near-equal size, so no batch is
    larger than `batch_size` and none is a stray single sample. With `shuffle`, the order is a
    fresh permutation each epoch; with `augment`, every image gets its own random crop (from the
    image zero-padded by 4 pixels) and horizontal flip (with `augment="flip"` the flip only),
    drawn on the CPU from `seed` so that the sequence of batches is the same on any device."""

    PAD = 4

    def __init__(self, data: ImageSet, batch_size: int, *, shuffle: bool = False,
                 augment: bool | str = False, seed: int = 0):
        self.data = data
        self.batch_size = check_range("batch_size", batch_size, low=1, integer=True)
        self.shuffle, self.augment = shuffle, augment
        self.generator = torch.Generator().manual_seed(check_range("seed", seed, low=0, integer=True))
        self._padded = None
        # On the device once: a host-to-device copy per batch would make every step wait.
        self._mean = torch.tensor(data.mean, device=data.device)
        self._std = torch.tensor(data.std, device=data.device)

    def __len__(self) -> int:
        return math.ceil(len(self.data) / self.batch_size)

    def __iter__(self):
        n, device = len(self.data), self.data.device
        g = self.generator
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        if self.augment:
            shifts, flips = self.draw(n)
            shifts, flips = shifts[order].to(device), flips[order].to(device)
        order = order.to(device)
        if n == 0:
            return
        for part in torch.arange(n, device=device).tensor_split(len(self)):
            idx = order[part]
            images = (self.crop_flip(idx, shifts[part], flips[part]) if self.augment
                      else self.data.images[idx])
            yield normalize(images, self._mean, self._std), self.data.labels[idx], idx

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The next `n` crop offsets (rows, columns into the padded image) and flips."""
        g = self.generator
        shifts = (torch.randint(0, 2 * self.PAD + 1, (n, 2), generator=g) if self.augment is True
                  else torch.full((n, 2), self.PAD))          # "flip": the window not moved
        return shifts, torch.rand(n, generator=g) < 0.5

    def crop_flip(self, idx, shifts, flips):
        """Gather each image's crop window from the padded set, reading columns backwards
        for flipped images: one indexing operation for the whole batch."""
        if self._padded is None:
            p = self.PAD
            self._padded = F.pad(self.data.images, (p, p, p, p))
        h, w = self.data.images.shape[-2:]
        rows = shifts[:, :1] + torch.arange(h, device=idx.device)
        cols = torch.where(flips[:, None], shifts[:, 1:] + torch.arange(w - 1, -1, -1, device=idx.device),
                           shifts[:, 1:] + torch.arange(w, device=idx.device))
        channels = torch.arange(self.data.images.shape[1], device=idx.device)
        return self._padded[idx[:, None, None, None], channels[None, :, None, None],
                            rows[:, None, :, None], cols[:, None, None, :]]


def crop_flip(data: ImageSet, seed: int) -> ImageSet:
    """One augmented copy of `data` (uint8): each image cropped from its 4-px zero padding and
    flipped at random, as one shuffled-free pass of `Batches(augment=True)` draws them."""
    if len(data) == 0:
        return data
    b = Batches(data, len(data), augment=True, seed=seed)
    shifts, flips = (t.to(data.device) for t in b.draw(len(data)))
    return data.with_images(b.crop_flip(torch.arange(len(data), device=data.device), shifts, flips))


def crop_rotate_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 5,
                     degrees: float = 10.0) -> torch.Tensor:
    """WaNet's augmentation after the warp, as BackdoorBench configures it (`PostTensorTransform`):
    each image of the normalised batch `x` is, with probability 0.8, cropped back to its size from
    a `pad`-pixel zero padding; with probability 0.5 rotated by an angle uniform in ±`degrees`
    (nearest pixel, zero fill); with probability 0.5 flipped. Drawn per image from `generator`
    (BackdoorBench's torchvision transforms draw one for the whole batch)."""
    n, _, h, w = x.shape
    g, dev = generator, x.device
    coins = torch.rand(n, 3, generator=g, device=dev)
    shift = torch.randint(-pad, pad + 1, (n, 2), generator=g, device=dev) * (coins[:, :1] < 0.8)
    angle = (torch.rand(n, generator=g, device=dev) * 2 - 1) * math.radians(degrees)
    angle = angle * (coins[:, 1] < 0.5)
    # grid_sample's unit is half the image: a crop offset of k pixels moves the sampling by 2k/w.
    crop = torch.eye(2, 3, device=dev).repeat(n, 1, 1)
    crop[:, 0, 2], crop[:, 1, 2] = 2 * shift[:, 0] / w, 2 * shift[:, 1] / h
    cos, sin = angle.cos(), angle.sin()
    rotate = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                          torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1)
    for theta in (crop, rotate):
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x.float(), grid, mode="nearest", padding_mode="zeros",
                          align_corners=False).to(x.dtype)
    return torch.where((coins[:, 2] < 0.5)[:, None, None, None], x.flip(3), x)

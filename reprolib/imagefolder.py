"""CIFAR-10 as an image folder, the layout researchers export it to (PNG copies of the batches,
Kaggle's PNGs, JPEG copies):

    train/<class>/<any name>.png|.jpg     test/<class>/...

one subfolder per class with the official class names, or an archive (`.tar.xz`, `.tar.gz`,
`.tgz`, `.zip`) holding such a folder at its top or one level down. It is read once, every file
checked (32×32 RGB, readable, the official classes, 50,000 + 10,000 images unless the user allows
a part), and decoded into one uint8 safetensors file (`DECODED`, written atomically, its pixels'
SHA-256 in its header and checked at every load), so that a later load takes about a second.

Within a class, files are taken in the order of their names. Where the copy came from and what
it is goes with it (`Copy`): a lossless folder (PNG: the official pixels, as far as can be told)
or a lossy one (JPEG, with the quality its quantisation tables say, estimated against libjpeg's
scaled standard tables). Nothing is unpickled.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import torch

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")
SIZES = {"train": 50_000, "test": 10_000}
ARCHIVES = (".tar.xz", ".tar.gz", ".tgz", ".zip")
FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}
DECODED = "cifar10-decoded.safetensors"      # in the folder `cifar10-images/` of a data root
FOLDER = "cifar10-images"


class ImageFolderError(ValueError):
    """An image-folder copy of CIFAR-10 that is not what it must be; the message names the file
    or folder and what was expected."""


@dataclass(frozen=True)
class Copy:
    """Where a copy of CIFAR-10 came from and what its pixels are."""
    source: str                  # the folder or archive it was decoded from
    format: str                  # "PNG", "JPEG" or "PNG and JPEG"
    lossless: bool
    quality: int | None          # JPEG: libjpeg's quality, estimated from the tables
    sha256: str                  # of the decoded images and labels

    @property
    def lossy_name(self) -> str | None:
        """How a verdict names a lossy copy ("JPEG-75 copy"); None for the official pixels."""
        if self.lossless:
            return None
        return f"{self.format}-{self.quality} copy" if self.quality else f"lossy {self.format} copy"

    def describe(self) -> str:
        if self.lossless:
            return (f"lossless {self.format} image folder (the official pixels, as far as can "
                    f"be told)")
        if self.quality:
            return f"{self.format} copy, quality {self.quality}"
        return f"lossy {self.format} copy"


# --------------------------------------------------------------------------------------------
# Reading the files


def members(path: Path):
    """(relative path, bytes reader) of every file under `path`: a folder or an archive."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            yield PurePosixPath(file.relative_to(path).as_posix()), file.read_bytes
    elif path.name.endswith(".zip"):
        with zipfile.ZipFile(path) as archive:
            for info in sorted(archive.infolist(), key=lambda i: i.filename):
                if not info.is_dir():
                    yield PurePosixPath(info.filename), lambda info=info: archive.read(info)
    elif path.name.endswith(ARCHIVES):
        with tarfile.open(path) as archive:     # streamed: one pass over the compressed file
            for info in archive:
                if info.isfile():
                    yield PurePosixPath(info.name), archive.extractfile(info).read
    else:
        raise ImageFolderError(f"{path}: not a folder or an archive ({', '.join(ARCHIVES)})")


def _split_and_class(relative: PurePosixPath) -> tuple[str, str] | None:
    """("train" or "test", class folder) of an image's path, its layout folder at the top or
    one level down; None for a file outside the layout (a README)."""
    parts = relative.parts
    for at in (0, 1):
        if len(parts) == at + 3 and parts[at] in SIZES:
            return parts[at], parts[at + 1]
    return None


def read(path: Path, *, allow_partial: bool = False, progress: bool = False) -> tuple:
    """The train and test images and labels of the CIFAR-10 image folder or archive at `path`
    (uint8 N×3×32×32 and int64 tensors) and its format: (train_x, train_y, test_x, test_y,
    formats, quality tables seen)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageFolderError(f"{path} does not exist")
    from PIL import Image
    found = {split: {} for split in SIZES}       # split: class: [(name, pixels)]
    formats, tables = set(), set()
    files = members(path)
    if progress:
        from tqdm import tqdm
        files = tqdm(files, desc=f"reading {path.name}", unit=" files", total=sum(SIZES.values()))
    for relative, data in files:
        place = _split_and_class(relative)
        kind = FORMATS.get(relative.suffix.lower())
        if place is None or kind is None:
            continue
        try:
            with Image.open(io.BytesIO(data())) as image:
                image.load()
                if image.format == "JPEG":
                    tables.add(json.dumps({k: list(v) for k, v in image.quantization.items()}))
                if image.size != (32, 32) or image.mode != "RGB":
                    raise ImageFolderError(f"{path / relative.as_posix()}: a {image.size[0]}×"
                                           f"{image.size[1]} {image.mode} image; CIFAR-10's are "
                                           f"32×32 RGB")
                pixels = np.asarray(image, dtype=np.uint8)
        except ImageFolderError:
            raise
        except Exception as err:         # a truncated or garbage file fails in many ways
            raise ImageFolderError(f"{path / relative.as_posix()}: not a readable image "
                                   f"({type(err).__name__}: {err})") from None
        formats.add(kind)
        found[place[0]].setdefault(place[1], []).append((relative.name, pixels))
    out = [t for split in SIZES for t in _assembled(path, split, found[split], allow_partial)]
    return (*out, formats, tables)


def _assembled(path: Path, split: str, by_class: dict[str, list], allow_partial: bool):
    """One split's images (N×3×32×32) and labels, classes in the official order and each
    class's files in the order of their names; checked for the ten classes and the count."""
    if set(by_class) != set(CLASSES):
        missing, extra = sorted(set(CLASSES) - set(by_class)), sorted(set(by_class) - set(CLASSES))
        what = [f"no folder for {', '.join(missing)}"] if missing else []
        what += [f"folders that are not CIFAR-10 classes: {', '.join(extra)}"] if extra else []
        raise ImageFolderError(f"{path}: {split}/ has {'; '.join(what)} (expected one folder "
                               f"per class: {', '.join(CLASSES)})")
    count = sum(len(files) for files in by_class.values())
    if count != SIZES[split] and not allow_partial:
        raise ImageFolderError(f"{path}: {split}/ holds {count} images, CIFAR-10's has "
                               f"{SIZES[split]} (repro data cifar10 --from PATH --allow-partial "
                               f"reads a part)")
    images = [pixels for c in CLASSES for _, pixels in sorted(by_class[c], key=lambda f: f[0])]
    labels = [k for k, c in enumerate(CLASSES) for _ in by_class[c]]
    return (torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()),
            torch.tensor(labels, dtype=torch.int64))


# --------------------------------------------------------------------------------------------
# JPEG quality from the quantisation tables

# libjpeg's standard luminance table (ITU-T T.81, Annex K), row by row as PIL gives it
_LUMA = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
         69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64,
         81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)


def scaled_table(quality: int) -> list[int]:
    """libjpeg's luminance table at `quality` (1-100)."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return [min(max((v * scale + 50) // 100, 1), 255) for v in _LUMA]


def jpeg_quality(luminance: list[int]) -> int | None:
    """The libjpeg quality whose scaled standard table is `luminance` (the first table of a
    JPEG file, as PIL gives it); None when no quality gives it (another encoder's tables)."""
    for quality in range(1, 101):
        if scaled_table(quality) == list(luminance):
            return quality
    return None


def describe_format(formats: set[str], tables: set[str]) -> tuple[str, bool, int | None]:
    """(format, lossless, JPEG quality) of a copy whose files were of `formats`."""
    name = " and ".join(sorted(formats))
    if formats == {"PNG"}:
        return name, True, None
    qualities = {jpeg_quality(json.loads(t)["0"]) for t in tables}
    return name, False, qualities.pop() if len(qualities) == 1 else None


# --------------------------------------------------------------------------------------------
# The decoded file


def decode(path: Path, into: Path, *, allow_partial: bool = False, progress: bool = True) -> Copy:
    """Read the copy at `path` (`read`) and write it to `into`/DECODED with its provenance;
    returns that provenance. The file appears whole or not at all."""
    from safetensors.torch import save
    from .atomic import atomic_write
    train_x, train_y, test_x, test_y, formats, tables = read(path, allow_partial=allow_partial,
                                                             progress=progress)
    tensors = {"train_images": train_x, "train_labels": train_y, "test_images": test_x,
               "test_labels": test_y}
    kind, lossless, quality = describe_format(formats, tables)
    copy = Copy(str(Path(path).expanduser().resolve()), kind, lossless, quality,
                _digest(tensors))
    into.mkdir(parents=True, exist_ok=True)
    metadata = {k: json.dumps(v) for k, v in asdict(copy).items()}
    atomic_write(into / DECODED, save(tensors, metadata=metadata))
    return copy


def provenance(file: Path) -> Copy:
    """The provenance in a decoded file's header, read without its pixels."""
    from safetensors import safe_open
    try:
        with safe_open(str(file), "pt") as f:
            return Copy(**{k: json.loads(v) for k, v in f.metadata().items()})
    except Exception as err:
        raise ImageFolderError(f"{file}: not a decoded CIFAR-10 copy ({type(err).__name__}: "
                               f"{err}); remove it and read the copy again") from None


def load_decoded(file: Path) -> tuple[dict[str, torch.Tensor], Copy]:
    """The tensors and provenance of a decoded file, its pixels checked against its header."""
    from safetensors.torch import load
    copy = provenance(file)
    try:
        tensors = load(file.read_bytes())
    except Exception as err:
        raise ImageFolderError(f"{file}: not a decoded CIFAR-10 copy ({type(err).__name__}: "
                               f"{err}); remove it and read the copy again") from None
    if _digest(tensors) != copy.sha256:
        raise ImageFolderError(f"{file}: its pixels no longer match the checksum it was written "
                               f"with; remove it and read the copy again")
    return tensors, copy


def _digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def candidates(root: Path) -> list[Path]:
    """The image-folder copies of CIFAR-10 in a data root: folders whose name starts with
    "cifar10" or "cifar-10" holding `train/` and `test/` (at their top or one level down), and
    archives so named, there or in such a folder."""
    found = []
    for entry in sorted(root.glob("cifar*10*")) if root.is_dir() else []:
        if not entry.name.startswith(("cifar10", "cifar-10")) or entry.name == FOLDER:
            continue
        if entry.is_file() and entry.name.endswith(ARCHIVES):
            found.append(entry)
        elif entry.is_dir():
            inside = [entry, *(c for c in sorted(entry.iterdir()) if c.is_dir())]
            if any((d / "train").is_dir() and (d / "test").is_dir() for d in inside):
                found.append(entry)
            else:     # a folder holding the archive (and its README)
                found += [f for f in sorted(entry.iterdir())
                          if f.is_file() and f.name.endswith(ARCHIVES)]
    return found

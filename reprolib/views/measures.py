"""A chapter's measures on disk: everything its page shows, as plain data.

    write(path, {"record": ..., "values": {"table": [...], "images": np.ndarray, ...}})
    read(path)

`path` is the JSON file (book/measures/CHAPTER.json): numbers, strings, lists and dicts as they
are; every numpy array goes to the safetensors file beside it (CHAPTER.safetensors), named in
the JSON by its place (`{"$array": "values.images"}`). The JSON records the arrays file's
SHA-256, so that a pair that does not belong together is refused rather than drawn. Both are
written atomically, arrays first. Nothing is pickled.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays

from ..atomic import atomic_write


class MeasuresCorrupt(ValueError):
    """A measures file that cannot be read as written."""


def arrays_path(path: Path) -> Path:
    return Path(path).with_suffix(".safetensors")


def encode(value, arrays: dict, where: str = ""):
    """`value` as JSON data, each numpy array moved into `arrays` under its place."""
    if isinstance(value, np.ndarray):
        if where in arrays:         # {"a.b": x} beside {"a": {"b": y}}: one name, two arrays
            raise ValueError(f"two arrays of the measures would be stored as {where!r}")
        arrays[where] = np.ascontiguousarray(value)
        return {"$array": where}
    if isinstance(value, dict):
        return {str(k): encode(v, arrays, f"{where}.{k}" if where else str(k))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and math.isnan(value):
        return None                 # as pandas writes a missing cell
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a measure cannot be a {type(value).__name__} (at {where or 'top'}): "
                    f"measures are numbers, strings, lists, dicts and numpy arrays")


def decode(value, arrays: dict):
    if isinstance(value, list):
        return [decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"$array"}:
        return arrays[value["$array"]]
    return {k: decode(v, arrays) for k, v in value.items()}


def write(path: Path, measures: dict) -> None:
    """Write `measures` to `path` (JSON) and its arrays beside it."""
    arrays: dict[str, np.ndarray] = {}
    plain = encode(measures, arrays)
    payload = save_arrays(arrays) if arrays else b""
    path.parent.mkdir(parents=True, exist_ok=True)
    if arrays:
        atomic_write(arrays_path(path), payload)
    else:
        arrays_path(path).unlink(missing_ok=True)
    document = {"arrays_sha256": hashlib.sha256(payload).hexdigest() if arrays else None,
                "measures": plain}
    atomic_write(path, (json.dumps(document, indent=1, allow_nan=False) + "\n").encode())


def read(path: Path) -> dict:
    """The measures `write` wrote to `path`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no measures at {path}: `repro run` writes them")
    document = json.loads(path.read_text())
    arrays = {}
    if document["arrays_sha256"] is not None:
        payload = arrays_path(path).read_bytes() if arrays_path(path).is_file() else b""
        if hashlib.sha256(payload).hexdigest() != document["arrays_sha256"]:
            raise MeasuresCorrupt(f"{arrays_path(path)} is missing or is not the arrays file "
                                  f"written with {path}: run the chapter again")
        arrays = load_arrays(payload)
    return decode(document["measures"], arrays)

"""Files written whole or not at all: a crash or Ctrl-C leaves the old file or none, never half a
new one (the zoo's entries, results files, measures, decoded datasets)."""
from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: Path, payload: bytes) -> None:
    """Write `payload` to `path` so that `path` is either absent, as before, or complete."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)

"""The cache of trained models and of every other expensive result (`jobs.py`).

An entry is addressed by a hash of everything that determines it (the `spec`: for a model its
data, attack, recipe and seed; for a job its kind, the digest of its code and its
arguments). It is two files: the tensors as safetensors and a JSON card (spec, record,
wall time, device, code version, and the SHA-256 of the tensors). Both are written through a
temporary file and an atomic rename, tensors first, so an interrupted write leaves no partial
entry; a card whose checksum does not match its tensors is treated as missing and the entry is
computed again. The device is not part of the key: a model trained on a GPU serves CPU runs of
the same spec, and its card says where it was trained.

Whoever computes an entry first takes its *claim*, an exclusive `flock` on claims/KEY.lock, so
that two processes (two Ray workers, two `repro run`s) sharing the folder never compute the same
entry twice: the second waits, then reads the first's result. The kernel drops the lock when
its holder dies, so a killed worker's job is free to be retried. On a cluster the folder is a
shared filesystem whose locks reach every machine (NFSv4, CephFS, Lustre with flock).

Location: `$REPRO_CACHE_DIR`, else `~/.cache/repro/zoo`.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from .atomic import atomic_write
from .config import cache_home
from .provenance import code_version


def key(spec: dict) -> str:
    """A stable hash of `spec` (key order does not matter)."""
    canonical = json.dumps({"spec": spec}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:24]


class Zoo:
    def __init__(self, root: str | Path | None = None):
        root = root or os.environ.get("REPRO_CACHE_DIR") or cache_home() / "zoo"
        self.root = Path(root).expanduser()

    def paths(self, k: str) -> tuple[Path, Path]:
        return self.root / f"{k}.safetensors", self.root / f"{k}.json"

    @contextlib.contextmanager
    def claim(self, k: str, what: str = "entry") -> Iterator[None]:
        """Hold the claim on key `k` for the block, waiting (and saying so) while another
        process holds it."""
        folder = self.root / "claims"
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / f"{k}.lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                print(f"zoo: {what} {k} is being computed by another process; waiting for it",
                      file=sys.stderr)
                fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def get(self, spec: dict) -> tuple[dict, bytes] | None:
        """The card and tensors (safetensors bytes) of a complete, intact entry for `spec`, or
        None."""
        k = key(spec)
        tensors, card_path = self.paths(k)
        try:
            card = json.loads(card_path.read_text())
            payload = tensors.read_bytes()
        except (OSError, ValueError):
            return None
        if card.get("key") != k or hashlib.sha256(payload).hexdigest() != card.get("sha256"):
            print(f"zoo: entry {k} is corrupted (checksum mismatch); it will be computed again",
                  file=sys.stderr)
            return None
        return card, payload

    def put(self, spec: dict, tensors: dict[str, torch.Tensor], record: dict) -> dict:
        """Store `tensors` under `spec` with `record` (metrics, wall time, ...) in the card."""
        self.root.mkdir(parents=True, exist_ok=True)
        k = key(spec)
        payload = save_safetensors({name: t.detach().cpu().contiguous()
                                    for name, t in tensors.items()})
        card = {"key": k, "spec": spec, **record, "code_version": code_version(),
                "torch": torch.__version__,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "sha256": hashlib.sha256(payload).hexdigest(), "bytes": len(payload)}
        path, card_path = self.paths(k)
        atomic_write(path, payload)
        atomic_write(card_path, (json.dumps(card, indent=1) + "\n").encode())
        return card

    def fetch(self, spec: dict, compute: Callable[[], tuple[dict[str, torch.Tensor], dict]]
              ) -> tuple[dict, dict[str, torch.Tensor]]:
        """The entry for `spec`, read from the zoo if it holds an intact one, else computed by
        `compute()` (its tensors and what the card should record) and stored, under the key's
        claim; read back either way, so that a computed and a cached entry are the same. The
        card says whether it was `cached`. The one way to an entry: models and results alike."""
        entry = self.get(spec)
        cached = entry is not None
        if not cached:
            with self.claim(key(spec), spec.get("job", "model")):
                entry = self.get(spec)          # computed meanwhile by the claim's holder
                cached = entry is not None
                if not cached:
                    start = time.perf_counter()
                    tensors, record = compute()
                    self.put(spec, tensors, {**record,
                                             "wall_time_s": round(time.perf_counter() - start, 2)})
                    entry = self.get(spec)
        card, payload = entry
        return {**card, "cached": cached}, load_safetensors(payload)

    def entries(self) -> list[dict]:
        """Cards of the intact entries, newest first."""
        cards = []
        for card_path in self.root.glob("*.json"):
            try:
                card = json.loads(card_path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(card, dict) and self.get(card.get("spec", {})) is not None:
                cards.append(card)
        return sorted(cards, key=lambda c: c.get("created", ""), reverse=True)

"""What a lossy copy of a dataset does to a backdoor experiment, measured where we hold the exact
pixels: the same model and recipe trained on a dataset as it is and after a JPEG round trip,
CA and ASR per attack over seeds.

The book's CIFAR-10 is a JPEG copy at quality 75 (the official batches cannot be downloaded where
it was built). JPEG at quality 75 keeps a 32×32 image's shapes and drops fine texture (PSNR about
30 dB on CIFAR-10): a model trained and tested on such a copy is expected to lose a little CA, a
point or two, and a trigger made of fine texture may lose some of its strength. Fashion-MNIST, whose
official pixels we have, measures both: `repro jpeg` writes `book/jpeg.json`, and
`repro book` the table the introduction shows (`page`). It is grey, so it measures the loss of
detail but not JPEG's halved colour resolution.
"""
from __future__ import annotations

import io
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from . import config, devices
from .views import seeds as seeding
from .attacks import attack as make_attack
from .provenance import code_version, library_versions
from .views.tables import ATTACKS
from .train import evaluate, trained
from .victims import at_most, datasets
from .atomic import atomic_write

RATIO, TARGET = 0.1, 0
RESULT = Path("book") / "jpeg.json"       # under the project's root


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 images (N, C, H, W), each saved as JPEG at `quality` by Pillow (libjpeg, its
    default 4:2:0 chroma subsampling for colour) and read back."""
    config.check_range("quality", quality, low=1, high=95, integer=True)
    mode = {1: "L", 3: "RGB"}[images.shape[1]]
    out = []
    for image in images.permute(0, 2, 3, 1).cpu().numpy():
        buffer = io.BytesIO()
        Image.fromarray(image.squeeze(-1) if mode == "L" else image, mode).save(
            buffer, "JPEG", quality=quality)
        back = np.array(Image.open(buffer))
        out.append(back[..., None] if mode == "L" else back)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def measure(dataset: str = "fashion-mnist", *, attacks=("badnets", "blended"), seeds=(0, 1, 2),
            quality: int = 75, profile: str = "quick", data_dir: str | None = None,
            device: str = "auto", progress: bool = True) -> pd.DataFrame:
    """One row per seed, attack and copy ("as it is", "JPEG-<quality>"): the CA and ASR of a
    victim of `profile` poisoned at ratio 0.1, target 0, trained and tested on that copy, and the
    seconds its training took (when it was trained: a model may come from the zoo). The attacker
    poisons the copy's images, as one would poison a JPEG copy of CIFAR-10."""
    seeds = seeding.resolve(None, list(seeds), 1)
    chosen = [make_attack(name) for name in attacks]     # every name checked before training
    p = config.profile(profile, dataset)
    device = devices.resolve(device)
    full = datasets(dataset, data_dir, None, None, 0)
    copies = {"as it is": (None, full),           # each copy encoded once, sampled per seed
              f"JPEG-{quality}": (quality, [s.with_images(jpeg(s.images, quality)) for s in full])}
    rows = []
    for seed in seeds:
        for copy, (q, (train_full, test_full)) in copies.items():
            train_copy, test_copy = (at_most(train_full, p.n_train, seed),
                                     at_most(test_full, p.n_test, seed))
            for atk in chosen:
                poisoned = atk.poison(train_copy, RATIO, TARGET, seed)
                backdoor = atk.triggered(test_copy, TARGET)
                _, card = trained(p.model, poisoned.data, p.recipe, seed=seed, device=device,
                                  about={"dataset": dataset, "jpeg_quality": q,
                                         "attack": atk.settings(), "ratio": RATIO,
                                         "target": TARGET},
                                  score=lambda m: evaluate(m, test_copy, backdoor, TARGET),
                                  progress=progress, desc=f"{atk.name} {copy} seed {seed}",
                                  per_batch=poisoned.per_batch)
                m = card["metrics"]
                rows.append({"attack": atk.name, "copy": copy, "seed": seed,
                             "ca": 100 * m["ca"], "asr": 100 * m["asr"],
                             "train_s": card["wall_time_s"]})
    return pd.DataFrame(rows)


def run(path: Path, **how) -> dict:
    """`measure(**how)` with its run record, written to `path` (JSON) atomically."""
    started, clock = datetime.now(timezone.utc), time.perf_counter()
    rows = measure(**how)
    how = {"dataset": "fashion-mnist", "quality": 75, "profile": "quick", **how}
    record = {"profile": how["profile"], "dataset": how["dataset"], "quality": how["quality"],
              "model": config.profile(how["profile"], how["dataset"]).model,
              "device": devices.name(devices.resolve(how.get("device", "auto"))),
              "seeds": sorted(set(rows["seed"])), "code_version": code_version(),
              "started": started.isoformat(timespec="seconds"),
              "wall_time_s": round(time.perf_counter() - clock, 1),
              "libraries": library_versions()}
    result = {"record": record, "rows": rows.to_dict("records")}
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(result, indent=1) + "\n").encode())
    return result


def read(root: Path) -> dict | None:
    """The last `repro jpeg` run's result under `root`, if any."""
    path = root / RESULT
    return json.loads(path.read_text()) if path.is_file() else None


def table(rows: pd.DataFrame) -> pd.DataFrame:
    """Per attack and copy: CA and ASR as "mean ± half-width" over the seeds (95 % t)."""
    rows = rows.sort_values("attack", kind="stable")      # each attack's two copies together
    frames = {seed: g.drop(columns=["seed", "train_s"]).reset_index(drop=True)
              for seed, g in rows.groupby("seed")}
    return seeding.shown(seeding.over_seeds(frames))


def page(result: dict | None) -> str:
    """book/jpeg.md, which the introduction includes: the table with its run record, or how to
    make it."""
    head = ("**What a JPEG copy changes.** JPEG at quality 75 keeps a 32×32 image's shapes and "
            "drops its finest texture (PSNR about 30 dB on CIFAR-10): trained and tested on such "
            "a copy, a model is expected to lose a point or two of CA, and a trigger made of fine "
            "texture some of its strength. ")
    if result is None:
        return head + "Measured on Fashion-MNIST by `repro jpeg`, which has not been run yet.\n"
    r = result["record"]
    shown = table(pd.DataFrame(result["rows"]))
    n = len(r["seeds"])
    name = {"fashion-mnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}.get(r["dataset"], r["dataset"])
    lines = [head + f"Measured on {name}, whose exact pixels we have, as it is and after "
             f"a JPEG round trip at quality {r['quality']} (grey, so without JPEG's halved colour "
             f"resolution): the {r['model']} of profile {r['profile']}, poisoned at ratio "
             f"{RATIO:g}, target {TARGET}; mean ± 95 % half-width over {n} seeds.", "",
             "| attack | copy | CA % | ASR % |", "|---|---|---:|---:|"]
    lines += [f"| {ATTACKS.get(row['attack'], row['attack'])} | {row['copy']} | {row['ca']} | "
              f"{row['asr']} |" for _, row in shown.iterrows()]
    trained = sum(row["train_s"] for row in result["rows"])
    lines += ["", f"*Run:* `repro jpeg` · device {r['device']} · seeds "
              f"{', '.join(map(str, r['seeds']))} · {r['wall_time_s']:.0f} s (its "
              f"{len(result['rows'])} models took {trained:.0f} s to train) · code "
              f"{r['code_version']}", ""]
    return "\n".join(lines)

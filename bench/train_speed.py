"""Training throughput of PreAct-ResNet18: reprolib's trainer against a plain torchvision pipeline.

Both train the same model at the same recipe (batch 128, SGD lr 0.01 with a per-step cosine
schedule, momentum 0.9, weight decay 5e-4, random crop with 4-px padding + horizontal flip) over
the same N random CIFAR-shaped images, in this one run, and the last of `--epochs` epochs is timed
(earlier ones absorb start-up costs).

  baseline: a Dataset doing numpy → PIL → RandomCrop → RandomHorizontalFlip → ToTensor →
            Normalize, a torch DataLoader (shuffle, `--workers` workers, pinned memory), and the
            standard fp32 loop: what BackdoorBench's trainer does.
  reprolib: `reprolib.train.train`: data and augmentation on the device, channels_last, bf16
            autocast on CUDA, and CUDA graphs with `--compile`.

    python bench/train_speed.py                         # on a GPU: 50,000 images, 2 epochs each
    python bench/train_speed.py --n 256 --epochs 1      # a quick CPU run
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from reprolib import config, devices, models
from reprolib.data import ImageSet
from reprolib.train import train

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
RECIPE = dict(batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4)


class PILDataset(torch.utils.data.Dataset):
    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels          # (N, 32, 32, 3) uint8, as torchvision's CIFAR10
        self.transform = transforms.Compose([
            transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
            transforms.ToTensor(), transforms.Normalize(MEAN, STD)])

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i])), int(self.labels[i])


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def baseline_epochs(images, labels, device, epochs, workers) -> list[float]:
    loader = torch.utils.data.DataLoader(
        PILDataset(images.permute(0, 2, 3, 1).numpy(), labels.numpy()), batch_size=RECIPE["batch_size"],
        shuffle=True, num_workers=workers, pin_memory=device.type == "cuda",
        persistent_workers=workers > 0)
    model = models.build("preact_resnet18", 10, 3, seed=0).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=RECIPE["lr"], momentum=RECIPE["momentum"],
                                weight_decay=RECIPE["weight_decay"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(loader))
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


def reprolib_epochs(images, labels, device, epochs, compile) -> list[float]:
    data = ImageSet(images, labels, tuple(str(i) for i in range(10)), MEAN, STD)
    model = models.build("preact_resnet18", 10, 3, seed=0)
    recipe = config.Recipe(epochs=epochs, schedule="cosine", **RECIPE)
    return train(model, data, recipe, seed=0, device=device, compile=compile,
                 desc="reprolib").epoch_seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None, help="images (default 50000 on CUDA, 256 on CPU)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs each, the last timed "
                    "(default 2 on CUDA, 1 on CPU)")
    ap.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                    help="baseline DataLoader workers (BackdoorBench: 4)")
    ap.add_argument("--compile", action="store_true", help="reprolib: torch.compile (CUDA graphs on GPU)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    device = devices.resolve(args.device)
    cuda = device.type == "cuda"
    n = config.check_range("n", args.n or (50000 if cuda else 256), low=256, integer=True)
    epochs = config.check_range("epochs", args.epochs or (2 if cuda else 1), low=1, integer=True)

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    name = devices.name(device) + ("" if cuda else f" ({os.cpu_count()} cores)")
    print(f"device {name} · torch {torch.__version__} · PreAct-ResNet18 · {n} random 32×32×3 "
          f"images · batch 128 · epoch {epochs} of {epochs} timed", flush=True)

    base = baseline_epochs(images, labels, device, epochs, args.workers)[-1]
    ours = reprolib_epochs(images, labels, device, epochs, args.compile)[-1]
    result = {"device": name, "torch": torch.__version__, "images": n, "epochs": epochs,
              "baseline_s": base, "baseline_img_per_s": n / base, "reprolib_s": ours,
              "reprolib_img_per_s": n / ours, "ratio": base / ours, "workers": args.workers,
              "compile": args.compile,
              "precision": "bf16 autocast + channels_last" if cuda else "fp32 + channels_last"}
    print(f"baseline  torchvision DataLoader ({args.workers} workers), fp32: "
          f"{base:7.2f} s/epoch  {n / base:9.0f} img/s")
    print(f"reprolib  on-device data, {result['precision']}{', compiled' if args.compile else ''}: "
          f"{ours:7.2f} s/epoch  {n / ours:9.0f} img/s")
    print(f"ratio (reprolib / baseline throughput): {base / ours:.2f}×")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

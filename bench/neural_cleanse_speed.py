"""Neural Cleanse reversal: all labels in one batched optimisation against NC's one label at a time.

Both run the same number of Adam steps of the same batch size for each of the K labels, on the
same model and defender images, in this one run:

  baseline: the reference code's structure: for each label in turn, its own optimisation loop,
            `loss.backward()` through the whole model (weight gradients included), fp32.
  reprolib: `neural_cleanse.reverse`: one loop whose every step pushes the batch through all K
            triggers at once (K·B images), gradients for the triggers only, bf16 on CUDA.

    python bench/neural_cleanse_speed.py                    # small CNN, 10 labels, 100 steps
    python bench/neural_cleanse_speed.py --model preact_resnet18 --device cuda --steps 200
"""
from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from reprolib import devices, models
from reprolib.data import ImageSet
from reprolib.defenses.neural_cleanse import reverse


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def one_label_at_a_time(model, data: ImageSet, steps: int, batch_size: int) -> None:
    device = models.model_device(model)
    images = data.images.to(device)
    mean = torch.tensor(data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=device).view(1, -1, 1, 1)
    c, h, w = images.shape[1:]
    for label in range(len(data.classes)):
        mask_param = torch.full((1, h, w), -1.0, device=device, requires_grad=True)
        pattern_param = torch.zeros((c, h, w), device=device, requires_grad=True)
        optimizer = torch.optim.Adam([mask_param, pattern_param], lr=0.1, betas=(0.5, 0.9))
        y = torch.full((batch_size,), label, device=device)
        for _ in range(steps):
            x = images[torch.randint(len(images), (batch_size,), device=device)].float() / 255
            mask, pattern = (torch.tanh(mask_param) + 1) / 2, (torch.tanh(pattern_param) + 1) / 2
            logits = model(((1 - mask) * x + mask * pattern - mean) / std)
            loss = F.cross_entropy(logits, y) + 1e-3 * mask.sum()
            optimizer.zero_grad()
            model.zero_grad()
            loss.backward()
            optimizer.step()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="small_cnn", choices=list(models.MODELS))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    device = devices.resolve(args.device)
    model = models.build(args.model, 10, 3, seed=0).to(device, memory_format=torch.channels_last).eval()
    gen = torch.Generator().manual_seed(0)
    data = ImageSet(torch.randint(0, 256, (1000, 3, 32, 32), dtype=torch.uint8, generator=gen),
                    torch.randint(0, 10, (1000,), generator=gen), tuple(map(str, range(10))),
                    (0.5,) * 3, (0.25,) * 3)

    reverse(model, data, steps=5, batch_size=args.batch_size, progress=False)   # warm-up
    timings = {}
    for name, run in (("baseline", lambda: one_label_at_a_time(model, data, args.steps,
                                                                args.batch_size)),
                      ("reprolib", lambda: reverse(model, data, steps=args.steps,
                                                   batch_size=args.batch_size, progress=False))):
        sync(device)
        start = time.perf_counter()
        run()
        sync(device)
        timings[name] = time.perf_counter() - start
    print(json.dumps({"model": args.model, "device": devices.name(device),
                      "labels": 10, "steps": args.steps, "batch_size": args.batch_size,
                      "seconds": {k: round(v, 2) for k, v in timings.items()},
                      "speedup": round(timings["baseline"] / timings["reprolib"], 2)}))


if __name__ == "__main__":
    main()

"""N trainings at once against the same N trainings one after another, two ways.

For each N of `--jobs`, N models of one architecture (PreAct-ResNet18 by default) are trained by
one recipe (BackdoorBench's: batch 128, SGD lr 0.01, momentum 0.9, weight decay 5e-4, cosine,
crop and flip) on N training sets of `--n` random CIFAR-shaped images, with seeds of their own,
in this one run: one after another (`train.train`), stacked (`reprolib.together`: one vmapped
network, what `repro run --together` uses), and in N threads, each on a CUDA stream of its own
(`train.train` unchanged; on a CPU, threads alone). Each training runs `--epochs` epochs, timed
whole (every way pays its own warm-up). Printed and written to `--json`, per N and way: the
seconds, the ratio to one after another (the speed-up), images per second, and that as a share of
one model's throughput at batch 512 (`train.throughput`, what the device does when a single
training fills it).

    python bench/together_speed.py                      # on a GPU: 10,000 images, N = 1 2 4 8
    python bench/together_speed.py --n 256 --jobs 1 2 --model small_cnn   # a quick CPU run
"""
from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import time
from pathlib import Path

import torch

from reprolib import config, devices, models
from reprolib.data import ImageSet
from reprolib.together import train_together
from reprolib.train import throughput, train

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
RECIPE = dict(batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, schedule="cosine")


def training_sets(count: int, n: int) -> list[ImageSet]:
    sets = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, 10, (n,), generator=g)
        sets.append(ImageSet(images, labels, tuple(str(c) for c in range(10)), MEAN, STD))
    return sets


WAYS = ("one_after_another", "stacked", "streams", "stacked_compiled")


def timed(work, device) -> tuple[float, float | None]:
    """The wall time of `work()` and the last-epoch seconds it returns (None where it has none)."""
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    sync()
    start = time.perf_counter()
    last = work()
    sync()
    return time.perf_counter() - start, last


def measure(model: str, count: int, n: int, epochs: int, device, ways) -> dict[str, dict]:
    """Per way of `ways`: the seconds `count` trainings take (`whole`), and their last epoch
    (`epoch`, summed over the trainings one after another; None for threads, which overlap);
    or the error that stopped that way."""
    recipe = config.Recipe(epochs=epochs, **RECIPE)
    sets, seeds = training_sets(count, n), list(range(count))

    def alone(i):
        return train(models.build(model, 10, 3, seed=i), sets[i], recipe, seed=i,
                     device=device, progress=False).epoch_seconds[-1]

    def on_a_stream(i):
        with (torch.cuda.stream(torch.cuda.Stream(device)) if device.type == "cuda"
              else contextlib.nullcontext()):
            alone(i)

    def in_threads():
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            list(pool.map(on_a_stream, seeds))

    def stacked(compile):
        return train_together([models.build(model, 10, 3, seed=i) for i in seeds], sets, recipe,
                              seeds=seeds, device=device, compile=compile,
                              progress=False)[0].epoch_seconds[-1]

    work = {"one_after_another": lambda: sum(alone(i) for i in seeds),
            "stacked": lambda: stacked(False), "streams": in_threads,
            "stacked_compiled": lambda: stacked(True)}
    found = {}
    for way in ways:
        try:
            whole, epoch = timed(work[way], device)
            found[way] = {"whole": whole, "epoch": epoch}
        except Exception as err:      # one way failing leaves the others' measurements
            found[way] = {"error": f"{type(err).__name__}: {err}"[:300]}
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=None,
                    help="images per training set (default 10000 on CUDA, 256 on CPU)")
    ap.add_argument("--epochs", type=int, default=2, help="epochs each")
    ap.add_argument("--jobs", type=int, nargs="+", default=[1, 2, 4, 8], metavar="N")
    ap.add_argument("--model", default="preact_resnet18", help=", ".join(models.MODELS))
    ap.add_argument("--ways", nargs="+", default=list(WAYS[:3]), metavar="WAY",
                    help=f"of {', '.join(WAYS)} (one_after_another always runs)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="also write the results to this file")
    args = ap.parse_args()
    device = devices.resolve(args.device)
    cuda = device.type == "cuda"
    config.check_choice("--model", args.model, tuple(models.MODELS))
    n = config.check_range("--n", args.n or (10000 if cuda else 256), low=128, integer=True)
    epochs = config.check_range("--epochs", args.epochs, low=1, integer=True)
    for count in args.jobs:
        config.check_range("--jobs", count, low=1, integer=True)
    ways = ["one_after_another", *(config.check_choice("--ways", w, WAYS) for w in args.ways
                                   if w != "one_after_another")]
    name = devices.name(device) + ("" if cuda else f" ({os.cpu_count()} cores)")
    print(f"device {name} · torch {torch.__version__} · {args.model} · {n} random 32×32×3 "
          f"images per training · batch 128 · {epochs} epochs each, timed whole", flush=True)

    full = throughput(args.model, 10, 3, device=device, batch_size=512)
    print(f"one training at batch 512: {full:9.0f} img/s (what a full device does)", flush=True)
    rows = []
    for count in args.jobs:
        found = measure(args.model, count, n, epochs, device, ways)
        base = found["one_after_another"]
        for way, m in found.items():
            if "error" in m:
                rows.append({"jobs": count, "way": way, "error": m["error"]})
                print(f"N={count} {way:<18} failed: {m['error']}", flush=True)
                continue
            whole = base.get("whole") and base["whole"] / m["whole"]   # None if base failed
            steady = m["epoch"] and base.get("epoch") and base["epoch"] / m["epoch"]
            rows.append({"jobs": count, "way": way, "seconds": m["whole"], "ratio": whole,
                         "epoch_s": m["epoch"], "epoch_ratio": steady,
                         "img_per_s": count * n * epochs / m["whole"],
                         "share_of_batch512": count * n * epochs / m["whole"] / full})
            print(f"N={count} {way:<18} {m['whole']:8.2f} s  "
                  f"{f'{whole:5.2f}×' if whole else '   — '}  "
                  f"last epoch {f'{steady:5.2f}×' if steady else '   — '}  "
                  f"{rows[-1]['img_per_s']:9.0f} img/s ({rows[-1]['share_of_batch512']:.0%} of "
                  f"batch 512)", flush=True)
    result = {"device": name, "torch": torch.__version__, "model": args.model, "images": n,
              "epochs": epochs, "batch512_img_per_s": full, "rows": rows,
              "precision": "bf16 autocast" if cuda else "fp32"}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()

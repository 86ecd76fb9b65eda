"""Small steps for the tests of `reprolib.jobs`, in a module of their own so that Ray workers can
import them. Each appends a line to the file `log` when it computes, so a test can count."""
import os
import time
from pathlib import Path

import torch

from reprolib.jobs import Kept, step


def _logged(log: str, what: str) -> None:
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {what}\n")


@step("test.square", read=lambda kept, args: kept.record["value"], work=lambda a: a["x"])
def square(x: int, log: str, scale: int = 1, progress: bool = False) -> Kept:
    _logged(log, f"square {x}")
    return Kept(record={"value": x * x * scale})


@step("test.slow", read=lambda kept, args: kept.tensors["t"])
def slow(x: float, log: str, seconds: float) -> Kept:
    _logged(log, f"slow {x}")
    time.sleep(seconds)
    return Kept({"t": torch.full((3,), x)})


@step("test.plus_one", read=lambda kept, args: kept.record["value"],
      needs=lambda a: [square.job(x=a["x"], log=a["log"])])
def plus_one(x: int, log: str) -> Kept:
    _logged(log, f"plus_one {x}")
    return Kept(record={"value": square(x=x, log=log) + 1})


@step("test.fails")
def fails(log: str) -> Kept:
    _logged(log, "fails")
    raise RuntimeError("half-way")


@step("test.dies_once", read=lambda kept, args: kept.tensors["w"])
def dies_once(marker: str, log: str) -> Kept:
    """Its first attempt writes its pid to `marker` and waits to be killed; a later one works."""
    _logged(log, "dies_once")
    first = not Path(marker).exists()
    if first:
        Path(marker).write_text(str(os.getpid()))
        time.sleep(300)
    return Kept({"w": torch.arange(4.0)})

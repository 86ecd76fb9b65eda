"""Where the work runs: the device a run asks for, and its name in run records and cards."""
from __future__ import annotations

import torch

from .config import ParameterError, check_choice


CHOICES = ("auto", "cpu", "cuda")


def resolve(device: str | torch.device = "auto") -> torch.device:
    """`device` as a torch device: "auto" is the GPU when torch sees one, else the CPU."""
    if isinstance(device, torch.device):
        return device
    kind, _, index = device.partition(":")
    check_choice("device", kind, CHOICES)
    if index and (kind != "cuda" or not index.isdigit()):
        raise ParameterError(f"device={device!r} is not allowed; only 'cuda' takes an index, "
                             "as in 'cuda:1'")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ParameterError(f"device={device!r} is not available: torch sees no CUDA GPU; "
                             "use 'cpu' or 'auto'")
    return torch.device(device)


def name(device: torch.device) -> str:
    """The GPU's name, or 'cpu': what run records and model cards report."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"

"""Grad-CAM (Selvaraju et al., ICCV 2017) at the last conv layer (the input of `avgpool`), and
the ℓ∞ chapter's summaries of it: the maps of a model's own predictions, and where a trigger falls
on the conv map.

Channel weights are the spatial means of the gradient of a class logit with respect to the
map; the heat map is ReLU(Σ_k w_k A_k), bilinearly upsampled to the image size. Samples are
independent in eval mode, so one backward pass of the summed logits serves a whole batch.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ParameterError
from .models import model_device
from .train import evaluating


def gradcam(model: nn.Module, inputs: torch.Tensor, classes: torch.Tensor,
            upsample: bool = True) -> torch.Tensor:
    """Heat maps (N×H×W, not normalised) of normalised `inputs` for the logits of `classes`
    (one class per input); at the conv map's resolution unless `upsample`."""
    if len(classes) != len(inputs):
        raise ParameterError(f"classes has {len(classes)} entries for {len(inputs)} inputs; "
                             "give one class per input")
    pool = getattr(model, "avgpool", None)
    if pool is None:
        raise ParameterError(f"model={type(model).__name__} has no `avgpool` to take the last "
                             "conv map from")
    captured = []
    hook = pool.register_forward_pre_hook(lambda _, args: captured.append(args[0]))
    try:
        with torch.enable_grad(), evaluating(model):
            logits = model(inputs.contiguous(memory_format=torch.channels_last))
            maps = captured[0]
            score = logits.gather(1, classes.view(-1, 1).to(logits.device)).sum()
            grads, = torch.autograd.grad(score, maps)
    finally:
        hook.remove()
    weights = grads.mean((2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(1)).detach().float()
    if upsample:
        cam = F.interpolate(cam[:, None], size=inputs.shape[-2:], mode="bilinear",
                            align_corners=False)[:, 0]
    return cam


def mass_in(cam: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """The share of each heat map's mass inside the boolean `region` (H×W); NaN for an all-zero
    map (the model put no positive evidence anywhere)."""
    if region.shape != cam.shape[1:]:
        raise ParameterError(f"region {tuple(region.shape)} must match the maps "
                             f"{tuple(cam.shape[1:])}")
    total = cam.flatten(1).sum(1)
    inside = (cam * region.to(cam.device)).flatten(1).sum(1)
    return torch.where(total > 0, inside / total, torch.full_like(total, float("nan")))


def cams(model: nn.Module, images: torch.Tensor, normalize, upsample: bool = True) -> torch.Tensor:
    """Grad-CAM maps of uint8 `images` for the class `model` predicts for each (on the CPU);
    `normalize` maps them to the model's inputs (an ImageSet's `normalize`)."""
    x = normalize(images.to(model_device(model)))
    with torch.no_grad():
        pred = model(x).argmax(1)
    return gradcam(model, x, pred, upsample=upsample).cpu()


def trigger_cells(attack, channels: int, image_size: tuple[int, int],
                  size: tuple[int, int]) -> torch.Tensor:
    """The cells of a `size` conv map that hold any pixel `attack` writes on a blank image of
    `channels` × `image_size` (every cell for a trigger that covers the whole image)."""
    blank = torch.zeros((1, channels, *image_size), dtype=torch.uint8)
    footprint = (attack.apply(blank) != blank).any(1).float()
    return F.adaptive_max_pool2d(footprint[None], size)[0, 0].bool()

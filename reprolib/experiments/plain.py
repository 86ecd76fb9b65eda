"""Results as the plain data measures are made of: a table as its rows, tensors as numpy
arrays."""
from __future__ import annotations

import pandas as pd
import torch


def rows(frame: pd.DataFrame) -> list[dict]:
    """A table's rows, its named index levels as columns."""
    named = any(name is not None for name in frame.index.names)
    return (frame.reset_index() if named else frame).to_dict("records")


def arrays(value):
    """`value` (dicts, lists, tensors, plain values) with every tensor a numpy array."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    if isinstance(value, dict):
        return {k: arrays(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [arrays(v) for v in value]
    return value

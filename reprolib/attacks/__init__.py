"""Poisoning attacks, by name.

    attack("blended", alpha=0.2).poison(train, ratio=0.1, target=0, seed=0)

Every attack returns the poisoned training set with its exact poison indices (`base.Poisoned`)
and builds the triggered test set for ASR and RA (`Attack.triggered`)."""
from __future__ import annotations

from ..config import ParameterError, check_choice
from .badnets import BadNets, BadNetsAllToAll
from .base import Attack, Poisoned
from .blended import Blended
from .sig import SIG
from .wanet import WaNet

ATTACKS: dict[str, type[Attack]] = {
    a.name: a for a in (BadNets, BadNetsAllToAll, Blended, SIG, WaNet)}


def attack(name: str, **params) -> Attack:
    """The attack called `name`, with its parameters (the BackdoorBench defaults where not given)."""
    check_choice("attack", name, tuple(ATTACKS))
    cls = ATTACKS[name]
    fields = tuple(cls.__dataclass_fields__)
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ParameterError(f"{name} has no parameter {', '.join(unknown)}; "
                             f"allowed: {', '.join(fields)}")
    return cls(**params)


__all__ = ["ATTACKS", "Attack", "Poisoned", "attack"]

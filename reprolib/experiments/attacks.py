"""The attacks chapter's jobs: the clean model and one victim per attack."""
from __future__ import annotations

from ..jobs import Job
from ..victims import trained_victim


def asked(ch, *, attacks, ratio: float = 0.1, target: int = 0) -> list[dict]:
    """The victims the chapter asks for: the clean twin first, then each attack's."""
    return [ch.victim_args(a, ratio, target) for a in [None, *attacks]]


def jobs(ch, *, attacks, ratio=0.1, target=0, **_) -> list[Job]:
    return [trained_victim.job(**a) for a in asked(ch, attacks=attacks, ratio=ratio,
                                                   target=target)]

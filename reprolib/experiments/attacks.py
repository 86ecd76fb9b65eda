"""The attacks chapter's experiments: the clean model and one victim per attack, scored; its
page is drawn from `measures`."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd

from ..attacks import attack
from ..train import evaluate
from ..victims import trained_victim

COLUMNS = ["attack", "poisoned", "ca", "asr", "ra", "train_s", "clean_model_asr"]


def results(ch, *, attacks, ratio: float = 0.1, target: int = 0) -> SimpleNamespace:
    """The clean twin and each attack's victim, and the table of their scores."""
    chosen = [attack(name) for name in attacks]         # every name checked before training
    clean, *attacked = [trained_victim(**ch.victim_args(a, ratio, target))
                        for a in [None, *attacks]]
    return SimpleNamespace(chosen=chosen, clean=clean, attacked=attacked,
                           table=no_defense_table(clean, chosen, attacked, target))


def measures(ch, *, attacks, ratio: float = 0.1, target: int = 0, shown: int = 5) -> dict:
    """What the attacks page shows, as plain data: the triggers on `shown` test images, the
    no-defense table's rows, the measures of the claims, and the models' recipe."""
    r = results(ch, attacks=attacks, ratio=ratio, target=target)
    return {"triggers": trigger_rows(r.clean.test, r.chosen, n=shown, seed=ch.seed),
            "no_defense": r.table.reset_index().to_dict("records"),
            "claims": claims(r.table, r.chosen),
            "model_and_recipe": ch.model_and_recipe(wanet="wanet" in attacks)}


def trigger_rows(test_set, chosen, n: int, seed: int) -> dict:
    """`n` clean test images drawn from `seed`, and the same images with each attack's trigger:
    uint8 arrays by row ("clean", then each attack's name), what the trigger figure draws."""
    clean = test_set.sample(n, seed).images
    return {"clean": clean.cpu().numpy(),
            **{a.name: a.apply(clean).cpu().numpy() for a in chosen}}


def no_defense_table(clean, chosen, attacked, target: int) -> pd.DataFrame:
    """Per model: images poisoned, CA, ASR and RA in percent, training seconds, and the ASR of
    the clean model on each attack's triggered images (the trigger alone, without a backdoor)."""
    rows = [{"attack": "none (clean)", "poisoned": 0,
             **{k: 100 * v for k, v in clean.scores().items()},
             "train_s": clean.card["wall_time_s"], "clean_model_asr": None}]
    for a, v in zip(chosen, attacked):
        m = v.scores()
        baseline = evaluate(clean.model, v.test, v.backdoor, target)["asr"]
        rows.append({"attack": a.name, "poisoned": len(v.poison_indices), "ca": 100 * m["ca"],
                     "asr": 100 * m["asr"], "ra": 100 * m["ra"],
                     "train_s": v.card["wall_time_s"], "clean_model_asr": 100 * baseline})
    return pd.DataFrame(rows, columns=COLUMNS).set_index("attack")


def claims(table: pd.DataFrame, chosen) -> dict[str, float]:
    """The measures the reference numbers and claims of reference/attacks.yaml are read from."""
    by = table.to_dict("index")
    dirty = [a.name for a in chosen if not a.clean_label]
    measured = {f"{name}.{metric}": by[name][metric] for name in by if name != "none (clean)"
                for metric in ("ca", "asr", "ra")}
    measured["clean.ca"] = by["none (clean)"]["ca"]
    if dirty:
        measured["min_asr_dirty"] = min(by[a]["asr"] for a in dirty)
        measured["max_ca_drop_dirty"] = max(by["none (clean)"]["ca"] - by[a]["ca"] for a in dirty)
    if "sig" in by:
        measured["asr_sig"] = by["sig"]["asr"]
        measured["ca_drop_sig"] = by["none (clean)"]["ca"] - by["sig"]["ca"]
    measured["max_clean_model_asr"] = max(by[a]["clean_model_asr"] for a in by
                                          if a != "none (clean)")
    return measured

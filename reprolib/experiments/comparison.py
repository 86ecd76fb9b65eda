"""The comparison chapter: every defense of the book against every attack, on the same victims,
with what each costs and what each assumes the defender has.

The defenses run as their own chapters run them, through the same jobs (so a victim, an FT run or
a NONE repair another chapter computed is read from the zoo): FT, FP (the defender-legal,
held-out variant) and NPD as the Neural Polarizer chapter runs them, NONE and ABL as the NONE
chapter does, Neural Cleanse's reversal as the ℓ∞ chapter does. Three are new here: NC's
unlearning, ℓ∞ pruning aimed at NC's suspect label, and MESA's retraining on a victim it did not
inject itself.
"""
from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from .. import staleness
from ..metrics import score_row
from ..config import Recipe, check_range
from ..config import scale as scale_of
from ..defenses import linf_pruning as lp
from ..defenses import mesa
from ..defenses import neural_cleanse as nc
from ..jobs import Job, Kept, pack, step, unpack
from ..victims import sizes, trained_victim
from . import linf_pruning as linf_ex
from . import neural_polarizer as npd_ex
from . import none as none_ex
from .plain import rows

DEFENSES = ["FT", "FP", "NC", "ℓ∞ + FT", "NPD", "NONE", "ABL", "MESA"]
METRICS = ["CA %", "ASR %", "RA %", "DER %"]
FROM_NPD = {"FT": "FT", "FP": "FP held-out", "NPD": "NPD"}   # our name: the NPD chapter's

def setup(ch, *, clean_ratio: float, nc_images: int, nc_steps: int | None = None,
          search_batch: int | None = None) -> dict:
    """How every defense runs at the chapter's profile: the NPD chapter's settings for FT, FP and
    NPD, the NONE chapter's for NONE and ABL, the ℓ∞ chapter's Neural Cleanse budget, MESA's
    chapter's search and retraining."""
    check_range("clean_ratio", clean_ratio, low=0, high=1, low_open=True)
    check_range("nc_images", nc_images, low=1, integer=True)
    scale = ch.scale(nc_steps=nc_steps, search_batch=search_batch)
    check_range("search_batch", scale.search_batch, low=2, integer=True)
    npd, _ = npd_ex.setup(ch, clean_ratio=clean_ratio)
    repair, isolation, *_ = none_ex.settings(scale_of("none", ch.profile), none_lr=0.01,
                                             augment=ch.recipe.augment, fractions=[0.03],
                                             areas=[0.02])
    m = scale_of("mesa", ch.profile)
    return dict(
        share=clean_ratio, seed=ch.seed, npd=npd,
        nc=dict(n=nc_images, seed=ch.seed,
                budget=nc.budget(scale.nc_steps, nc_images)),
        none=dict(settings=repair, augment=ch.recipe.augment, seed=ch.seed),
        abl=dict(settings=isolation, model_name=ch.model, seed=ch.seed, device=ch.device),
        mesa=dict(settings=mesa.Settings(epochs=m.search_epochs, batch_size=scale.search_batch),
                  recipe=mesa.RETRAIN.replace(epochs=m.retrain_epochs), rate=0.01))


def _copy_of_victim(kept: Kept, args: dict):
    return unpack(kept, {"": copy.deepcopy(trained_victim(**args["victim"]).model)}).eval()


def _reversal(victim: dict, nc: dict) -> Job:
    """Neural Cleanse's reversal of the victim asked for by `victim` with the budget `nc`
    (n, seed, budget): the ℓ∞ chapter's job, which NC's unlearning and ℓ∞ pruning share."""
    return linf_ex.reversed_triggers.job(victim=victim, **nc)


def _nc_of(a: dict) -> dict:
    return {k: a[k] for k in ("n", "seed", "budget")}


@step("comparison.nc", read=_copy_of_victim, needs=lambda a: [_reversal(a["victim"], _nc_of(a))],
      work=lambda a: a["share"] * sizes(a["victim"])[0] * a["recipe"].epochs,
      describe=lambda a: f"NC unlearning {a['victim']['attack']}")
def unlearned(victim: dict, n: int, seed: int, budget: dict, share: float,
              recipe: Recipe) -> Kept:
    """Neural Cleanse's mitigation of the victim asked for by `victim`: its flagged labels'
    reversed triggers (the ℓ∞ chapter's reversal job) unlearned on `share` of the training set
    as the defender's clean data, by FT's recipe (BackdoorBench's nc.py does the same)."""
    v = trained_victim(**victim)
    reversal = _reversal(victim, dict(n=n, seed=seed, budget=budget))()
    return pack(nc.unlearn(v.model, npd_ex.defender(v, share, seed), reversal, recipe,
                           seed=seed, progress=False))


@step("comparison.mesa", read=_copy_of_victim,
      needs=lambda a: [trained_victim.job(**a["victim"])],
      work=lambda a: a["share"] * sizes(a["victim"])[0] * (
          a["settings"].epochs * len(a["settings"].betas) + a["recipe"].epochs),
      describe=lambda a: f"MESA retraining {a['victim']['attack']}")
def retrained_by_mesa(victim: dict, share: float, target: int, settings: mesa.Settings,
                      recipe: Recipe, rate: float, seed: int) -> Kept:
    """MESA on the victim asked for by `victim`: its generators searched for `target` on `share`
    of the training set as the defender's clean data, then the model retrained there with
    triggers sampled from their staircase ensemble."""
    v = trained_victim(**victim)
    clean = npd_ex.defender(v, share, seed)
    found = mesa.search(v.model, clean, target, settings, seed=seed)
    return pack(mesa.retrain(v.model, clean, mesa.mixture(list(found.generators.values())),
                             recipe, rate=rate, seed=seed))


def defense_jobs(defense: str, asked: dict, how: dict) -> list[Job]:
    """The jobs `defense` of the victim `asked` is made of, which `defended` calls and the
    cost table sums (ℓ∞'s fine-tuning aside: its arguments depend on the reversal, see
    `tuning_job`)."""
    if defense in FROM_NPD:
        return [npd_ex.defended.job(victim=asked, defense=FROM_NPD[defense], share=how["share"],
                                    **how["npd"])]
    if defense == "NC":
        return [_reversal(asked, how["nc"]),
                unlearned.job(victim=asked, share=how["share"], recipe=how["npd"]["ft_recipe"],
                              **how["nc"])]
    if defense == "ℓ∞ + FT":
        return [_reversal(asked, how["nc"])]
    if defense == "NONE":
        return [none_ex.repaired_by_none.job(victim=asked, **how["none"])]
    if defense == "ABL":
        return [none_ex.trained_by_abl.job(victim=asked, **how["abl"])]
    return [retrained_by_mesa.job(victim=asked, share=how["share"], target=asked["target"],
                                  seed=how["seed"], **how["mesa"])]


def defended(defense: str, v, how: dict):
    """What `defense` leaves of the victim `v`: for FT, FP and NPD their row (the NPD chapter
    keeps no model), for NC, NONE, ABL and MESA the model; for ℓ∞ + FT, whose fine-tuning
    depends on the reversal (`tuned`), nothing yet."""
    parts = [job() for job in defense_jobs(defense, v.asked, how)]
    if defense in FROM_NPD:
        return parts[0][0]
    if defense == "ℓ∞ + FT":
        return None
    return parts[0].model if defense in ("NONE", "ABL") else parts[-1]


def results(ch, *, attacks, ratio=0.1, target=0, clean_ratio=0.05, nc_images=1000,
            nc_steps=None, search_batch=None) -> SimpleNamespace:
    """The victims (and the clean twin) and what every defense leaves of each."""
    how = setup(ch, clean_ratio=clean_ratio, nc_images=nc_images, nc_steps=nc_steps,
                search_batch=search_batch)
    victims = {name: trained_victim(**ch.victim_args(name, ratio, target)) for name in attacks}
    victims["clean"] = trained_victim(**ch.victim_args(None, ratio, target))
    return SimpleNamespace(how=how, victims=victims, defended={
        (name, d): defended(d, v, how) for name, v in victims.items() for d in DEFENSES})


@step("comparison.cut", read=lambda kept, args: kept.record["cut"],
      needs=lambda a: [_reversal(a["victim"], a["nc"])],
      work=lambda a: 2 * a["nc"]["n"], describe=lambda a: f"ℓ∞ cut {a['victim']['attack']}")
def pruning_cut(victim: dict, nc: dict, seed: int) -> Kept:
    """ℓ∞ pruning of the victim asked for by `victim` aimed at NC's suspect label (its reversal
    by `nc`), as the ℓ∞ chapter prunes (rule i: the fewest channels at which the suspect's
    reversed trigger works on under 5 % of the defender's images; rule ii, at most 2 points of
    their accuracy lost, where rule i is not reached within half the layer): the channels
    pruned, their count and the rule."""
    v = trained_victim(**victim)
    reversal = _reversal(victim, nc)()
    order, curve = linf_ex.linf_curve(v, reversal, reversal.suspect, n_defender=nc["n"],
                                      seed=seed)
    n, rule = lp.stop_at_asr(curve), "i"
    if n is None:
        n, rule = lp.stop_at_ca_drop(curve), "ii"
    return Kept(record={"cut": [order[:n].tolist(), n, rule]})


def pruning_cuts(victims: dict, how: dict) -> dict[str, list]:
    """Per victim, its `pruning_cut`: the channels pruned, their count and the rule."""
    return {name: pruning_cut(victim=v.asked, nc=how["nc"], seed=how["seed"])
            for name, v in victims.items()}


def tuning_job(v, cut: list, how: dict, device) -> Job:
    """The fine-tuning of `v` pruned by `cut` (`pruning_cuts`), as the ℓ∞ chapter's job."""
    return linf_ex.pruned_and_tuned.job(victim=v.asked, pruned=cut[0], n=how["nc"]["n"],
                                        seed=how["seed"], device=device)


def tuned(victims: dict, cuts: dict, how: dict, device) -> dict:
    """Per victim, its pruned model fine-tuned (`tuning_job`)."""
    return {name: tuning_job(v, cuts[name], how, device)() for name, v in victims.items()}


def main_table(victims: dict, how: dict, defended_: dict, cuts: dict, tuned_: dict,
               device) -> pd.DataFrame:
    """Per victim, no defense and every defense (`defended_`, and `tuned_` for ℓ∞ + FT): CA,
    ASR, RA and DER in percent; the wall time of the jobs that computed it (as their cards
    record it), the parameters it trains, and its cost in passes over the training set (image
    passes / training images)."""
    rows = []
    for name, v in victims.items():
        n_train = len(v.train)
        rows.append({"attack": name, "defense": "none", **score_row(v)})
        for d in DEFENSES:
            parts = defense_jobs(d, v.asked, how)
            if d == "ℓ∞ + FT":
                parts.append(tuning_job(v, cuts[name], how, device))
            if d in FROM_NPD:
                row = defended_[name, d]
                scores = {k: row[k] for k in METRICS if k in row}
                trained = row["trained parameters"]
            else:
                model = tuned_[name] if d == "ℓ∞ + FT" else defended_[name, d]
                scores = score_row(v, model)
                trained = sum(p.numel() for p in model.parameters())
            rows.append({"attack": name, "defense": d, **scores,
                         "seconds": sum(j.card()["wall_time_s"] for j in parts),
                         "trained parameters": trained,
                         "passes": sum(j.work() for j in parts) / n_train})
    return pd.DataFrame(rows).set_index(["attack", "defense"])


def nc_table(victims: dict, how: dict, cuts: dict) -> pd.DataFrame:
    """Per victim: the label NC suspects, its anomaly index, the labels it flags (and so
    unlearns), and the channels ℓ∞ pruning then removed, by which rule (`pruning_cuts`)."""
    rows = []
    for name, v in victims.items():
        r = _reversal(v.asked, how["nc"])()
        _, n, rule = cuts[name]
        rows.append({"attack": name, "NC suspect": r.suspect,
                     "anomaly index": float(r.anomaly.max()),
                     "flagged (unlearned)": ", ".join(map(str, r.flagged)) or "none",
                     "ℓ∞ pruned": n, "rule": rule})
    return pd.DataFrame(rows).set_index("attack")


def measures(ch, *, attacks, ratio=0.1, target=0, clean_ratio=0.05, nc_images=1000,
             nc_steps=None, search_batch=None) -> dict:
    """What the comparison page shows, as plain data (see `views.comparison`): every defense's
    row against every victim, NC's and ℓ∞'s choices, and the CLEAR chapter's row."""
    r = results(ch, attacks=attacks, ratio=ratio, target=target, clean_ratio=clean_ratio,
                nc_images=nc_images, nc_steps=nc_steps, search_batch=search_batch)
    cuts = pruning_cuts(r.victims, r.how)
    tuned_ = tuned(r.victims, cuts, r.how, ch.device)
    main = main_table(r.victims, r.how, r.defended, cuts, tuned_, ch.device)
    # the CLEAR chapter's results in the book this notebook runs in (its cwd is notebooks/)
    clear, source = clear_row(Path("../book/results/clear.json"), ch.run_setting)
    return {"main": rows(main), "neural_cleanse": rows(nc_table(r.victims, r.how, cuts)),
            "clear": rows(clear) if clear is not None else None, "clear_source": source,
            "claims": claims(main, [a for a in attacks if a != "badnets_all2all"]),
            "model_and_recipe": ch.model_and_recipe(wanet="wanet" in attacks)}


def clear_row(results: Path, setting: dict | None = None) -> tuple[pd.DataFrame | None, str]:
    """The CLEAR chapter's result in one row (CLEAR's relabel + FT against no defense, over its
    successful sample-targeted draws), read from its results file, and where it came from (and
    how it differs from `setting`, this chapter's profile, dataset and model)."""
    found = staleness.read_json(results)
    if found is None:
        return None, ("The CLEAR chapter has not been run here, so its row is missing: "
                      "`repro run clear` writes it.")
    r = found["record"]
    table = pd.DataFrame(found["tables"]["mitigation"])
    if table.empty:
        return None, ("No sample-targeted draw succeeded in the CLEAR chapter's run: nothing to "
                      "mitigate.")
    by_method = {m: t for m, t in table.groupby("method")}
    before, after = by_method["no defense"], by_method["CLEAR relabel + FT"]

    def mean(t, column):
        return float((t[column] * t["attacks"]).sum() / t["attacks"].sum())
    row = pd.DataFrame([{"defense": "CLEAR (relabel + FT)", "threat": "sample-targeted",
                         "successful draws": int(before["attacks"].sum()),
                         "attack success before %": mean(before, "attack success %"),
                         "attack success after %": mean(after, "attack success %"),
                         "CA before %": mean(before, "CA %"), "CA after %": mean(after, "CA %")}
                        ]).set_index("defense")
    differs = [f"{k} {r.get(k)}" for k, v in (setting or {}).items() if r.get(k) != v]
    return row, (f"From the CLEAR chapter's run of {r['started'][:10]} (profile {r['profile']}, "
                 f"{r['dataset']}, model {r['model']}, code {r['code_version']})"
                 + (f"; unlike this chapter it ran {', '.join(differs)}." if differs else "."))


def claims(main: pd.DataFrame, attacks) -> dict[str, float]:
    """BackdoorBench's rows (none, FT, NC, ABL) as ids of reference/comparison.yaml."""
    names = {"none": "none", "FT": "ft", "NC": "nc", "ABL": "abl"}
    measured = {}
    for (attack, defense), row in main.loc[list(attacks)].iterrows():
        if defense in names:
            for metric in ("CA", "ASR", "RA"):
                measured[f"{names[defense]}.{attack}.{metric.lower()}"] = row[f"{metric} %"]
    return measured



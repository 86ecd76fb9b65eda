"""The Neural Polarizer chapter's experiments: NPD against FT and FP on the same defender's data,
what each costs, how little clean data NPD needs, the poisoning ratio, the features the polarizer
leaves, and an ablation of two of the reference's choices; `measures` turns them into the plain
data the page (`views.neural_polarizer`) is drawn from."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import torch

from ..metrics import score_row
from ..config import Recipe, check_range, profile
from ..config import scale as scale_of
from ..data import ImageSet
from ..defenses import linf_pruning as lp
from ..defenses import neural_polarizer as npd_
from ..defenses.fine_tuning import fine_prune, ft
from ..jobs import Kept, pack, section, step, unpack
from ..victims import datasets, sizes, trained_victim
from .plain import arrays, rows

METRICS = ["CA %", "ASR %", "RA %", "DER %"]
DEFENSES = ["none", "FT", "FP", "FP held-out", "NPD"]


def setup(ch, *, npd_epochs=None, ft_epochs=None, clean_ratios=None, clean_ratio=0.05,
          poison_ratios=()) -> tuple[dict, list[float]]:
    """The chapter's parameters checked and resolved at its profile: how every defense runs
    (NPD's settings, FT's recipe, the seed) and the clean-data shares of its sweep. Any
    chapter may ask (the comparison runs these defenses as this chapter does)."""
    scale = scale_of("neural_polarizer", ch.profile, npd_epochs=npd_epochs, ft_epochs=ft_epochs,
                     clean_ratios=clean_ratios)
    for name, value in [("clean_ratio", clean_ratio),
                        *(("clean_ratios", r) for r in scale.clean_ratios),
                        *(("poison_ratios", r) for r in poison_ratios)]:
        check_range(name, value, low=0, high=1, low_open=True)
    settings = npd_.Settings(warm_epochs=scale.warm_epochs, epochs=scale.npd_epochs)
    ft_recipe = Recipe(epochs=scale.ft_epochs, batch_size=256, lr=0.01, schedule="cosine")
    return dict(settings=settings, ft_recipe=ft_recipe, seed=ch.seed), list(scale.clean_ratios)


def results(ch, *, attacks, ratio=0.1, target=0, clean_ratio=0.05, clean_ratios=None,
            poison_ratios=(0.1, 0.05, 0.01), sweep_attacks=("badnets", "blended"),
            npd_epochs=None, ft_epochs=None) -> SimpleNamespace:
    """Every experiment of the chapter: the victims, the main table's defenses and what they
    cost, the clean-data and poisoning sweeps, the ablation, and the claims' measures."""
    how, shares = setup(ch, npd_epochs=npd_epochs, ft_epochs=ft_epochs,
                        clean_ratios=clean_ratios, clean_ratio=clean_ratio,
                        poison_ratios=poison_ratios)
    p = profile(ch.profile, ch.dataset)
    image = datasets(ch.dataset, ch.data_dir, p.n_train, p.n_test, ch.seed)[1].images[0]
    victims = {name: trained_victim(**ch.victim_args(name, ratio, target)) for name in attacks}
    both = section(main_table, victims, clean_ratio, **how)
    main, polarized = both[0], both[1]          # indexed: a pending section is not unpacked
    cost = section(cost_table, main)
    by_data = section(clean_data_sweep, victims, sweep_attacks, shares, main, polarized,
                      clean_ratio, **how)
    by_poison = section(poisoning_sweep, victims, sweep_attacks, poison_ratios, main, polarized,
                        ratio=ratio, clean_ratio=clean_ratio, dataset=ch.dataset,
                        common=dict(target=target, seed=ch.seed, progress=False, **ch.setting),
                        **how)
    ablated = section(ablation, victims, sweep_attacks, main, polarized, clean_ratio,
                      image=image, **how)
    pictured = {name: features(npd=dict(victim=victims[name].asked, defense="NPD",
                                        share=clean_ratio, **how), n=500)
                for name in sweep_attacks}
    return SimpleNamespace(
        how=how, shares=shares, victims=victims, main=main, polarized=polarized, cost=cost,
        by_data=by_data, by_poison=by_poison, ablation=ablated, features=pictured,
        measured=section(claims, main, cost, by_data, shares, victims))


def measures(ch, *, attacks, ratio=0.1, target=0, clean_ratio=0.05, clean_ratios=None,
             poison_ratios=(0.1, 0.05, 0.01), sweep_attacks=("badnets", "blended"),
             npd_epochs=None, ft_epochs=None) -> dict:
    """What the Neural Polarizer page shows, as plain data (see `views.neural_polarizer`)."""
    r = results(ch, attacks=attacks, ratio=ratio, target=target, clean_ratio=clean_ratio,
                clean_ratios=clean_ratios, poison_ratios=poison_ratios,
                sweep_attacks=sweep_attacks, npd_epochs=npd_epochs, ft_epochs=ft_epochs)
    first = next(iter(r.victims.values()))
    clean = defender(first, clean_ratio, ch.seed)
    return {"main": rows(r.main), "defenses": DEFENSES,
            "defender": {"images": len(clean), "per_class": len(clean) // len(clean.classes),
                         "of": len(first.train), "share": clean_ratio},
            "loss": {name: list(p.loss) for name, p in r.polarized.items()},
            "diverged": diverged(r.polarized),
            "cost": {"columns": [list(c) for c in r.cost.columns], "index": list(r.cost.index),
                     "values": r.cost.to_numpy().tolist()},
            "clean_data": rows(r.by_data), "poisoning_ratio": rows(r.by_poison),
            "ablation": rows(r.ablation),
            "features": arrays(r.features),
            "shares": r.shares, "npd_epochs": r.how["settings"].epochs,
            "claims": r.measured, "model_and_recipe": ch.model_and_recipe(wanet="wanet" in attacks)}


def defender(v, share: float, seed: int) -> ImageSet:
    """The defender's class-balanced clean images: `share` of `v`'s training set, drawn as
    BackdoorBench draws them (clean originals of any training images)."""
    return v.clean_subset(round(share * len(v.train)), seed, balanced=True, untouched=False)


def run(defense: str, v, clean: ImageSet, *, settings: npd_.Settings, ft_recipe: Recipe,
        seed: int) -> tuple[dict, object]:
    """One defense of `v` on `clean`: its table row (scores, seconds, trained parameters; FP
    adds its pruned count) and the defense's own result (NPD's polarized model and losses).
    "FP" is BackdoorBench's, whose stopping rule reads the clean test set; "FP held-out" reads
    it on a fifth of the defender's clean images instead, ranking and fine-tuning on the rest."""
    if defense == "none":
        return {"defense": "none", **score_row(v), "seconds": None,
                "trained parameters": None}, None
    if defense == "NPD":
        result = npd_.npd(v.model, clean, settings, seed=seed, progress=False)
    elif defense == "FT":
        result = ft(v.model, clean, ft_recipe, seed=seed, progress=False)
    elif defense == "FP":
        result = fine_prune(v.model, clean, ft_recipe, stop_on=v.test, seed=seed, progress=False)
    else:
        held_out, rest = clean.split(0.2, seed)
        result = fine_prune(v.model, rest, ft_recipe, stop_on=held_out, seed=seed,
                            progress=False)
    row = {"defense": defense, **score_row(v, result.model), "seconds": result.seconds,
           "trained parameters": result.trainable}
    return (row | {"pruned": len(result.pruned)} if defense.startswith("FP") else row), result


def _rebuilt(kept: Kept, args: dict) -> tuple[dict, object]:
    """The row, and for NPD its result with the polarizer's kept weights in a fresh
    `Polarized` of the victim's model."""
    row = kept.record["row"]
    if args["defense"] != "NPD":
        return row, None
    net = npd_.Polarized(trained_victim(**args["victim"]).model)
    net.polarizer.load_state_dict(kept.tensors)
    r = kept.record
    return row, npd_.Result(net.eval(), r["trainable"], r["seconds"], r["loss"])


def _passes(args: dict) -> float:
    """Image passes: FT and FP one per image and epoch (FP adds its ranking and sweep); NPD
    its warm-up epochs, then per epoch one clean pass, its inner steps and three outer ones."""
    n = args["share"] * sizes(args["victim"])[0]
    s = args["settings"]
    if args["defense"] == "NPD":
        return n * (s.warm_epochs + s.epochs * (1 + s.inner_steps + 3))
    return n * (args["ft_recipe"].epochs + (2 if args["defense"].startswith("FP") else 0))


def _named(args: dict) -> str:
    v = args["victim"]
    s = args["settings"]
    return (f"{args['defense']} {v['attack']} {v['ratio']:g} on {args['share']:g} clean"
            + ("" if s.warm_epochs else ", no warm-up") + ("" if s.radius == 3.0 else
                                                           f", radius {s.radius:.2f}"))


@step("npd.defense", read=_rebuilt, work=_passes, describe=_named,
      needs=lambda args: [trained_victim.job(**args["victim"])])
def defended(victim: dict, defense: str, share: float, settings: npd_.Settings,
             ft_recipe: Recipe, seed: int) -> Kept:
    """`run(defense, ...)` on the victim asked for by `victim` with `share` of its training set
    as the defender's clean data; keeps the row, and NPD's polarizer and losses."""
    v = trained_victim(**victim)
    row, result = run(defense, v, defender(v, share, seed), settings=settings,
                      ft_recipe=ft_recipe, seed=seed)
    if defense != "NPD":
        return Kept(record={"row": row})
    return Kept(result.model.polarizer.state_dict(),
                {"row": row, "loss": result.loss, "trainable": result.trainable,
                 "seconds": result.seconds})


def main_table(victims: dict, clean_ratio: float, **how) -> tuple[pd.DataFrame, dict]:
    """Every defense against every attack on `clean_ratio` of clean data, and NPD's results."""
    kept = {(name, d): defended(victim=v.asked, defense=d, share=clean_ratio, **how)
            for name, v in victims.items() for d in DEFENSES if d != "none"}
    rows, polarized = [], {}
    for name, v in victims.items():
        for d in DEFENSES:
            row, result = run(d, v, None, **how) if d == "none" else kept[name, d]
            rows.append({"attack": name, **row})
            if d == "NPD":
                polarized[name] = result
    return pd.DataFrame(rows).set_index(["attack", "defense"]), polarized


def diverged(polarized: dict, above: float = 100.0) -> list[str]:
    """The attacks whose polarizer's training diverged (`unstable`)."""
    return [name for name, result in polarized.items() if unstable(result, above)]


def unstable(result: npd_.Result, above: float = 100.0) -> bool:
    """Whether the polarizer's outer loss ever went above `above` (or to NaN) after the
    warm-up: its four terms together stay below about 25 while the training is stable (the two
    cross-entropies near their starting values, the two log terms capped near 9.2)."""
    return not all(loss <= above for loss in result.loss)


def cost_table(main: pd.DataFrame) -> pd.DataFrame:
    """FT's and NPD's trained parameters and seconds per attack, and NPD's as a share of FT's."""
    cost = main.loc[(slice(None), ["FT", "NPD"]), ["trained parameters", "seconds"]]
    table = cost.unstack("defense")
    table[("NPD / FT", "parameters %")] = (100 * table[("trained parameters", "NPD")]
                                          / table[("trained parameters", "FT")])
    table[("NPD / FT", "time %")] = 100 * table[("seconds", "NPD")] / table[("seconds", "FT")]
    return table


def clean_data_sweep(victims: dict, attacks, shares, main: pd.DataFrame, polarized: dict,
                     clean_ratio: float, **how) -> pd.DataFrame:
    """NPD and FT per attack and share of clean data, and whether NPD's training diverged; the
    main table's share (and its NPD results, `polarized`) is reused."""
    kept = {(name, share, d): defended(victim=victims[name].asked, defense=d, share=share,
                                       **how)
            for name in attacks for share in shares if share != clean_ratio for d in ("FT", "NPD")}
    rows = []
    for name in attacks:
        for share in shares:
            if share == clean_ratio:
                found = [main.loc[(name, d)].to_dict() | {"defense": d} for d in ("FT", "NPD")]
                npd_result = polarized[name]
            else:
                found = [kept[name, share, d][0] for d in ("FT", "NPD")]
                npd_result = kept[name, share, "NPD"][1]
            found[1] = found[1] | {"diverged": unstable(npd_result)}
            rows += [{"attack": name, "clean %": 100 * share, **r} for r in found]
    return pd.DataFrame(rows).set_index(["attack", "clean %", "defense"])[METRICS + ["diverged"]]


def poisoning_sweep(victims: dict, attacks, ratios, main: pd.DataFrame, polarized: dict, *,
                    ratio: float, clean_ratio: float, dataset: str, common: dict,
                    **how) -> pd.DataFrame:
    """NPD on models poisoned at each of `ratios` (`victim(dataset, ..., **common)`), and
    whether its training diverged; the main table's ratio (and `polarized`) is reused."""
    others = {(name, share): trained_victim(dataset=dataset, attack=name, ratio=share, **common)
              for name in attacks for share in ratios if share != ratio}
    kept = {at: defended(victim=v.asked, defense="NPD", share=clean_ratio, **how)
            for at, v in others.items()}
    rows = []
    for name in attacks:
        for share in ratios:
            v = victims[name] if share == ratio else others[name, share]
            row, result = ((main.loc[(name, "NPD")].to_dict(), polarized[name]) if share == ratio
                           else kept[name, share])
            before = v.scores()
            rows.append({"attack": name, "poisoned %": 100 * share,
                         "CA before %": 100 * before["ca"], "ASR before %": 100 * before["asr"],
                         "CA after %": row["CA %"], "ASR after %": row["ASR %"],
                         "DER %": row["DER %"], "diverged": unstable(result)})
    return pd.DataFrame(rows).set_index(["attack", "poisoned %"])


def principal_axes(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean of `features` and their first two principal directions (D × 2)."""
    centred = features - features.mean(0)
    return features.mean(0), torch.linalg.svd(centred, full_matrices=False).Vh[:2].T


@step("npd.features", read=lambda kept, args: unpack(kept),
      needs=lambda a: [defended.job(**a["npd"])],
      describe=lambda a: f"features before and after NPD {a['npd']['victim']['attack']}")
def features(npd: dict, n: int) -> Kept:
    """`n` clean test images' and `n` triggered ones' last-layer features, drawn from the NPD
    job's seed, of its victim before and after its polarizer, on the backdoored model's first
    two principal axes; with the clean images' labels and the class names."""
    v = trained_victim(**npd["victim"])
    _, result = defended(**npd)
    clean_view = v.test.sample(min(n, len(v.test)), npd["seed"])
    triggered_view = v.backdoor.sample(min(n, len(v.backdoor)), npd["seed"])
    before = [lp.Pooled.of(v.model, d).features.cpu() for d in (clean_view, triggered_view)]
    centre, axes = principal_axes(torch.cat(before))
    after = [lp.Pooled.of(result.model.backbone, d).features.cpu()
             for d in (clean_view, triggered_view)]
    xy = {when: {"clean": (c - centre) @ axes, "triggered": (t - centre) @ axes}
          for when, (c, t) in (("backdoored", before), ("after NPD", after))}
    return pack({"labels": clean_view.labels.cpu(), "classes": list(clean_view.classes),
                 "backdoored": xy["backdoored"], "after NPD": xy["after NPD"]})


def variants(settings: npd_.Settings, image: torch.Tensor) -> dict[str, npd_.Settings]:
    """The reference, no warm-up, and the L2 radius scaled from 3×32×32 to `image`'s size,
    unless that is the reference's radius (on CIFAR-10 it is: the row would repeat it)."""
    radius = 3.0 * (image.numel() / 3072) ** 0.5
    kept = {"reference": settings, "no warm-up": dataclasses.replace(settings, warm_epochs=0)}
    if abs(radius - settings.radius) > 1e-6:
        kept[f"radius {radius:.2f}"] = dataclasses.replace(settings, radius=radius)
    return kept


def ablation(victims: dict, attacks, main: pd.DataFrame, polarized: dict, clean_ratio: float,
             *, settings: npd_.Settings, image: torch.Tensor, **how) -> pd.DataFrame:
    """NPD per attack and variant (`variants` of `settings` for images like `image`), and
    whether its training diverged; the reference's row is the main table's."""
    kept = {(name, variant): defended(victim=victims[name].asked, defense="NPD",
                                      share=clean_ratio, settings=s, **how)
            for name in attacks for variant, s in variants(settings, image).items()
            if variant != "reference"}
    rows = []
    for name in attacks:
        for variant in variants(settings, image):
            row, result = ((main.loc[(name, "NPD")].to_dict(), polarized[name])
                           if variant == "reference" else kept[name, variant])
            rows.append({"attack": name, "variant": variant, **{k: row[k] for k in METRICS},
                         "diverged": unstable(result)})
    return pd.DataFrame(rows).set_index(["attack", "variant"])


def claims(main: pd.DataFrame, cost: pd.DataFrame, by_data: pd.DataFrame, shares,
           attacks) -> dict[str, float]:
    """BackdoorBench's rows (none, FT, FP; NPD's too, for the record) and the claims' measures."""
    measured = {}
    for (name, defense), row in main.iterrows():
        for metric in ("CA", "ASR", "RA", "DER"):
            measured[f"{defense.lower()}.{name}.{metric.lower()}"] = row[f"{metric} %"]
    npd_rows = main.xs("NPD", level="defense").loc[[a for a in ("badnets", "blended")
                                                     if a in attacks]]
    drops = main.xs("none", level="defense")["CA %"] - main.xs("NPD", level="defense")["CA %"]
    if len(npd_rows):
        measured["npd_asr_max"] = npd_rows["ASR %"].max()
        measured["npd_ca_drop_max"] = drops.loc[npd_rows.index].max()
        measured["undefended_asr_min"] = main.xs("none", level="defense").loc[
            npd_rows.index, "ASR %"].min()
    measured["npd_parameter_share"] = cost[("NPD / FT", "parameters %")].max()
    scarce = [r for r in shares if r <= 0.005]
    if scarce:
        at = by_data.xs(100 * max(scarce), level="clean %")
        measured["npd_minus_ft_der_scarce"] = (at.xs("NPD", level="defense")["DER %"]
                                               - at.xs("FT", level="defense")["DER %"]).mean()
    return measured



"""The NONE chapter's experiments: NONE against ABL on injected backdoors, the abstract's average
ASR ratio, the filtering quality, the linearity picture, the ablation, and natural backdoors
measured by a bounded REASR scan; `measures` turns them into the plain data the page
(`views.none`) is drawn from."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from ..metrics import score_row
from .. import models
from ..config import ParameterError, check_range
from ..devices import resolve as resolve_device
from ..defenses import abl as abl_
from ..defenses import none as none_
from ..defenses import reasr
from ..jobs import Job, Kept, pack, step, unpack
from ..victims import sizes, trained_victim
from .plain import arrays, rows


def _needs_victim(args: dict) -> list[Job]:
    return [trained_victim.job(**args["victim"])]


def _repaired_copy(kept: Kept, args: dict) -> none_.Result:
    return unpack(kept, {".model": copy.deepcopy(trained_victim(**args["victim"]).model)})


@step("none.repair", read=_repaired_copy, needs=_needs_victim,
      work=lambda a: sizes(a["victim"])[0] * a["settings"].rounds * (a["settings"].epochs + 1),
      describe=lambda a: f"NONE {a['victim']['attack']} (f = {a['settings'].fraction:g})")
def repaired_by_none(victim: dict, settings: none_.Settings, augment: bool, seed: int) -> Kept:
    """NONE's repair of the victim asked for by `victim` (`none_.repair`)."""
    v = trained_victim(**victim)
    return pack(none_.repair(v.model, v.train, settings, augment=augment, seed=seed,
                           progress=False))


def _abl_model(kept: Kept, args: dict) -> abl_.Result:
    v = trained_victim(**args["victim"])
    skeleton = models.build(args["model_name"], len(v.train.classes), v.train.images.shape[1],
                            seed=args["seed"]).to(resolve_device(args.get("device", "auto")),
                                                  memory_format=torch.channels_last)
    return unpack(kept, {".model": skeleton.eval()})


def _abl_passes(args: dict) -> float:
    s = args["settings"]
    return sizes(args["victim"])[0] * (s.isolation_epochs + sum(s.finetune_epochs) + 1)


@step("none.abl", read=_abl_model, needs=_needs_victim, work=_abl_passes,
      describe=lambda a: f"ABL {a['victim']['attack']}")
def trained_by_abl(victim: dict, settings: abl_.Settings, model_name: str, seed: int,
             device="auto") -> Kept:
    """ABL trained on the victim's poisoned training set (`abl_.abl`)."""
    v = trained_victim(**victim)
    return pack(abl_.abl(model_name, v.train, settings, seed=seed, device=device,
                         progress=False))


def _previous_round(args: dict) -> list[Job]:
    if args["index"] == 1:
        return _needs_victim(args)
    return [natural_round.job(**{**args, "index": args["index"] - 1})]


@step("none.natural", read=_repaired_copy, needs=_previous_round,
      work=lambda a: sizes(a["victim"])[0] * (a["settings"].epochs + 1),
      describe=lambda a: f"NONE natural round {a['index']}")
def natural_round(victim: dict, settings: none_.Settings, index: int, augment: bool,
                  seed: int) -> Kept:
    """Round `index` (from 1) of NONE's natural setting on the clean model asked for by
    `victim`: one repair of the previous round's model, seeded `seed + index - 1`."""
    v = trained_victim(**victim)
    model = v.model if index == 1 else natural_round(
        victim=victim, settings=settings, index=index - 1, augment=augment, seed=seed).model
    return pack(none_.repair(model, v.train, settings, augment=augment, seed=seed + index - 1,
                           progress=False))


def results(ch, *, attacks, ratio=0.1, target=0, none_lr=0.01, none_epochs=None,
            abl_epochs=None, fractions=(0.01, 0.03, 0.05, 0.1, 0.2), natural_schedule=None,
            areas=(0.02,), scan_steps=None, fit_images=240) -> SimpleNamespace:
    """Every repair and ABL run of the chapter: the main table's, the ablation's (on BadNets,
    or the first attack) and the natural rounds on the clean model; the main table.
    `fit_images`, the page's natural scan, is checked here with the rest, before any job."""
    check_range("fit_images", fit_images, low=1, integer=True)
    scale = ch.scale(none_epochs=none_epochs, abl_epochs=abl_epochs,
                     natural_schedule=natural_schedule, scan_steps=scan_steps)
    augment = ch.recipe.augment
    repair, isolation, natural_settings, rounds = settings(
        scale, none_lr=none_lr, augment=augment, fractions=fractions, areas=areas)
    victims = {name: trained_victim(**ch.victim_args(name, ratio, target)) for name in attacks}
    isolated = {name: trained_by_abl(victim=v.asked, settings=isolation, model_name=ch.model,
                                     seed=ch.seed, device=ch.device)
                for name, v in victims.items()}
    repaired = {name: repaired_by_none(victim=v.asked, settings=repair, augment=augment,
                                       seed=ch.seed) for name, v in victims.items()}
    probe = "badnets" if "badnets" in victims else attacks[0]
    kind = models.build(ch.model, 10, 3)          # variants() looks only at the model's type
    variants = none_.variants(repair, fractions, kind)
    ablated = {variant: repaired_by_none(victim=victims[probe].asked, settings=s,
                                         augment=augment, seed=ch.seed)
               for variant, s in variants.items()}
    clean = trained_victim(**ch.victim_args(None, target=target))
    round_args = [dict(victim=clean.asked, settings=natural_settings, index=r + 1,
                       augment=augment, seed=ch.seed) for r in range(rounds)]
    natural_rounds = [natural_round(**a) for a in round_args]
    main, filtered = main_table(victims, isolated, repaired)
    return SimpleNamespace(
        scale=scale, augment=augment, settings=repair, rounds=rounds, victims=victims,
        isolated=isolated, repaired=repaired, probe=probe, variants=variants, ablated=ablated,
        clean=clean, natural_rounds=natural_rounds, round_args=round_args, main=main,
        filtered=filtered)


def measures(ch, *, attacks, ratio=0.1, target=0, none_lr=0.01, none_epochs=None,
             abl_epochs=None, fractions=(0.01, 0.03, 0.05, 0.1, 0.2), natural_schedule=None,
             areas=(0.02,), scan_steps=None, fit_images=240) -> dict:
    """What the NONE page shows, as plain data (see `views.none`)."""
    r = results(ch, attacks=attacks, ratio=ratio, target=target, none_lr=none_lr,
                none_epochs=none_epochs, abl_epochs=abl_epochs, fractions=fractions,
                natural_schedule=natural_schedule, areas=areas, scan_steps=scan_steps,
                fit_images=fit_images)
    v = r.victims[r.probe]
    picture = linearity(victim=v.asked)
    scans, accuracy, ratio_natural = natural(
        r.clean, r.natural_rounds, r.round_args, areas=areas, scan_steps=r.scale.scan_steps,
        check_images=r.scale.check_images, fit_images=fit_images, seed=ch.seed)
    ratios = ratio_table(r.main, r.victims)
    return {"main": rows(r.main), "filtering": rows(r.filtered), "asr_ratio": rows(ratios),
            "scores": {name: {"scores": arrays(x.rounds[0].scores),
                              "poisoned": arrays(r.victims[name].poison_indices),
                              "threshold": float(x.rounds[0].threshold)}
                       for name, x in r.repaired.items()},
            "probe": r.probe, "linearity": arrays(picture),
            "ablation": rows(ablation(v, r.variants, r.ablated)), "variants": list(r.variants),
            "natural": rows(scans), "natural_accuracy": rows(accuracy),
            "natural_ratio": ratio_natural, "rounds": r.rounds,
            "training_images": len(v.train),
            "claims": claims(r.main, ratios, ratio_natural),
            "model_and_recipe": ch.model_and_recipe(wanet="wanet" in attacks)}


def settings(scale, *, none_lr: float, augment: bool, fractions, areas):
    """NONE's, ABL's and the natural setting's settings, and the natural rounds, from the
    chapter's scale knobs (`abl_epochs`: isolation, at lr, at lr / 10, unlearning;
    `natural_schedule`: rounds, epochs per round), each checked."""
    abl_epochs, schedule = list(scale.abl_epochs), list(scale.natural_schedule)
    if len(abl_epochs) != 4 or len(schedule) != 2:
        raise ParameterError(f"abl_epochs={abl_epochs} must have 4 entries and "
                             f"natural_schedule={schedule} 2")
    for name, values in (("fractions", fractions), ("areas", areas)):
        for value in values:
            check_range(name, value, low=0, high=1, low_open=True)
    rounds, round_epochs = schedule
    check_range("rounds", rounds, low=1, integer=True)
    repair = none_.Settings(lr=none_lr, epochs=scale.none_epochs, warmup=True)
    isolation = abl_.Settings(isolation_epochs=abl_epochs[0],
                              finetune_epochs=tuple(abl_epochs[1:3]),
                              unlearning_epochs=abl_epochs[3], augment=augment)
    natural = none_.Settings(fraction=0.2, drop=False, lr=none_lr, epochs=round_epochs,
                             warmup=True)
    return repair, isolation, natural, rounds


def row(v, model, defense: str, seconds=None, diverged: bool = False) -> dict:
    """A defense's row: CA, ASR and RA in percent, its seconds and whether it diverged."""
    return {"defense": defense, **score_row(v, model, with_der=False),
            "seconds": seconds, "diverged": diverged}


def main_table(victims: dict, isolated: dict, repaired: dict
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per attack: no defense, ABL (`isolated`, a fresh model) and NONE (`repaired`, the victim
    repaired); the main table and the filtering table (NONE's Jenks drop, ABL's isolated
    images)."""
    rows, filter_rows = [], []
    for name, v in victims.items():
        rows.append({"attack": name, **row(v, v.model, "no defense")})
        rows.append({"attack": name, **row(v, isolated[name].model, "ABL",
                                           isolated[name].seconds)})
        rows.append({"attack": name, **row(v, repaired[name].model, "NONE",
                                           repaired[name].seconds, repaired[name].diverged)})
        n = len(v.train)
        filter_rows.append({"attack": name, "defense": "NONE (Jenks drop)", **none_.filtering(
            repaired[name].rounds[0].dropped, v.poison_indices, n)})
        filter_rows.append({"attack": name, "defense": "ABL (isolated 1 %)", **none_.filtering(
            isolated[name].isolated, v.poison_indices, n)})
    return (pd.DataFrame(rows).set_index(["attack", "defense"]),
            pd.DataFrame(filter_rows).set_index(["attack", "defense"]))


def asr_ratios(main: pd.DataFrame, victims: dict, defense: str) -> dict[str, float]:
    """Undefended ASR over `defense`'s, read both ways: the ratio of the mean ASRs and the
    geometric mean of the per-attack ratios; an ASR of 0 counts as one triggered image."""
    before = main.xs("no defense", level="defense")["ASR %"]
    after = main.xs(defense, level="defense")["ASR %"]
    floor = pd.Series({name: 100 / len(v.backdoor) for name, v in victims.items()})
    per_attack = before / np.maximum(after, floor)
    return {"mean ASR before %": before.mean(), "mean ASR after %": after.mean(),
            "ratio of means": before.mean() / max(after.mean(), floor.min()),
            "geometric mean of ratios": math.exp(np.log(per_attack).mean()),
            "paper (NONE, injected)": 54.83}


def ratio_table(main: pd.DataFrame, victims: dict) -> pd.DataFrame:
    return pd.DataFrame({d: asr_ratios(main, victims, d) for d in ("ABL", "NONE")}).T.rename_axis(
        "defense")


@step("none.linearity", read=lambda kept, args: unpack(kept), needs=_needs_victim,
      work=lambda a: sizes(a["victim"])[0] + 10 * a.get("per_class", 30) * a.get("steps", 11),
      describe=lambda a: f"NONE linearity picture {a['victim']['attack']}")
def linearity(victim: dict, per_class: int = 30, steps: int = 11) -> Kept:
    """The most suspicious channel of the last monitored layer (top NONE score) of the victim
    asked for by `victim`, and a benign one (median score): each class's mean peak activation
    on `per_class` test images of the class blended towards their triggered versions,
    x_α = (1 − α)·x + α·T(x), at `steps` values of α (α × classes × the two channels); and the
    suspicious channel's peaks on the training images the model is sure are (S, p > 0.9) and
    are not (W, p < 0.1) the target."""
    v = trained_victim(**victim)
    acts = none_.activations(v.model, v.train)
    score = none_.neuron_scores(acts)
    layer = list(score)[-1]
    order = score[layer].argsort(descending=True)
    channels = {"suspicious": int(order[0]), "benign": int(order[len(order) // 2])}
    chosen = torch.cat([(v.test.labels == k).nonzero().flatten()[:per_class]
                        for k in range(len(v.test.classes))])
    images, labels = v.test.images[chosen], v.test.labels[chosen].cpu()
    alphas = torch.linspace(0, 1, steps)
    triggered = v.attack.apply(images).float()
    peaks = torch.stack([none_.activations(v.model, v.test.with_images(
        ((1 - a) * images.float() + a * triggered).round().to(torch.uint8), labels)).peaks[layer]
        .cpu() for a in alphas])                                  # α × images × channels
    pair = list(channels.values())
    curves = torch.stack([peaks[:, labels == k][:, :, pair].mean(1)
                          for k in range(len(v.test.classes))], 1)
    sure = acts.probs[:, v.target].cpu()
    suspicious = acts.peaks[layer][:, channels["suspicious"]].cpu()
    return pack({"layer": layer, "channels": channels,
                 "scores": {k: float(score[layer][c]) for k, c in channels.items()},
                 "alphas": alphas, "curves": curves, "classes": list(v.test.classes),
                 "target": v.target, "sure": suspicious[sure > 0.9],
                 "unsure": suspicious[sure < 0.1]})


def ablation(v, variants: dict, ablated: dict) -> pd.DataFrame:
    """NONE on `v` under each of `variants` (`ablated`: each one's result)."""
    rows = []
    for variant, s in variants.items():
        result = ablated[variant]
        scores = {k: x for k, x in row(v, result.model, "NONE", diverged=result.diverged).items()
                  if k != "defense"}
        rows.append({"variant": variant, "fraction": s.fraction, **scores,
                     "seconds": result.seconds,
                     "reset channels": sum(len(c) for c in result.rounds[0].chosen.values()),
                     "dropped": len(result.rounds[0].dropped)})
    return pd.DataFrame(rows).set_index("variant")


def _needs_model(args: dict) -> list[Job]:
    if args["after_round"] is None:
        return [trained_victim.job(**args["clean"])]
    return [natural_round.job(**args["after_round"])]


@step("none.scan", read=lambda kept, args: kept.record, needs=_needs_model,
      work=lambda a: len(a["areas"]) * a["scan_steps"] * 24 * 10,
      describe=lambda a: "REASR scan, " + ("standard model" if a["after_round"] is None else
                                           f"NONE natural round {a['after_round']['index']}"))
def scanned(clean: dict, after_round: dict | None, areas: list, scan_steps: int,
            check_images: int, fit_images: int, seed: int) -> Kept:
    """The clean model asked for by `clean` (or, with `after_round`, that NONE natural round's
    model) scanned by bounded REASR at each of `areas`, its triggers fitted on `fit_images` test
    images and measured on up to `check_images` others (both drawn from `seed`); with its CA
    and how many images the triggers were measured on."""
    c = trained_victim(**clean)
    model = c.model if after_round is None else natural_round(**after_round).model
    order = torch.randperm(len(c.test), generator=torch.Generator().manual_seed(seed))
    fit = c.test.subset(order[:fit_images])
    check = c.test.subset(order[fit_images:fit_images + check_images])
    found = [{"area %": 100 * a, "max REASR %": 100 * s.max, "label": s.label}
             for a in areas for s in [reasr.scan(model, fit, check, a, steps=scan_steps,
                                                 seed=seed)]]
    return Kept(record={"scans": found, "ca": 100 * c.scores(model)["ca"],
                        "checked": len(check)})


def natural(clean, natural_rounds: list, round_args: list[dict], *, areas, scan_steps: int,
            check_images: int, seed: int, fit_images: int = 240):
    """The clean model scanned by bounded REASR at every area (`scanned`), then each of
    `natural_rounds` (NONE's natural setting, round after round, asked for by `round_args`):
    the scans per (model, area), CA per model, and the ratio of the standard model's REASR to
    the last round's."""
    check_range("fit_images", fit_images, low=1, high=len(clean.test) - 1, integer=True)
    how = dict(clean=clean.asked, areas=list(areas), scan_steps=scan_steps,
               check_images=check_images, fit_images=fit_images, seed=seed)
    states = [("standard", None, None), *((f"NONE round {i + 1}", a, result) for i, (a, result)
                                          in enumerate(zip(round_args, natural_rounds)))]
    scans, accuracy, spent = [], [], 0.0
    for state, after_round, result in states:
        found = scanned(after_round=after_round, **how)
        spent += result.seconds if result else 0.0
        scans += [{"model": state, **row} for row in found["scans"]]
        accuracy.append({"model": state, "CA %": found["ca"], "seconds": spent,
                         "diverged": result.diverged if result else False})
    scans = pd.DataFrame(scans).set_index(["model", "area %"])
    return (scans, pd.DataFrame(accuracy).set_index("model"),
            natural_ratio(scans, len(natural_rounds), found["checked"]))


def natural_ratio(scans: pd.DataFrame, rounds: int, checked: int) -> dict[str, float]:
    """The standard model's max REASR over the last round's, across areas, read both ways; a
    REASR of 0 counts as one of the `checked` images."""
    standard = scans.loc["standard", "max REASR %"]
    final = scans.loc[f"NONE round {rounds}", "max REASR %"]
    return {"ratio of means": standard.mean() / max(final.mean(), 1e-9),
            "geometric mean of ratios": math.exp(np.log(
                standard / final.clip(lower=100 / checked)).mean()),
            "paper (NONE, natural)": 1.75}


def claims(main: pd.DataFrame, ratios: pd.DataFrame, natural_ratios: dict) -> dict[str, float]:
    measured = {"ratio.injected": ratios.loc["NONE", "ratio of means"],
                "ratio.natural": natural_ratios["ratio of means"],
                "none_asr_ratio_injected": ratios.loc["NONE", "ratio of means"],
                "none_asr_ratio_natural": natural_ratios["ratio of means"],
                "none_minus_abl_asr": (main.xs("NONE", level="defense")["ASR %"].mean()
                                       - main.xs("ABL", level="defense")["ASR %"].mean()),
                "undefended_asr_min": main.xs("no defense", level="defense")["ASR %"].min()}
    if "badnets" in main.index.get_level_values("attack"):
        measured["none_badnets_asr"] = main.loc[("badnets", "NONE"), "ASR %"]
        measured["undefended_asr_badnets"] = main.loc[("badnets", "no defense"), "ASR %"]
        measured["none_badnets_ca_drop"] = (main.loc[("badnets", "no defense"), "CA %"]
                                            - main.loc[("badnets", "NONE"), "CA %"])
    return measured



"""The NONE chapter's experiments: NONE against ABL on injected backdoors, the abstract's average
ASR ratio, the filtering quality, the linearity picture, the ablation, and natural backdoors
measured by a bounded REASR scan."""
from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from ..metrics import score_row
from .. import models, plots
from ..config import ParameterError, check_range
from ..devices import resolve as resolve_device
from ..defenses import abl as abl_
from ..defenses import none as none_
from ..defenses import reasr
from ..jobs import Job, Kept, pack, step, unpack
from ..victims import sizes, trained_victim

DEFENSES = ["no defense", "ABL", "NONE"]


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
    natural_rounds = [natural_round(victim=clean.asked, settings=natural_settings, index=r + 1,
                                    augment=augment, seed=ch.seed) for r in range(rounds)]
    main, filtered = main_table(victims, isolated, repaired)
    return SimpleNamespace(
        scale=scale, augment=augment, settings=repair, rounds=rounds, victims=victims,
        isolated=isolated, repaired=repaired, probe=probe, variants=variants, ablated=ablated,
        clean=clean, natural_rounds=natural_rounds, main=main, filtered=filtered)


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


def main_view(main: pd.DataFrame, attacks) -> pd.DataFrame:
    return main[["CA %", "ASR %", "RA %"]].unstack("defense").reindex(
        columns=DEFENSES, level="defense").reindex(list(attacks))


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


def score_figure(repaired: dict, victims: dict):
    """NONE's per-image scores of clean and poisoned training images, with the Jenks break."""
    fig, axes = plots.grid(len(victims), size=(2.25, 2.2))
    for ax, (name, v) in zip(axes, victims.items()):
        first = repaired[name].rounds[0]
        poisoned = torch.zeros(len(v.train), dtype=torch.bool)
        poisoned[v.poison_indices.cpu()] = True
        bins = np.linspace(first.scores.min().item(), first.scores.max().item(), 60)
        ax.hist(first.scores[~poisoned].numpy(), bins=bins, color="C0", alpha=0.7, label="clean")
        ax.hist(first.scores[poisoned].numpy(), bins=bins, color="C3", alpha=0.7,
                label="poisoned")
        ax.axvline(first.threshold, color="k", ls="--", lw=1, label="Jenks break")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("sample score")
    axes[0].set_ylabel("training images")
    axes[0].legend()
    fig.tight_layout()
    return fig


def linearity(v, per_class: int = 30, steps: int = 11) -> dict:
    """The most suspicious channel of the last monitored layer (top NONE score) and a benign one
    (median score): their mean peak activation, per class, on `per_class` test images of each
    class blended towards their triggered versions, x_α = (1 − α)·x + α·T(x); and what the
    score reads on the training set."""
    acts = none_.activations(v.model, v.train)
    score = none_.neuron_scores(acts)
    layer = list(score)[-1]
    order = score[layer].argsort(descending=True)
    channels = {"suspicious": int(order[0]), "benign": int(order[len(order) // 2])}
    chosen = torch.cat([(v.test.labels == k).nonzero().flatten()[:per_class]
                        for k in range(len(v.test.classes))])
    images, labels = v.test.images[chosen], v.test.labels[chosen]
    alphas = torch.linspace(0, 1, steps)
    triggered = v.attack.apply(images).float()
    curves = torch.stack([none_.activations(v.model, v.test.with_images(
        ((1 - a) * images.float() + a * triggered).round().to(torch.uint8), labels)).peaks[layer]
        .cpu() for a in alphas])                                  # α × images × channels
    return {"acts": acts, "score": score, "layer": layer, "channels": channels, "labels": labels,
            "alphas": alphas, "curves": curves}


def linearity_figure(v, picture: dict):
    """Per channel, each class's mean peak against α; then the suspicious channel's peaks on
    the training images the model is sure are (S) and are not (W) the target class."""
    layer, labels, curves = picture["layer"], picture["labels"], picture["curves"]
    fig, axes = plots.grid(4, cols=2, size=(3.4, 2.6))
    for ax, (kind, c) in zip(axes, picture["channels"].items()):
        for k in range(len(v.test.classes)):
            ax.plot(picture["alphas"], curves[:, labels == k, c].mean(1), color=plt.cm.tab10(k),
                    lw=1.2, label=v.test.classes[k])
        ax.set_title(f"{kind}: {layer} channel {c} (score {picture['score'][layer][c]:.2f})",
                     fontsize=8)
        ax.set_xlabel("α (0: clean, 1: triggered)")
    axes[0].set_ylabel("peak activation (pre-BN)")
    axes[3].axis("off")
    axes[3].legend(*axes[1].get_legend_handles_labels(), ncol=2, loc="center",
                   title="test images of class")
    a = picture["acts"].peaks[layer][:, picture["channels"]["suspicious"]].cpu()
    p = picture["acts"].probs[:, v.target].cpu()
    bins = np.linspace(a.min().item(), a.max().item(), 50)
    axes[2].hist(a[p < 0.1].numpy(), bins=bins, color="C0", alpha=0.7,
                 label=f"W: p_{v.target} < 0.1")
    axes[2].hist(a[p > 0.9].numpy(), bins=bins, color="C3", alpha=0.7,
                 label=f"S: p_{v.target} > 0.9")
    axes[2].set_yscale("log")
    axes[2].set_title(f"suspicious channel, target class {v.target}", fontsize=8)
    axes[2].set_xlabel("peak activation")
    axes[2].legend()
    fig.tight_layout()
    return fig


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


def ablation_figure(ablated: pd.DataFrame, fractions, undefended_ba: float, title: str):
    sweep = ablated.loc[[f"f = {f:g}" for f in fractions]]
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    ax.plot(sweep["fraction"] * 100, sweep["ASR %"], "o-", color="C3", label="ASR")
    ax.plot(sweep["fraction"] * 100, sweep["CA %"], "o-", color="C0", label="CA")
    ax.axhline(undefended_ba, color="C0", ls=":", label="CA, no defense")
    ax.set_xscale("log")
    ax.set_xlabel("channels reset per layer, %")
    ax.set_ylabel("%")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    return fig


def natural(clean, natural_rounds: list, *, areas, scan_steps: int, check_images: int,
            seed: int, fit_images: int = 240):
    """The clean model scanned by bounded REASR at every area, then each of `natural_rounds`
    (NONE's natural setting, round after round): the scans per (model, area), CA per model,
    and the ratio of the standard model's REASR to the last round's. Triggers are fitted on
    `fit_images` test images and measured on up to `check_images` others."""
    check_range("fit_images", fit_images, low=1, high=len(clean.test) - 1, integer=True)
    order = torch.randperm(len(clean.test), generator=torch.Generator().manual_seed(seed))
    fit = clean.test.subset(order[:fit_images])
    check = clean.test.subset(order[fit_images:fit_images + check_images])

    def scanned(model, state):
        return [{"model": state, "area %": 100 * a, "max REASR %": 100 * s.max, "label": s.label}
                for a in areas
                for s in [reasr.scan(model, fit, check, a, steps=scan_steps, seed=seed)]]

    scans = scanned(clean.model, "standard")
    accuracy = [{"model": "standard", "CA %": 100 * clean.scores()["ca"], "seconds": 0.0,
                 "diverged": False}]
    spent = 0.0
    for r, result in enumerate(natural_rounds):
        model, spent = result.model, spent + result.seconds
        scans += scanned(model, f"NONE round {r + 1}")
        accuracy.append({"model": f"NONE round {r + 1}", "CA %": 100 * clean.scores(model)["ca"],
                         "seconds": spent, "diverged": result.diverged})
    scans = pd.DataFrame(scans).set_index(["model", "area %"])
    return (scans, pd.DataFrame(accuracy).set_index("model"),
            natural_ratio(scans, len(natural_rounds), len(check)))


def natural_ratio(scans: pd.DataFrame, rounds: int, checked: int) -> dict[str, float]:
    """The standard model's max REASR over the last round's, across areas, read both ways; a
    REASR of 0 counts as one of the `checked` images."""
    standard = scans.loc["standard", "max REASR %"]
    final = scans.loc[f"NONE round {rounds}", "max REASR %"]
    return {"ratio of means": standard.mean() / max(final.mean(), 1e-9),
            "geometric mean of ratios": math.exp(np.log(
                standard / final.clip(lower=100 / checked)).mean()),
            "paper (NONE, natural)": 1.75}


def natural_figure(scans: pd.DataFrame, rounds: int):
    standard = scans.loc["standard", "max REASR %"]
    fig, ax = plt.subplots(figsize=(4.8, 2.9))
    ax.plot(standard.index, standard, "o-", color="k", label="standard training")
    for r in range(1, rounds + 1):
        curve = scans.loc[f"NONE round {r}", "max REASR %"]
        ax.plot(curve.index, curve, "o-", color=plt.cm.Reds(0.35 + 0.65 * r / rounds), lw=1,
                label=f"NONE round {r}")
    ax.set_xlabel("trigger area bound, % of the image")
    ax.set_ylabel("max REASR %")
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    return fig


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


def summary(main: pd.DataFrame, filtered: pd.DataFrame, ratios: pd.DataFrame, scans, accuracy,
            natural_ratios: dict, rounds: int, attacks) -> list[str]:
    lines = []
    for name in attacks:
        a = main.loc[name]
        q = filtered.loc[(name, "NONE (Jenks drop)")]
        lines.append(
            f"**{name}**: ASR {a.loc['no defense', 'ASR %']:.1f} % → ABL "
            f"{a.loc['ABL', 'ASR %']:.1f} % / NONE {a.loc['NONE', 'ASR %']:.1f} %; CA "
            f"{a.loc['no defense', 'CA %']:.2f} % → ABL {a.loc['ABL', 'CA %']:.2f} % / NONE "
            f"{a.loc['NONE', 'CA %']:.2f} %; NONE dropped {q['flagged']:.0f} images (precision "
            f"{q['precision %']:.1f} %, recall {q['recall %']:.1f} %)"
            + ("; NONE's fine-tuning diverged, so the defender kept the backdoored model"
               if a.loc['NONE', 'diverged'] else "") + ".")
    lines.append(f"Average ASR ratio, NONE: {ratios.loc['NONE', 'ratio of means']:.2f}× (ratio of "
                 f"means), {ratios.loc['NONE', 'geometric mean of ratios']:.2f}× (geometric "
                 f"mean); ABL: {ratios.loc['ABL', 'ratio of means']:.2f}×, "
                 f"{ratios.loc['ABL', 'geometric mean of ratios']:.2f}×. Paper: 54.83×.")
    standard = scans.loc["standard", "max REASR %"]
    final = scans.loc[f"NONE round {rounds}", "max REASR %"]
    lines.append(f"Natural backdoors: mean max REASR {standard.mean():.1f} % (standard) → "
                 f"{final.mean():.1f} % after {rounds} NONE round(s), "
                 f"{natural_ratios['ratio of means']:.2f}×; CA {accuracy['CA %'].iloc[0]:.2f} % "
                 f"→ {accuracy['CA %'].iloc[-1]:.2f} %. Paper: 1.75×.")
    return lines

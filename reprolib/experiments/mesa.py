"""The MESA chapter's experiments: per 3×3 patch, a backdoor injected into the clean model, MESA's
generators and the baseline's reversed triggers, every retraining; then the β and α sweeps, the
trigger distributions, the retraining rate and the target-class detection."""
from __future__ import annotations

import dataclasses

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .. import plots
from ..attacks.patch import Patch
from ..attacks.patterns import pattern_classes
from ..config import Recipe
from ..data import ImageSet
from ..defenses import mesa
from ..train import evaluate
from ..victims import injected

METHODS = ["MESA β=0.9", "MESA β=0.8", "MESA β=0.5", "MESA ensemble", "baseline",
           "ideal (true patch)", "clean fine-tune", "no defense"]
MESA_METHODS = METHODS[:3]


def pattern_ids(n: int) -> list[int]:
    """Pattern 170 first, then `n` − 1 of the other classes in a fixed shuffled order."""
    others = [p for p in pattern_classes() if p != 170]
    order = torch.randperm(len(others), generator=torch.Generator().manual_seed(0))
    return [170, *[others[i] for i in order]][:n]


def patches(n_patterns: int, n_random: int, channels: int) -> dict[str, Patch]:
    """The chapter's patches by name: black-and-white pattern ids, then "random k"."""
    found = {str(i): Patch.black_and_white(i, channels) for i in pattern_ids(n_patterns)}
    found.update({f"random {k}": Patch.random(channels, draw=k) for k in range(n_random)})
    return found


def family(name: str) -> str:
    return "random" if name.startswith("random") else "black and white"


def scores(model, held_out: ImageSet, backdoor: ImageSet, target: int) -> dict[str, float]:
    s = evaluate(model, held_out, backdoor, target)
    return {"CA %": 100 * s["ca"], "ASR %": 100 * s["asr"]}


def entropy(generator, seed: int, n: int = 1000) -> float:
    return mesa.entropy(mesa.sample(generator, n, seed=seed))


@dataclasses.dataclass
class Defended:
    """One patch's run: its injected victim, MESA's search, the baseline's triggers, and the
    rows it adds to the defense and samples tables."""
    victim: object
    found: mesa.Search
    reversed: torch.Tensor
    rows: list[dict]
    samples: list[dict]


def defend_pattern(clean, name: str, patch: Patch, *, defender: ImageSet, held_out: ImageSet,
                   target: int, inject_rate: float, inject_recipe: Recipe, settings: mesa.Settings,
                   reverse_settings: mesa.ReverseSettings, retrain_recipe: Recipe, rate: float,
                   seed: int) -> Defended:
    """The backdoor of `patch` injected into `clean`'s model; MESA's generators and the
    baseline's reversed triggers searched on `defender`; the model retrained on each (and on
    the true patch, and on nothing); every model scored on `held_out`, and every sampler's
    entropy and trigger ASR measured."""
    v = injected(clean, patch, rate=inject_rate, target=target, recipe=inject_recipe, seed=seed,
                 progress=False)
    backdoor = patch.triggered(held_out, target)
    found = mesa.search(v.model, defender, target, settings, seed=seed)
    reversed_ = mesa.reverse(v.model, defender, target, reverse_settings, seed=seed)
    row = dict(pattern=name, family=family(name))
    rows = [{**row, "method": "no defense", "round": 0,
             **scores(v.model, held_out, backdoor, target)}]
    samplers = {"clean fine-tune": None, "ideal (true patch)": mesa.fixed(patch.tensor())}
    samplers.update({f"MESA β={b}": mesa.from_generator(g) for b, g in found.generators.items()})
    samplers["MESA ensemble"] = mesa.mixture(list(found.generators.values()))
    for method, triggers in samplers.items():
        tuned = mesa.retrain(v.model, defender, triggers, retrain_recipe, rate=rate, seed=seed)
        rows.append({**row, "method": method, "round": 0,
                     **scores(tuned, held_out, backdoor, target)})
    for r, trigger in enumerate(reversed_):
        tuned = mesa.retrain(v.model, defender, mesa.fixed(trigger), retrain_recipe, rate=rate,
                             seed=seed)
        rows.append({**row, "method": "baseline", "round": r,
                     **scores(tuned, held_out, backdoor, target)})
    samples = [{**row, "sampler": f"MESA β={b}", "entropy (nats)": entropy(g, seed),
                "trigger ASR %": 100 * mesa.trigger_asr(v.model, held_out,
                                                        mesa.from_generator(g), target, seed=seed)}
               for b, g in found.generators.items()]
    samples += [{**row, "sampler": f"baseline round {r}", "entropy (nats)": None,
                 "trigger ASR %": 100 * mesa.trigger_asr(v.model, held_out, mesa.fixed(trigger),
                                                         target, seed=seed)}
                for r, trigger in enumerate(reversed_)]
    return Defended(v, found, reversed_, rows, samples)


def attack_table(results: pd.DataFrame, clean_ca: float) -> pd.DataFrame:
    before = results[results.method == "no defense"].set_index("pattern")[
        ["family", "CA %", "ASR %"]]
    before["clean model CA %"] = clean_ca
    return before


def per_pattern(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pattern, each method's mean and standard deviation of the ASR over its rounds,
    sorted by the baseline's mean."""
    table = frame.groupby(["pattern", "method"])["ASR %"].agg(["mean", "std"]).unstack("method")
    return table.sort_values(("mean", "baseline"))


def defense_figure(results: pd.DataFrame, which: str, title: str, patches_: dict, channels: int):
    """ASR after retraining per pattern of family `which`, sorted by the baseline's mean (the
    paper's Fig. 4), each pattern drawn under its tick."""
    table = per_pattern(results[results.family == which])
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(max(4.5, 0.28 * len(x) + 2.5), 3.2))
    mean, std = table["mean", "baseline"], table["std", "baseline"]
    ax.fill_between(x, (mean - std).clip(lower=0), mean + std, color="0.8", label="baseline ± std")
    ax.plot(x, mean, "o-", color="0.45", lw=1, ms=3, label="baseline mean")
    for m, colour in zip(METHODS[:4], ["C0", "C1", "C2", "C3"]):
        ax.plot(x, table["mean", m], "o-", color=colour, lw=1, ms=3, label=m)
    ax.plot(x, table["mean", "ideal (true patch)"], "k--", lw=1, label="ideal (true patch)")
    ax.plot(x, table["mean", "clean fine-tune"], ":", color="0.3", lw=1, label="clean fine-tune")
    ax.set_xticks(x)
    ax.set_xticklabels([])
    plots.thumbnails(ax, [(i, -0.08) for i in x], torch.stack(
        [patches_[p].tensor() for p in table.index]), channels, zoom=3.5,
        xycoords=("data", "axes fraction"))
    ax.set_ylabel("ASR after retraining, %")
    ax.set_title(title)
    ax.legend(fontsize=6, loc="upper left", ncol=2)
    fig.tight_layout()
    return fig


def summary_table(results: pd.DataFrame) -> pd.DataFrame:
    """Per method, over the black-and-white patterns: lowest, mean and highest ASR, mean CA."""
    return (results[results.family == "black and white"].groupby("method")
            .agg(**{"lowest ASR %": ("ASR %", "min"), "mean ASR %": ("ASR %", "mean"),
                    "highest ASR %": ("ASR %", "max"), "mean CA %": ("CA %", "mean")})
            .reindex(METHODS))


def _frame(ax, xy) -> None:
    ax.set_xlim(xy[:, 0].min() - 0.3, xy[:, 0].max() + 0.3)
    ax.set_ylim(xy[:, 1].min() - 0.3, xy[:, 1].max() + 0.3)


def beta_figure(found: mesa.Search, embedding: str, seed: int, channels: int, n: int = 128):
    """`n` samples of each β's generator in one embedding, and each β's drawn as pictures."""
    betas = list(found.generators)
    draws = {b: mesa.sample(g, n, seed=seed) for b, g in found.generators.items()}
    xy = plots.embed(torch.cat(list(draws.values())), embedding, seed=seed)
    fig, axes = plt.subplots(1, 1 + len(betas), figsize=(3.0 * (1 + len(betas)), 3.0))
    for i, b in enumerate(betas):
        part = xy[n * i:n * (i + 1)]
        axes[0].scatter(*part.T, s=6, color=f"C{i}", label=f"β = {b}")
        _frame(axes[1 + i], xy)
        plots.thumbnails(axes[1 + i], part[:40], draws[b][:40], channels, zoom=2.5)
        axes[1 + i].set_title(f"β = {b}")
    axes[0].legend(fontsize=7)
    axes[0].set_title("all samples")
    fig.tight_layout()
    return fig


def beta_table(samples: pd.DataFrame) -> pd.DataFrame:
    return samples[samples.sampler.str.startswith("MESA")].pivot_table(
        index="sampler", values=["entropy (nats)", "trigger ASR %"], aggfunc="mean")


def alpha_sweep(v, found: mesa.Search, alphas, *, defender: ImageSet, held_out: ImageSet,
                target: int, settings: mesa.Settings, seed: int) -> tuple[dict, pd.DataFrame]:
    """A β = 0.9 generator per entropy weight α (the one at `settings.alpha` is `found`'s), and
    each one's entropy and trigger ASR."""
    by_alpha = {}
    for a in alphas:
        if a == settings.alpha:
            by_alpha[a] = found.generators[0.9]
        else:
            swept = dataclasses.replace(settings, betas=(0.9,), alpha=a)
            by_alpha[a] = mesa.search(v.model, defender, target, swept, seed=seed).generators[0.9]
    table = pd.DataFrame([
        {"α": a, "entropy (nats)": entropy(g, seed),
         "trigger ASR %": 100 * mesa.trigger_asr(v.model, held_out, mesa.from_generator(g),
                                                 target, seed=seed)}
        for a, g in by_alpha.items()]).set_index("α")
    return by_alpha, table


def alpha_figure(by_alpha: dict, embedding: str, seed: int, channels: int, n: int = 128):
    draws = {a: mesa.sample(g, n, seed=seed) for a, g in by_alpha.items()}
    xy = plots.embed(torch.cat(list(draws.values())), embedding, seed=seed)
    fig, axes = plt.subplots(1, len(draws), figsize=(3.0 * len(draws), 3.0), squeeze=False)
    for i, a in enumerate(draws):
        ax = axes[0, i]
        _frame(ax, xy)
        plots.thumbnails(ax, xy[n * i:n * i + 40], draws[a][:40], channels, zoom=2.5)
        ax.set_title(f"α = {a:g}")
    fig.tight_layout()
    return fig


def distribution_figure(runs: dict, patches_: dict, embedding: str, seed: int, channels: int,
                        n: int = 128):
    """For up to four black-and-white patterns: MESA's samples (every β) in one embedding with
    the original patch (red frame) and the baseline's reversed triggers (black frames)."""
    shown = [p for p in patches_ if family(p) == "black and white"][:4]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3.1), squeeze=False)
    for ax, name in zip(axes[0], shown):
        found, reversed_ = runs[name].found, runs[name].reversed
        cloud = torch.cat([mesa.sample(g, n, seed=seed) for g in found.generators.values()])
        original = patches_[name].tensor()[None]
        xy = plots.embed(torch.cat([cloud, reversed_.cpu(), original]), embedding, seed=seed)
        for i, b in enumerate(found.generators):
            ax.scatter(*xy[n * i:n * (i + 1)].T, s=5, color=f"C{i}", alpha=0.6, label=f"β = {b}")
        ax.update_datalim(xy)                   # the thumbnails' points too
        ax.margins(0.12)
        ax.autoscale_view()
        plots.thumbnails(ax, xy[len(cloud):len(cloud) + len(reversed_)], reversed_, channels,
                         zoom=2.5, frame="k")
        plots.thumbnails(ax, xy[-1:], original, channels, zoom=3.5, frame="red")
        ax.set_title(f"pattern {name}")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return fig


def rate_sensitivity(run: Defended, name: str, patch: Patch, results: pd.DataFrame, rates, *,
                     rate: float, defender: ImageSet, held_out: ImageSet, target: int,
                     retrain_recipe: Recipe, seed: int) -> pd.DataFrame:
    """For pattern `name`, the ensemble and the baseline's worst restart retrained with a
    trigger on each share `rates` of the images (the chapter's own `rate` read from `results`),
    and clean fine-tuning for reference."""
    backdoor = patch.triggered(held_out, target)
    mine = results[results.pattern == name]
    at_rate = mine.set_index(["method", "round"])["ASR %"]
    worst = int(at_rate["baseline"].idxmax())
    rows = [{"rate": rate, "method": "MESA ensemble", "ASR %": at_rate["MESA ensemble", 0]},
            {"rate": rate, "method": f"baseline round {worst}", "ASR %": at_rate["baseline", worst]}]
    for r in rates:
        for m, triggers in (("MESA ensemble", mesa.mixture(list(run.found.generators.values()))),
                            (f"baseline round {worst}", mesa.fixed(run.reversed[worst]))):
            tuned = mesa.retrain(run.victim.model, defender, triggers, retrain_recipe, rate=r,
                                 seed=seed)
            rows.append({"rate": r, "method": m, **scores(tuned, held_out, backdoor, target)})
    table = pd.DataFrame(rows).pivot_table(index="rate", columns="method", values="ASR %")
    table["clean fine-tune"] = mine[mine.method == "clean fine-tune"]["ASR %"].item()
    return table


def detection(model, defender: ImageSet, held_out: ImageSet, settings: mesa.Settings, *,
              seed: int) -> pd.DataFrame:
    """Per candidate class, the held-out ASR of a β = 0.9 generator searched for it."""
    found = mesa.detect(model, defender, held_out, dataclasses.replace(settings, betas=(0.9,)),
                        seed=seed)
    return pd.DataFrame({"class": list(found), "name": [held_out.classes[k] for k in found],
                         "generated-trigger ASR %": [100 * a for a in found.values()]}
                        ).set_index("class")


def detection_figure(detected: pd.DataFrame, target: int):
    fig, ax = plt.subplots(figsize=(4.8, 2.6))
    ax.bar(detected.index, detected["generated-trigger ASR %"],
           color=["C3" if k == target else "C0" for k in detected.index])
    ax.set_xticks(detected.index)
    ax.set_xlabel("candidate target class")
    ax.set_ylabel("generated-trigger ASR %")
    fig.tight_layout()
    return fig


def claims(results: pd.DataFrame, samples: pd.DataFrame, detected: pd.DataFrame,
           alpha_table: pd.DataFrame, clean_ca: float, target: int) -> dict[str, float]:
    """The paper's numbers and the claims' measures, over the black-and-white patterns."""
    bw = results[results.family == "black and white"]
    mesa_rows = bw[bw.method.isin(MESA_METHODS)]
    base_rows = bw[bw.method == "baseline"]
    attack_rows = bw[bw.method == "no defense"]
    entropies = samples[samples.family == "black and white"].pivot_table(
        index="pattern", columns="sampler", values="entropy (nats)")
    others = detected.drop(index=target)["generated-trigger ASR %"]
    measured = {
        "attack.asr.mean": attack_rows["ASR %"].mean(),
        "attack.asr.min": attack_rows["ASR %"].min(),
        "attack.asr.max": attack_rows["ASR %"].max(), "mesa.asr.min": mesa_rows["ASR %"].min(),
        "mesa.asr.max": mesa_rows["ASR %"].max(), "baseline.asr.min": base_rows["ASR %"].min(),
        "baseline.asr.max": base_rows["ASR %"].max(),
        "attack_asr_mean": attack_rows["ASR %"].mean(),
        "attack_ca_drop": clean_ca - attack_rows["CA %"].mean(),
        "mesa_minus_baseline_asr": mesa_rows["ASR %"].mean() - base_rows["ASR %"].mean(),
        "mesa_max_minus_baseline_max": mesa_rows["ASR %"].max() - base_rows["ASR %"].max(),
        "mesa_asr_max": mesa_rows["ASR %"].max(),
        "entropy_gap_beta": (entropies["MESA β=0.5"] - entropies["MESA β=0.9"]).mean(),
        "detection_margin": detected.loc[target, "generated-trigger ASR %"] - others.max()}
    alphas = list(alpha_table.index)
    if 0 in alphas and max(alphas) > 0:
        measured["entropy_gap_alpha"] = (alpha_table.loc[max(alphas), "entropy (nats)"]
                                         - alpha_table.loc[0, "entropy (nats)"])
    return measured


def summary(results: pd.DataFrame, summary_: pd.DataFrame, detected: pd.DataFrame,
            measured: dict, *, clean_ca: float, target: int, n_random: int,
            alphas) -> list[str]:
    attack_rows = results[(results.family == "black and white") & (results.method == "no defense")]
    lines = [f"Attack, {len(attack_rows)} black-and-white pattern(s): ASR "
             f"{attack_rows['ASR %'].min():.1f}–{attack_rows['ASR %'].max():.1f} % (mean "
             f"{attack_rows['ASR %'].mean():.1f} %), CA {attack_rows['CA %'].mean():.2f} % "
             f"against the clean model's {clean_ca:.2f} %. Paper: 92.3–99.8 % (mean 98.7 %)."]
    for m in METHODS[:-1]:
        s = summary_.loc[m]
        lines.append(f"After **{m}**: ASR {s['lowest ASR %']:.1f}–{s['highest ASR %']:.1f} % "
                     f"(mean {s['mean ASR %']:.1f} %), CA {s['mean CA %']:.2f} %.")
    lines.append("Paper: 1.2–5.9 % after MESA, 2.4–51.4 % after the baseline.")
    rnd = results[results.family == "random"].groupby("method")["ASR %"].mean()
    if len(rnd):
        lines.append(f"Random-colour patches ({n_random}): ASR {rnd['no defense']:.1f} % before; "
                     f"after MESA (β pooled) {rnd[MESA_METHODS].mean():.1f} %, ensemble "
                     f"{rnd['MESA ensemble']:.1f} %, baseline {rnd['baseline']:.1f} %, clean "
                     f"fine-tune {rnd['clean fine-tune']:.1f} %.")
    lines.append(f"Entropy of the samples, β = 0.5 minus β = 0.9: "
                 f"{measured['entropy_gap_beta']:.1f} nats"
                 + (f"; α = {max(alphas):g} minus α = 0: "
                    f"{measured['entropy_gap_alpha']:.1f} nats"
                    if "entropy_gap_alpha" in measured else "") + ".")
    others = detected.drop(index=target)["generated-trigger ASR %"]
    lines.append(f"Detection: class {target} reaches "
                 f"{detected.loc[target, 'generated-trigger ASR %']:.1f} %; the highest other "
                 f"class, {others.idxmax()}, {others.max():.1f} %.")
    return lines

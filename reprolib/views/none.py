"""The NONE page drawn from its measures (`experiments.none.measures`): the main table by
metric, NONE's per-image scores, the linearity picture, the reset-fraction ablation, the
natural-backdoor scans, and the sentences that say what they found."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plots import grid

DEFENSES = ["no defense", "ABL", "NONE"]
INDEX = {"main": ["attack", "defense"], "filtering": ["attack", "defense"],
         "asr_ratio": ["defense"], "ablation": ["variant"], "natural": ["model", "area %"],
         "natural_accuracy": ["model"]}


def table(m: dict, name: str) -> pd.DataFrame:
    """The measured table `name` with its index."""
    return pd.DataFrame(m[name]).set_index(INDEX[name])


def scan_table(scans: pd.DataFrame, accuracy: pd.DataFrame) -> pd.DataFrame:
    """The natural scans' max REASR, a row per model and a column per area bound."""
    scan = scans["max REASR %"].unstack("area %").reindex(accuracy.index)
    scan.columns = [f"area ≤ {a:g} %" for a in scan.columns]
    return scan


def main_view(main: pd.DataFrame, attacks) -> pd.DataFrame:
    """The main table with one column group per metric and one column per defense."""
    return main[["CA %", "ASR %", "RA %"]].unstack("defense").reindex(
        columns=DEFENSES, level="defense").reindex(list(attacks))


def score_figure(scores: dict):
    """NONE's per-image scores of clean and poisoned training images, with the Jenks break."""
    fig, axes = grid(len(scores), size=(2.25, 2.2))
    for ax, (name, s) in zip(axes, scores.items()):
        values = s["scores"]
        poisoned = np.zeros(len(values), dtype=bool)
        poisoned[s["poisoned"]] = True
        bins = np.linspace(values.min(), values.max(), 60)
        ax.hist(values[~poisoned], bins=bins, color="C0", alpha=0.7, label="clean")
        ax.hist(values[poisoned], bins=bins, color="C3", alpha=0.7, label="poisoned")
        ax.axvline(s["threshold"], color="k", ls="--", lw=1, label="Jenks break")
        ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("sample score")
    axes[0].set_ylabel("training images")
    axes[0].legend()
    fig.tight_layout()
    return fig


def linearity_figure(picture: dict):
    """Per channel, each class's mean peak against α; then the suspicious channel's peaks on
    the training images the model is sure are (S) and are not (W) the target class."""
    layer, target = picture["layer"], picture["target"]
    fig, axes = grid(4, cols=2, size=(3.4, 2.6))
    for i, (ax, (kind, c)) in enumerate(zip(axes, picture["channels"].items())):
        for k, name in enumerate(picture["classes"]):
            ax.plot(picture["alphas"], picture["curves"][:, k, i], color=plt.cm.tab10(k),
                    lw=1.2, label=name)
        ax.set_title(f"{kind}: {layer} channel {c} (score {picture['scores'][kind]:.2f})",
                     fontsize=8)
        ax.set_xlabel("α (0: clean, 1: triggered)")
    axes[0].set_ylabel("peak activation (pre-BN)")
    axes[3].axis("off")
    axes[3].legend(*axes[1].get_legend_handles_labels(), ncol=2, loc="center",
                   title="test images of class")
    both = np.concatenate([picture["unsure"], picture["sure"]])
    bins = np.linspace(both.min(), both.max(), 50) if len(both) else 50
    axes[2].hist(picture["unsure"], bins=bins, color="C0", alpha=0.7,
                 label=f"W: p_{target} < 0.1")
    axes[2].hist(picture["sure"], bins=bins, color="C3", alpha=0.7, label=f"S: p_{target} > 0.9")
    axes[2].set_yscale("log")
    axes[2].set_title(f"suspicious channel, target class {target}", fontsize=8)
    axes[2].set_xlabel("peak activation")
    axes[2].legend()
    fig.tight_layout()
    return fig


def ablation_figure(ablated: pd.DataFrame, fractions, undefended_ba: float, title: str):
    """ASR and CA after NONE against the share of channels it resets."""
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


def natural_figure(scans: pd.DataFrame, rounds: int):
    """The highest REASR against the trigger's area bound, for the standard model and after
    each NONE round."""
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


def summary(main: pd.DataFrame, filtered: pd.DataFrame, ratios: pd.DataFrame, scans, accuracy,
            natural_ratios: dict, rounds: int, attacks) -> list[str]:
    """Per attack what ABL and NONE did; the ASR ratios; the natural scans."""
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

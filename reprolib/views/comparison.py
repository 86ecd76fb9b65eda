"""The comparison page drawn from its measures (`experiments.comparison.measures`): every
defense against every attack by metric, the trade-off and DER figures, the ranking and the
costs, and the findings of the run."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

DEFENSES = ["FT", "FP", "NC", "ℓ∞ + FT", "NPD", "NONE", "ABL", "MESA"]
INDEX = {"main": ["attack", "defense"], "neural_cleanse": ["attack"], "clear": ["defense"]}


def table(m: dict, name: str) -> pd.DataFrame:
    """The measured table `name` with its index."""
    return pd.DataFrame(m[name]).set_index(INDEX[name])


# What each defense assumes the defender has, as the chapter runs it.
NEEDS = pd.DataFrame([
    ("FT", "5 %", "no", "no", "clean labels", "none", "no"),
    ("FP", "5 % (a fifth held out for its stopping rule)", "no", "no", "clean labels", "none",
     "no"),
    ("NC", "5 %, and 1,000 images for the reversal", "no", "no", "clean labels",
     "a mask-and-pattern stamp", "no: it ranks every label"),
    ("ℓ∞ + FT", "1,000 images", "no", "no", "clean labels",
     "NC's reversed stamp of its suspect label", "no: NC's suspect"),
    ("NPD", "5 %", "no", "no", "clean labels", "none (a targeted perturbation stands in)",
     "no: estimated per image"),
    ("NONE", "none", "yes: it retrains", "yes", "the training set's", "none", "no"),
    ("ABL", "none", "yes: it trains from scratch", "yes", "the training set's", "none", "no"),
    ("MESA", "5 %", "no", "no", "clean labels", "a 3×3 patch, anywhere", "yes"),
], columns=["defense", "clean data", "training", "poisoned training set", "labels",
            "trigger family", "target label"]).set_index("defense")


def main_view(main: pd.DataFrame, attacks) -> pd.DataFrame:
    """CA / ASR / DER with one column per attack, one row per defense."""
    view = main[["CA %", "ASR %", "DER %"]].unstack("attack")
    return view.reindex(["none", *DEFENSES]).reindex(columns=list(attacks), level="attack")


def ranking(main: pd.DataFrame, attacks) -> pd.DataFrame:
    """Per defense: its mean DER over the attacks, its rank (1: best), its worst ASR and its
    largest CA loss against the undefended models, and its CA loss on the clean twin."""
    attacked = main.loc[list(attacks)].drop("none", level="defense")
    before = main.xs("none", level="defense")["CA %"]
    loss = before.reindex(attacked.index.get_level_values("attack")).values - attacked["CA %"]
    table = pd.DataFrame({
        "mean DER %": attacked["DER %"].groupby("defense").mean(),
        "worst ASR %": attacked["ASR %"].groupby("defense").max(),
        "largest CA loss (points)": loss.groupby("defense").max()})
    if "clean" in main.index.get_level_values("attack"):
        clean = main.loc["clean"]["CA %"]
        table["CA loss, clean twin (points)"] = clean.loc["none"] - clean.drop("none")
    table.insert(1, "rank", table["mean DER %"].rank(ascending=False, method="min").astype(int))
    return table.reindex(DEFENSES).sort_values("rank", kind="stable")


def cost_table(main: pd.DataFrame, attacks) -> pd.DataFrame:
    """Per defense, its mean wall time, trained parameters and passes over the training set
    across the attacked victims."""
    attacked = main.loc[list(attacks)].drop("none", level="defense")
    return (attacked[["seconds", "trained parameters", "passes"]].groupby("defense").mean()
            .reindex(DEFENSES).rename(columns={"seconds": "seconds (mean)",
                                               "passes": "passes over the training set"}))


def tradeoff_figure(main: pd.DataFrame, attacks):
    """CA against ASR per attack: one point per defense, an arrow from the undefended model;
    three panels a row, the legend in a spare panel (or above)."""
    cols = min(3, len(attacks))
    rows = -(-len(attacks) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.25 * cols, 2.3 * rows), squeeze=False)
    colors = {d: f"C{i}" for i, d in enumerate(DEFENSES)}
    for ax, name in zip(axes.flat, attacks):
        part = main.loc[name]
        x0, y0 = part.loc["none", "ASR %"], part.loc["none", "CA %"]
        ax.scatter([x0], [y0], c="k", marker="x", s=30, label="no defense", zorder=4)
        for d in DEFENSES:
            x, y = part.loc[d, "ASR %"], part.loc[d, "CA %"]
            ax.annotate("", (x, y), (x0, y0), arrowprops=dict(arrowstyle="->", color=colors[d],
                                                              alpha=0.5, lw=0.8))
            ax.scatter([x], [y], color=colors[d], s=22, label=d, zorder=3)
        ax.set_title(name)
        ax.set_xlabel("ASR %")
        ax.set_ylabel("CA %")
        ax.set_xlim(-5, 105)
    spare = list(axes.flat)[len(attacks):]
    for ax in spare:
        ax.axis("off")
    handles = axes.flat[0].get_legend_handles_labels()
    if spare:
        spare[0].legend(*handles, loc="center")
        fig.tight_layout()
    else:
        fig.legend(*handles, ncol=5, loc="upper center")
        fig.tight_layout(rect=(0, 0, 1, 0.85))
    return fig


def der_figure(main: pd.DataFrame, attacks):
    """DER (%) per defense and attack, as a heat map."""
    grid = main["DER %"].unstack("attack").reindex(index=DEFENSES, columns=list(attacks))
    fig, ax = plt.subplots(figsize=(min(0.8 * len(attacks) + 2.4, 6.8), 0.42 * len(DEFENSES) + 1))
    image = ax.imshow(grid.values, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
    ax.grid(False)
    for (i, j), value in np.ndenumerate(grid.values):
        ax.text(j, i, f"{value:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=30, ha="right")
    ax.set_yticks(range(len(grid.index)), grid.index)
    fig.colorbar(image, ax=ax, label="DER %")
    fig.tight_layout()
    return fig


def findings(main: pd.DataFrame, ranked: pd.DataFrame, attacks) -> list[dict]:
    """What this run measured, stated as findings of ours (not a paper's claims)."""
    best = ranked.index[ranked["rank"] == 1].tolist()
    low = ranked.index[ranked["worst ASR %"] < 10].tolist()
    cheap = ranked.index[ranked["largest CA loss (points)"] <= 2].tolist()
    found = [
        {"finding": f"highest mean DER over {len(attacks)} attacks: {', '.join(best)}",
         "value": ranked.loc[best[0], "mean DER %"]},
        {"finding": "defenses with ASR below 10 % on every attack: " + (", ".join(low) or "none"),
         "value": float(len(low))},
        {"finding": "defenses losing at most 2 CA points on every attack: "
                    + (", ".join(cheap) or "none"), "value": float(len(cheap))}]
    if "CA loss, clean twin (points)" in ranked:
        worst = ranked["CA loss, clean twin (points)"].idxmax()
        found.append({"finding": f"largest CA loss on the clean twin: {worst}",
                      "value": ranked.loc[worst, "CA loss, clean twin (points)"]})
    return found

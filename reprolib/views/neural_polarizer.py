"""The Neural Polarizer page drawn from its measures (`experiments.neural_polarizer.measures`):
the main table by metric, the polarizer's losses, the clean-data and poisoning sweeps, the
features before and after NPD, and the sentences that say what they found."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .plots import row_width

METRICS = ["CA %", "ASR %", "RA %", "DER %"]
INDEX = {"main": ["attack", "defense"], "clean_data": ["attack", "clean %", "defense"],
         "poisoning_ratio": ["attack", "poisoned %"], "ablation": ["attack", "variant"]}


def table(m: dict, name: str) -> pd.DataFrame:
    """The measured table `name` with its index."""
    return pd.DataFrame(m[name]).set_index(INDEX[name])


def cost(m: dict) -> pd.DataFrame:
    """FT's and NPD's trained parameters and seconds per attack, and NPD's share of FT's, in
    column groups."""
    c = m["cost"]
    return pd.DataFrame(c["values"], index=pd.Index(c["index"], name="attack"),
                        columns=pd.MultiIndex.from_tuples([tuple(x) for x in c["columns"]]))


def flat(frame: pd.DataFrame) -> pd.DataFrame:
    """A table of column groups with one level of columns ("group column"), as results keep it."""
    return frame.set_axis([f"{a} {b}" for a, b in frame.columns], axis=1)


def main_view(main: pd.DataFrame, attacks, defenses) -> pd.DataFrame:
    """The main table with one column group per metric and one column per defense."""
    return main[METRICS].unstack("defense").reindex(columns=defenses, level="defense").reindex(
        list(attacks))


def loss_figure(loss: dict):
    """The polarizer's outer loss per epoch after the warm-up, a line per attack."""
    fig, ax = plt.subplots(figsize=(4.5, 2.6))
    for name, values in loss.items():
        ax.plot(range(1, len(values) + 1), values, label=name)
    ax.set_xlabel("epoch after the warm-up")
    ax.set_ylabel("outer loss")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    return fig


def clean_data_figure(by_data: pd.DataFrame, main: pd.DataFrame, attacks):
    """ASR and CA after NPD and FT against the share of clean data, a column per attack."""
    fig, axes = plt.subplots(2, len(attacks), figsize=(row_width(len(attacks)), 4.6),
                             sharex=True, squeeze=False)
    for c, name in enumerate(attacks):
        for defense, color in (("NPD", "C3"), ("FT", "C0")):
            part = by_data.loc[name].xs(defense, level="defense")
            axes[0, c].plot(part.index, part["ASR %"], "o-", color=color, label=defense)
            axes[1, c].plot(part.index, part["CA %"], "o-", color=color, label=defense)
        axes[1, c].axhline(main.loc[(name, "none"), "CA %"], color="0.5", ls=":",
                           label="no defense")
        axes[0, c].set_title(name)
        axes[1, c].set_xscale("log")
        axes[1, c].set_xlabel("clean data, % of the training set")
    axes[0, 0].set_ylabel("ASR %")
    axes[1, 0].set_ylabel("CA %")
    axes[1, 0].legend()
    fig.tight_layout()
    return fig


def poisoning_figure(by_poison: pd.DataFrame, attacks):
    """ASR and CA before and after NPD per poisoning ratio, a panel per attack."""
    fig, axes = plt.subplots(1, len(attacks), figsize=(row_width(len(attacks)), 3.0),
                             squeeze=False)
    for ax, name in zip(axes[0], attacks):
        part = by_poison.loc[name]
        x = range(len(part))
        for offset, (col, color, label) in zip((-0.3, -0.1, 0.1, 0.3), (
                ("ASR before %", "C3", "ASR before"), ("ASR after %", "C1", "ASR after NPD"),
                ("CA before %", "C0", "CA before"), ("CA after %", "C2", "CA after NPD"))):
            ax.bar([i + offset for i in x], part[col], width=0.2, color=color, label=label)
        ax.set_xticks(list(x), [f"{p:g} %" for p in part.index])
        ax.set_xlabel("poisoned training images")
        ax.set_title(name)
    axes[0, 0].set_ylabel("%")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), ncol=2, loc="upper center")
    fig.tight_layout(rect=(0, 0, 1, 0.82))
    return fig


def feature_figure(features: dict, attacks):
    """Clean (by class) and triggered (black) test features before and after NPD, on the
    backdoored model's first two principal axes."""
    fig, axes = plt.subplots(len(attacks), 2, figsize=(5.6, 2.7 * len(attacks)), squeeze=False)
    for row, name in zip(axes, attacks):
        f = features[name]
        for ax, title in zip(row, ("backdoored", "after NPD")):
            c_xy, t_xy = f[title]["clean"], f[title]["triggered"]
            for k, label in enumerate(f["classes"]):
                mine = f["labels"] == k
                ax.scatter(c_xy[mine, 0], c_xy[mine, 1], color=plt.cm.tab10(k), s=4, alpha=0.6,
                           label=label)
            ax.scatter(t_xy[:, 0], t_xy[:, 1], c="k", s=4, marker="x", label="triggered")
            ax.set_title(f"{name}: {title}")
            ax.set_xticks([])
            ax.set_yticks([])
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="center left",
               bbox_to_anchor=(1.0, 0.5), markerscale=2.5, title="clean, by class")
    fig.tight_layout()
    return fig


def summary(main: pd.DataFrame, ablated: pd.DataFrame, attacks, sweep_attacks) -> list[str]:
    """Per attack what NPD did and which defense's DER was best; per swept attack, the
    ablation's variants."""
    lines = []
    for name in attacks:
        none, npd_row = main.loc[(name, "none")], main.loc[(name, "NPD")]
        best = main.loc[name].drop("none")["DER %"].idxmax()
        lines.append(f"**{name}**: NPD takes ASR from {none['ASR %']:.1f} % to "
                     f"{npd_row['ASR %']:.1f} % and CA from {none['CA %']:.2f} % to "
                     f"{npd_row['CA %']:.2f} % (DER {npd_row['DER %']:.1f} %); the best DER here "
                     f"is {best}'s.")
    for name in sweep_attacks:
        a = ablated.loc[name]
        lines.append(f"Ablation, **{name}**: " + "; ".join(
            f"{variant} CA {r['CA %']:.2f} % ASR {r['ASR %']:.1f} %" for variant, r in a.iterrows())
            + ".")
    return lines

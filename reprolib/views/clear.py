"""The CLEAR page drawn from its measures (`experiments.clear.measures`): the attacks' draws,
the detection at sample and model level, the mitigation, the pocket in input and in feature
space, the ablation, and the sentences that say what they found."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import ListedColormap
from scipy.spatial import ConvexHull

INDEX = {"detection": ["attack"], "ablation": ["dim", "k"]}


def table(m: dict, name: str) -> pd.DataFrame:
    """The measured table `name`, with its index where it has one."""
    frame = pd.DataFrame(m[name])
    if name == "ablation" and frame.empty:
        frame = pd.DataFrame(columns=["dim", "k"])
    return frame.set_index(INDEX[name]) if name in INDEX else frame


def attack_summary(attacks: pd.DataFrame) -> pd.DataFrame:
    """Per attack: draws, successes, the attacked models' mean CA and seconds, success rate."""
    table = attacks.groupby("attack", sort=False).agg(
        **{"draws": ("success", "size"), "succeeded": ("success", "sum"),
           "mean CA %": ("ca", "mean"), "mean time (s)": ("seconds", "mean")})
    table["success %"] = 100 * table.succeeded / table.draws
    return table


def flags_of(detection: pd.DataFrame, detector: str) -> pd.DataFrame:
    """`detector`'s precision and recall columns of `detection_table`, named without the
    detector; CLEAR's also the widest-hull diagnosis, which bounds its hull test."""
    columns = [c for c in detection if c.startswith(f"{detector} ") and "%" in c]
    if detector == "CLEAR":
        columns.append("poisons in the widest hull %")
    return detection[columns].rename(columns=lambda c: c.removeprefix(f"{detector} "))


def score_figure(runs: list[dict], draws: dict, settings: dict, clean_scores: dict,
                 threshold: dict):
    """Every model's score against its setting's threshold, clean references first."""
    fig, axes = plt.subplots(1, 2, figsize=(6.8, 2.8))
    for ax, s in zip(axes, ("transfer", "from scratch")):
        ax.scatter(np.array(clean_scores[s], dtype=float), np.zeros(len(clean_scores[s])),
                   marker="o", color="0.5", label="clean")      # a missing score as NaN
        names = [n for n in draws if settings[n] == s]
        for j, name in enumerate(names):
            mine = [r for r in runs if r["attack"] == name]
            ax.scatter(np.array([r["score"] for r in mine], dtype=float), np.full(len(mine), j + 1),
                       c=["C3" if r["success"] else "C0" for r in mine], marker="x", label=name)
        ax.axvline(threshold[s], color="k", lw=0.8, ls="--")
        ax.set_yticks(range(1 + len(names)), ["clean"] + names)
        ax.set_xlabel("model score (highest pocket score)")
        ax.set_title(f"{s} (red: attack succeeded)")
    fig.tight_layout()
    return fig


def mitigation_table(per_draw: pd.DataFrame) -> pd.DataFrame:
    """Per attack and mitigation: how many successful draws, how often the target still goes
    to the attacker's class, and the mean CA."""
    table = per_draw.groupby(["attack", "method"], sort=False).agg(
        attacks=("still succeeds", "size"), success_pct=("still succeeds", "mean"),
        ca=("CA %", "mean")).rename(columns={"success_pct": "attack success %", "ca": "CA %"})
    table["attack success %"] *= 100
    return table


def pocket_figure(picture: dict):
    """Decision regions on the input-space plane through the target, before the attack, after
    it and (when mitigated) after CLEAR."""
    extent, classes = picture["extent"], picture["classes"]
    cmap = ListedColormap(plt.get_cmap("tab10").colors[:len(classes)])
    panels = picture["panels"]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.1 * len(panels) + 0.2, 2.6))
    for ax, (title, grid) in zip(np.atleast_1d(axes), panels.items()):
        ax.imshow(grid, origin="lower", extent=(-extent, extent, -extent, extent), cmap=cmap,
                  vmin=-0.5, vmax=len(classes) - 0.5, interpolation="nearest")
        ax.plot(0, 0, "*", color="w", mec="k", ms=12)
        ax.plot(1, 0, "X", color="w", mec="k", ms=8)
        ax.set_title(title)
        ax.set_xlabel("→ poison")
    np.atleast_1d(axes)[0].set_ylabel("→ same-class image")
    true, attacker = picture["true"], picture["attacker"]
    handles = [plt.Rectangle((0, 0), 1, 1, color=cmap(c)) for c in (true, attacker)]
    fig.legend(handles, [f"{classes[true]} (true)", f"{classes[attacker]} (attacker)"],
               loc="lower center", ncol=2, fontsize=8)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def feature_figure(picture: dict):
    """The features (2-D PCA) of the target's and the attacker's class, the poisons, the target
    and the hull CLEAR fitted around the pocket holding most poisons; with the caption that
    says what that hull is."""
    fig, ax = plt.subplots(figsize=(6.2, 3.8))
    for (name, xy), colour in zip(picture["classes"].items(), ("C0", "C1")):
        ax.scatter(*xy.T, s=3, color=colour, alpha=0.4, label=name)
    ax.scatter(*picture["poisons"].T, s=12, color="C3", label="poisons")
    ax.plot(*picture["target"], "*", color="w", mec="k", ms=14, label="target")
    hull = picture["hull"]
    if hull is not None:
        corners = hull["corners"]
        ax.scatter(*corners.T, s=14, facecolors="none", edgecolors="k", label="hull vertices")
        if len(corners) >= 3:
            outline = ConvexHull(corners)
            ring = np.append(outline.vertices, outline.vertices[0])
            ax.plot(*corners[ring].T, "k-", lw=0.8)
        caption = (f"Hull: {len(corners)} vertices of class {hull['class']}, "
                   f"enclosure {hull['enclosure']:.2f}, tightness {hull['tightness']:.2f}; "
                   f"pocket of {hull['pocket']} image(s), {hull['poisons']} of them poisons.")
    else:
        caption = "CLEAR wrapped no pocket holding a poison of this model."
    ax.legend(markerscale=1.5, loc="center left", bbox_to_anchor=(1.02, 0.5))
    ax.set_xlabel("first principal direction")
    ax.set_ylabel("second principal direction")
    ax.set_title(f"{picture['attack']}, draw {picture['draw']}")
    fig.tight_layout()
    return fig, caption


def ablation_figure(table: pd.DataFrame, ks):
    """Recall of the poisons by CLEAR and Deep k-NN against the PCA dimension, a line per k."""
    fig, axes = plt.subplots(1, 2, figsize=(6.6, 2.8), sharey=True)
    for ax, who in zip(axes, ("CLEAR", "Deep k-NN")):
        for k in ks:
            if k in table.index.get_level_values("k"):
                part = table.xs(k, level="k")
                ax.plot(part.index, part[f"{who} recall %"], "o-", label=f"k = {k}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("PCA dimension")
        ax.set_title(f"{who}: recall of the poisons")
    axes[0].set_ylabel("recall %")
    axes[0].legend()
    fig.tight_layout()
    return fig


def _at(precision: float) -> str:
    return "flagging nothing" if pd.isna(precision) else f"at precision {precision:.1f} %"


def summary(runs: list[dict], attacks: pd.DataFrame, detection: pd.DataFrame,
            mitigation: pd.DataFrame, clean_ca: float, train_seconds: float,
            settings: dict) -> list[str]:
    """Per attack its draws; per attack that succeeded the detection; each mitigation; the
    detection's cost against training."""
    lines = [f"**{name}** ({settings[name]}): {int(row.succeeded)} of {int(row.draws)} draws "
             f"succeeded; attacked CA {row['mean CA %']:.2f} % (clean {clean_ca:.2f} %)."
             for name, row in attack_summary(attacks).iterrows()]
    for name, row in detection.iterrows():
        if row.succeeded:
            lines.append(f"Detection, {name}: CLEAR recall {row['CLEAR recall %']:.0f} % "
                         f"{_at(row['CLEAR precision %'])}; Deep k-NN recall "
                         f"{row['Deep k-NN recall %']:.0f} % {_at(row['Deep k-NN precision %'])}; "
                         f"model-level AUROC {row['AUROC']:.2f} against "
                         f"{int(row['clean references'])} clean reference(s); the widest hull "
                         f"around the true poisons holds {row['poisons in the widest hull %']:.0f} "
                         f"% of them.")
    for (name, m), row in mitigation.iterrows():
        if m != "no defense":
            lines.append(f"{name}, {m}: attack success {row['attack success %']:.0f} %, CA "
                         f"{row['CA %']:.2f} %.")
    scratch = [r for r in runs if not r["transfer"]]
    if scratch:
        lines.append(f"CLEAR's detection took {np.mean([r['seconds'] for r in scratch]):.0f}"
                     f" s per from-scratch model, against {train_seconds:.0f} s to train the clean "
                     f"model.")
    return lines

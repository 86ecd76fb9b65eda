"""The MESA page drawn from its measures (`experiments.mesa.measures`): the attack and defense
tables, ASR after retraining per pattern, the samples of β's and α's generators, the
distribution of triggers, the detection bars, and the sentences that say what they found."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plots import WIDTH, grid, thumbnails

METHODS = ["MESA β=0.9", "MESA β=0.8", "MESA β=0.5", "MESA ensemble", "baseline",
           "ideal (true patch)", "clean fine-tune", "no defense"]
MESA_METHODS = METHODS[:3]
INDEX = {"alpha_sweep": ["α"], "rates": ["rate"], "detection": ["class"]}


def table(m: dict, name: str) -> pd.DataFrame:
    """The measured table `name`, with its index where it has one."""
    frame = pd.DataFrame(m[name])
    return frame.set_index(INDEX[name]) if name in INDEX else frame


def attack_table(results: pd.DataFrame, clean_ca: float) -> pd.DataFrame:
    """Per pattern, its victim's CA and ASR before any defense, beside the clean model's CA."""
    before = results[results.method == "no defense"].set_index("pattern")[
        ["family", "CA %", "ASR %"]]
    before["clean model CA %"] = clean_ca
    return before


def per_pattern(frame: pd.DataFrame) -> pd.DataFrame:
    """Per pattern, each method's mean and standard deviation of the ASR over its rounds,
    sorted by the baseline's mean."""
    table = frame.groupby(["pattern", "method"])["ASR %"].agg(["mean", "std"]).unstack("method")
    return table.sort_values(("mean", "baseline"))


def defense_figure(results: pd.DataFrame, which: str, patches_: dict, channels: int):
    """ASR after retraining per pattern of family `which`, sorted by the baseline's mean (the
    paper's Fig. 4), each pattern drawn under its tick."""
    table = per_pattern(results[results.family == which])
    x = np.arange(len(table))
    fig, ax = plt.subplots(figsize=(min(max(4.5, 0.28 * len(x) + 2.5), WIDTH), 3.6))
    mean, std = table["mean", "baseline"], table["std", "baseline"]
    # a band and a line need two patterns; the bars and dashes also show a lone one
    ax.fill_between(x, (mean - std).clip(lower=0), mean + std, color="0.8", label="baseline ± std")
    ax.vlines(x, (mean - std).clip(lower=0), mean + std, color="0.8", lw=4)
    ax.plot(x, mean, "o-", color="0.45", lw=1, ms=3, label="baseline mean")
    for m, colour in zip(METHODS[:4], ["C0", "C1", "C2", "C3"]):
        ax.plot(x, table["mean", m], "o-", color=colour, lw=1, ms=3, label=m)
    ax.plot(x, table["mean", "ideal (true patch)"], "k--", marker="_", ms=12, lw=1,
            label="ideal (true patch)")
    ax.plot(x, table["mean", "clean fine-tune"], ":", color="0.3", marker="_", ms=12, lw=1,
            label="clean fine-tune")
    ax.set_xticks(x)
    ax.set_xticklabels([])
    thumbnails(ax, [(i, -0.08) for i in x], np.stack([patches_[p] for p in table.index]),
               channels, zoom=3.5, xycoords=("data", "axes fraction"))
    ax.set_ylabel("ASR after retraining, %")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1.01), ncol=3, borderaxespad=0)
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


def samples_figure(drawn: dict, label: str, channels: int, with_cloud: bool):
    """The samples of each generator of `drawn` (keyed by β or α, named by `label`) drawn as
    their 3×3 pictures in one embedding; `with_cloud`: a first panel of all of them, a colour
    per generator."""
    keys, draws, xy = drawn["keys"], drawn["draws"], drawn["xy"]
    fig, axes = grid(len(keys) + with_cloud, size=(2.2, 2.2))
    start = 0
    for i, (key, samples) in enumerate(zip(keys, draws)):
        part = xy[start:start + len(samples)]
        start += len(samples)
        if with_cloud:
            axes[0].scatter(*part.T, s=6, color=f"C{i}", label=f"{label} = {key:g}")
        ax = axes[i + with_cloud]
        _frame(ax, xy)
        thumbnails(ax, part[:40], samples[:40], channels, zoom=2.5)
        ax.set_title(f"{label} = {key:g}")
    if with_cloud:
        axes[0].legend()
        axes[0].set_title("all samples")
    fig.tight_layout()
    return fig


def beta_table(samples: pd.DataFrame) -> pd.DataFrame:
    """Per MESA sampler, the mean entropy and trigger ASR of its samples."""
    return samples[samples.sampler.str.startswith("MESA")].pivot_table(
        index="sampler", values=["entropy (nats)", "trigger ASR %"], aggfunc="mean")


def distribution_figure(shown: list, channels: int):
    """Per pattern: MESA's samples (every β) in one embedding with the original patch (red
    frame) and the baseline's reversed triggers (black frames)."""
    fig, axes = grid(len(shown), cols=2, size=(3.3, 3.0))
    for ax, s in zip(axes, shown):
        xy, n, reversed_ = s["xy"], s["n"], s["reversed"]
        cloud = n * len(s["betas"])
        for i, b in enumerate(s["betas"]):
            ax.scatter(*xy[n * i:n * (i + 1)].T, s=5, color=f"C{i}", alpha=0.6, label=f"β = {b}")
        ax.update_datalim(xy)                   # the thumbnails' points too
        ax.margins(0.12)
        ax.autoscale_view()
        thumbnails(ax, xy[cloud:cloud + len(reversed_)], reversed_, channels, zoom=2.5,
                   frame="k")
        thumbnails(ax, xy[-1:], s["original"], channels, zoom=3.5, frame="red")
        ax.set_title(f"pattern {s['pattern']}")
    axes[0].legend()
    fig.tight_layout()
    return fig


def detection_figure(detected: pd.DataFrame, target: int):
    """The held-out ASR of a generator searched for each candidate class, the target's red."""
    fig, ax = plt.subplots(figsize=(4.8, 2.6))
    ax.bar(detected.index, detected["generated-trigger ASR %"],
           color=["C3" if k == target else "C0" for k in detected.index])
    ax.set_xticks(detected.index)
    ax.set_xlabel("candidate target class")
    ax.set_ylabel("generated-trigger ASR %")
    fig.tight_layout()
    return fig


def summary(results: pd.DataFrame, summary_: pd.DataFrame, detected: pd.DataFrame,
            measured: dict, *, clean_ca: float, target: int, n_random: int,
            alphas) -> list[str]:
    """The attack, each method's ASR range, the random patches, the entropies, detection."""
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

"""The ℓ∞-pruning page drawn from its measures (`experiments.linf_pruning.measures`): the
reversed triggers, Grad-CAM, the norms' histograms and tails, the pruning curves, and the
sentences that say what they found."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .plots import row_width

NORMS = {"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}
KINDS = ("clean", "real", "synthetic")
STYLES = {"linf": ("C3", "-"), "l2": ("C1", "-"), "l1": ("C0", "-"), "nc_gap": ("C2", ":"),
          "dormant": ("C4", "-."), "random": ("0.5", "-"), "oracle_linf": ("k", "--")}
INDEX = {"accuracy": ["model"], "neural_cleanse": ["label"], "cam": ["attack", "model"],
         "tails": ["attack", "model", "trigger"], "overlap": ["attack"],
         "points": ["attack", "ranking", "rule"]}


def table(m: dict, name: str) -> pd.DataFrame:
    """The measured table `name` with its index; Neural Cleanse's per attack and label (its
    columns "attack what" as rows, so that the table over seeds fits the text column)."""
    if name == "neural_cleanse":
        wide = pd.DataFrame(m[name]["rows"]).set_index("label")
        long = wide.stack().rename("value").reset_index(level=1)
        long[["attack", "what"]] = long.pop("level_1").str.split(" ", n=1, expand=True)
        return long.pivot_table(index=["attack", "label"], columns="what", values="value",
                                sort=False)[["mask ℓ1", "anomaly", "success %"]].rename_axis(
            columns=None)
    rows = m[name]
    columns = None if rows else [*INDEX[name]]
    return pd.DataFrame(rows, columns=columns).set_index(INDEX[name])


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def _picture(image: np.ndarray) -> np.ndarray:
    """A C × H × W image as imshow takes it (H × W for one channel)."""
    pixels = np.moveaxis(image, 0, -1)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels


def reversal_figure(reversal: dict):
    """Per attack: the reversed mask, mask · pattern, and the real trigger on a test image."""
    fig, axes = plt.subplots(len(reversal), 3, figsize=(4.2, 1.5 * len(reversal)), squeeze=False)
    for row, (name, r) in zip(axes, reversal.items()):
        row[0].imshow(r["mask"], cmap="magma", vmin=0, vmax=1)
        row[1].imshow(_picture(r["masked_pattern"]), cmap="gray", vmin=0, vmax=1)
        row[2].imshow(_picture(r["real"]), cmap="gray")
        row[0].set_ylabel(name)
        for ax in row:
            _bare(ax)
    for ax, title in zip(axes[0], ("reversed mask", "mask · pattern", "real trigger")):
        ax.set_title(title)
    fig.tight_layout(pad=0.3)
    return fig


def gradcam_figure(gradcam: dict):
    """Rows: the vanilla and backdoored model of each attack; columns: three images clean, with
    the real and with the synthetic trigger, each under its Grad-CAM."""
    fig, axes = plt.subplots(2 * len(gradcam), 9, figsize=(6.8, 1.7 * len(gradcam)),
                             squeeze=False)
    panels = [(name, model) for name in gradcam for model in ("vanilla", "backdoored")]
    for r, (name, model) in enumerate(panels):
        for j, kind in enumerate(KINDS):
            images, heat = gradcam[name]["images"][kind], gradcam[name]["heat"][model][kind]
            for i in range(3):
                ax = axes[r, 3 * i + j]
                ax.imshow(images[i].astype(np.float32).mean(0), cmap="gray", vmin=0, vmax=255)
                ax.imshow(heat[i], cmap="jet", alpha=0.45)
                _bare(ax)
                if r == 0:
                    ax.set_title(kind, fontsize=8)
        axes[r, 0].set_ylabel(f"{name}\n{model}", fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig


def norm_histograms(norms: dict, name: str):
    """Per norm (rows) and {vanilla, backdoored} × {clean, trigger} (columns), the histogram of
    the channels' mean norms; the synthetic trigger's outlined."""
    fig, axes = plt.subplots(3, 4, figsize=(6.8, 4.6), sharey="row")
    for c, (model, kind) in enumerate((m, k) for m in ("vanilla", "backdoored")
                                      for k in ("clean", "real")):
        means = norms[name][model]["means"]
        for r, p in enumerate(NORMS):
            axes[r, c].hist(means[kind][p], bins=24, color="C0" if kind == "clean" else "C3",
                            alpha=0.8)
            if kind == "real":
                axes[r, c].hist(means["synthetic"][p], bins=24, histtype="step", color="k", lw=1)
            axes[0, c].set_title(f"{model}, {'clean' if kind == 'clean' else 'trigger'}")
            axes[r, 0].set_ylabel(f"{NORMS[p]}\nchannels")
    fig.suptitle(f"{name}: per-channel mean norms", y=1.0)
    fig.tight_layout(pad=0.3)
    return fig


def tails_figure(norms: dict, attacks: list[str]):
    """Per attack, each channel's standardised change of each norm under the real trigger,
    sorted (backdoored model solid, vanilla dashed)."""
    fig, axes = plt.subplots(1, len(attacks), figsize=(row_width(len(attacks)), 2.8),
                             squeeze=False)
    for ax, name in zip(axes[0], attacks):
        for model, style in (("backdoored", "-"), ("vanilla", "--")):
            change = norms[name][model]["changes"]["real"]
            for p, color in zip(NORMS, ("C0", "C1", "C3")):
                ax.plot(np.sort(change[p])[::-1], style, color=color, label=f"{model} {p}")
        ax.set_title(f"{name}, real trigger")
        ax.set_xlabel("channels, sorted")
        ax.set_ylabel("standardised change")
    axes[0, 0].legend()
    fig.tight_layout()
    return fig


def pruning_figure(curves: dict, attacks: list[str], channels: int):
    """Test ASR (real trigger) and CA against the share of channels pruned, per ranking."""
    fig, axes = plt.subplots(2, len(attacks), figsize=(row_width(len(attacks)), 5),
                             squeeze=False, sharex=True)
    for c, name in enumerate(attacks):
        for rank, (color, style) in STYLES.items():
            t = curves[name][rank]["test"]
            fraction = [n / channels for n in t["n"]]
            axes[0, c].plot(fraction, [100 * a for a in t["asr"]], style, color=color, label=rank)
            axes[1, c].plot(fraction, [100 * a for a in t["ca"]], style, color=color, label=rank)
        axes[0, c].set_title(name)
        axes[0, c].set_ylabel("ASR % (real trigger)")
        axes[1, c].set_ylabel("CA %")
        axes[1, c].set_xlabel("fraction of last-conv channels pruned")
    axes[0, 0].legend(ncol=2)
    fig.tight_layout()
    return fig


def neural_cleanse_summary(nc: dict) -> str:
    """Which labels Neural Cleanse flagged per attack, its suspect, and whose reversed trigger
    the page uses as the synthetic one."""
    target = nc["target"]
    return ("Neural Cleanse: " + "; ".join(
        f"**{name}** flagged {nc['flagged'][name] or 'no label'}, suspect {suspect} "
        f"({'the true target' if suspect == target else 'not the target'})"
        for name, suspect in nc["suspect"].items())
        + ". Synthetic trigger used: the reversal for label "
        + ", ".join(f"{label} ({name})" for name, label in nc["synthetic"].items()) + ".")


def summary(points: pd.DataFrame, attacks: list[str], channels: int) -> list[str]:
    """One line per attack: what ℓ∞ pruning at rule i, and fine-tuning after it, did."""
    lines = []
    for name in attacks:
        p = points.loc[name]
        row = p.loc[("linf", "i")]
        if pd.isna(row["pruned"]):
            lines.append(f"**{name}**: no ℓ∞ pruning up to half the layer brought the synthetic "
                         "trigger's ASR below 5 %.")
            continue
        line = (f"**{name}**: ℓ∞ pruning of {row['pruned']:.0f} of {channels} channels (rule i) "
                f"takes the real trigger's ASR from {row['asr before']:.1f} % to "
                f"{row['asr after']:.1f} % and CA from {row['ca before']:.2f} % to "
                f"{row['ca after']:.2f} %")
        if ("linf + fine-tune", "i + FT") in p.index:
            tuned = p.loc[("linf + fine-tune", "i + FT")]
            line += (f"; fine-tuning on the defender's images then gives CA "
                     f"{tuned['ca after']:.2f} % and ASR {tuned['asr after']:.1f} %")
        lines.append(line + ".")
    return lines

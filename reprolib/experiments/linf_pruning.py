"""The ℓ∞-pruning chapter's experiments: Neural Cleanse's synthetic trigger, Grad-CAM on the
trigger, the activation norms of the last conv map, and pruning by each ranking."""
from __future__ import annotations

from types import SimpleNamespace

import matplotlib.pyplot as plt
import pandas as pd
import torch

from .. import plots
from ..config import Recipe, check_choice, check_range
from ..data import ImageSet
from ..defenses import linf_pruning as lp
from ..defenses import neural_cleanse as nc
from ..gradcam import cams, mass_in, trigger_cells
from ..jobs import Kept, pack, step, unpack
from ..train import train
from ..victims import n_classes, trained_victim

MODELS = ("vanilla", "backdoored")
TRIGGERS = ("clean", "real", "synthetic")
TUNE = Recipe(epochs=5, batch_size=64, lr=0.01, schedule="cosine")   # after rule-i pruning


@step("nc.reverse", read=lambda kept, args: unpack(kept),
      needs=lambda a: [trained_victim.job(**a["victim"])],
      work=lambda a: a["budget"]["steps"] * a["budget"]["batch_size"] * n_classes(a["victim"]),
      describe=lambda a: f"Neural Cleanse reversal {a['victim']['attack']}")
def reversed_triggers(victim: dict, n: int, seed: int, budget: dict) -> Kept:
    """Neural Cleanse's triggers for every label of the victim asked for by `victim`, reversed
    from `n` of its clean training images (`nc.reverse` with `budget`, see `nc.budget`)."""
    v = trained_victim(**victim)
    return pack(nc.reverse(v.model, v.clean_subset(n, seed), seed=seed, progress=False,
                           **budget))


def _tuned_copy(kept: Kept, args: dict):
    v = trained_victim(**args["victim"])
    return unpack(kept, {"": lp.prune(v.model, args["pruned"])}).eval()


@step("linf.tune", read=_tuned_copy, needs=lambda a: [trained_victim.job(**a["victim"])],
      work=lambda a: a["n"] * TUNE.epochs,
      describe=lambda a: f"fine-tune after ℓ∞ pruning {a['victim']['attack']}")
def pruned_and_tuned(victim: dict, pruned: list[int], n: int, seed: int, device="auto") -> Kept:
    """The victim with channels `pruned` zeroed, fine-tuned by `TUNE` on `n` of its clean
    training images."""
    v = trained_victim(**victim)
    tuned = lp.prune(v.model, pruned)
    train(tuned, v.clean_subset(n, seed), TUNE, seed=seed, device=device, progress=False)
    return pack(tuned)


def results(ch, *, attacks, ratio=0.1, target=0, n_defender=1000, nc_steps=None,
            synthetic_label="target", n_stats=1000) -> SimpleNamespace:
    """The vanilla model and the victims, Neural Cleanse's reversal on each victim, and the
    label whose reversed trigger stands in for the real one (`synthetic_label`: the target, or
    Neural Cleanse's suspect). `n_stats`, the page's statistics set, is checked here with the
    rest, before any job."""
    check_choice("synthetic_label", synthetic_label, ("target", "suspect"))
    check_range("n_stats", n_stats, low=1, integer=True)
    budget = nc.budget(ch.scale(nc_steps=nc_steps).nc_steps, n_defender)
    vanilla = trained_victim(**ch.victim_args(None, ratio, target))
    victims = {name: trained_victim(**ch.victim_args(name, ratio, target)) for name in attacks}
    reversal = {name: reversed_triggers(victim=v.asked, n=n_defender, seed=ch.seed,
                                        budget=budget) for name, v in victims.items()}
    suspect = {name: target if synthetic_label == "target" else r.suspect
               for name, r in reversal.items()}
    return SimpleNamespace(vanilla=vanilla, victims=victims, reversal=reversal, suspect=suspect)


def tuned_models(victims: dict, curves: dict, orders: dict, *, n_defender: int, seed: int,
                 device) -> dict:
    """Per attack whose ℓ∞ rule i stops, its pruned model fine-tuned."""
    found = {}
    for name, v in victims.items():
        n = lp.stop_at_asr(curves[name, "linf"]["defender"])
        if n is not None:
            found[name] = pruned_and_tuned(victim=v.asked,
                                           pruned=orders[name]["linf"][:n].tolist(),
                                           n=n_defender, seed=seed, device=device)
    return found


def statistics_set(test: ImageSet, target: int, n: int, seed: int) -> ImageSet:
    """Up to `n` test images not of class `target`, drawn from `seed`: where Grad-CAM and the
    norms are measured."""
    others = (test.labels != target).nonzero().flatten()
    return test.subset(others).sample(min(n, len(others)), seed)


def accuracy_table(vanilla, victims: dict) -> pd.DataFrame:
    rows = [{"model": "vanilla", "CA %": 100 * vanilla.scores()["ca"]}]
    rows += [{"model": name, **{f"{k.upper()} %": 100 * x for k, x in v.scores().items()}}
             for name, v in victims.items()]
    return pd.DataFrame(rows).set_index("model")


def neural_cleanse_table(reversal: dict) -> pd.DataFrame:
    """Per label, each attack's mask ℓ1, anomaly index and success, columns "attack what"."""
    table = pd.DataFrame({f"{name} {col}": vals for name, r in reversal.items()
                          for col, vals in (("mask ℓ1", r.l1.tolist()),
                                            ("anomaly", r.anomaly.tolist()),
                                            ("success %", (100 * r.success).tolist()))})
    table.index.name = "label"
    return table


def neural_cleanse_summary(reversal: dict, suspect: dict, target: int) -> str:
    return ("Neural Cleanse: " + "; ".join(
        f"**{name}** flagged {r.flagged or 'no label'}, suspect {r.suspect} "
        f"({'the true target' if r.suspect == target else 'not the target'})"
        for name, r in reversal.items())
        + ". Synthetic trigger used: the reversal for label "
        + ", ".join(f"{suspect[name]} ({name})" for name in reversal) + ".")


def _bare(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)


def reversal_figure(victims: dict, reversal: dict, suspect: dict, example: ImageSet):
    """Per attack: the reversed mask, mask · pattern, and the real trigger on `example`."""
    fig, axes = plt.subplots(len(victims), 3, figsize=(4.2, 1.5 * len(victims)), squeeze=False)
    for row, (name, v) in zip(axes, victims.items()):
        mask, pattern = reversal[name].trigger(suspect[name])
        row[0].imshow(mask[0], cmap="magma", vmin=0, vmax=1)
        row[1].imshow((mask * pattern).permute(1, 2, 0).squeeze(-1), cmap="gray", vmin=0, vmax=1)
        row[2].imshow(v.attack.apply(example)[0].permute(1, 2, 0).squeeze(-1), cmap="gray")
        row[0].set_ylabel(name)
        for ax in row:
            _bare(ax)
    for ax, title in zip(axes[0], ("reversed mask", "mask · pattern", "real trigger")):
        ax.set_title(title)
    fig.tight_layout(pad=0.3)
    return fig


def gradcam_figure(vanilla, victims: dict, reversal: dict, suspect: dict, shown):
    """Rows: the vanilla and backdoored model of each attack; columns: three images `shown`
    clean, with the real and with the synthetic trigger, each with its Grad-CAM."""
    normalize = vanilla.test.normalize
    inputs = {name: [("clean", shown), ("real", v.attack.apply(shown)),
                     ("synthetic", reversal[name].stamp(shown, suspect[name]))]
              for name, v in victims.items()}
    fig, axes = plt.subplots(2 * len(victims), 9, figsize=(6.8, 1.7 * len(victims)), squeeze=False)
    panels = [(name, label, model) for name in victims
              for label, model in (("vanilla", vanilla.model), ("backdoored", victims[name].model))]
    for r, (name, label, model) in enumerate(panels):
        for j, (kind, images) in enumerate(inputs[name]):
            heat = cams(model, images, normalize)
            for i in range(3):
                ax = axes[r, 3 * i + j]
                ax.imshow(images[i].float().mean(0), cmap="gray", vmin=0, vmax=255)
                ax.imshow(heat[i], cmap="jet", alpha=0.45)
                _bare(ax)
                if r == 0:
                    ax.set_title(kind, fontsize=8)
        axes[r, 0].set_ylabel(f"{name}\n{label}", fontsize=8)
    fig.tight_layout(pad=0.2)
    return fig


def gradcam_table(vanilla, victims: dict, stats: ImageSet) -> pd.DataFrame:
    """Per attack and model, the share of the triggered images' Grad-CAM mass on the conv cells
    the trigger touches; attacks whose trigger touches every cell are left out."""
    rows = []
    channels, size = stats.images.shape[1], tuple(stats.images.shape[2:])
    for name, v in victims.items():
        triggered = v.attack.apply(stats.images)
        for model_name, model in (("vanilla", vanilla.model), ("backdoored", v.model)):
            coarse = cams(model, triggered, stats.normalize, upsample=False)
            region = trigger_cells(v.attack, channels, size, coarse.shape[-2:])
            if region.all():
                continue
            rows.append({"attack": name, "model": model_name,
                         "cells covered %": 100 * region.float().mean().item(),
                         "heat on trigger cells %": 100 * mass_in(coarse, region).nanmean().item()})
    return pd.DataFrame(rows, columns=["attack", "model", "cells covered %",
                                       "heat on trigger cells %"]).set_index(["attack", "model"])


def norm_maps(vanilla, victims: dict, stats: ImageSet, reversal: dict, suspect: dict) -> dict:
    """The last conv maps of `stats`, per (attack, model) and per trigger (clean, real,
    synthetic), on the CPU."""
    maps = {}
    for name, v in victims.items():
        real = stats.with_images(v.attack.apply(stats.images))
        synthetic = stats.with_images(reversal[name].stamp(stats.images, suspect[name]))
        for model_name, model in (("vanilla", vanilla.model), ("backdoored", v.model)):
            maps[name, model_name] = {kind: lp.feature_maps(model, d).cpu() for kind, d in
                                      zip(TRIGGERS, (stats, real, synthetic))}
    return maps


def norm_histograms(maps: dict, name: str):
    """Per norm (rows) and {vanilla, backdoored} × {clean, trigger} (columns), the histogram of
    the channels' mean norms; the synthetic trigger's outlined."""
    fig, axes = plt.subplots(3, 4, figsize=(6.8, 4.6), sharey="row")
    for c, (model_name, kind) in enumerate((m, k) for m in MODELS for k in ("clean", "real")):
        for r, p in enumerate(lp.NORMS):
            values = lp.channel_norms(maps[name, model_name][kind])[p].mean(0)
            axes[r, c].hist(values, bins=24, color="C0" if kind == "clean" else "C3", alpha=0.8)
            if kind == "real":
                synth = lp.channel_norms(maps[name, model_name]["synthetic"])[p].mean(0)
                axes[r, c].hist(synth, bins=24, histtype="step", color="k", lw=1)
            axes[0, c].set_title(f"{model_name}, {'clean' if kind == 'clean' else 'trigger'}")
            axes[r, 0].set_ylabel({"l1": "ℓ1", "l2": "ℓ2", "linf": "ℓ∞"}[p] + "\nchannels")
    fig.suptitle(f"{name}: per-channel mean norms", y=1.0)
    fig.tight_layout(pad=0.3)
    return fig


def tails(maps: dict, attacks) -> tuple[pd.DataFrame, object]:
    """The largest standardised change of each norm per (attack, model, trigger), and the figure
    of the sorted changes under the real trigger."""
    fig, axes = plt.subplots(1, len(attacks), figsize=(plots.row_width(len(attacks)), 2.8),
                             squeeze=False)
    rows = []
    for ax, name in zip(axes[0], attacks):
        for model_name, style in (("backdoored", "-"), ("vanilla", "--")):
            m = maps[name, model_name]
            for trig in ("real", "synthetic"):
                z = lp.standardized_change(m["clean"], m[trig])
                rows.append({"attack": name, "model": model_name, "trigger": trig,
                             **{p: z[p].max().item() for p in lp.NORMS}})
                if trig == "real":
                    for p, color in zip(lp.NORMS, ("C0", "C1", "C3")):
                        ax.plot(z[p].sort(descending=True).values, style, color=color,
                                label=f"{model_name} {p}")
        ax.set_title(f"{name}, real trigger")
        ax.set_xlabel("channels, sorted")
        ax.set_ylabel("standardised change")
    axes[0, 0].legend()
    fig.tight_layout()
    return pd.DataFrame(rows).set_index(["attack", "model", "trigger"]), fig


def defender_sets(v, reversal: nc.Reversal, label: int, *, n_defender: int, seed: int
                  ) -> tuple[ImageSet, ImageSet, ImageSet]:
    """The defender's `n_defender` clean images, those not of `label`, and the latter stamped
    with `label`'s reversed trigger."""
    defender = v.clean_subset(n_defender, seed)
    others = defender.subset((defender.labels != label).nonzero().flatten())
    return defender, others, others.with_images(reversal.stamp(others.images, label))


def linf_curve(v, reversal: nc.Reversal, label: int, *, n_defender: int, seed: int
               ) -> tuple[torch.Tensor, dict]:
    """The ℓ∞ ranking of `v`'s last-conv channels (the defender's images against the same with
    `label`'s reversed trigger) and its pruning curve on them: `pruning`'s ℓ∞ row alone."""
    defender, others, syn_set = defender_sets(v, reversal, label, n_defender=n_defender,
                                              seed=seed)
    order = lp.rank_by_change(lp.feature_maps(v.model, others),
                              lp.feature_maps(v.model, syn_set), "linf")
    curve = lp.sweep(v.model, order, lp.Pooled.of(v.model, defender),
                     lp.Pooled.of(v.model, syn_set), label,
                     lp.counts_up_to(v.model.head.in_features))
    return order, curve


def pruning(victims: dict, reversal: dict, suspect: dict, *, n_defender: int, seed: int,
            target: int) -> tuple[dict, dict]:
    """Per attack, every ranking's channel order (decided on the defender's images) and its
    pruning curves on the defender's images (synthetic trigger) and on the test set (real)."""
    curves, orders = {}, {}
    for name, v in victims.items():
        defender, others, syn_set = defender_sets(v, reversal[name], suspect[name],
                                                  n_defender=n_defender, seed=seed)
        real_set = others.with_images(v.attack.apply(others.images))
        orders[name] = lp.rankings(lp.feature_maps(v.model, others),
                                   lp.feature_maps(v.model, syn_set),
                                   lp.feature_maps(v.model, real_set), seed=seed)
        pooled = {k: lp.Pooled.of(v.model, d) for k, d in
                  (("defender", defender), ("synthetic", syn_set), ("test", v.test),
                   ("backdoor", v.backdoor))}
        counts = lp.counts_up_to(v.model.head.in_features)
        for rank, order in orders[name].items():
            curves[name, rank] = {
                "defender": lp.sweep(v.model, order, pooled["defender"], pooled["synthetic"],
                                     suspect[name], counts),
                "test": lp.sweep(v.model, order, pooled["test"], pooled["backdoor"], target,
                                 counts)}
    return curves, orders


def overlap_table(orders: dict) -> pd.DataFrame:
    """How many of the oracle's first k channels the synthetic ℓ∞ ranking also puts first."""
    return pd.DataFrame([{"attack": name, **{f"top-{k}": lp.top_k_overlap(
        o["linf"], o["oracle_linf"], k) for k in (1, 5, 10, 20)}}
        for name, o in orders.items()]).set_index("attack")


STYLES = {"linf": ("C3", "-"), "l2": ("C1", "-"), "l1": ("C0", "-"), "nc_gap": ("C2", ":"),
          "dormant": ("C4", "-."), "random": ("0.5", "-"), "oracle_linf": ("k", "--")}


def pruning_figure(curves: dict, attacks, channels: int):
    """Test ASR (real trigger) and CA against the share of channels pruned, per ranking."""
    fig, axes = plt.subplots(2, len(attacks), figsize=(plots.row_width(len(attacks)), 5),
                             squeeze=False, sharex=True)
    for c, name in enumerate(attacks):
        for rank, (color, style) in STYLES.items():
            t = curves[name, rank]["test"]
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


def _at(curve: dict, n: int) -> tuple[float, float]:
    i = curve["n"].index(n)
    return 100 * curve["ca"][i], 100 * curve["asr"][i]


def operating_points(victims: dict, curves: dict, orders: dict, tuned: dict) -> pd.DataFrame:
    """Per attack and ranking, the test CA and ASR at the two stopping rules (i: the synthetic
    trigger's ASR on the defender's images below 5 %; ii: at most 2 points of their clean
    accuracy lost), and the ℓ∞ rule-i model fine-tuned 5 epochs on the defender's images
    (`tuned_models`)."""
    rows = []
    for name, v in victims.items():
        before = v.scores()
        common = {"ca before": 100 * before["ca"], "asr before": 100 * before["asr"]}
        for rank in orders[name]:
            c = curves[name, rank]
            for rule, n in (("i", lp.stop_at_asr(c["defender"])),
                            ("ii", lp.stop_at_ca_drop(c["defender"]))):
                ca, asr_ = _at(c["test"], n) if n is not None else (None, None)
                rows.append({"attack": name, "ranking": rank, "rule": rule, "pruned": n,
                             "ca before": common["ca before"], "ca after": ca,
                             "asr before": common["asr before"], "asr after": asr_})
        n = lp.stop_at_asr(curves[name, "linf"]["defender"])
        if name in tuned:
            after = v.scores(tuned[name])
            rows.append({"attack": name, "ranking": "linf + fine-tune", "rule": "i + FT",
                         "pruned": n, "ca before": common["ca before"],
                         "ca after": 100 * after["ca"], "asr before": common["asr before"],
                         "asr after": 100 * after["asr"]})
    return pd.DataFrame(rows).set_index(["attack", "ranking", "rule"])


def cost_to_remove(curve: dict, below: float = 0.05) -> float:
    """The clean-accuracy cost (points) at the first count whose ASR is below `below`;
    infinite when none is."""
    hit = [c for c, a in zip(curve["ca"], curve["asr"]) if a < below]
    return 100 * (curve["ca"][0] - hit[0]) if hit else float("inf")


def claims(attacks, cam_table: pd.DataFrame, tail: pd.DataFrame, points: pd.DataFrame,
           curves: dict) -> dict[str, float]:
    """The measures the reference's claims are checked on."""
    measured = {}
    edge = tail["linf"] / tail[["l1", "l2"]].max(axis=1)
    for name in attacks:
        if name in cam_table.index:
            cam = cam_table.loc[name]
            measured[f"gradcam_ratio_{name}"] = (cam.loc["backdoored", "heat on trigger cells %"]
                                                 / cam.loc["vanilla", "heat on trigger cells %"])
        measured[f"linf_bias_{name}"] = edge.loc[(name, "backdoored", "real")]
        measured[f"vanilla_tail_{name}"] = (tail.loc[(name, "vanilla", "real"), "linf"]
                                            / tail.loc[(name, "backdoored", "real"), "linf"])
        row = points.loc[(name, "linf", "i")]
        measured[f"undefended_asr_{name}"] = row["asr before"]
        if pd.notna(row["asr after"]):
            measured[f"linf_prune_asr_{name}"] = row["asr after"]
            measured[f"linf_prune_ca_drop_{name}"] = row["ca before"] - row["ca after"]
        costs = {rank: cost_to_remove(curves[name, rank]["test"]) for rank in ("linf", "l2", "l1")}
        if all(c < float("inf") for c in costs.values()):
            measured[f"linf_vs_l12_cost_{name}"] = costs["linf"] - min(costs["l1"], costs["l2"])
    if "badnets" in attacks and "blended" in attacks:
        measured["linf_edge_shrinks"] = (measured["linf_bias_blended"]
                                         - measured["linf_bias_badnets"])
    measured["undefended_asr_min"] = min(measured[f"undefended_asr_{name}"] for name in attacks)
    return measured


def summary(points: pd.DataFrame, attacks, channels: int) -> list[str]:
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

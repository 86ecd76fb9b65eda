"""The ℓ∞-pruning chapter's experiments: Neural Cleanse's synthetic trigger, Grad-CAM on the
trigger, the activation norms of the last conv map, and pruning by each ranking. Every part that
reads a model is a job (`reversed_triggers`, `examined`, `pruned_and_tuned`); `measures` turns
their results into the plain data the page (`views.linf_pruning`) is drawn from."""
from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import torch

from ..config import Recipe, check_choice, check_range
from ..data import ImageSet
from ..defenses import linf_pruning as lp
from ..defenses import neural_cleanse as nc
from ..gradcam import cams, mass_in, trigger_cells
from ..jobs import Kept, pack, step, unpack
from ..train import train
from ..victims import n_classes, trained_victim
from .plain import arrays, rows

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
    """The vanilla model and the victims, Neural Cleanse's reversal on each victim (and the
    arguments of its job), the label whose reversed trigger stands in for the real one
    (`synthetic_label`: the target, or Neural Cleanse's suspect), and each attack's
    examination (`examined`)."""
    check_choice("synthetic_label", synthetic_label, ("target", "suspect"))
    check_range("n_stats", n_stats, low=1, integer=True)
    budget = nc.budget(ch.scale(nc_steps=nc_steps).nc_steps, n_defender)
    vanilla = trained_victim(**ch.victim_args(None, ratio, target))
    victims = {name: trained_victim(**ch.victim_args(name, ratio, target)) for name in attacks}
    asked = {name: {"victim": v.asked, "n": n_defender, "seed": ch.seed, "budget": budget}
             for name, v in victims.items()}
    reversal = {name: reversed_triggers(**a) for name, a in asked.items()}
    suspect = {name: target if synthetic_label == "target" else r.suspect
               for name, r in reversal.items()}
    exams = {name: examined(vanilla=vanilla.asked, reversal=asked[name], suspect=suspect[name],
                            n_stats=n_stats, target=target) for name in attacks}
    return SimpleNamespace(vanilla=vanilla, victims=victims, reversal=reversal, suspect=suspect,
                           exams=exams)


def measures(ch, *, attacks, ratio=0.1, target=0, n_defender=1000, nc_steps=None,
             synthetic_label="target", n_stats=1000) -> dict:
    """What the ℓ∞ page shows, as plain data (see `views.linf_pruning`)."""
    r = results(ch, attacks=attacks, ratio=ratio, target=target, n_defender=n_defender,
                nc_steps=nc_steps, synthetic_label=synthetic_label, n_stats=n_stats)
    curves = {(name, rank): c for name, e in r.exams.items() for rank, c in e["curves"].items()}
    orders = {name: e["orders"] for name, e in r.exams.items()}
    tuned = tuned_models(r.victims, curves, orders, n_defender=n_defender, seed=ch.seed,
                         device=ch.device)
    cam = gradcam_table(r.exams)
    tail = tails_table(r.exams)
    points = operating_points(r.victims, curves, orders, tuned)
    return {"accuracy": rows(accuracy_table(r.vanilla, r.victims)),
            "neural_cleanse": {"rows": rows(neural_cleanse_table(r.reversal)),
                               "flagged": {n: x.flagged for n, x in r.reversal.items()},
                               "suspect": {n: x.suspect for n, x in r.reversal.items()},
                               "synthetic": r.suspect, "target": target},
            "reversal": {n: arrays(e["reversal"]) for n, e in r.exams.items()},
            "gradcam": {n: arrays(e["gradcam"]) for n, e in r.exams.items()},
            "cam": rows(cam), "tails": rows(tail), "points": rows(points),
            "norms": {n: arrays(e["norms"]) for n, e in r.exams.items()},
            "overlap": rows(overlap_table(orders)),
            "curves": {n: e["curves"] for n, e in r.exams.items()},
            "orders": {n: arrays(o) for n, o in orders.items()},
            "rankings": list(lp.RANKINGS), "channels": next(iter(r.exams.values()))["channels"],
            "stopped": [n for n in attacks if lp.stop_at_asr(curves[n, "linf"]["defender"])
                        is not None],
            "claims": claims(attacks, cam, tail, points, curves),
            "model_and_recipe": ch.model_and_recipe()}


def _needs_exam(a: dict) -> list:
    return [trained_victim.job(**a["vanilla"]), reversed_triggers.job(**a["reversal"])]


@step("linf.examine", read=lambda kept, args: unpack(kept), needs=_needs_exam,
      work=lambda a: 6 * a["n_stats"] + 4 * a["reversal"]["n"],
      describe=lambda a: f"ℓ∞ examination {a['reversal']['victim']['attack']}")
def examined(vanilla: dict, reversal: dict, suspect: int, n_stats: int, target: int) -> Kept:
    """One attack's victim (the one `reversal`, the arguments of its Neural Cleanse job, was
    run on) beside the `vanilla` model: the reversed trigger for label `suspect` and the real
    one; Grad-CAM of both models on three images clean and with either trigger; the last conv
    map's per-channel norms on `n_stats` test images not of `target` (`statistics_set`), clean
    and with either trigger; every ranking's channel order from the defender's images and its
    pruning curves."""
    van, v = trained_victim(**vanilla), trained_victim(**reversal["victim"])
    found = reversed_triggers(**reversal)
    stats = statistics_set(van.test, target, n_stats, reversal["seed"])
    mask, pattern = found.trigger(suspect)
    shown = stats.images[:3]
    inputs = {"clean": shown, "real": v.attack.apply(shown),
              "synthetic": found.stamp(shown, suspect)}
    models = {"vanilla": van.model, "backdoored": v.model}
    orders, curves = pruning(v, found, suspect, n_defender=reversal["n"],
                             seed=reversal["seed"], target=target)
    return pack({
        "reversal": {"mask": mask[0], "masked_pattern": mask * pattern,
                     "real": v.attack.apply(stats.images[:1])[0]},
        "gradcam": {"images": inputs,
                    "heat": {m: {k: cams(model, x, van.test.normalize) for k, x in inputs.items()}
                             for m, model in models.items()}},
        "cam": gradcam_rows(models, v.attack, stats),
        "norms": norm_summary(models, stats, v.attack.apply(stats.images),
                              found.stamp(stats.images, suspect)),
        "orders": orders, "curves": curves, "channels": v.model.head.in_features})


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


def gradcam_rows(models: dict, attack, stats: ImageSet) -> list[dict]:
    """Per model, the share of the triggered images' Grad-CAM mass on the conv cells the
    trigger touches; none when the trigger touches every cell."""
    channels, size = stats.images.shape[1], tuple(stats.images.shape[2:])
    triggered = attack.apply(stats.images)
    rows = []
    for name, model in models.items():
        coarse = cams(model, triggered, stats.normalize, upsample=False)
        region = trigger_cells(attack, channels, size, coarse.shape[-2:])
        if region.all():
            return []
        rows.append({"model": name, "cells covered %": 100 * region.float().mean().item(),
                     "heat on trigger cells %": 100 * mass_in(coarse, region).nanmean().item()})
    return rows


def gradcam_table(exams: dict) -> pd.DataFrame:
    """Every attack's `gradcam_rows`; attacks whose trigger touches every cell are left out."""
    rows = [{"attack": name, **row} for name, e in exams.items() for row in e["cam"]]
    return pd.DataFrame(rows, columns=["attack", "model", "cells covered %",
                                       "heat on trigger cells %"]).set_index(["attack", "model"])


def norm_summary(models: dict, stats: ImageSet, real: torch.Tensor, synthetic: torch.Tensor
                 ) -> dict:
    """Per model: each channel's mean ℓ1, ℓ2 and ℓ∞ norm of the last conv map over `stats`,
    clean and with either trigger's images (`real`, `synthetic`); and each channel's
    standardised change of each norm under either trigger."""
    out = {}
    for name, model in models.items():
        maps = {kind: lp.feature_maps(model, stats.with_images(x)).cpu()
                for kind, x in zip(TRIGGERS, (stats.images, real, synthetic))}
        out[name] = {"means": {k: {p: v.mean(0) for p, v in lp.channel_norms(m).items()}
                               for k, m in maps.items()},
                     "changes": {t: lp.standardized_change(maps["clean"], maps[t])
                                 for t in ("real", "synthetic")}}
    return out


def tails_table(exams: dict) -> pd.DataFrame:
    """The largest standardised change of each norm per (attack, model, trigger)."""
    rows = [{"attack": name, "model": m, "trigger": t,
             **{p: e["norms"][m]["changes"][t][p].max().item() for p in lp.NORMS}}
            for name, e in exams.items() for m in ("backdoored", "vanilla")
            for t in ("real", "synthetic")]
    return pd.DataFrame(rows).set_index(["attack", "model", "trigger"])


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


def pruning(v, reversal: nc.Reversal, suspect: int, *, n_defender: int, seed: int,
            target: int) -> tuple[dict, dict]:
    """Every ranking's channel order of victim `v` (decided on the defender's images) and its
    pruning curves on the defender's images (synthetic trigger) and on the test set (real)."""
    defender, others, syn_set = defender_sets(v, reversal, suspect, n_defender=n_defender,
                                              seed=seed)
    real_set = others.with_images(v.attack.apply(others.images))
    orders = lp.rankings(lp.feature_maps(v.model, others), lp.feature_maps(v.model, syn_set),
                         lp.feature_maps(v.model, real_set), seed=seed)
    pooled = {k: lp.Pooled.of(v.model, d) for k, d in
              (("defender", defender), ("synthetic", syn_set), ("test", v.test),
               ("backdoor", v.backdoor))}
    counts = lp.counts_up_to(v.model.head.in_features)
    curves = {rank: {"defender": lp.sweep(v.model, order, pooled["defender"],
                                          pooled["synthetic"], suspect, counts),
                     "test": lp.sweep(v.model, order, pooled["test"], pooled["backdoor"], target,
                                      counts)}
              for rank, order in orders.items()}
    return orders, curves


def overlap_table(orders: dict) -> pd.DataFrame:
    """How many of the oracle's first k channels the synthetic ℓ∞ ranking also puts first."""
    return pd.DataFrame([{"attack": name, **{f"top-{k}": lp.top_k_overlap(
        o["linf"], o["oracle_linf"], k) for k in (1, 5, 10, 20)}}
        for name, o in orders.items()]).set_index("attack")


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

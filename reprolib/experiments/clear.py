"""The CLEAR chapter's experiments: three sample-targeted attacks drawn against a clean model,
CLEAR's and Deep k-NN's detection on every poisoned training set, the mitigation, the pocket in
input and in feature space, and the neighbourhood and dimension ablation; `measures` turns them
into the plain data the page (`views.clear`) is drawn from."""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import pandas as pd
import torch

from ..attacks.feature_collision import feature_collision
from ..attacks.gradient_matching import gradient_matching
from ..attacks.targeted import (PAIRINGS, Targeted, draw_target, hits, mislabelled_copies,
                                top_two)
from ..config import Recipe, check_choice, check_range
from ..defenses import clear
from ..jobs import Kept, pack, step, unpack
from ..metrics import auroc, precision_recall
from ..train import evaluate, linear_transfer, trained
from ..victims import sizes, trained_victim
from .plain import arrays, rows

ATTACKS = ("mislabelled copies", "feature collision", "gradient matching")
SETTING = {"mislabelled copies": "from scratch", "feature collision": "transfer",
           "gradient matching": "from scratch"}
METHODS = ["no defense", "Deep k-NN + FT", "CLEAR delete + FT", "CLEAR relabel + FT", "plain FT",
           "oracle relabel + FT"]
HEAD_RECIPE = Recipe(epochs=20, lr=0.01, schedule="cosine", augment=False)


def draws(scale) -> dict[str, int]:
    """How many (target, class) draws each attack gets, from the chapter's scale knobs."""
    return {name: check_range(knob, getattr(scale, knob), low=0, integer=True)
            for name, knob in zip(ATTACKS, ("draws_copies", "draws_collision", "draws_brew"))}


def check_parameters(*, pairing, brew_augment, brew_steps, restarts, copies, poisons, budget,
                     eps, dim, k_transfer, k_scratch, ks, dims) -> None:
    """The chapter's parameters, each checked, with a clear error for the first bad one."""
    check_choice("pairing", pairing, PAIRINGS)
    check_choice("brew_augment", brew_augment, (True, False))
    for name, value in (("brew_steps", brew_steps), ("restarts", restarts), ("copies", copies),
                        ("poisons", poisons), ("dim", dim), ("k_transfer", k_transfer),
                        ("k_scratch", k_scratch), *(("ks", k) for k in ks),
                        *(("dims", d) for d in dims)):
        check_range(name, value, low=1, integer=True)
    check_range("budget", budget, low=0, high=1, low_open=True)
    check_range("eps", eps, low=0, high=255, low_open=True)


@dataclass
class Run:
    """One (target, attacker class) draw of one attack, and what the chapter found on it."""
    attack: str
    draw: int
    target: int                  # the target's index in the test set
    true: int
    attacker: int
    atk: Targeted
    model: torch.nn.Module       # the attacked model
    before: torch.nn.Module      # the model the attack's setting starts from
    extractor: torch.nn.Module   # whose features CLEAR examines the training set with
    success: bool
    ca: float
    seconds: float               # crafting and training
    examined: clear.Examined | None = None
    clear_p: float = float("nan")
    clear_r: float = float("nan")
    knn_p: float = float("nan")
    knn_r: float = float("nan")
    oracle_enclosure: float = float("nan")
    after: dict = field(default_factory=dict)   # per mitigation, the defended model
    args: dict = field(default_factory=dict)    # the arguments of its job (`attacked`)

    @property
    def transfer(self) -> bool:
        return SETTING[self.attack] == "transfer"



def attack_args(clean, draws: dict[str, int], *, model_name: str, recipe: Recipe, pairing: str,
                copies: int, poisons: int, budget: float, eps: float, brew_steps: int,
                restarts: int, brew_augment: bool, pool_size: int, seed: int,
                device="auto") -> list[dict]:
    """The arguments of every draw's `attacked` job, on the clean model asked for by `clean`."""
    how = dict(model_name=model_name, recipe=recipe, pairing=pairing, copies=copies,
               poisons=poisons, budget=budget, eps=eps, brew_steps=brew_steps,
               restarts=restarts, brew_augment=brew_augment, pool_size=pool_size, seed=seed,
               device=device)
    return [dict(clean=clean, name=name, draw=i, attack_no=attack_no, **how)
            for attack_no, name in enumerate(draws) for i in range(draws[name])]


def own_seed(seed: int, i: int) -> int:
    """The seed of draw `i` of the chapter's `seed`: seed 0's draws are 0, 1, 2, ..., and no
    two of the chapter's seeds share a draw (each has fewer than 100,000)."""
    return 100_000 * seed + i


def _base(clean, name: str, draw: int, pool_size: int, seed: int):
    """The set an attack poisons: a fine-tuning pool for the transfer setting, else the whole
    training set."""
    return (clean.train.sample(pool_size, 1000 + own_seed(seed, draw))
            if SETTING[name] == "transfer" else clean.train)


def _poisoned(base, kept: Kept):
    """`base` with the kept poisons put back: images changed in place, copies appended."""
    t = kept.tensors
    grow = kept.record["size"] - len(base)
    images = torch.cat([base.images, t["images"][len(t["images"]) - grow:].to(
        base.images.device)]) if grow else base.images.clone()
    labels = torch.cat([base.labels, t["labels"][len(t["labels"]) - grow:].to(
        base.labels.device)]) if grow else base.labels.clone()
    where = t["indices"].to(images.device)
    images[where], labels[where] = t["images"].to(images.device), t["labels"].to(labels.device)
    return base.with_images(images, labels)


def _with_head(model, head: dict):
    net = copy.deepcopy(model).eval()
    net.head.load_state_dict(head)
    return net


def _heads(kept: Kept, prefix: str) -> dict:
    return {k[len(prefix):]: t for k, t in kept.tensors.items() if k.startswith(prefix)}


def _run(kept: Kept, a: dict) -> Run:
    clean, r = trained_victim(**a["clean"]), kept.record
    data = _poisoned(_base(clean, a["name"], a["draw"], a["pool_size"], a["seed"]), kept)
    atk = Targeted(data, kept.tensors["indices"], kept.tensors["target"],
                   kept.tensors["true_label"], r["attacker"])
    if SETTING[a["name"]] == "transfer":
        model = _with_head(clean.model, _heads(kept, "model.head."))
        before = _with_head(clean.model, _heads(kept, "before.head."))
    else:
        model = _scratch(a, data, r["target"], r["attacker"]).eval()
        before = clean.model
    extractor = clean.model if SETTING[a["name"]] == "transfer" else model
    return Run(a["name"], a["draw"], r["target"], r["true"], r["attacker"], atk, model, before,
               extractor, r["success"], r["ca"], r["seconds"], args=a)


def _scratch(a: dict, data, target: int, attacker: int):
    """The model trained from scratch on the poisoned `data` (through the zoo)."""
    model, _ = trained(a["model_name"], data, a["recipe"], seed=a["seed"], device=a["device"],
                       about={"dataset": a["clean"]["dataset"], "attack": a["name"],
                              "target": target, "attacker_class": attacker}, progress=False)
    return model


def _attack_passes(a: dict) -> float:
    """Crafting (feature collision's 500 steps per poison; gradient matching's steps per
    restart over its poisons, three passes each) and training from scratch."""
    n = sizes(a["clean"])[0]
    if a["name"] == "feature collision":
        return a["pool_size"] * 2 + 500 * a["poisons"]
    crafting = a["brew_steps"] * a["restarts"] * 3 * a["budget"] * n if (
        a["name"] == "gradient matching") else 0
    return n * a["recipe"].epochs + crafting


@step("clear.attack", read=_run, needs=lambda a: [trained_victim.job(**a["clean"])],
      work=_attack_passes, describe=lambda a: f"CLEAR {a['name']} draw {a['draw']}")
def attacked(clean: dict, name: str, draw: int, attack_no: int, *, model_name: str,
             recipe: Recipe, pairing: str, copies: int, poisons: int, budget: float, eps: float,
             brew_steps: int, restarts: int, brew_augment: bool, pool_size: int, seed: int,
             device="auto") -> Kept:
    """One draw of attack `name` against the clean model asked for by `clean`: a target and an
    attacker class, the poisons, and the attacked model (the head retrained on the clean
    extractor in the transfer setting, a model trained from scratch otherwise). Keeps the
    poisons (not the whole set) and, in the transfer setting, the two heads."""
    base_victim = trained_victim(**clean)
    test, train_set = base_victim.test, base_victim.train
    idx, true, attacker = draw_target(top_two(base_victim.model, test), test.labels,
                                      len(test.classes), pairing=pairing,
                                      seed=10_000 * seed + 100 * attack_no + draw)
    target_image = test.images[idx]
    start = time.perf_counter()
    heads = {}
    if name == "feature collision":
        pool = _base(base_victim, name, draw, pool_size, seed)
        atk = feature_collision(base_victim.model, pool, target_image, true, attacker,
                                n=poisons, eps=eps / 255, steps=500, seed=own_seed(seed, draw))
        model = linear_transfer(base_victim.model, atk.data, seed=own_seed(seed, draw))
        before = linear_transfer(base_victim.model, pool, seed=own_seed(seed, draw))
        heads = {**{f"model.head.{k}": t for k, t in model.head.state_dict().items()},
                 **{f"before.head.{k}": t for k, t in before.head.state_dict().items()}}
    else:
        if name == "mislabelled copies":
            atk = mislabelled_copies(train_set, target_image, true, attacker, copies=copies,
                                     seed=own_seed(seed, draw))
        else:
            atk = gradient_matching(base_victim.model, train_set, target_image, true, attacker,
                                    budget=budget, eps=eps / 255, steps=brew_steps,
                                    restarts=restarts, augment=brew_augment,
                                    seed=own_seed(seed, draw))
        model = _scratch(dict(clean=clean, name=name, model_name=model_name, recipe=recipe,
                              seed=seed, device=device), atk.data, idx, attacker).eval()
    where = atk.indices.to(atk.data.labels.device)
    return Kept({"indices": atk.indices, "images": atk.data.images[where],
                 "labels": atk.data.labels[where], "target": atk.target,
                 "true_label": atk.true_label, **heads},
                {"size": len(atk.data), "target": int(idx), "true": int(true),
                 "attacker": int(attacker), "success": hits(model, test, idx, attacker),
                 "ca": 100 * evaluate(model, test)["ca"], "seconds": time.perf_counter() - start})


def run_attacks(args: list[dict]) -> list[Run]:
    """Every draw of `attack_args`, computed or read back."""
    return [attacked(**a) for a in args]


def attack_table(runs: list[Run]) -> pd.DataFrame:
    return pd.DataFrame([{"attack": r.attack, "draw": r.draw, "target": r.target, "true": r.true,
                          "attacker": r.attacker, "success": r.success, "ca": r.ca,
                          "poisons": len(r.atk.indices), "seconds": r.seconds} for r in runs])


def _k(run: dict, k_transfer: int, k_scratch: int) -> int:
    return k_transfer if SETTING[run["name"]] == "transfer" else k_scratch


def _examine_passes(a: dict) -> float:
    """The features of the set examined, one forward pass: a third of a training pass. The hull
    LPs, most of its time on a CPU, are not estimated."""
    run = a["run"]
    if run:
        n = run["pool_size"] if SETTING[run["name"]] == "transfer" else sizes(run["clean"])[0]
    else:
        n = a["pool_size"] if a.get("pool") is not None else sizes(a["clean"])[0]
    return n / 3


@step("clear.examine", read=lambda kept, args: unpack(kept),
      needs=lambda a: ([attacked.job(**a["run"])] if a["run"]
                       else [trained_victim.job(**a["clean"])]),
      work=_examine_passes, describe=lambda a: "CLEAR detection " + (
          f"{a['run']['name']} draw {a['run']['draw']}" if a["run"] else
          f"clean pool {a['pool']}" if a.get("pool") is not None else
          f"clean model seed {a['clean']['seed']}"))
def examined(run: dict | None, k: int, dim: int, clean: dict | None = None,
             pool: int | None = None, pool_size: int = 0) -> Kept:
    """CLEAR's detection (`clear.examine`) on the training set of an attack's draw (`run`, the
    arguments of its `attacked` job), or with `run` None on a clean reference: fine-tuning pool
    `pool` of `pool_size` images, or (`pool` None) the clean model's own training set. Its cost
    is the features (one pass) and the hull LPs, which the plan does not estimate."""
    if run is not None:
        r = attacked(**run)
        return pack(clear.examine(r.extractor, r.atk.data, k=k, dim=dim))
    v = trained_victim(**clean)
    data = v.train if pool is None else v.train.sample(pool_size,
                                                        5000 + own_seed(clean["seed"], pool))
    return pack(clear.examine(v.model, data, k=k, dim=dim))


def detect(runs: list[Run], examinations: list) -> None:
    """Each run's `examinations` (CLEAR on its training set, see `results`): the sample-level
    precision and recall of CLEAR's and Deep k-NN's flags, and the widest-hull diagnosis."""
    for r, found in zip(runs, examinations):
        data, poisons = r.atk.data, r.atk.indices
        r.examined = found
        n = len(data)
        r.clear_p, r.clear_r = precision_recall(clear.flagged(r.examined.found), poisons, n)
        r.knn_p, r.knn_r = precision_recall(r.examined.knn.flagged.nonzero().flatten(),
                                            poisons, n)
        r.oracle_enclosure = clear.widest_hull_share(r.examined.z, data.labels, poisons, r.true)


def references(clean: dict, *, clean_pools: int, clean_models: int, pool_size: int,
               k_transfer: int, k_scratch: int, dim: int) -> dict[str, list[dict]]:
    """The arguments of the clean references' `examined` jobs: per setting, clean fine-tuning
    pools, and clean models from scratch (`clean` and more seeds)."""
    seeds = [clean["seed"]] + [own_seed(clean["seed"], 50_000 + j)    # not another chapter
                               for j in range(1, clean_models)]       # seed's clean model
    return {"transfer": [dict(run=None, k=k_transfer, dim=dim, clean=clean, pool=j,
                              pool_size=pool_size) for j in range(clean_pools)],
            "from scratch": [dict(run=None, k=k_scratch, dim=dim, clean={**clean, "seed": s})
                             for s in seeds]}


def calibrate(refs: dict[str, list[dict]]) -> dict[str, list[float]]:
    """Model scores of the clean references of `references`."""
    return {setting: [examined(**a).score for a in args] for setting, args in refs.items()}


def _mean(values) -> float:
    """The mean of the values that are not NaN; NaN when none is."""
    values = [v for v in values if not np.isnan(v)]
    return float(np.mean(values)) if values else np.nan


def detection_table(runs: list[Run], draws, clean_scores: dict, threshold: dict) -> pd.DataFrame:
    """Per attack: model-level AUROC and TPR against the clean references, CLEAR's and Deep
    k-NN's precision and recall over the successful attacks (and all draws), the widest-hull
    diagnosis and CLEAR's seconds per model."""
    rows = []
    for name in draws:
        mine = [r for r in runs if r.attack == name]
        won = [r for r in mine if r.success]
        s = SETTING[name]
        scores = [r.examined.score for r in mine]
        row = {"attack": name, "setting": s, "models": len(mine), "succeeded": len(won),
               "clean references": len(clean_scores[s]),
               "AUROC": auroc(clean_scores[s], scores) if mine else np.nan,
               "TPR %": 100 * np.mean([x > threshold[s] for x in scores]) if mine else np.nan}
        for who, tag in (("clear", "CLEAR"), ("knn", "Deep k-NN")):
            for m, label in (("p", "precision %"), ("r", "recall %")):
                row[f"{tag} {label}"] = 100 * _mean([getattr(r, f"{who}_{m}") for r in won])
                row[f"{tag} {label} (all)"] = 100 * _mean([getattr(r, f"{who}_{m}") for r in mine])
        row["poisons in the widest hull %"] = (100 * np.mean([r.oracle_enclosure for r in won])
                                               if won else np.nan)
        row["CLEAR s / model"] = np.mean([r.examined.seconds for r in mine]) if mine else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("attack")


def top_pockets(runs: list[Run]) -> pd.DataFrame:
    """What each model's highest-scoring pocket holds."""
    rows = []
    for r in runs:
        found = r.examined.found
        top = found[0] if found else None
        rows.append({"attack": r.attack, "draw": r.draw, "success": r.success,
                     "score": r.examined.score,
                     "poisons / size of the top pocket":
                     f"{int(torch.isin(top.pocket.cpu(), r.atk.indices).sum())} / "
                     f"{len(top.pocket)}" if top else "0 / 0",
                     "label → hull class": f"{top.label} → {top.hull_class}"
                     if top and top.hull is not None else "",
                     "true pair": f"{r.attacker} → {r.true}",
                     "wrapped pockets": sum(f.hull is not None for f in found),
                     "candidates": int(r.examined.hood.flagged.sum())})
    return pd.DataFrame(rows)


def mitigation_sets(r: Run, plain) -> dict:
    """The training sets each mitigation fine-tunes on."""
    data, found = r.atk.data, r.examined.found
    keep = (~r.examined.knn.flagged).nonzero().flatten()
    oracle = data.labels.clone()
    oracle[r.atk.indices.to(oracle.device)] = r.true
    return {"Deep k-NN + FT": data.subset(keep), "CLEAR delete + FT": clear.deleted(data, found),
            "CLEAR relabel + FT": clear.relabelled(data, found), "plain FT": plain,
            "oracle relabel + FT": data.with_images(data.images, oracle)}


def _mitigated(kept: Kept, a: dict) -> dict:
    r = attacked(**a["run"])
    if r.transfer:
        relabel = _with_head(r.model, _heads(kept, "head."))
    else:
        relabel = copy.deepcopy(r.model).eval()
        relabel.load_state_dict(kept.tensors)
    return {"rows": kept.record["rows"], "relabelled": relabel}


def _mitigation_passes(a: dict) -> float:
    if SETTING[a["run"]["name"]] == "transfer":
        return 0
    return sizes(a["run"]["clean"])[0] * a["scratch_recipe"].epochs * (len(METHODS) - 1)


@step("clear.mitigate", read=_mitigated, needs=lambda a: [examined.job(**a["examined_"])],
      work=_mitigation_passes, describe=lambda a: f"CLEAR mitigation {a['run']['name']} draw "
                                               f"{a['run']['draw']}")
def mitigated(run: dict, examined_: dict, scratch_recipe: Recipe, plain_one_in: int,
              seed: int) -> Kept:
    """Every mitigation of a successful draw (`run`, with its detection `examined_`): whether
    the target still goes to the attacker's class, and the CA; keeps the model CLEAR's relabel
    gives (its head alone in the transfer setting). Plain fine-tuning takes one in
    `plain_one_in` clean training images, drawn from `seed`."""
    r = attacked(**run)
    r.examined = examined(**examined_)
    train_set = trained_victim(**run["clean"]).train
    recipe = HEAD_RECIPE if r.transfer else scratch_recipe
    after = {"no defense": r.model}
    plain = train_set.sample(max(len(train_set) // plain_one_in, 2), seed)
    for m, d in mitigation_sets(r, plain).items():
        after[m] = clear.fine_tuned(r.model, d, recipe, head_only=r.transfer, seed=seed)
    test = trained_victim(**run["clean"]).test
    rows = [{"attack": r.attack, "draw": r.draw, "method": m,
             "still succeeds": hits(net, test, r.target, r.attacker),
             "CA %": 100 * evaluate(net, test)["ca"]} for m, net in after.items()]
    relabel = after["CLEAR relabel + FT"]
    state = ({f"head.{k}": t for k, t in relabel.head.state_dict().items()} if r.transfer
             else relabel.state_dict())
    return Kept(state, {"rows": rows})


def mitigate(runs: list[Run], mitigations: dict) -> pd.DataFrame:
    """Every successful attack through every mitigation (`mitigations`, by attack and draw):
    whether the target still goes to the attacker's class, and the CA (one row per attack,
    draw and method)."""
    rows = []
    for r in runs:
        if r.success:
            found = mitigations[r.attack, r.draw]
            r.after = {"CLEAR relabel + FT": found["relabelled"]}
            rows += found["rows"]
    return pd.DataFrame(rows, columns=["attack", "draw", "method", "still succeeds", "CA %"])


def results(ch, *, pairing="nearest", draws_copies=None, draws_collision=None,
            draws_brew=None, copies=50, poisons=25, budget=0.01, eps=8, brew_steps=None,
            restarts=None, pool_size=None, brew_augment=True, dim=8, k_transfer=50,
            k_scratch=100, ks=(25, 50, 100), dims=(4, 8, 16, 32),
            plain_one_in=20) -> SimpleNamespace:
    """The clean model, every attack's draws and CLEAR's detection on each, the clean
    references' scores, and the mitigation of every successful draw (plain fine-tuning on one
    in `plain_one_in` clean training images). `ks` and `dims`, the page's ablation, are
    checked here with the rest."""
    scale = ch.scale(draws_copies=draws_copies, draws_collision=draws_collision,
                     draws_brew=draws_brew, brew_steps=brew_steps, restarts=restarts,
                     pool_size=pool_size)
    check_parameters(pairing=pairing, brew_augment=brew_augment, brew_steps=scale.brew_steps,
                     restarts=scale.restarts, copies=copies, poisons=poisons, budget=budget,
                     eps=eps, dim=dim, k_transfer=k_transfer, k_scratch=k_scratch, ks=ks,
                     dims=dims)
    clean_args = ch.victim_args(None)
    clean = trained_victim(**clean_args)
    args = attack_args(clean_args, draws(scale), model_name=ch.model, recipe=ch.recipe,
                       pairing=pairing, copies=copies, poisons=poisons, budget=budget, eps=eps,
                       brew_steps=scale.brew_steps, restarts=scale.restarts,
                       brew_augment=brew_augment, pool_size=scale.pool_size, seed=ch.seed,
                       device=ch.device)
    runs = run_attacks(args)
    detections = [dict(run=a, k=_k(a, k_transfer, k_scratch), dim=dim) for a in args]
    examinations = [examined(**d) for d in detections]
    clean_scores = calibrate(references(
        clean_args, clean_pools=scale.clean_pools, clean_models=scale.clean_models,
        pool_size=scale.pool_size, k_transfer=k_transfer, k_scratch=k_scratch, dim=dim))
    scratch_recipe = Recipe(epochs=scale.scratch_epochs, lr=0.01, schedule="cosine")
    mitigations = {(r.attack, r.draw): mitigated(run=a, examined_=d,
                                                 scratch_recipe=scratch_recipe,
                                                 plain_one_in=plain_one_in, seed=ch.seed)
                   for r, a, d in zip(runs, args, detections) if r.success}
    ablations = [ablated(run=a, dims=list(dims), ks=list(ks)) for a in args
                 if a["name"] == "feature collision"]
    return SimpleNamespace(scale=scale, draws=draws(scale), clean=clean, runs=runs,
                           examinations=examinations, clean_scores=clean_scores,
                           mitigations=mitigations, ablations=ablations)


def measures(ch, *, pairing="nearest", draws_copies=None, draws_collision=None,
             draws_brew=None, copies=50, poisons=25, budget=0.01, eps=8, brew_steps=None,
             restarts=None, pool_size=None, brew_augment=True, dim=8, k_transfer=50,
             k_scratch=100, ks=(25, 50, 100), dims=(4, 8, 16, 32)) -> dict:
    """What the CLEAR page shows, as plain data (see `views.clear`)."""
    r = results(ch, pairing=pairing, draws_copies=draws_copies, draws_collision=draws_collision,
                draws_brew=draws_brew, copies=copies, poisons=poisons, budget=budget, eps=eps,
                brew_steps=brew_steps, restarts=restarts, pool_size=pool_size,
                brew_augment=brew_augment, dim=dim, k_transfer=k_transfer, k_scratch=k_scratch,
                ks=ks, dims=dims)
    runs = r.runs
    detect(runs, r.examinations)
    threshold = {s: float(np.percentile(v, 95)) for s, v in r.clean_scores.items()}
    detection = detection_table(runs, r.draws, r.clean_scores, threshold)
    per_draw = mitigate(runs, r.mitigations)
    train_seconds = sum(r.clean.card["history"]["epoch_seconds"])
    shown = next((x for x in runs if x.success), runs[0] if runs else None)
    return {"attacks": rows(attack_table(runs)),
            "clean_ca": 100 * evaluate(r.clean.model, r.clean.test)["ca"],
            "runs": [run_row(x) for x in runs], "draws": r.draws, "settings": SETTING,
            "clean_scores": r.clean_scores, "threshold": threshold,
            "detection": rows(detection), "top_pockets": rows(top_pockets(runs)),
            "mitigation": rows(per_draw), "methods": METHODS,
            "pocket": pocket_picture(shown, r.clean.test, r.clean.train, ch.seed) if shown else None,
            "features": feature_picture(shown, r.clean.test, ch.seed) if shown else None,
            "ablation": rows(ablation(r.ablations)),
            "hull_enclosures": [float(f.hull.enclosure) for x in runs for f in x.examined.found
                                if f.hull is not None],
            "train_seconds": train_seconds,
            "claims": claims(runs, per_draw, detection, train_seconds),
            "model_and_recipe": ch.model_and_recipe()}


def run_row(r: Run) -> dict:
    """What the page reads of one draw: its pair, whether it succeeded, its setting, the
    model's score and CLEAR's seconds, and both detectors' precision and recall."""
    return {"attack": r.attack, "draw": r.draw, "target": r.target, "true": r.true,
            "attacker": r.attacker, "success": r.success, "transfer": r.transfer, "ca": r.ca,
            "score": r.examined.score, "seconds": r.examined.seconds, "clear_p": r.clear_p,
            "clear_r": r.clear_r, "knn_p": r.knn_p, "knn_r": r.knn_r}


def pocket_picture(shown: Run, test, train_set, seed: int, extent: float = 1.5) -> dict:
    """Decision regions on the input-space plane through the target, spanned by the direction
    to one poison and to a random training image of the target's class: before the attack,
    after it and (when mitigated) after CLEAR."""
    origin = test.images[shown.target]
    toward = shown.atk.data.images[shown.atk.indices[0]]
    same = (train_set.labels == shown.true).nonzero().flatten()
    across = train_set.images[same[torch.randint(
        len(same), (1,), generator=torch.Generator().manual_seed(seed))]][0]
    panels = {"before the attack": shown.before, "after the attack": shown.model}
    if shown.after:
        panels["after CLEAR"] = shown.after["CLEAR relabel + FT"]
    return {"panels": {title: arrays(clear.decision_slice(net, test, origin, toward, across,
                                                           extent=extent, steps=41))
                       for title, net in panels.items()},
            "extent": extent, "classes": list(test.classes), "true": shown.true,
            "attacker": shown.attacker, "attack": shown.attack, "draw": shown.draw,
            "target": shown.target, "success": shown.success}


def feature_picture(shown: Run, test, seed: int, most: int = 1500) -> dict:
    """The extractor's features (2-D PCA) of up to `most` training images of the target's and
    of the attacker's class, the poisons and the target; and the hull CLEAR fitted around the
    pocket holding most poisons (its vertices' coordinates and what it is), None where it
    wrapped no pocket holding a poison."""
    data = shown.atk.data
    both = data.with_images(torch.cat([data.images, test.images[shown.target][None]]),
                            torch.cat([data.labels, torch.tensor([shown.true])]))
    xy = clear.features(shown.extractor, both, dim=2).cpu()
    poison_mask = torch.zeros(len(data), dtype=torch.bool)
    poison_mask[shown.atk.indices] = True
    g = torch.Generator().manual_seed(seed)
    classes = {}
    for c in (shown.true, shown.attacker):
        members = ((data.labels.cpu() == c) & ~poison_mask).nonzero().flatten()
        classes[test.classes[c]] = arrays(xy[members[torch.randperm(len(members),
                                                                    generator=g)[:most]]])
    wrapped = [f for f in shown.examined.found if f.hull is not None]
    best = max(wrapped, key=lambda f: int(poison_mask[f.pocket.cpu()].sum()), default=None)
    hull = None
    if best is not None and int(poison_mask[best.pocket.cpu()].sum()) > 0:
        hull = {"corners": arrays(xy[best.hull.vertices.cpu()]), "class": int(best.hull_class),
                "enclosure": float(best.hull.enclosure), "tightness": float(best.hull.tightness),
                "pocket": len(best.pocket),
                "poisons": int(poison_mask[best.pocket.cpu()].sum())}
    return {"classes": classes, "poisons": arrays(xy[:-1][poison_mask]),
            "target": arrays(xy[-1]), "hull": hull, "attack": shown.attack, "draw": shown.draw}


ABLATION_COLUMNS = ["dim", "k", "CLEAR recall %", "CLEAR precision %", "Deep k-NN recall %",
                    "Deep k-NN precision %", "wrapped pockets"]


def _ablation_passes(a: dict) -> float:
    return len(a["dims"]) * len(a["ks"]) * a["run"]["pool_size"] * 2 / 3


@step("clear.ablate", read=lambda kept, args: kept.record["rows"],
      needs=lambda a: [attacked.job(**a["run"])], work=_ablation_passes,
      describe=lambda a: f"CLEAR ablation {a['run']['name']} draw {a['run']['draw']}")
def ablated(run: dict, dims: list, ks: list) -> Kept:
    """CLEAR's and Deep k-NN's recall and precision and CLEAR's wrapped pockets on the training
    set of an attack's draw (`run`), per PCA dimension of `dims` and neighbourhood size of `ks`
    (those smaller than the set), with the clean model's features."""
    r = attacked(**run)
    extractor = trained_victim(**run["clean"]).model
    data, poisons = r.atk.data, r.atk.indices
    rows = []
    for d in dims:
        z = clear.features(extractor, data, dim=d)
        labels = data.labels.to(z.device)
        for k in (k for k in ks if k < len(data)):
            found = clear.detect(z, labels, hood=clear.neighbourhood(z, labels, k=k))
            knn = clear.neighbourhood(clear.features(extractor, data), labels, k=k)
            cp, cr = precision_recall(clear.flagged(found), poisons, len(data))
            kp, kr = precision_recall(knn.flagged.nonzero().flatten(), poisons, len(data))
            rows.append({"dim": d, "k": k, "CLEAR recall %": 100 * cr,
                         "CLEAR precision %": 100 * cp, "Deep k-NN recall %": 100 * kr,
                         "Deep k-NN precision %": 100 * kp,
                         "wrapped pockets": sum(f.hull is not None for f in found)})
    return Kept(record={"rows": rows})


def ablation(per_draw: list[list[dict]]) -> pd.DataFrame:
    """The feature-collision draws' `ablated` rows averaged per PCA dimension and
    neighbourhood size."""
    rows = [row for found in per_draw for row in found]
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS).groupby(["dim", "k"]).mean()


def claims(runs: list[Run], per_draw: pd.DataFrame, detection: pd.DataFrame,
           train_seconds: float) -> dict[str, float]:
    """The abstract's claims' measures, over the successful attacks."""
    won = [r for r in runs if r.success]
    after = per_draw[per_draw.method == "CLEAR relabel + FT"]
    scratch = [r for r in runs if not r.transfer]
    aurocs = detection["AUROC"].dropna()
    measured = {"successful_draws": len(won)}
    if won:
        measured["pocket_share"] = 100 * np.mean([r.knn_r >= 0.5 for r in won])
        measured["clear_recall"] = 100 * np.mean([r.clear_r for r in won])
        measured["success_after_clear"] = 100 * after["still succeeds"].mean()
        before_ca = {(r.attack, r.draw): r.ca for r in won}
        measured["ca_drop_clear"] = float(np.mean([
            before_ca[a, d] - ca for a, d, ca in after[["attack", "draw", "CA %"]].itertuples(
                index=False)]))
    if len(aurocs):
        measured["auroc"] = float(aurocs.mean())
    if scratch:
        measured["detect_time_share"] = (float(np.mean([r.examined.seconds for r in scratch]))
                                         / train_seconds)
    return measured



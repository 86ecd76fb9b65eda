"""The MESA chapter's experiments: per 3×3 patch, a backdoor injected into the clean model, MESA's
generators and the baseline's reversed triggers, every retraining; then the β and α sweeps, the
trigger distributions, the retraining rate and the target-class detection."""
from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pandas as pd
import torch

from ..attacks.patch import Patch
from ..attacks.patterns import pattern_classes
from ..config import Recipe, check_choice, check_range, profile
from ..data import ImageSet
from ..defenses import mesa
from ..embedding import EMBEDDINGS, embed
from ..jobs import Kept, pack, step, unpack
from ..models import model_device
from ..train import evaluate
from ..victims import datasets, injected, sizes, trained_victim
from .plain import arrays, rows

MESA_METHODS = ["MESA β=0.9", "MESA β=0.8", "MESA β=0.5"]   # the rows of the three β


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
    """One patch's run: its injected victim, MESA's search, the baseline's triggers, the rows
    it adds to the defense and samples tables, and the arguments of its job (`run`)."""
    victim: object
    found: mesa.Search
    reversed: torch.Tensor
    rows: list[dict]
    samples: list[dict]
    run: dict


def check_parameters(scale, *, rate: float, rates, alphas, embedding: str) -> None:
    """The chapter's parameters, checked before any work."""
    check_range("n_patterns", scale.n_patterns, low=1, high=len(pattern_classes()), integer=True)
    check_range("n_random", scale.n_random, low=0, integer=True)
    check_range("rounds", scale.rounds, low=2, integer=True)
    for r in [rate, *rates]:
        check_range("rate", r, low=0, high=1, low_open=True)
    for a in alphas:
        check_range("alphas", a, low=0)
    check_choice("embedding", embedding, EMBEDDINGS)


def how(ch, scale, *, target: int, rate: float, search_batch: int, reverse_batch: int) -> dict:
    """How every patch is injected, searched for and retrained on, at the chapter's scale."""
    return dict(target=target, inject_rate=scale.inject_rate,
                inject_recipe=mesa.RETRAIN.replace(epochs=scale.inject_epochs),
                settings=mesa.Settings(epochs=scale.search_epochs, batch_size=search_batch),
                reverse_settings=mesa.ReverseSettings(rounds=scale.rounds,
                                                      batch_size=reverse_batch),
                retrain_recipe=mesa.RETRAIN.replace(epochs=scale.retrain_epochs), rate=rate,
                seed=ch.seed)


def _injected(clean: dict, patch: Patch, target: int, inject_rate: float,
              inject_recipe: Recipe, seed: int, **_):
    """The victim of `patch` injected into the clean model asked for by `clean`, and the
    defender's and held-out parts of the test set."""
    base = trained_victim(**clean)
    v = injected(base, patch, rate=inject_rate, target=target, recipe=inject_recipe, seed=seed,
                 progress=False)
    return (v, *mesa.split(base.test, seed=seed))


def _with_generators(kept: Kept, run: dict):
    """`run`'s injected victim, and what a step kept for it with each generator rebuilt (in
    eval mode, on the victim's device)."""
    v = _injected(**run)[0]
    device = model_device(v.model)

    def generator(path, state):
        first, last = state["fc.0.weight"], state["fc.3.weight"]
        return mesa.Generator(first.shape[0], 4 * first.shape[1], last.shape[0]).to(device).eval()
    return v, unpack(kept, generator)


def _defended(kept: Kept, run: dict) -> Defended:
    v, value = _with_generators(kept, run)
    return Defended(v, value["found"], value["reversed"], value["rows"], value["samples"], run)


def _pattern_passes(a: dict) -> float:
    """Injection over the training set; per β a search over the defender's part of the test
    set (the generators' passes counted as one model pass); the retrainings."""
    n_train, n_test = sizes(a["clean"])
    defender = 0.8 * n_test
    s, r = a["settings"], a["reverse_settings"]
    retrains = 3 + len(s.betas) + r.rounds
    return (n_train * a["inject_recipe"].epochs + defender * s.epochs * len(s.betas)
            + defender * a["retrain_recipe"].epochs * retrains
            + r.rounds * r.epochs * r.batches * r.batch_size)


@step("mesa.pattern", read=_defended, known=lambda a: {"run": a},
      needs=lambda a: [trained_victim.job(**a["clean"])], work=_pattern_passes,
      describe=lambda a: f"MESA pattern {a['name']}")
def defended_pattern(clean: dict, name: str, patch: Patch, *, target: int, inject_rate: float,
                     inject_recipe: Recipe, settings: mesa.Settings,
                     reverse_settings: mesa.ReverseSettings, retrain_recipe: Recipe,
                     rate: float, seed: int) -> Kept:
    """`defend_pattern` on the clean model asked for by `clean`, as a job."""
    run = dict(clean=clean, name=name, patch=patch, target=target, inject_rate=inject_rate,
               inject_recipe=inject_recipe, settings=settings, reverse_settings=reverse_settings,
               retrain_recipe=retrain_recipe, rate=rate, seed=seed)
    d = defend_pattern(run)
    return pack({"found": d.found, "reversed": d.reversed, "rows": d.rows,
                 "samples": d.samples})


def defend_pattern(run: dict) -> Defended:
    """The backdoor of `run`'s patch injected into the clean model; MESA's generators and the
    baseline's reversed triggers searched on the defender's part of the test set; the model
    retrained on each (and on the true patch, and on nothing); every model scored on the
    held-out part, and every sampler's entropy and trigger ASR measured."""
    v, defender, held_out = _injected(**run)
    patch, target, seed = run["patch"], run["target"], run["seed"]
    retrain_recipe, rate = run["retrain_recipe"], run["rate"]
    backdoor = patch.triggered(held_out, target)
    found = mesa.search(v.model, defender, target, run["settings"], seed=seed)
    reversed_ = mesa.reverse(v.model, defender, target, run["reverse_settings"], seed=seed)
    row = dict(pattern=run["name"], family=family(run["name"]))
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
    return Defended(v, found, reversed_, rows, samples, run)


@step("mesa.search", read=lambda kept, args: _with_generators(kept, args["run"])[1],
      needs=lambda a: [trained_victim.job(**a["run"]["clean"])],
      work=lambda a: 0.8 * sizes(a["run"]["clean"])[1] * a["settings"].epochs,
      describe=lambda a: f"MESA search α={a['settings'].alpha:g} pattern {a['run']['name']}")
def searched(run: dict, settings: mesa.Settings) -> Kept:
    """MESA's generators for the injected victim of `run` (a `defended_pattern`'s arguments),
    searched by `settings` on the defender's images."""
    v, defender, _ = _injected(**run)
    return pack(mesa.search(v.model, defender, run["target"], settings, seed=run["seed"]))


@step("mesa.detect", read=lambda kept, args: unpack(kept),
      needs=lambda a: [trained_victim.job(**a["run"]["clean"])],
      work=lambda a: 8 * sizes(a["run"]["clean"])[1] * a["settings"].epochs,
      describe=lambda a: f"MESA detection pattern {a['run']['name']}")
def detected(run: dict, settings: mesa.Settings) -> Kept:
    """Per candidate class, the held-out ASR of a generator searched for it (`mesa.detect`)."""
    v, defender, held_out = _injected(**run)
    return pack(mesa.detect(v.model, defender, held_out, settings, seed=run["seed"]))


@step("mesa.retrain", read=lambda kept, args: unpack(kept),
      needs=lambda a: [defended_pattern.job(**a["run"])],
      work=lambda a: 0.8 * sizes(a["run"]["clean"])[1] * a["run"]["retrain_recipe"].epochs,
      describe=lambda a: f"MESA retraining {a['method']} at rate {a['rate']:g}")
def retrained(run: dict, method: str, rate: float) -> Kept:
    """The scores of `run`'s victim retrained on triggers from its MESA ensemble (`method`
    "MESA ensemble") or its baseline's round k ("baseline round k") at `rate`."""
    d = defended_pattern(**run)
    _, defender, held_out = _injected(**run)
    triggers = (mesa.mixture(list(d.found.generators.values())) if method == "MESA ensemble"
                else mesa.fixed(d.reversed[int(method.rsplit(" ", 1)[1])]))
    tuned = mesa.retrain(d.victim.model, defender, triggers, run["retrain_recipe"], rate=rate,
                         seed=run["seed"])
    return pack(scores(tuned, held_out, run["patch"].triggered(held_out, run["target"]),
                       run["target"]))


def results(ch, *, target=0, n_patterns=None, n_random=None, rounds=None, rate=0.01,
            rates=(0.1, 0.5), alphas=(0.0, 0.1, 10.0), embedding="svd", search_batch=128,
            reverse_batch=100) -> SimpleNamespace:
    """Every patch's run; on the first (pattern 170) the α sweep's generators, the detection
    and the retrainings of the rate sensitivity; the runs' rows as tables."""
    scale = ch.scale(n_patterns=n_patterns, n_random=n_random, rounds=rounds)
    check_parameters(scale, rate=rate, rates=rates, alphas=alphas, embedding=embedding)
    p = profile(ch.profile, ch.dataset)
    channels = datasets(ch.dataset, ch.data_dir, p.n_train, p.n_test, ch.seed)[1].images.shape[1]
    way = how(ch, scale, target=target, rate=rate, search_batch=search_batch,
              reverse_batch=reverse_batch)
    clean = trained_victim(**ch.victim_args(None))
    chosen = patches(scale.n_patterns, scale.n_random, channels)
    runs = {name: defended_pattern(clean=ch.victim_args(None), name=name, patch=patch, **way)
            for name, patch in chosen.items()}
    run170 = next(iter(runs.values()))
    by_alpha = alpha_generators(run170, alphas, way["settings"])
    found = detected(run=run170.run, settings=dataclasses.replace(way["settings"], betas=(0.9,)))
    rows = pd.DataFrame([r for run in runs.values() for r in run.rows])
    return SimpleNamespace(
        scale=scale, settings=way["settings"], channels=channels, clean=clean, patches=chosen,
        runs=runs, run170=run170, by_alpha=by_alpha, detected=found, rows=rows,
        samples=pd.DataFrame([r for run in runs.values() for r in run.samples]),
        retrained=rate_retrainings(run170, rates))


def measures(ch, *, target=0, n_patterns=None, n_random=None, rounds=None, rate=0.01,
             rates=(0.1, 0.5), alphas=(0.0, 0.1, 10.0), embedding="svd", search_batch=128,
             reverse_batch=100) -> dict:
    """What the MESA page shows, as plain data (see `views.mesa`). The searches, injections
    and retrainings are jobs; scoring the clean model and sampling the generators they kept
    run here, so that the page only draws."""
    r = results(ch, target=target, n_patterns=n_patterns, n_random=n_random, rounds=rounds,
                rate=rate, rates=rates, alphas=alphas, embedding=embedding,
                search_batch=search_batch, reverse_batch=reverse_batch)
    _, held_out = mesa.split(r.clean.test, seed=ch.seed)
    alpha_table = alpha_sweep(r.run170, r.by_alpha, held_out=held_out, target=target,
                              seed=ch.seed)
    detection_table = detection(r.run170, r.detected)
    clean_ca = 100 * evaluate(r.clean.model, held_out)["ca"]
    return {"defense": rows(r.rows), "samples": rows(r.samples), "clean_ca": clean_ca,
            "patches": {name: arrays(p.tensor()) for name, p in r.patches.items()},
            "channels": r.channels, "betas": list(r.settings.betas), "rounds": r.scale.rounds,
            "n_random": r.scale.n_random, "classes": len(held_out.classes), "target": target,
            "beta": drawn(list(r.run170.found.generators.items()), embedding, ch.seed),
            "alpha_sweep": rows(alpha_table),
            "alpha": drawn(list(r.by_alpha.items()), embedding, ch.seed),
            "distribution": distribution(r.runs, r.patches, embedding, ch.seed),
            "rates": rows(rate_sensitivity(r.run170, r.rows, r.retrained)),
            "detection": rows(detection_table),
            "claims": claims(r.rows, r.samples, detection_table, alpha_table, clean_ca, target),
            "model_and_recipe": ch.model_and_recipe()}


def drawn(generators: list, embedding: str, seed: int, n: int = 128) -> dict:
    """`n` samples of each of `generators` ((key, generator) pairs: a β or an α each) and their
    coordinates in one embedding."""
    draws = [mesa.sample(g, n, seed=seed).cpu() for _, g in generators]
    return {"keys": [k for k, _ in generators], "draws": arrays(draws),
            "xy": embed(torch.cat(draws), embedding, seed=seed)}


def distribution(runs: dict, patches_: dict, embedding: str, seed: int, n: int = 128) -> list:
    """For up to four black-and-white patterns: MESA's samples (every β), the baseline's
    reversed triggers and the original patch, in one embedding per pattern."""
    shown = []
    for name in [p for p in patches_ if family(p) == "black and white"][:4]:
        found, reversed_ = runs[name].found, runs[name].reversed.cpu()
        cloud = torch.cat([mesa.sample(g, n, seed=seed) for g in found.generators.values()]).cpu()
        original = patches_[name].tensor()[None]
        shown.append({"pattern": name, "betas": list(found.generators), "n": n,
                      "reversed": arrays(reversed_), "original": arrays(original),
                      "xy": embed(torch.cat([cloud, reversed_, original]), embedding, seed=seed)})
    return shown


def alpha_generators(defended: Defended, alphas, settings: mesa.Settings) -> dict:
    """A β = 0.9 generator per entropy weight α (the one at `settings.alpha` is the patch's
    run's)."""
    return {a: (defended.found.generators[0.9] if a == settings.alpha else
                searched(run=defended.run, settings=dataclasses.replace(
                    settings, betas=(0.9,), alpha=a)).generators[0.9])
            for a in alphas}


def alpha_sweep(defended: Defended, by_alpha: dict, *, held_out: ImageSet, target: int,
                seed: int) -> pd.DataFrame:
    """Each α's generator's entropy and trigger ASR (`alpha_generators`)."""
    return pd.DataFrame([
        {"α": a, "entropy (nats)": entropy(g, seed),
         "trigger ASR %": 100 * mesa.trigger_asr(defended.victim.model, held_out,
                                                 mesa.from_generator(g), target, seed=seed)}
        for a, g in by_alpha.items()]).set_index("α")


def worst_round(defended: Defended) -> int:
    """The baseline's restart with the highest ASR after retraining."""
    rounds = [r for r in defended.rows if r["method"] == "baseline"]
    return max(rounds, key=lambda r: r["ASR %"])["round"]


def rate_retrainings(defended: Defended, rates) -> dict:
    """The retrainings of `rate_sensitivity`, by (rate, method): the ensemble and the worst
    baseline restart at each of `rates`."""
    methods = ("MESA ensemble", f"baseline round {worst_round(defended)}")
    return {(r, m): retrained(run=defended.run, method=m, rate=r) for r in rates for m in methods}


def rate_sensitivity(defended: Defended, results: pd.DataFrame, retrainings: dict
                     ) -> pd.DataFrame:
    """For `defended`'s pattern, the ensemble and the baseline's worst restart retrained with
    a trigger on each share of the images of `retrainings` (the run's own rate read from
    `results`), and clean fine-tuning for reference."""
    run = defended.run
    mine = results[results.pattern == run["name"]]
    at_rate = mine.set_index(["method", "round"])["ASR %"]
    worst = worst_round(defended)
    rows = [{"rate": run["rate"], "method": "MESA ensemble",
             "ASR %": at_rate["MESA ensemble", 0]},
            {"rate": run["rate"], "method": f"baseline round {worst}",
             "ASR %": at_rate["baseline", worst]}]
    rows += [{"rate": r, "method": m, **scored} for (r, m), scored in retrainings.items()]
    table = pd.DataFrame(rows).pivot_table(index="rate", columns="method", values="ASR %")
    table["clean fine-tune"] = mine[mine.method == "clean fine-tune"]["ASR %"].item()
    return table


def detection(defended: Defended, found: dict) -> pd.DataFrame:
    """Per candidate class, the held-out ASR of a β = 0.9 generator searched for it
    (`detected`)."""
    classes = defended.victim.test.classes
    return pd.DataFrame({"class": list(found), "name": [classes[k] for k in found],
                         "generated-trigger ASR %": [100 * a for a in found.values()]}
                        ).set_index("class")


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
        "undefended_asr_min": attack_rows["ASR %"].min(),
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



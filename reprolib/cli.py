"""The `repro` command.

  repro data [DATASET ...]      find (or download) datasets and say where they are
  repro train [options]         train one clean model through the zoo and report its accuracy
  repro demo [options]          train a clean and a BadNets model, print CA / ASR / RA
  repro zoo                     list the trained models in the cache
"""
from __future__ import annotations

import argparse
import sys

import torch

from . import config, data, models
from .attacks import badnets
from .train import evaluate, trained
from .zoo import Zoo


def _run_record(profile: str, dataset: str, device: torch.device) -> str:
    return (f"profile {profile} · dataset {dataset} · device {config.device_name(device)} · "
            f"code {config.code_version()} · torch {torch.__version__}")


def _datasets(args, p: config.Profile):
    train_set, test_set = data.load(args.dataset, args.data_dir)
    return train_set.sample(p.n_train, args.seed), test_set.sample(p.n_test, args.seed)


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def cmd_data(args) -> None:
    for name in args.datasets:
        train_set, test_set = data.load(name, args.data_dir)
        print(f"{name}: {data.locate(name, args.data_dir, download=False)} "
              f"({len(train_set)} train + {len(test_set)} test images, "
              f"{tuple(train_set.images.shape[1:])})")


def cmd_train(args) -> None:
    p = config.profile(args.profile)
    recipe = p.recipe if args.epochs is None else p.recipe.replace(epochs=args.epochs)
    model_name = args.model or p.model
    device = config.resolve_device(args.device)
    print(_run_record(args.profile, args.dataset, device))
    train_set, test_set = _datasets(args, p)
    score = lambda m: evaluate(m, test_set)  # noqa: E731
    model, card = trained(model_name, train_set, recipe, seed=args.seed, device=device,
                          about={"dataset": args.dataset}, score=score, zoo=Zoo(args.cache_dir))
    source = "from the zoo" if card["cached"] else "trained now"
    print(f"{model_name} on {args.dataset} ({len(train_set)} images, {recipe.epochs} epochs): "
          f"test accuracy {_pct(score(model)['ca']).strip()} on {len(test_set)} images — "
          f"{source}, training took "
          f"{card['wall_time_s']:.0f} s on {card['device']} (zoo key {card['key']})")


def cmd_demo(args) -> None:
    p = config.profile(args.profile)
    device = config.resolve_device(args.device)
    print(_run_record(args.profile, args.dataset, device))
    train_set, test_set = _datasets(args, p)
    backdoor = badnets.triggered(test_set, args.target)
    score = lambda m: evaluate(m, test_set, backdoor, args.target)  # noqa: E731
    poisoned, poison_indices = badnets.poison(train_set, args.ratio, args.target, args.seed)
    attack = {"name": "badnets", "ratio": args.ratio, "target": args.target}
    rows = []  # evaluated now, on this run's test sets, whether trained now or loaded
    for label, train_data, about in (
            ("clean", train_set, {"dataset": args.dataset}),
            (f"BadNets {args.ratio:.0%} → class {args.target}", poisoned,
             {"dataset": args.dataset, "attack": attack})):
        model, card = trained(p.model, train_data, p.recipe, seed=args.seed, device=device,
                              about=about, score=score, zoo=Zoo(args.cache_dir), desc=label)
        rows.append((label, score(model), card))
    print(f"\n{p.model}, {len(train_set)} training images ({len(poison_indices)} poisoned), "
          f"{p.recipe.epochs} epochs; ASR/RA on {len(backdoor)} triggered non-target test images")
    print(f"{'model':<24} {'CA':>8} {'ASR':>8} {'RA':>8} {'train s':>8}  source")
    for label, m, card in rows:
        print(f"{label:<24} {_pct(m['ca']):>8} {_pct(m['asr']):>8} {_pct(m['ra']):>8} "
              f"{card['wall_time_s']:>8.0f}  {'zoo' if card['cached'] else 'trained now'}")


def cmd_zoo(args) -> None:
    zoo = Zoo(args.cache_dir)
    cards = zoo.entries()
    print(f"{len(cards)} models in {zoo.root}")
    for c in cards:
        spec, m = c["spec"], c.get("metrics", {})
        about = ", ".join(f"{k}={v}" for k, v in spec.get("about", {}).items())
        scores = " ".join(f"{k.upper()} {_pct(v).strip()}" for k, v in m.items())
        print(f"{c['key']}  {spec['model']:<16} seed {spec['seed']}  {about}  {scores}  "
              f"({c['wall_time_s']:.0f} s on {c['device']}, {c['created']})")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="repro", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)

    def common(p, dataset=True):
        p.add_argument("--cache-dir", default=None, help="zoo folder (default $REPRO_CACHE_DIR "
                       "or ~/.cache/repro/zoo)")
        if dataset:
            p.add_argument("--dataset", default="fashion-mnist", help=", ".join(data.DATASETS))
            p.add_argument("--data-dir", default=None, help="folder holding the dataset")
            p.add_argument("--profile", default="quick", help=", ".join(config.PROFILES))
            p.add_argument("--seed", type=int, default=0)
            p.add_argument("--device", default="auto", help="auto, cpu or cuda")

    p = sub.add_parser("data", help="find or download datasets")
    p.add_argument("datasets", nargs="*", default=["fashion-mnist"])
    p.add_argument("--data-dir", default=None)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train one clean model through the zoo")
    common(p)
    p.add_argument("--model", default=None, help="default: the profile's model; one of "
                   + ", ".join(models.MODELS))
    p.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="clean vs BadNets model: CA, ASR, RA")
    common(p)
    p.add_argument("--ratio", type=float, default=0.1, help="poisoning ratio")
    p.add_argument("--target", type=int, default=0, help="target class")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("zoo", help="list the cached models")
    common(p, dataset=False)
    p.set_defaults(func=cmd_zoo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except (config.ParameterError, data.DatasetNotFound) as err:
        print(f"repro: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

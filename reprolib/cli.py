"""The `repro` command.

  repro data [DATASET ...]      find (or download) datasets and say where they are
  repro train [options]         train one clean model through the zoo and report its accuracy
  repro demo [options]          train a clean and backdoored models, print CA / ASR / RA
  repro zoo                     list the trained models in the cache
  repro plan PAPER... [options] list every job a run would do: cached or missing, est. time
  repro run PAPER... [options]  execute chapters into book/runs/ and book/results/
  repro batch PAPER... --budget S --out DIR   chapters within S seconds, all into DIR
  repro book [--rerun|--stale|--render]  run the chapters not yet run (every one; the stale
                                ones; or draw the pages with committed measures again from
                                them), then build _build/html from book/runs and book/results

`run` and `book` take --executor local|ray (default $REPRO_EXECUTOR, else local) and --address
(a Ray cluster's, default $RAY_ADDRESS; none: a Ray instance on this machine).
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time
from pathlib import Path

import torch

from . import book, config, data, devices, imagefolder, jobs, models
from .provenance import code_version
from .attacks import ATTACKS, attack as make_attack
from .train import evaluate, trained
from .victims import datasets, victim
from .zoo import Zoo


def _run_record(profile: str, dataset: str, device: torch.device) -> str:
    return (f"profile {profile} · dataset {dataset} · device {devices.name(device)} · "
            f"code {code_version()} · torch {torch.__version__}")


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def cmd_data(args) -> None:
    names = args.datasets or (["cifar10"] if args.source else ["fashion-mnist"])
    if args.source:
        if names != ["cifar10"]:
            raise config.ParameterError(f"--from reads a copy of CIFAR-10, not of {names}: "
                                        f"repro data cifar10 --from PATH")
        start = time.perf_counter()
        folder = data.decode_cifar10(Path(args.source), data.data_roots(args.data_dir),
                                     allow_partial=args.allow_partial)
        print(f"decoded {args.source} into {folder} in {time.perf_counter() - start:.0f} s")
    for name in names:
        start = time.perf_counter()
        train_set, test_set = data.load(name, args.data_dir)
        print(f"{name}: {data.locate(name, args.data_dir, download=False)} "
              f"({len(train_set):,} train + {len(test_set):,} test images, "
              f"{tuple(train_set.images.shape[1:])}; {data.source_of(name, args.data_dir)}), "
              f"read in {time.perf_counter() - start:.1f} s")


def cmd_train(args) -> None:
    p = config.profile(args.profile, args.dataset)
    recipe = p.recipe if args.epochs is None else p.recipe.replace(epochs=args.epochs)
    model_name = args.model or p.model
    device = devices.resolve(args.device)
    print(_run_record(args.profile, args.dataset, device))
    train_set, test_set = datasets(args.dataset, args.data_dir, p.n_train, p.n_test, args.seed)
    score = lambda m: evaluate(m, test_set)  # noqa: E731
    model, card = trained(model_name, train_set, recipe, seed=args.seed, device=device,
                          about={"dataset": args.dataset}, score=score)
    source = "from the zoo" if card["cached"] else "trained now"
    print(f"{model_name} on {args.dataset} ({len(train_set)} images, {recipe.epochs} epochs): "
          f"test accuracy {_pct(score(model)['ca']).strip()} on {len(test_set)} images — "
          f"{source}, training took "
          f"{card['wall_time_s']:.0f} s on {card['device']} (zoo key {card['key']})")


def cmd_demo(args) -> None:
    p = config.profile(args.profile, args.dataset)
    device = devices.resolve(args.device)
    attacks = [make_attack(name) for name in args.attack]  # every name checked before training
    print(_run_record(args.profile, args.dataset, device))
    common = dict(ratio=args.ratio, target=args.target, seed=args.seed, profile=args.profile,
                  device=device, data_dir=args.data_dir)
    before = len(jobs.COMPUTED)
    runs = [("clean", victim(args.dataset, attack=None, **common))]
    runs += [(a.name, victim(args.dataset, attack=a, **common)) for a in attacks]
    clean = runs[0][1]
    print(f"\n{p.model}, {len(clean.train)} training images, {p.recipe.epochs} epochs; "
          f"{args.ratio:.0%} poisoned, target class {args.target}; ASR and RA on the triggered "
          f"non-target test images")
    print(f"{'model':<10} {'poisoned':>8} {'CA':>8} {'ASR':>8} {'RA':>8} {'train s':>8}  source")
    for label, v in runs:
        m = v.scores()  # measured in this run, whether trained now or taken from the zoo
        asr, ra = (_pct(m["asr"]), _pct(m["ra"])) if "asr" in m else ("", "")
        print(f"{label:<10} {len(v.poison_indices):>8} {_pct(m['ca']):>8} {asr:>8} {ra:>8} "
              f"{v.card['wall_time_s']:>8.0f}  "
              f"{'trained now' if v.card['key'] in jobs.COMPUTED[before:] else 'zoo'}")


def cmd_zoo(args) -> None:
    zoo = Zoo()
    cards = zoo.entries()
    victims = [c for c in cards if c["spec"].get("job") == "victim"]
    results = [c for c in cards if "job" in c["spec"] and c not in victims]
    models_ = [c for c in cards if "job" not in c["spec"]]
    print(f"{len(victims) + len(models_)} models and {len(results)} job results in {zoo.root}")
    for c in results:
        print(f"{c['key']}  job {c['spec']['job']:<16} ({c['wall_time_s']:.0f} s on "
              f"{c['device']}, {c['created']})")
    for c in victims + models_:
        spec, m = c["spec"], c.get("metrics", {})
        if c in victims:
            a = spec["args"]
            attack = a["attack"]["name"] if isinstance(a["attack"], dict) else a["attack"]
            what = (f"victim {attack or 'clean'} ratio {a['ratio']} seed {a['seed']}  "
                    f"{a['dataset']}{_copy(c)}, profile {a['profile']}")
        else:
            about = ", ".join(f"{k}={v}" for k, v in spec.get("about", {}).items())
            what = f"{spec['model']:<16} seed {spec['seed']}  {about}{_copy(c)}"
        scores = " ".join(f"{k.upper()} {_pct(v).strip()}" for k, v in m.items())
        print(f"{c['key']}  {what}  {scores}  ({c['wall_time_s']:.0f} s on {c['device']}, "
              f"{c['created']})")


def _copy(card: dict) -> str:
    """A model card's dataset copy when it is not the official files ("" for those)."""
    source = card.get("dataset_source", "")
    return f" ({source})" if source and not source.startswith("official") else ""


def cmd_plan(args) -> None:
    params = book.check_run(args.papers, profile=args.profile, model=args.model,
                            dataset=args.dataset, device=args.device, pairs=_with_seeds(args))
    if args.throughput is not None:
        config.check_range("--throughput", args.throughput, low=0, low_open=True)
    left_in_all: dict[str, float] = {}       # a job two chapters share counts once
    for paper in args.papers:
        found = book.plan(paper, profile=args.profile, model=args.model, dataset=args.dataset,
                          device=args.device, params=params[paper], throughput=args.throughput,
                          reading=args.clock)
        ch, rows = found["chapter"], found["rows"]
        print(f"{paper} · profile {ch.profile} · {ch.dataset} · {ch.model} · "
              f"{devices.name(ch.device)}")
        print(f"  {'status':<8} {'time':>9}  {'kind':<14} {'key':<24}  what")
        for r in rows:
            when = book.duration(r["seconds"]) if r["seconds"] is not None else "?"
            shown = f"({when})" if r["status"] == "cached" else f"~{when}"
            print(f"  {r['status']:<8} {shown:>9}  {r['kind']:<14} {r['key']:<24}  {r['what']}")
        missing = [r for r in rows if r["status"] == "missing"]
        left = sum(r["seconds"] for r in missing)
        left_in_all.update((r["key"], r["seconds"]) for r in missing)
        print(f"  {len(rows)} jobs: {len(rows) - len(missing)} cached, {len(missing)} missing, "
              f"about {book.duration(left)} of training here\n")
        if args.clock:
            _against_the_clock(book.against_the_clock(rows, devices.name(ch.device)),
                               devices.name(ch.device))
    how = ("given by --throughput" if args.throughput is not None else
           "measured now over 3 s of training steps of each chapter's model on its device")
    print(f"Missing jobs: {len(left_in_all)}, about {book.duration(sum(left_in_all.values()))} in "
          f"all (a job two chapters share counted once). A job's time is its image passes "
          f"(forward and backward through the chapter's model, over the images it trains or "
          f"searches on) divided by the training throughput, {how}; crafting loops, hull LPs "
          f"and the chapters' own evaluation are not counted, so it is a lower bound. A cached "
          f"job shows the time it took.")


def _against_the_clock(kinds: dict[str, dict], device: str) -> None:
    if not kinds:
        print(f"  against the clock: no cached job that trains ran on {device}\n")
        return
    print(f"  against the clock, the cached jobs that ran on {device}:")
    print(f"  {'kind':<14} {'jobs':>4} {'plan said':>10} {'took':>10} {'took/plan':>9}")
    for kind, k in kinds.items():
        off = f"  off by more than {book.OFF:.0%}" if k["off"] else ""
        print(f"  {kind:<14} {k['jobs']:>4} {book.duration(k['estimate_s']):>10} "
              f"{book.duration(k['took_s']):>10} {k['took_over_estimate']:>8.2f}×{off}")
    print()


def _use_executor(args) -> None:
    """The run's executor, for the chapters' kernels (which read $REPRO_EXECUTOR)."""
    name = config.check_choice("--executor", args.executor or os.environ.get("REPRO_EXECUTOR")
                               or "local", jobs.EXECUTORS)
    if name == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise config.ParameterError("--executor ray needs Ray: pip install "
                                        "'reprolib[cluster]' (or pip install ray)") from None
    os.environ["REPRO_EXECUTOR"] = name
    if args.address:
        os.environ["RAY_ADDRESS"] = args.address


def _with_seeds(args) -> list[str]:
    """The run's -p pairs, with --seeds as the notebooks' `seeds` parameter."""
    if args.seeds is None:
        return args.p
    if any(p.partition("=")[0] in ("seed", "seeds") for p in args.p):
        raise config.ParameterError("--seeds and -p seed/seeds: give the seeds one way")
    return [*args.p, f"seeds={args.seeds}"]


def cmd_run(args) -> None:
    params = book.check_run(args.papers, profile=args.profile, model=args.model,
                            dataset=args.dataset, device=args.device, pairs=_with_seeds(args))
    _use_executor(args)
    for paper in args.papers:
        page = book.run(paper, profile=args.profile, model=args.model, dataset=args.dataset,
                        device=args.device, params=params[paper], together=args.together,
                        compiled=args.compiled)
        print(f"{paper}: {page} and book/results/{page.stem}.json")


def cmd_batch(args) -> None:
    from . import batch
    done = batch.run(args.papers, budget=args.budget, out=Path(args.out), profile=args.profile,
                     model=args.model, dataset=args.dataset, device=args.device,
                     pairs=_with_seeds(args), margin=args.margin,
                     bench=None if args.bench is None else args.bench.split())
    print(f"batch: {Path(args.out) / 'batch.json'}; left out: "
          f"{', '.join(done['left_out']) or 'none'}")
    if any(c["status"] != "done" for c in done["chapters"]):
        raise book.RunFailed("batch: " + "; ".join(f"{c['chapter']} {c['status']}"
                                                   for c in done["chapters"]
                                                   if c["status"] != "done"))


def cmd_jpeg(args) -> None:
    from . import lossy
    result = lossy.run(config.ROOT / lossy.RESULT, dataset=args.dataset, attacks=args.attack,
                       seeds=args.seeds, quality=args.quality, profile=args.profile,
                       data_dir=args.data_dir, device=args.device)
    print(lossy.page(result))
    print(f"written to {config.ROOT / lossy.RESULT}; `repro book` puts it in the introduction")


def cmd_book(args) -> None:
    _use_executor(args)
    html = book.build(rerun=args.rerun, stale=args.stale, render=args.render,
                      profile=args.profile, model=args.model,
                      dataset=args.dataset, device=args.device, seeds=args.seeds)
    print(f"the book is in {html}; open {html / 'index.html'}")


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
    p.add_argument("datasets", nargs="*", help="default: fashion-mnist (cifar10 with --from)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--from", dest="source", default=None, metavar="PATH",
                   help="a CIFAR-10 image folder (train/, test/, a folder per class) or a "
                        ".tar.xz, .tar.gz or .zip of one, decoded once into the data folder")
    p.add_argument("--allow-partial", action="store_true",
                   help="with --from: accept fewer images than CIFAR-10's 50,000 + 10,000")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train one clean model through the zoo")
    common(p)
    p.add_argument("--model", default=None, help="default: the profile's model; one of "
                   + ", ".join(models.MODELS))
    p.add_argument("--epochs", type=int, default=None, help="default: the profile's")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="a clean model and backdoored ones: CA, ASR, RA")
    common(p)
    p.add_argument("--attack", nargs="+", default=["badnets"],
                   help="one or more of " + ", ".join(ATTACKS))
    p.add_argument("--ratio", type=float, default=0.1, help="poisoning ratio")
    p.add_argument("--target", type=int, default=0, help="target class")
    p.set_defaults(func=cmd_demo)

    def chapter_options(p):
        p.add_argument("--profile", default="quick", help=", ".join(config.PROFILES))
        p.add_argument("--model", default="auto", help="auto (the paper's model at profile "
                       "paper, the small CNN below it), paper (the paper's at any profile), or "
                       "one of " + ", ".join(models.MODELS))
        p.add_argument("--dataset", default="auto", help="auto (CIFAR-10 when it can be read or "
                       "downloaded, else Fashion-MNIST), " + ", ".join(data.DATASETS))
        p.add_argument("--device", default="auto", help="auto, cpu or cuda")
        p.add_argument("--seeds", type=int, nargs="+", default=None, metavar="SEED",
                       help="run each chapter at these seeds (default: the chapter's at its "
                       "profile, config.SEEDS); -p seed=N runs one")

    def executor_options(p):
        p.add_argument("--executor", default=None, help="where jobs run: local (this process, "
                       "the default) or ray (Ray tasks; default $REPRO_EXECUTOR)")
        p.add_argument("--address", default=None, help="the Ray cluster's address (default "
                       "$RAY_ADDRESS; none: a Ray instance on this machine)")

    p = sub.add_parser("plan", help="list the jobs a run would do, cached or missing")
    p.add_argument("papers", nargs="*", help="chapters: " + ", ".join(book.chapters()))
    chapter_options(p)
    p.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a notebook parameter, its value read as YAML (repeatable)")
    p.add_argument("--throughput", type=float, default=None, metavar="IMAGES_PER_S",
                   help="training images per second to estimate with (default: measured now)")
    p.add_argument("--clock", action="store_true",
                   help="read the cached results to find every round's jobs, and set each job "
                        "kind's estimate beside the time its cached jobs took on this device")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("run", help="execute chapters with papermill")
    p.add_argument("papers", nargs="*", help="chapters: " + ", ".join(book.chapters()))
    chapter_options(p)
    executor_options(p)
    p.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a notebook parameter, its value read as YAML (repeatable)")
    p.add_argument("--together", type=int, default=1, metavar="N",
                   help="train the chapter's missing victims up to N at once on one device "
                        "before it runs (default 1: one by one, as the chapter asks); slower on "
                        "a CPU, on a GPU bench/together_speed.py says")
    p.add_argument("--compiled", action="store_true",
                   help="the victims' trainings go through torch.compile, --together's stacks "
                        "(or, with --together 1, each victim alone) trained before the chapter")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("batch", help="chapters within a time budget, everything into one "
                       "folder: a lent GPU's one command (gpu/run.sh)")
    p.add_argument("papers", nargs="*", help="chapters, in the order to run them: "
                   + ", ".join(book.chapters()))
    chapter_options(p)
    p.add_argument("-p", action="append", default=[], metavar="KEY=VALUE",
                   help="a notebook parameter, its value read as YAML (repeatable)")
    p.add_argument("--budget", type=float, required=True, metavar="SECONDS",
                   help="the wall time the whole command may take")
    p.add_argument("--out", required=True, help="folder for the pages, results and batch.json")
    p.add_argument("--bench", nargs="?", const="", default=None, metavar="ARGS",
                   help="first measure training together (bench/together_speed.py, with ARGS "
                        "if given, e.g. '--jobs 1 4'); its best N trains the victims")
    p.add_argument("--margin", type=float, default=1.5,
                   help="what the plan's estimate (a lower bound) is multiplied by")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("book", help="run missing chapters and build the HTML book")
    chapter_options(p)
    executor_options(p)
    again = p.add_mutually_exclusive_group()
    again.add_argument("--rerun", action="store_true", help="run every chapter again")
    again.add_argument("--stale", action="store_true",
                       help="run again the chapters whose notebook or library files changed "
                            "since their run")
    again.add_argument("--render", action="store_true",
                       help="draw every page whose measures are committed (book/measures/) "
                            "again from them, computing nothing: mends a stale look in minutes")
    p.set_defaults(func=cmd_book)

    p = sub.add_parser("jpeg", help="what a JPEG round trip of the dataset does to CA and ASR "
                       "(the introduction's table)")
    p.add_argument("--dataset", default="fashion-mnist", help=", ".join(data.DATASETS))
    p.add_argument("--data-dir", default=None, help="folder holding the dataset")
    p.add_argument("--profile", default="quick", help=", ".join(config.PROFILES))
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED")
    p.add_argument("--quality", type=int, default=75, help="JPEG quality, 1 to 95")
    p.add_argument("--attack", nargs="+", default=["badnets", "blended"],
                   help="one or more of " + ", ".join(ATTACKS))
    p.add_argument("--cache-dir", default=None, help="zoo folder (default $REPRO_CACHE_DIR "
                   "or ~/.cache/repro/zoo)")
    p.set_defaults(func=cmd_jpeg)

    p = sub.add_parser("zoo", help="list the cached models")
    common(p, dataset=False)
    p.set_defaults(func=cmd_zoo)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if getattr(args, "cache_dir", None):        # the zoo every step of this command uses
        os.environ["REPRO_CACHE_DIR"] = args.cache_dir
    try:
        args.func(args)
    except (config.ParameterError, data.DatasetNotFound, data.DatasetCorrupt,
            imagefolder.ImageFolderError) as err:
        print(f"repro: {err}", file=sys.stderr)
        return 2
    except book.RunFailed as err:
        print(f"repro: {err}", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        print(f"repro: no space left on the device ({err.filename or err}); nothing "
              f"half-written was kept: free some space and run `{_again(argv)}` again.",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        again = _again(argv)
        print(f"repro: interrupted. Nothing half-written was left in book/runs or the zoo; the "
              f"jobs finished so far are cached: `{again}` resumes from them.", file=sys.stderr)
        return 130
    return 0


def _again(argv: list[str] | None) -> str:
    """The command line that repeats this one."""
    return " ".join(["repro", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())

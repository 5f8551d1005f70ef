"""The ``robustdml`` command: train, evaluate, data info (and more as they arrive).

Errors caused by the user's input print as one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from ..errors import RobustDMLError

log = logging.getLogger("robustdml")


def _cmd_train(args) -> int:
    from ..engine import train
    from ..reporting import metrics_table
    from .config import load_train_config

    if args.config is None and not args.resume:
        raise RobustDMLError("train needs --config FILE (e.g. configs/digits.yaml)")
    # a resumed run continues with the configuration it saved, unless another is given
    cfg = load_train_config(args.config or Path(args.out) / "config.yaml", args.overrides)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    if not result.main:
        return 0  # a non-zero rank of a multi-process run: rank 0 reports
    print(f"best epoch {result.best_epoch} by {result.select_metric}; model in {Path(args.out) / 'best'}")
    print(metrics_table({"clean": result.clean}))
    return 0


def _cmd_evaluate(args) -> int:
    from ..api import checked_model
    from ..evaluation import clean_metrics
    from ..files import write_json
    from ..reporting import metrics_table

    test = _test_data(args)
    model, device, workers = _load_for_evaluation(args)
    model, device, workers = checked_model(model, test, device, args.normalize, workers)
    metrics = clean_metrics(model, test.query, test.gallery, ks=test.ks, device=device, batch_size=args.batch_size,
                            seed=args.seed, workers=workers, progress=not args.quiet, restarts=args.kmeans_restarts)
    result = {"clean": metrics}
    print(metrics_table(result))
    out = Path(args.json) if args.json else (Path(args.model) / "eval.json" if Path(args.model).is_dir() else None)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")
    return 0


def _cmd_attack(args) -> int:
    from ..api import evaluate, make_suite, threat_of
    from ..engine.provenance import settings_hash
    from .config import parse_options

    if args.suite == "robrank":
        return _cmd_attack_ranking(args)
    if args.profile:
        raise RobustDMLError("--profile belongs to --suite robrank")
    suite = make_suite(args.attack or args.suite, eps=args.eps, norm=args.norm, seed=args.seed,
                       batch_size=args.batch_size, steps=args.steps, restarts=args.restarts,
                       attack_kwargs=parse_options(args.attack_option))
    test = _test_data(args)
    threat_of(test, suite)  # pre-flight: a budget that cannot be meant fails here, before any work
    model, device, workers = _load_for_evaluation(args)
    found = evaluate(model, test, suite=suite, surrogate=args.surrogate, queries=args.queries, seed=args.seed,
                     kmeans_restarts=args.kmeans_restarts, normalize=args.normalize, device=device, workers=workers,
                     progress=not args.quiet)
    found.about = {"model": str(args.model), **found.about}
    # one file per dataset and suite: a run on other data or with another suite never replaces this one
    stem = f"{args.dataset}-{found.settings['suite'] or 'custom-' + settings_hash(found.settings)[:8]}"
    out_dir = _results_dir(args, "attack")
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    found.save(json_path)
    plots = found.plot(out_dir / stem)
    print(found.table())
    print(f"wrote {json_path}, {', '.join(map(str, plots))}")
    return 0


def _cmd_certify(args) -> int:
    from ..api import certify

    test = _test_data(args)
    model, device, _ = _load_for_evaluation(args)
    found = certify(model, test, sigma=args.sigma, radii=args.radii, samples=args.samples,
                    center_samples=args.center_samples, alpha=args.alpha, delta=args.delta, queries=args.queries,
                    seed=args.seed, batch_size=args.batch_size, normalize=args.normalize, device=device,
                    progress=not args.quiet)
    found.about = {"model": str(args.model), **found.about}
    stem = f"{args.dataset}-sigma{args.sigma:g}"
    out_dir = _results_dir(args, "certify")
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    found.save(json_path)
    from ..reporting.plots import plot_certified
    plot = plot_certified({str(args.model): found.to_dict()}, out_dir / f"{stem}.png")
    print(f"{args.dataset}, {found.table()}")
    print(f"wrote {json_path}, {plot}")
    return 0


def _cmd_attack_ranking(args) -> int:
    """RobRank's attacks under one profile (rob28 for images up to 32 px, else rob224), and the ERS."""
    from ..api import evaluate_ranking
    from ..attacks import format_budget
    from ..attacks.ranking import PROFILES
    from ..evaluation.ranking import es_start_line
    from .config import parse_options

    if args.steps or args.restarts or args.eps or args.surrogate or args.norm:
        raise RobustDMLError("the robrank suite is fixed by its profile: drop --steps/--restarts/--eps/--norm/--surrogate")
    test = _test_data(args)
    model, device, workers = _load_for_evaluation(args)
    found = evaluate_ranking(model, test, profile=args.profile, queries=args.queries, seed=args.seed,
                             attacks=args.attack, attack_kwargs=parse_options(args.attack_option),
                             batch_size=min(args.batch_size, 128), kmeans_restarts=args.kmeans_restarts,
                             normalize=args.normalize, device=device, workers=workers, progress=not args.quiet)
    found.about = {"model": str(args.model), **found.about}
    result = found.to_dict()
    json_path = (Path(args.json) if args.json else
                 _results_dir(args, "attack") / f"{args.dataset}-robrank-{found.profile}.json")
    found.save(json_path)
    print(f"{args.dataset}: clean R@1 {found.clean['recall@1']:.3f}, NMI {found.clean['nmi']:.3f} (best of "
          f"{args.kmeans_restarts} k-means runs; RobRank's one run: {found.clean['robrank_nmi']:.3f}); profile "
          f"{found.profile} ({format_budget(found.eps)}, {PROFILES[found.profile]['steps']} iterations), "
          f"{found.queries} queries (seed {found.seed}), {found.seconds / 60:.1f} min")
    print(found.table())
    if line := es_start_line(result):
        print(line)
    print(f"wrote {json_path}")
    return 0


def _root_item(item: str, datasets: list[str]) -> tuple[str, str]:
    """``--root`` as (dataset, path): ``NAME=PATH`` for the dataset NAME, a bare ``PATH`` for the
    only dataset in play."""
    name, sep, path = item.partition("=")
    if sep and name in datasets:
        return name, path
    if sep and "/" not in name:
        raise RobustDMLError(f"--root {item}: {name} is not a dataset here ({', '.join(datasets) or 'none'})")
    if len(datasets) != 1:
        raise RobustDMLError(f"--root {item}: say which dataset it is for, as DATASET=PATH ({', '.join(datasets)})")
    return datasets[0], item


def _dataset_root(args) -> str | None:
    """The root of ``args.dataset`` from ``--root PATH`` or ``--root DATASET=PATH``."""
    roots = dict(_root_item(item, [args.dataset]) for item in args.root or [])
    return roots.get(args.dataset)


def _test_data(args):
    """The test sets of ``args.dataset``, refused (before any work) if the model was trained on other data."""
    from ..api import resolve_data
    if args.kmeans_restarts < 1:  # the arguments first, then the data, then the model
        raise RobustDMLError("--kmeans-restarts must be at least 1")
    test = resolve_data(args.dataset, root=_dataset_root(args), image_size=args.image_size)
    _check_data(args, test.query)
    return test


def _results_dir(args, kind: str) -> Path:
    """--out, else MODEL/attack (or certify) for a model directory, else ./attack."""
    if args.out:
        return Path(args.out)
    return Path(args.model) / kind if Path(args.model).is_dir() else Path(kind)


def _cmd_benchmark(args) -> int:
    from ..engine.benchmark import Benchmark, load_benchmark_config
    from ..reporting.report import build_report, print_tables

    cfg = load_benchmark_config(args.config, args.overrides)
    datasets = [str(d) for d in cfg.grid.get("dataset") or []]
    for item in args.root or []:
        dataset, path = _root_item(item, datasets)
        cfg.per_dataset.setdefault(dataset, {})["root"] = path
    if args.only:
        cfg.restrict(args.only)
    out = Path(args.out or cfg.out or f"runs/{cfg.name}")
    statuses = Benchmark(cfg, out, progress=not args.quiet, reuse_stale=args.reuse_stale).run()
    md, html_path = build_report(out)
    print(print_tables(out))
    failed = [n for n, s in statuses.items() if s == "failed"]
    count = {k: sum(s == k for s in statuses.values()) for k in ("ok", "updated", "skipped", "stale")}
    print(f"\n{len(statuses)} cells: {count['ok']} trained and evaluated, {count['updated']} re-evaluated (training "
          f"reused), {count['skipped']} up to date, "
          + (f"{count['stale']} kept stale (--reuse-stale), " if count["stale"] else "")
          + f"{len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    print(f"report: {html_path} (and {md})")
    return 1 if failed else 0


def _cmd_report(args) -> int:
    from ..reporting.report import build_report, print_tables
    if not Path(args.run_dir).is_dir():
        raise RobustDMLError(f"{args.run_dir} is not a benchmark directory")
    md, html_path = build_report(args.run_dir)
    print(print_tables(args.run_dir))
    print(f"report: {html_path} (and {md})")
    return 0


def _cmd_data_info(args) -> int:
    from ..data import dataset_info
    print(json.dumps(dataset_info(args.dataset, _dataset_root(args)), indent=2))
    return 0


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser of every command; given ``argv``, only the chosen command's options are built (the
    others' need the heavy imports: ``robustdml --help`` answers without them)."""
    parser = argparse.ArgumentParser(
        prog="robustdml",
        description="Adversarially robust deep metric learning: train, attack, defend (EAT) and evaluate "
                    "clustering-based inference and retrieval.")
    parser.add_argument("--version", action="version", version=f"robustdml {_version()}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, warnings only")
    parser._add_container_actions(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    for name, add_arguments, text in _commands():
        p = sub.add_parser(name, parents=[common], **text)
        if argv is None or name == chosen:
            add_arguments(p)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("robustdml")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _commands():
    """(name, the function adding its options, its help and description) of every command."""
    return [
        ("train", _args_train, dict(
            help="train an embedding model from a YAML config",
            description="Train a deep metric learning model. Any config key can be overridden with key=value "
                        "(e.g. epochs=5 seed=1 method=standard loss_kwargs.margin=0.2).")),
        ("evaluate", _args_evaluate, dict(
            help="clean clustering and retrieval metrics of a model",
            description="k-means NMI, pairwise F1, ARI, Recall@K and MAP@R on the test classes.")),
        ("attack", _args_attack, dict(
            help="robust evaluation under the attack suite",
            description="Perturb every test image with each attack at each eps, cluster again and compute every "
                        "metric; report the worst case per metric and the honest-evaluation checks. Writes JSON "
                        "and PNG plots.")),
        ("certify", _args_certify, dict(
            help="certified robustness of clustering and retrieval (center smoothing)",
            description="Center smoothing of the model's embedding with Gaussian noise of std SIGMA: per test "
                        "image, the L2 radius within which its k-means assignment and its Recall@1 answer provably "
                        "stay (with probability 1 - ALPHA each); the fraction certified at each radius. "
                        "docs/certify.md says what is guaranteed.")),
        ("benchmark", _args_benchmark, dict(
            help="run a grid of (method, dataset, backbone, seed) cells and report",
            description="Train and robust-evaluate every cell of the grid in a benchmark config. Finished cells "
                        "are skipped on a rerun; a failing cell is recorded and the grid goes on. Ends with "
                        "report.md and report.html in the output folder.")),
        ("report", _args_report, dict(
            help="rebuild a benchmark's report from its JSON files",
            description="Rebuild report.md and report.html of a benchmark folder from its cells' result files "
                        "(nothing is trained or attacked).")),
        ("data", _args_data, dict(
            help="dataset utilities",
            description="Dataset utilities: `data info` prints the images, classes and label range of every split.")),
    ]


def _args_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (e.g. configs/digits.yaml); with --resume, defaults to RUN_DIR/config.yaml")
    p.add_argument("--out", required=True, help="run directory for logs, checkpoints and models")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_train)


def _args_evaluate(p: argparse.ArgumentParser) -> None:
    _add_model_and_data(p)
    p.add_argument("--json", help="write the results here (default: MODEL/eval.json for a directory)")
    _add_eval_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _args_attack(p: argparse.ArgumentParser) -> None:
    from ..attacks import ATTACKS
    from ..evaluation.suite import NAMED

    _add_model_and_data(p)
    p.add_argument("--suite", choices=[*NAMED, "robrank"], default="strong",
                   help="a fixed attack suite (default strong: what every reported figure uses); robrank: "
                        "RobRank's nine ranking attacks and its ERS")
    p.add_argument("--profile", choices=["rob28", "rob224"],
                   help="robrank: attack profile (default rob28 for images up to 32 px, else rob224)")
    p.add_argument("--queries", type=int,
                   help="attack a seeded sample of this many test images (default: all)")
    p.add_argument("--eps", nargs="+",
                   help="budgets in [0,1] pixel units, as decimals or fractions: 0.1, 8/255 (default: the suite's, "
                        "around the dataset's eps; required with a --norm other than the dataset's)")
    p.add_argument("--attack", nargs="+",
                   help=f"run these attacks instead of the suite: all, or names ({', '.join(ATTACKS)}); "
                        "with --suite robrank, a subset of its attacks")
    p.add_argument("--attack-option", action="append", default=[], metavar="ATTACK.KEY=VALUE",
                   help="an option of one attack's own constructor, e.g. centroid.optimizer=apgd (repeatable)")
    p.add_argument("--steps", type=int, help="iterations of every attack (with --attack; default 10)")
    p.add_argument("--restarts", type=int, help="random restarts, worst kept (with --attack; default 1)")
    p.add_argument("--norm", choices=["linf", "l2"], help="threat model norm (default: the dataset's, L∞)")
    p.add_argument("--surrogate", help="saved model for the transfer attack (without it, transfer is skipped)")
    p.add_argument("--out", help="results folder (default: MODEL/attack)")
    p.add_argument("--json", help="results file (default: OUT/DATASET-SUITE.json, e.g. attack/digits-strong.json, "
                                  "plots in OUT/DATASET-SUITE/; robrank: OUT/DATASET-robrank-PROFILE.json)")
    _add_eval_options(p)
    p.set_defaults(func=_cmd_attack)


def _args_certify(p: argparse.ArgumentParser) -> None:
    _add_model_and_data(p)
    p.add_argument("--sigma", type=float, required=True, help="noise std in [0,1] pixel units, e.g. 0.25")
    p.add_argument("--radii", type=float, nargs="+", help="L2 input radii to certify (default: 0, .25, .5, .75, 1 x sigma)")
    p.add_argument("--samples", type=int, default=10_000, help="noise draws for each certificate (default 10000)")
    p.add_argument("--center-samples", type=int, default=10_000,
                   help="noise draws the candidate centers are measured against, and again for the check (default 10000)")
    p.add_argument("--alpha", type=float, default=0.01, help="1 - confidence of each certificate (default 0.01)")
    p.add_argument("--delta", type=float, default=0.05, help="mass beyond 1/2 the center's ball must hold (default 0.05)")
    p.add_argument("--queries", type=int, help="certify a seeded sample of this many test images (default: all)")
    p.add_argument("--out", help="folder for the plot (default: MODEL/certify)")
    p.add_argument("--json", help="results file (default: OUT/DATASET-sigmaS.json, the plot beside it)")
    _add_eval_options(p)
    p.set_defaults(func=_cmd_certify)


def _args_benchmark(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="benchmark YAML (e.g. configs/benchmark-digits.yaml)")
    p.add_argument("--out", help="output folder (default: the config's `out`, else runs/NAME)")
    p.add_argument("--root", action="append", metavar="[DATASET=]PATH",
                   help="dataset folder, e.g. cub=/data/CUB_200_2011 (repeatable); a bare PATH for a grid of one dataset")
    p.add_argument("--only", action="append", metavar="KEY=VALUE",
                   help="run only the cells with this grid value (repeatable; values of one key are alternatives), "
                        "e.g. --only method=eat --only seed=0; several such processes can share one --out")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, as for train: attack.steps=5 train.epochs=2 grid.seed=[0,1]")
    p.add_argument("--reuse-stale", action="store_true",
                   help="keep the results of cells whose settings changed instead of re-running them "
                        "(the report marks them stale)")
    p.set_defaults(func=_cmd_benchmark)


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="benchmark output folder")
    p.set_defaults(func=_cmd_report)


def _args_data(p: argparse.ArgumentParser) -> None:
    from ..data import DATASETS

    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("info", help="images, classes and label range per split, as JSON")
    q.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    q.add_argument("--root", action="append", metavar="[DATASET=]PATH", help="dataset folder (not needed for digits)")
    q.set_defaults(func=_cmd_data_info)


def _add_model_and_data(p: argparse.ArgumentParser) -> None:
    from ..data import DATASETS
    p.add_argument("model", help="run directory (its best model) or saved model directory (robustdml.save_model)")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", action="append", metavar="[DATASET=]PATH",
                   help="dataset folder (not needed for digits): PATH, or DATASET=PATH as the benchmark takes it")
    p.add_argument("--dataset-mismatch-ok", action="store_true",
                   help="evaluate a model on a dataset (or an input size) other than the one it was trained on")
    p.add_argument("--normalize", action="store_true",
                   help="L2-normalise the model's embeddings (for a model whose outputs are not unit norm)")


def _load_for_evaluation(args):
    """The model of ``evaluate``/``attack`` on its device, and the data-loading processes."""
    from ..data import dataset_spec
    from ..engine.devices import default_workers, resolve_device
    from ..models import load_model

    dataset_spec(args.dataset)
    device = resolve_device(args.device)
    workers = args.workers if args.workers is not None else default_workers(device)
    return load_model(args.model, device=device), device, workers


def _check_data(args, query) -> None:
    """Refuse to evaluate a model on data it was not trained on (another dataset, another input
    shape) unless ``--dataset-mismatch-ok`` says it is meant: a digits model attacked on
    Fashion-MNIST gives numbers, not answers."""
    from ..models import model_info
    trained = model_info(args.model).get("trained_on")
    if not trained or args.dataset_mismatch_ok:
        return
    shape = list(query[0][0].shape)
    if trained["dataset"] != args.dataset or trained["input_shape"] != shape:
        raise RobustDMLError(
            f"{args.model} was trained on {trained['dataset']} ({'x'.join(map(str, trained['input_shape']))} images), "
            f"not on {args.dataset} ({'x'.join(map(str, shape))}); pass --dataset-mismatch-ok if that is meant")


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: 0 on a CPU, up to 8 on a GPU)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--kmeans-restarts", type=int, default=5,
                   help="k-means runs per clustering, the best kept (default 5; 1 is cheaper on large test sets)")
    p.add_argument("--device", default="auto")


def _one_line_warnings() -> None:
    """robustdml's own warnings (the pre-flight checks') as one line each on stderr, as its errors."""
    import warnings

    from ..errors import RobustDMLWarning
    default = warnings.showwarning
    if getattr(default, "robustdml", False):
        return

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, RobustDMLWarning):
            print(f"robustdml: warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    show.robustdml = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv).parse_args(argv)
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise
    _one_line_warnings()
    try:
        code = args.func(args)
        if "torch.distributed" in sys.modules:  # under torchrun: every rank leaves together, the group closed
            from ..engine.distributed import finish_distributed
            finish_distributed()
        return code
    except RobustDMLError as e:
        print(f"robustdml: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("robustdml: interrupted", file=sys.stderr)
        return 130

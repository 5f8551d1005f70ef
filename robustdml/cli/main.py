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
    from ..evaluation import evaluate_model
    from ..files import write_json
    from ..reporting import metrics_table

    from ..data import evaluation_sets

    model, device, workers = _load_for_evaluation(args)
    _check_data(args, evaluation_sets(args.dataset, args.root, image_size=args.image_size)[0])
    metrics = evaluate_model(model, args.dataset, args.root, device=device, batch_size=args.batch_size,
                             image_size=args.image_size, seed=args.seed, workers=workers, progress=not args.quiet,
                             restarts=args.kmeans_restarts)
    result = {"clean": metrics}
    print(metrics_table(result))
    out = Path(args.json) if args.json else (Path(args.model) / "eval.json" if Path(args.model).is_dir() else None)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")
    return 0


def _cmd_attack(args) -> int:
    from ..attacks import ThreatModel
    from ..data import dataset_spec, evaluation_sets
    from ..engine.provenance import settings_hash
    from ..evaluation.robust import AttackSuite, evaluate_robustness
    from ..files import write_json
    from ..models import load_model
    from .config import parse_options

    if args.suite == "robrank":
        return _cmd_attack_ranking(args)
    if args.profile or args.queries:
        raise RobustDMLError("--profile and --queries belong to --suite robrank")
    custom = {"steps": args.steps, "restarts": args.restarts}
    suite = AttackSuite(args.attack or args.suite, eps=args.eps, norm=args.norm, seed=args.seed,
                        batch_size=args.batch_size, attack_kwargs=parse_options(args.attack_option),
                        **{k: v for k, v in custom.items() if v is not None})
    threat = ThreatModel.of(args.dataset)
    suite.eps_values(threat)  # pre-flight: a budget that cannot be meant fails here, before any work
    model, device, workers = _load_for_evaluation(args)
    surrogate = load_model(args.surrogate, device=device) if args.surrogate else None
    query, gallery = evaluation_sets(args.dataset, args.root, image_size=args.image_size)
    _check_data(args, query)
    found = evaluate_robustness(model, query, gallery, suite, threat=threat,
                                ks=dataset_spec(args.dataset).recall_ks, device=device, surrogate=surrogate,
                                kmeans_seed=args.seed, kmeans_restarts=args.kmeans_restarts, workers=workers,
                                progress=not args.quiet)
    result = {**found.to_dict(), "model": str(args.model), "dataset": args.dataset, "test_images": len(query)}
    # one file per dataset and suite: a run on other data or with another suite never replaces this one
    stem = f"{args.dataset}-{found.settings['suite'] or 'custom-' + settings_hash(found.settings)[:8]}"
    out_dir = _results_dir(args, "attack")
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    write_json(json_path, result)
    plots = _attack_plots(found, out_dir / stem)
    print(_attack_summary(found))
    print(f"wrote {json_path}, {', '.join(map(str, plots))}")
    return 0


def _cmd_certify(args) -> int:
    from ..data import evaluation_sets
    from ..evaluation.certify import SMOOTHED_VS_CERTIFIED, Smoothing, certify, default_radii
    from ..evaluation.ranking import query_subset
    from ..files import write_json
    from torch.utils.data import Subset

    smoothing = Smoothing(sigma=args.sigma, samples=args.samples, center_samples=args.center_samples,
                          alpha=args.alpha, delta=args.delta, batch_size=args.batch_size, seed=args.seed)
    radii = args.radii or default_radii(smoothing.sigma)
    model, device, _ = _load_for_evaluation(args)
    query, gallery = evaluation_sets(args.dataset, args.root, image_size=args.image_size)
    _check_data(args, query)
    if args.queries:
        query = Subset(query, query_subset(len(query), args.queries, args.seed).tolist())
    found = certify(model, query, gallery, smoothing=smoothing, radii=radii, device=device, kmeans_seed=args.seed,
                    progress=not args.quiet)
    result = {**found.to_dict(), "model": str(args.model), "dataset": args.dataset, "queries": len(query)}
    stem = f"{args.dataset}-sigma{args.sigma:g}"
    out_dir = _results_dir(args, "certify")
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    write_json(json_path, result)
    from ..reporting.plots import plot_certified
    plot = plot_certified({str(args.model): result}, out_dir / f"{stem}.png")
    print(f"{args.dataset}, sigma {args.sigma:g}: {found.images} images, abstain rate "
          f"{found.abstained / found.images:.3f} ({found.abstained} of {found.images}); smoothed clean "
          f"NMI {found.clean['nmi']:.3f}, R@1 {found.clean['recall@1']:.3f}; {found.seconds_per_image:.2f} s per image")
    print(f"({SMOOTHED_VS_CERTIFIED}.)")
    print("radius (L2)   certified assignment   certified R@1")
    for r, a, k in zip(found.radii, found.certified_assignment, found.certified_recall_at_1):
        print(f"{r:11.4g}   {a:20.3f}   {k:13.3f}")
    print(f"wrote {json_path}, {plot}")
    return 0


def _cmd_attack_ranking(args) -> int:
    """RobRank's attacks under one profile (rob28 for images up to 32 px, else rob224), and the ERS."""
    from ..data import evaluation_sets
    from ..attacks import format_budget
    from ..attacks.ranking import PROFILES
    from ..evaluation.ranking import es_start_line, evaluate_ranking, ranking_table
    from ..files import write_json
    from .config import parse_options

    if args.steps or args.restarts or args.eps or args.surrogate or args.norm:
        raise RobustDMLError("the robrank suite is fixed by its profile: drop --steps/--restarts/--eps/--norm/--surrogate")
    model, device, workers = _load_for_evaluation(args)
    query, gallery = evaluation_sets(args.dataset, args.root, image_size=args.image_size)
    _check_data(args, query)
    profile = args.profile or ("rob28" if query[0][0].shape[-1] <= 32 else "rob224")
    found = evaluate_ranking(model, query, gallery, profile=profile, queries=args.queries, seed=args.seed,
                             attacks=args.attack, attack_kwargs=parse_options(args.attack_option), device=device,
                             batch_size=min(args.batch_size, 128), workers=workers,
                             kmeans_restarts=args.kmeans_restarts, progress=not args.quiet)
    result = {**found.to_dict(), "model": str(args.model), "dataset": args.dataset}
    json_path = Path(args.json) if args.json else _results_dir(args, "attack") / f"{args.dataset}-robrank-{profile}.json"
    write_json(json_path, result)
    print(f"{args.dataset}: clean R@1 {found.clean['recall@1']:.3f}, NMI {found.clean['nmi']:.3f} (best of "
          f"{args.kmeans_restarts} k-means runs; RobRank's one run: {found.clean['robrank_nmi']:.3f}); profile {profile} "
          f"({format_budget(found.eps)}, {PROFILES[profile]['steps']} iterations), {found.queries} queries "
          f"(seed {found.seed}), {found.seconds / 60:.1f} min")
    print(ranking_table(result))
    if line := es_start_line(result):
        print(line)
    print(f"wrote {json_path}")
    return 0


def _results_dir(args, kind: str) -> Path:
    """--out, else MODEL/attack (or certify) for a model directory, else ./attack."""
    if args.out:
        return Path(args.out)
    return Path(args.model) / kind if Path(args.model).is_dir() else Path(kind)


def _attack_plots(found, out_dir: Path) -> list[Path]:
    from ..evaluation.robust import eps_key
    from ..reporting import plot_adversarial_grid, plot_convergence, plot_metrics_vs_eps

    sample = found.sample
    plots = [plot_metrics_vs_eps(found.to_dict(), out_dir / "metrics_vs_eps.png"),
             plot_adversarial_grid(sample.clean, sample.adversarial, sample.eps, out_dir / "adversarial_examples.png",
                                   title=f"{sample.attack} attack, eps={eps_key(sample.eps)}")]
    if found.convergence:
        plots.append(plot_convergence(found.convergence, out_dir / "convergence.png"))
    return plots


def _attack_summary(found) -> str:
    """The metrics table (clean, every attack at every eps, the worst case with the attack that gave
    it) under the budget's norm; an upper-bound mark on every worst figure a failed check touches;
    the checks' states, with the amount and the remedy of each failure."""
    from ..attacks import format_budget
    from ..evaluation.checks import UPPER_BOUND, failure_note, upper_bounds
    from ..evaluation.robust import eps_key
    from ..reporting import metrics_table
    from ..reporting.settings import describe_suite

    norm = found.settings.get("norm", "linf")
    bounds = upper_bounds(found.checks)
    rows = {"clean": found.clean}
    for k in found.worst:
        budget = format_budget(float(k), norm)
        for name, per_eps in found.attacks.items():
            if k in per_eps:
                rows[f"{name} @ {budget}"] = per_eps[k]
        marked = k == eps_key(found.main_eps)  # the checks rerun the attacks at the main eps
        rows[f"WORST @ {budget}"] = {m: f"{v:.4f}{UPPER_BOUND if marked and m in bounds else ''}"
                                     for m, v in found.worst[k].items()}
        rows[f"  worst by @ {budget}"] = found.worst_attack[k]
    lines = [f"Robust figures over {describe_suite(found.settings, len(found.labels))}", metrics_table(rows), ""]
    for name, check in found.checks.items():
        state = {True: "passed", False: "FAILED", None: "skipped"}[check["passed"]]
        detail = failure_note(name, check) if check["passed"] is False else check.get("note", "")
        lines.append(f"check {name:28s} {state}" + (f"  ({detail})" if detail else ""))
    if bounds:
        lines.append(f"{UPPER_BOUND} upper bound: a check failed on this figure ("
                     + "; ".join(f"{m}: {', '.join(c)}" for m, c in bounds.items() if m in found.worst[eps_key(found.main_eps)])
                     + ")")
    return "\n".join(lines)


def _cmd_benchmark(args) -> int:
    from ..engine.benchmark import Benchmark, load_benchmark_config
    from ..reporting.report import build_report, print_tables

    cfg = load_benchmark_config(args.config)
    for item in args.root or []:
        dataset, sep, path = item.partition("=")
        if not sep:
            raise RobustDMLError(f"--root takes DATASET=PATH, got {item!r}")
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
    print(json.dumps(dataset_info(args.dataset, args.root), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustdml",
        description="Adversarially robust deep metric learning: train, attack, defend (EAT) and evaluate "
                    "clustering-based inference and retrieval.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars, warnings only")
    parser._add_container_actions(common)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub_add = sub.add_parser
    sub.add_parser = lambda *a, **k: sub_add(*a, parents=[common], **k)  # -q/-v after the command too
    for add in (_add_train, _add_evaluate, _add_attack, _add_certify, _add_benchmark, _add_report, _add_data):
        add(sub)
    return parser


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train an embedding model from a YAML config",
                       description="Train a deep metric learning model. Any config key can be overridden "
                                   "with key=value (e.g. epochs=5 seed=1 method=standard loss_kwargs.margin=0.2).")
    p.add_argument("--config", help="YAML config (e.g. configs/digits.yaml); with --resume, defaults to RUN_DIR/config.yaml")
    p.add_argument("--out", required=True, help="run directory for logs, checkpoints and models")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(func=_cmd_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="clean clustering and retrieval metrics of a model",
                       description="k-means NMI, pairwise F1, ARI, Recall@K and MAP@R on the test classes.")
    _add_model_and_data(p)
    p.add_argument("--json", help="write the results here (default: MODEL/eval.json for a directory)")
    _add_eval_options(p)
    p.set_defaults(func=_cmd_evaluate)


def _add_attack(sub) -> None:
    from ..attacks import ATTACKS
    from ..evaluation.suite import NAMED

    p = sub.add_parser("attack", help="robust evaluation under the attack suite",
                       description="Perturb every test image with each attack at each eps, cluster again and "
                                   "compute every metric; report the worst case per metric and the "
                                   "honest-evaluation checks. Writes JSON and PNG plots.")
    _add_model_and_data(p)
    p.add_argument("--suite", choices=[*NAMED, "robrank"], default="strong",
                   help="a fixed attack suite (default strong: what every reported figure uses); robrank: "
                        "RobRank's nine ranking attacks and its ERS")
    p.add_argument("--profile", choices=["rob28", "rob224"],
                   help="robrank: attack profile (default rob28 for images up to 32 px, else rob224)")
    p.add_argument("--queries", type=int,
                   help="robrank: attack a seeded sample of this many test queries (default: all)")
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


def _add_certify(sub) -> None:
    p = sub.add_parser("certify", help="certified robustness of clustering and retrieval (center smoothing)",
                       description="Center smoothing of the model's embedding with Gaussian noise of std SIGMA: per "
                                   "test image, the L2 radius within which its k-means assignment and its "
                                   "Recall@1 answer provably stay (with probability 1 - ALPHA each); the fraction "
                                   "certified at each radius. docs/certify.md says what is guaranteed.")
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


def _add_benchmark(sub) -> None:
    p = sub.add_parser("benchmark", help="run a grid of (method, dataset, backbone, seed) cells and report",
                       description="Train and robust-evaluate every cell of the grid in a benchmark config. "
                                   "Finished cells are skipped on a rerun; a failing cell is recorded and the "
                                   "grid goes on. Ends with report.md and report.html in the output folder.")
    p.add_argument("--config", required=True, help="benchmark YAML (e.g. configs/benchmark-digits.yaml)")
    p.add_argument("--out", help="output folder (default: the config's `out`, else runs/NAME)")
    p.add_argument("--root", action="append", metavar="DATASET=PATH", help="dataset folder, e.g. cub=/data/CUB_200_2011")
    p.add_argument("--only", action="append", metavar="KEY=VALUE",
                   help="run only the cells with this grid value (repeatable; values of one key are alternatives), "
                        "e.g. --only method=eat --only seed=0; several such processes can share one --out")
    p.add_argument("--reuse-stale", action="store_true",
                   help="keep the results of cells whose settings changed instead of re-running them "
                        "(the report marks them stale)")
    p.set_defaults(func=_cmd_benchmark)


def _add_report(sub) -> None:
    p = sub.add_parser("report", help="rebuild a benchmark's report from its JSON files")
    p.add_argument("run_dir", help="benchmark output folder")
    p.set_defaults(func=_cmd_report)


def _add_data(sub) -> None:
    from ..data import DATASETS

    p = sub.add_parser("data", help="dataset utilities")
    data_sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = data_sub.add_parser("info", help="images, classes and label range per split, as JSON")
    q.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    q.add_argument("--root", help="dataset folder (not needed for digits)")
    q.set_defaults(func=_cmd_data_info)


def _add_model_and_data(p: argparse.ArgumentParser) -> None:
    from ..data import DATASETS
    p.add_argument("model", help="run directory (its best model) or saved model directory")
    p.add_argument("--dataset", required=True, choices=sorted(DATASETS))
    p.add_argument("--root", help="dataset folder (not needed for digits)")
    p.add_argument("--dataset-mismatch-ok", action="store_true",
                   help="evaluate a model on a dataset (or an input size) other than the one it was trained on")


def _load_for_evaluation(args):
    """The model of ``evaluate``/``attack`` on its device, and the data-loading processes."""
    from ..data import dataset_spec
    from ..engine.devices import default_workers, resolve_device
    from ..models import load_model

    dataset_spec(args.dataset)
    if args.kmeans_restarts < 1:
        raise RobustDMLError("--kmeans-restarts must be at least 1")
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.quiet, args.verbose = getattr(args, "quiet", False), getattr(args, "verbose", False)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("faiss").setLevel(logging.WARNING)  # its CPU-feature probing is noise
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

"""What each ``robustdml`` command does, once its arguments are parsed (:mod:`.arguments` declares them)."""

from __future__ import annotations

import json
import logging
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


def _first_process_only(command):
    """A command not shared among the processes of a ``torchrun`` launch: the first runs it, the
    others leave at once (and wait for it in the closing barrier)."""
    def run(args) -> int:
        from ..engine.distributed import init_distributed
        rank, world, _ = init_distributed()
        if rank != 0:
            return 0
        if world > 1:
            log.warning("%s runs in the first of the %d processes (only attack and evaluate share their work)",
                        command.__name__.removeprefix("_cmd_").replace("_", " "), world)
        return command(args)
    run.__name__ = command.__name__
    return run


def _cmd_evaluate(args) -> int:
    from ..api import checked_model
    from ..engine.distributed import init_distributed
    from ..evaluation import clean_metrics
    from ..evaluation.shards import Shards
    from ..files import write_json
    from ..reporting import metrics_table

    test = _test_data(args)
    rank, world, _ = init_distributed()  # under torchrun the processes share the batches to embed
    if rank != 0:
        logging.getLogger("robustdml").setLevel(logging.WARNING)  # the first process reports
    model, device, workers = _load_for_evaluation(args)
    model, device, workers = checked_model(model, test, device, args.normalize, workers)
    metrics = clean_metrics(model, test.query, test.gallery, ks=test.ks, device=device, batch_size=args.batch_size,
                            seed=args.seed, workers=workers, progress=not args.quiet and rank == 0,
                            restarts=args.kmeans_restarts, shards=Shards.of_launch())
    if rank != 0:
        return 0
    from ..engine.provenance import software_versions
    result = {"clean": metrics}
    print(metrics_table(result))
    result["versions"] = software_versions()
    out = Path(args.json) if args.json else (Path(args.model) / "eval.json" if Path(args.model).is_dir() else None)
    if out is not None:
        write_json(out, result)
        print(f"wrote {out}")
    return 0


def _cmd_attack(args) -> int:
    from ..api import evaluate, make_suite, threat_of
    from ..engine.distributed import init_distributed
    from ..engine.provenance import settings_hash
    from ..evaluation.store import discard
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
    rank, world, _ = init_distributed()  # under torchrun the processes share the batches of every attack
    if rank != 0:
        logging.getLogger("robustdml").setLevel(logging.WARNING)  # the first process reports
    model, device, workers = _load_for_evaluation(args)
    # finished entries and batches are kept here until the result is saved: a rerun continues from them
    partial = _results_dir(args, "attack") / f"{args.dataset}-{suite.name or 'custom-' + settings_hash(suite.to_dict())[:8]}.partial"
    found = evaluate(model, test, suite=suite, surrogate=args.surrogate, queries=args.queries, seed=args.seed,
                     kmeans_restarts=args.kmeans_restarts, normalize=args.normalize, device=device, workers=workers,
                     progress=not args.quiet and rank == 0, partial=None if args.fresh else partial,
                     distributed=world > 1)
    if rank != 0:
        return 0
    # one file per dataset and suite: a run on other data or with another suite never replaces this one
    stem = f"{args.dataset}-{found.settings['suite'] or 'custom-' + settings_hash(found.settings)[:8]}"
    out_dir, json_path = _saved(args, "attack", stem, found)
    plots = found.plot(out_dir / stem)
    discard(partial)
    print(found.table())
    print(f"wrote {json_path}, {', '.join(map(str, plots))}")
    return 0


@_first_process_only
def _cmd_certify(args) -> int:
    from ..api import certify

    test = _test_data(args)
    model, device, _ = _load_for_evaluation(args)
    found = certify(model, test, sigma=args.sigma, radii=args.radii, samples=args.samples,
                    center_samples=args.center_samples, alpha=args.alpha, delta=args.delta, queries=args.queries,
                    seed=args.seed, batch_size=args.batch_size, normalize=args.normalize, device=device,
                    progress=not args.quiet)
    stem = f"{args.dataset}-sigma{args.sigma:g}"
    out_dir, json_path = _saved(args, "certify", stem, found)
    from ..reporting.plots import plot_certified
    plot = plot_certified({str(args.model): found.to_dict()}, out_dir / f"{stem}.png")
    print(f"{args.dataset}, {found.table()}")
    print(f"wrote {json_path}, {plot}")
    return 0


@_first_process_only
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
    _, json_path = _saved(args, "attack", f"{args.dataset}-robrank-{found.profile}", found)
    result = found.to_dict()
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


def _saved(args, kind: str, stem: str, found) -> tuple[Path, Path]:
    """Save a result (with the model it is of and the software and commit that made it) as
    ``--json`` or OUT/STEM.json; (OUT, the file)."""
    from ..engine.provenance import software_versions
    found.about = {"model": str(args.model), **found.about, "versions": software_versions()}
    out_dir = _results_dir(args, kind)
    json_path = Path(args.json) if args.json else out_dir / f"{stem}.json"
    found.save(json_path)
    return out_dir, json_path


def _cmd_benchmark(args) -> int:
    from ..benchmark import Benchmark, load_benchmark_config
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
    count = {k: sum(s == k for s in statuses.values()) for k in ("ok", "updated", "skipped", "stale", "busy")}
    print(f"\n{len(statuses)} cells: {count['ok']} trained and evaluated, {count['updated']} re-evaluated (training "
          f"reused), {count['skipped']} up to date, "
          + (f"{count['stale']} kept stale (--reuse-stale), " if count["stale"] else "")
          + (f"{count['busy']} left to another process running them (the report has what was finished), "
             if count["busy"] else "")
          + f"{len(failed)} failed" + (f" ({', '.join(failed)})" if failed else ""))
    print(f"report: {html_path} (and {md})")
    return 1 if failed else 0


def _cmd_report(args) -> int:
    from ..reporting.report import build_report, decision_rule, print_tables
    if not Path(args.run_dir).is_dir():
        raise RobustDMLError(f"{args.run_dir} is not a benchmark directory")
    rule = decision_rule(args.run_dir, args.config)
    md, html_path = build_report(args.run_dir, rule)
    print(print_tables(args.run_dir, rule))
    print(f"report: {html_path} (and {md})")
    return 0


def _cmd_converged(args) -> int:
    from ..reporting.convergence import plateau_index, smoothed_curves
    from ..reporting.plots import plot_plateaus
    metrics = tuple(args.metrics)
    curves = {}
    for run in args.runs:
        rows, smoothed = smoothed_curves(run, metrics, args.window)
        i = plateau_index(smoothed, args.tol)
        epoch, last = (None if i is None else int(rows[i]["epoch"])), int(rows[-1]["epoch"])
        curves[run] = (rows, smoothed, epoch)
        if i is None:
            print(f"{run}: still improving at its last evaluated epoch ({last}); train it longer to tell")
        else:
            figures = ", ".join(f"{m} {smoothed[m][i]:.4f}" for m in metrics)
            after = len(rows) - 1 - i
            print(f"{run}: plateau at epoch {epoch} of {last}, {after} evaluation{'s' * (after != 1)} after it "
                  f"(smoothed there: {figures})")
    first = Path(args.runs[0])
    plot = Path(args.plot) if args.plot else (first if first.is_dir() else first.parent) / "plateau.png"
    plot_plateaus(curves, plot, args.window)
    plateaus = [epoch for _, _, epoch in curves.values()]
    if all(e is not None for e in plateaus):
        print(f"epochs for a grid of these: {max(plateaus)}")
    print(f"plot: {plot}")
    return 0


def _cmd_data_info(args) -> int:
    from ..data import dataset_info
    print(json.dumps(dataset_info(args.dataset, _dataset_root(args)), indent=2))
    return 0


def _load_for_evaluation(args):
    """The model of ``evaluate``/``attack``/``certify`` on its device, and the data-loading processes."""
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

"""The options of every ``robustdml`` command, and the table of commands with their help."""

from __future__ import annotations

import argparse

from .commands import (_cmd_attack, _cmd_benchmark, _cmd_certify, _cmd_converged, _cmd_data_info, _cmd_evaluate,
                       _cmd_report, _cmd_train)


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
                        "and PNG plots. Finished attacks are kept as they complete, so a rerun of an interrupted "
                        "run continues where it stopped; under torchrun (torchrun --nproc_per_node=K -m robustdml "
                        "attack ...) the K processes share the work and give the figures of one.")),
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
                        "(nothing is trained or attacked), with the decision of the config's `decision` rule "
                        "where it has one.")),
        ("converged", _args_converged, dict(
            help="the epoch training runs stopped improving at, from their log.csv",
            description="For each training run, the first evaluated epoch after which none of the metrics "
                        "(clean and robust validation NMI by default), each a trailing mean of WINDOW "
                        "evaluations, rises by more than TOL above its best so far; then the epoch count "
                        "for a grid (the latest of the runs'), and a plot of the curves.")),
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
    p.add_argument("--fresh", action="store_true",
                   help="ignore the finished pieces of an interrupted run (OUT/DATASET-SUITE.partial/) and start "
                        "again (default: continue from them)")
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
                        "e.g. --only method=eat --only seed=0; several such processes can share one --out (each cell is run by one of them, the others pass over it)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, as for train: attack.steps=5 train.epochs=2 grid.seed=[0,1]")
    p.add_argument("--reuse-stale", action="store_true",
                   help="keep the results of cells whose settings changed instead of re-running them "
                        "(the report marks them stale)")
    p.set_defaults(func=_cmd_benchmark)


def _args_report(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", help="benchmark output folder")
    p.add_argument("--config", help="the benchmark config whose decision rule the report applies (default: the one "
                                    "the folder's last run wrote to benchmark.yaml)")
    p.set_defaults(func=_cmd_report)


def _args_converged(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="training run folders (or their log.csv)")
    p.add_argument("--metrics", nargs="+", default=["nmi", "robust_nmi"], help="log.csv columns (default: %(default)s)")
    p.add_argument("--tol", type=float, default=0.01, help="a rise this small does not count (default: %(default)s)")
    p.add_argument("--window", type=int, default=3, help="evaluations in the trailing mean (default: %(default)s)")
    p.add_argument("--plot", default=None, metavar="PNG", help="where the plot goes (default: plateau.png in the "
                                                                 "first run's folder)")
    p.set_defaults(func=_cmd_converged)


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


def _add_eval_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--workers", type=int, default=None,
                   help="data-loading processes (default: 0 on a CPU, up to 8 on a GPU)")
    p.add_argument("--seed", type=int, default=0, help="k-means seed")
    p.add_argument("--kmeans-restarts", type=int, default=5,
                   help="k-means runs per clustering, the best kept (default 5; 1 is cheaper on large test sets)")
    p.add_argument("--device", default="auto")

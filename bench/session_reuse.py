"""C1: a benchmark cell's three evaluation parts — the attack suite, RobRank's ranking attacks and
the certificates — on one shared evaluation session / the same three parts each on a session of
its own (each embedding and clustering the clean test set again, as before the evaluation core).

The attacks are cut short (2 steps, a few queries, a few certified images), so that the clean work
a session shares is a visible part of the cell; with the full suites it is a small one, and C1
tends to 1. Same model, data and settings on both sides; the figures of both sides must be equal,
or the benchmark stops.
"""

from __future__ import annotations

import numpy as np
import torch

from robustdml.attacks import ThreatModel
from robustdml.data import TensorDataset
from robustdml.evaluation.certify import Smoothing, certify
from robustdml.evaluation.ranking import evaluate_ranking
from robustdml.evaluation.robust import evaluate_robustness
from robustdml.evaluation.session import EvalSettings, EvaluationSession
from robustdml.evaluation.suite import AttackSuite
from robustdml.models import create_model

from common import compare, line

TARGET = 1.00


def _parts(model, session: EvaluationSession | None, query, settings: EvalSettings):
    """The three parts; on ``session`` if given, else each on a session of its own."""
    def own():
        return session or EvaluationSession(model, query, settings=settings)

    suite = AttackSuite(["centroid", "noise"], steps=2, seed=0, checks=False, batch_size=settings.batch_size)
    robust = evaluate_robustness(model, suite=suite, threat=ThreatModel(0.1), samples=0, session=own())
    ranking = evaluate_ranking(model, attacks=["tma"], queries=64, seed=0, session=own())
    smoothing = Smoothing(sigma=0.1, samples=64, center_samples=64, alpha=0.2, delta=0.2, batch_size=64)
    certified = certify(model, smoothing=smoothing, radii=[0.0], session=own().with_queries(np.arange(4)))
    return robust.worst, ranking.columns, certified.clean


def run(device: torch.device, images: int = 4000, classes: int = 50) -> tuple[str, dict]:
    torch.manual_seed(0)
    model = create_model("small-cnn", embedding_dim=64, in_channels=1, pretrained=False).to(device).eval()
    x = torch.rand(images, 1, 8, 8)
    y = torch.arange(images) % classes
    query = TensorDataset(x, y.numpy())
    settings = EvalSettings(seed=0, kmeans_restarts=5, batch_size=256, ks=(1, 2, 4, 8), device=device)
    shared = _parts(model, EvaluationSession(model, query, settings=settings), query, settings)
    separate = _parts(model, None, query, settings)
    if shared != separate:
        raise SystemExit("C1: the figures on one session differ from those on three")
    t_shared, t_separate = compare(lambda: _parts(model, EvaluationSession(model, query, settings=settings), query,
                                                  settings),
                                   lambda: _parts(model, None, query, settings), device, repeats=3)
    ratio = t_shared / t_separate
    return (line("C1", ratio, TARGET) + f"      # one session {t_shared:.2f} s, three sessions {t_separate:.2f} s",
            {"shared_s": round(t_shared, 3), "separate_s": round(t_separate, 3), "images": images})


if __name__ == "__main__":
    print(run(torch.device("cpu"))[0])

"""What a training run measures each epoch: the clean metrics of the test set and the robust
validation (one cheap attack on a fixed subset), both leaving the model and the training's random
streams exactly as they found them. A part of :class:`~robustdml.engine.trainer.Trainer`."""

from __future__ import annotations

import numpy as np
from torch.utils.data import Subset

from ..evaluation import embed, evaluate_embeddings
from ..evaluation.robust import eps_key, evaluate_robustness
from ..evaluation.shards import Shards
from ..evaluation.suite import NAMED as NAMED_SUITES
from ..evaluation.suite import AttackSuite
from .checkpoint import isolated_rng


class Validation:
    """The trainer's per-epoch evaluation (it reads the trainer's config, model, data and device)."""

    def embed_test(self):
        """Embeddings and labels of the test query (and gallery) set: ((q, ql), (g, gl) or None).
        Under several processes every rank embeds its share of the batches and rank 0 gets everything
        (the others None)."""
        shards = Shards.of_launch() if self.world > 1 else Shards()

        def one(dataset):  # in fp32, as `robustdml evaluate` and `attack` embed, so the metrics match theirs
            return embed(self.model, dataset, self.cfg.eval_batch_size, self.device, self.workers, shards=shards)

        query = one(self.query_set)
        gallery = one(self.gallery_set) if self.gallery_set is not None else None
        return (query, gallery) if shards.first else None

    def evaluate(self, embeddings) -> dict[str, float]:
        """Clean metrics (and the robust validation) from :meth:`embed_test`'s result; rank 0 only."""
        (q, ql), gallery = embeddings
        g, gl = gallery if gallery is not None else (None, None)
        metrics = evaluate_embeddings(q, ql, g, gl, ks=self.spec.recall_ks, seed=self.cfg.seed,
                                      restarts=self.cfg.kmeans_restarts)
        if self.cfg.robust_eval:
            metrics.update({f"robust_{k}": v for k, v in self.robust_validation().items()})
        return metrics

    def robust_validation(self) -> dict[str, float]:
        """One cheap attack on a fixed, seeded subset of the test queries (leave-one-out retrieval).
        It leaves the model and the training's random streams exactly as it found them."""
        cfg = self.cfg
        if not hasattr(self, "_robust_subset"):
            n = len(self.query_set)
            chosen = np.random.default_rng(cfg.seed).choice(n, min(n, cfg.robust_eval_size), replace=False)
            self._robust_subset = Subset(self.query_set, sorted(chosen.tolist()))
        eps = cfg.robust_eval_eps if cfg.robust_eval_eps is not None else self.threat.eps
        if cfg.robust_eval_attack in NAMED_SUITES:  # e.g. fast: its own attacks and iterations
            suite = AttackSuite(cfg.robust_eval_attack, eps=[eps], batch_size=cfg.eval_batch_size, seed=cfg.seed)
        else:
            suite = AttackSuite([cfg.robust_eval_attack], eps=[eps], steps=cfg.robust_eval_steps,
                                batch_size=cfg.eval_batch_size, seed=cfg.seed)
        # own random streams (the training ones are left where they were) and the model in eval mode
        # throughout (evaluate_robustness's own guarantee): nothing of the test set reaches the model
        with isolated_rng(cfg.seed):
            result = evaluate_robustness(self.model, self._robust_subset, None, suite, threat=self.threat,
                                         ks=self.spec.recall_ks, device=self.device, kmeans_seed=cfg.seed,
                                         kmeans_restarts=cfg.kmeans_restarts, checks=False, samples=0)
        return result.worst[eps_key(eps)]

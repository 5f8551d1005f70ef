"""The t-SNE picture of a robust evaluation: the same test images, clean and attacked."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ..evaluation.results import RobustResult


def tsne_points(found: "RobustResult", n: int = 400, seed: int = 0) -> dict:
    """2-D t-SNE of the same test images, clean and under the attack with the worst NMI at the main eps."""
    from sklearn.manifold import TSNE

    adv = found.sample.embeddings
    if adv is None:
        return {}
    rng = np.random.default_rng(seed)
    idx = np.sort(rng.choice(len(adv), min(n, len(adv)), replace=False))
    both = np.concatenate([found.clean_embeddings.numpy()[idx], adv.numpy()[idx]])
    xy = TSNE(2, init="pca", perplexity=30, random_state=seed).fit_transform(both)
    return {"attack": found.sample.attack, "eps": found.sample.eps, "labels": found.labels[idx].tolist(),
            "clean": xy[: len(idx)].round(3).tolist(), "adversarial": xy[len(idx):].round(3).tolist()}

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from robustdml.evaluation import ari, evaluate_embeddings, kmeans, nmi, pairwise_f1, retrieval_metrics


def brute_force_f1(labels, clusters):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(labels)), 2):
        same_class, same_cluster = labels[i] == labels[j], clusters[i] == clusters[j]
        tp += same_class and same_cluster
        fp += same_cluster and not same_class
        fn += same_class and not same_cluster
    if tp == 0:
        return 0.0
    p, r = tp / (tp + fp), tp / (tp + fn)
    return 2 * p * r / (p + r)


@pytest.mark.parametrize("seed", range(8))
def test_pairwise_f1_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 40))
    labels = rng.integers(0, rng.integers(1, 6), n)
    clusters = rng.integers(0, rng.integers(1, 6), n)
    assert pairwise_f1(labels, clusters) == pytest.approx(brute_force_f1(labels, clusters), abs=1e-12)


def test_pairwise_f1_perfect_and_permuted():
    labels = np.array([0, 0, 1, 1, 2, 2])
    assert pairwise_f1(labels, np.array([5, 5, 3, 3, 9, 9])) == 1.0


def test_nmi_ari_equal_sklearn_on_kmeans_assignments():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(5), 20)
    emb = rng.normal(size=(100, 8)).astype(np.float32) + 2 * np.eye(8, dtype=np.float32)[labels]
    clusters, centroids = kmeans(emb, 5, seed=0)
    assert centroids.shape == (5, 8)
    assert nmi(labels, clusters) == pytest.approx(normalized_mutual_info_score(labels, clusters, average_method="arithmetic"))
    assert ari(labels, clusters) == pytest.approx(adjusted_rand_score(labels, clusters))
    assert nmi(labels, clusters) > 0.5  # separable clusters are found


def test_kmeans_is_deterministic_for_a_seed():
    emb = np.random.default_rng(1).normal(size=(300, 16)).astype(np.float32)
    a, _ = kmeans(emb, 7, seed=3)
    b, _ = kmeans(emb, 7, seed=3)
    assert (a == b).all()


def _random_embeddings(n, d, classes, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    centers = torch.randn(classes, d, generator=g)
    return F.normalize(centers[labels] + 1.5 * torch.randn(n, d, generator=g), dim=1), labels.numpy()


@pytest.mark.parametrize("seed", range(3))
def test_recall_and_map_at_r_equal_pytorch_metric_learning(seed):
    x, y = _random_embeddings(300, 16, 12, seed)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    expected = calc.get_accuracy(x, y)
    ours = retrieval_metrics(x, y, ks=(1, 2, 4, 8))
    assert ours["recall@1"] == pytest.approx(expected["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)
    assert ours["recall@1"] <= ours["recall@2"] <= ours["recall@4"] <= ours["recall@8"]


def test_query_against_gallery_equals_pytorch_metric_learning():
    q, ql = _random_embeddings(80, 16, 10, 5)
    g, gl = _random_embeddings(200, 16, 10, 6)
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count")
    expected = calc.get_accuracy(q, ql, g, gl, ref_includes_query=False)
    ours = retrieval_metrics(q, ql, g, gl, ks=(1, 10))
    assert ours["recall@1"] == pytest.approx(expected["precision_at_1"], abs=1e-9)
    assert ours["map@r"] == pytest.approx(expected["mean_average_precision_at_r"], abs=1e-6)


def test_inshop_recall_is_query_against_gallery():
    # The query's nearest neighbour is another query of its class; the gallery holds its class far
    # away. Leave-one-out within the query set would score 1.0; query-against-gallery must not.
    q = F.normalize(torch.tensor([[1.0, 0.0], [0.99, 0.1]]), dim=1)
    ql = np.array([0, 0])
    g = F.normalize(torch.tensor([[-1.0, 0.05], [1.0, 0.02]]), dim=1)
    gl = np.array([0, 1])
    assert retrieval_metrics(q, ql, ks=(1,))["recall@1"] == 1.0
    assert retrieval_metrics(q, ql, g, gl, ks=(1,))["recall@1"] == 0.0


def test_chunking_does_not_change_results():
    x, y = _random_embeddings(257, 8, 9, 2)
    whole = retrieval_metrics(x, y)
    tiny = retrieval_metrics(x, y, chunk_bytes=4 * 257 * 7)  # 7 query rows per chunk
    assert whole == pytest.approx(tiny)


def test_evaluate_embeddings_returns_floats():
    x, y = _random_embeddings(100, 8, 5, 0)
    result = evaluate_embeddings(x, y, ks=(1, 2, 4, 8))
    assert list(result)[:3] == ["nmi", "f1", "ari"]
    assert all(type(v) is float for v in result.values())
    assert "recall@8" in result and "map@r" in result


def test_robrank_kmeans_is_faiss_default_call():
    """RobRank's NMI calls ``faiss.Kmeans(d, k, seed=123)`` with faiss's defaults: ours must equal it,
    sample of 256 points per centroid included (the sample changes the clusters, hence the NMI)."""
    import faiss

    from robustdml.evaluation.ranking import ROBRANK_KMEANS

    defaults = faiss.ClusteringParameters()
    assert ROBRANK_KMEANS["iterations"] == defaults.niter and ROBRANK_KMEANS["restarts"] == defaults.nredo
    assert ROBRANK_KMEANS["max_points_per_centroid"] == defaults.max_points_per_centroid
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(3000, 8)) + np.repeat(rng.normal(scale=2, size=(3, 8)), 1000, axis=0)).astype(np.float32)
    ours, _ = kmeans(x, 3, **ROBRANK_KMEANS)
    reference = faiss.Kmeans(8, 3, seed=123, verbose=False)
    reference.train(x)
    assert np.array_equal(ours, reference.index.search(x, 1)[1].ravel())
    # trained on all points, the same seed gives other centroids
    _, sampled = kmeans(x, 3, **ROBRANK_KMEANS)
    _, full = kmeans(x, 3, **{**ROBRANK_KMEANS, "max_points_per_centroid": None})
    assert not np.allclose(sampled, full)

"""One call to evaluate any embedding model: ``robustdml.evaluate``, ``robustdml.evaluate_ranking``
and ``robustdml.certify`` take a module and data in any of three forms and run the checks of
:mod:`robustdml.evaluation.preflight` before the long work.

``data`` is a dataset name (``"digits"``, ``"fashion"``, ``"cub"`` with ``root=``), a torch
``Dataset`` of ``(image, label)``, or a pair of tensors ``(images, labels)``; ``gallery`` the same
(default: leave-one-out retrieval within ``data``, or the named dataset's own gallery). Images are
floats in [0, 1]; the model maps a batch of them to (B, D) embeddings.

Example:
    >>> import robustdml
    >>> result = robustdml.evaluate(model, "digits", eps="0.1")
    >>> print(result.table())
    >>> result.save("results/mine.json"); result.plot("results/mine")
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from .attacks import Norm, ThreatModel
from .data import TensorDataset, dataset_spec, evaluation_sets
from .errors import ConfigError
from .evaluation.certify import CertifyResult, Smoothing, certify as _certify, default_radii
from .evaluation.preflight import check_images, preflight
from .evaluation.ranking import RankingResult, evaluate_ranking as _evaluate_ranking, query_subset
from .evaluation.robust import RobustResult, evaluate_robustness
from .evaluation.session import EvalSettings, EvaluationSession
from .evaluation.suite import AttackSuite

DEFAULT_KS = (1, 2, 4, 8)
_PREFLIGHT_IMAGES = 4


@dataclass
class EvalData:
    """The evaluation sets of one call: ``name`` (a registered dataset, or None), the query set, the
    gallery (None: leave-one-out in the queries), the dataset's threat model and Recall@K ks."""

    name: str | None
    query: Dataset
    gallery: Dataset | None
    threat: ThreatModel | None
    ks: tuple[int, ...]

    def subsample(self, queries: int | None, seed: int) -> "EvalData":
        """A seeded sample of ``queries`` query images (all if None), the gallery kept whole."""
        if not queries:
            return self
        keep = query_subset(len(self.query), queries, seed)
        return EvalData(self.name, Subset(self.query, keep.tolist()), self.gallery, self.threat, self.ks)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.query[0][0].shape)


def resolve_data(data, gallery=None, root=None, image_size: int = 224) -> EvalData:
    """``data`` and ``gallery`` in any of the accepted forms as a :class:`EvalData`."""
    if isinstance(data, EvalData):  # already resolved (the CLI reads its test sets once)
        return data
    if isinstance(data, str):
        if gallery is not None:
            raise ConfigError(f"dataset '{data}' has its own gallery: drop gallery=, or pass tensors or Datasets")
        spec = dataset_spec(data)
        query, own_gallery = evaluation_sets(data, root, image_size=image_size)
        return EvalData(data, query, own_gallery, ThreatModel.of(data), tuple(spec.recall_ks))
    if root is not None:
        raise ConfigError("root= names the folder of a dataset given by name; it means nothing for tensors or Datasets")
    pairs = [_labels_of(d, what) for d, what in ((data, "data"), (gallery, "gallery")) if d is not None]
    space = np.unique(np.concatenate([labels for _, labels in pairs]))  # one label space for query and gallery
    query = _as_dataset(data, "data", space)
    return EvalData(None, query, None if gallery is None else _as_dataset(gallery, "gallery", space), None, DEFAULT_KS)


def _labels_of(data, what: str):
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ConfigError(f"{what} as tensors is a pair (images, labels), got {len(data)} items")
        images, labels = data
        check_images(images, f"{what} images")
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
            raise ConfigError(f"{what} labels must be {len(images)} integers, one per image, got shape {labels.shape} "
                              f"of {labels.dtype}")
        return data, labels
    if isinstance(data, Dataset):
        labels = getattr(data, "labels", None)
        if labels is None:
            labels = [int(data[i][1]) for i in range(len(data))]
        return data, np.asarray(labels)
    raise ConfigError(f"{what} must be a dataset name (e.g. 'digits'), a torch Dataset of (image, label) or a pair of "
                      f"tensors (images, labels), not {type(data).__name__}")


def _as_dataset(data, what: str, space: np.ndarray) -> Dataset:
    if isinstance(data, Dataset):
        return data
    images, labels = data
    return TensorDataset(images.detach().cpu().float(), np.asarray(labels.cpu() if isinstance(labels, torch.Tensor)
                                                                   else labels), label_space=space)


def _device(model, device) -> torch.device:
    """The model's own device unless one is named (evaluation moves nothing: a named device must be
    the model's)."""
    own = next(iter(model.parameters()), torch.empty(0)).device if isinstance(model, nn.Module) else torch.device("cpu")
    if device is None:
        return own
    from .engine.devices import resolve_device
    device = resolve_device(str(device))
    if isinstance(model, nn.Module) and any(True for _ in model.parameters()) and own.type != device.type:
        raise ConfigError(f"the model is on {own}, not {device}: move it there first (model.to('{device}'))")
    return device


def checked_model(model, test: EvalData, device=None, normalize: bool = False, workers: int | None = None):
    """(the checked model, its device, the data-loading processes)."""
    from .engine.devices import default_workers
    device = _device(model, device)
    example = torch.stack([test.query[i][0] for i in range(min(_PREFLIGHT_IMAGES, len(test.query)))]).to(device)
    model = preflight(model, example, normalize=normalize)
    return model, device, default_workers(device) if workers is None else workers


def _surrogate(surrogate, device):
    if surrogate is None or isinstance(surrogate, nn.Module):
        return surrogate
    from .models import load_model
    return load_model(surrogate, device=device)


def make_suite(suite="strong", *, eps=None, norm=None, seed: int = 0, batch_size: int = 256, steps=None,
               restarts=None, attack_kwargs=None) -> AttackSuite:
    """``suite`` as an :class:`AttackSuite`: one already built, a named suite, attack names, or entries."""
    if isinstance(suite, AttackSuite):
        if any(v is not None for v in (eps, norm, steps, restarts, attack_kwargs)):
            raise ConfigError("eps, norm, steps, restarts and attack_kwargs belong to the AttackSuite given")
        return suite
    custom = {k: v for k, v in (("steps", steps), ("restarts", restarts)) if v is not None}
    return AttackSuite(suite, eps=eps, norm=norm, seed=seed, batch_size=batch_size,
                       attack_kwargs=attack_kwargs or {}, **custom)


def threat_of(test: EvalData, suite: AttackSuite) -> ThreatModel:
    """The named dataset's threat model, else the largest of the suite's budgets under its norm."""
    if test.threat is not None:
        threat = test.threat
    elif suite.eps is None:
        raise ConfigError("eps is needed when the data is not a named dataset, e.g. eps='8/255' (or a list of budgets)")
    else:
        threat = ThreatModel(max(suite.eps), Norm(suite.norm or "linf"))
    suite.eps_values(threat)  # a budget that cannot be meant fails here, before any work
    return threat


def evaluate(model: nn.Module, data, *, gallery=None, root=None, eps=None, norm: str | None = None,
             suite="strong", steps: int | None = None, restarts: int | None = None, attack_kwargs: dict | None = None,
             surrogate=None, queries: int | None = None, seed: int = 0, kmeans_restarts: int = 5,
             batch_size: int = 256, image_size: int = 224, checks: bool | None = None, normalize: bool = False,
             device=None, workers: int | None = None, progress: bool = False, partial=None,
             distributed: bool = False) -> RobustResult:
    """Robust clustering and retrieval metrics of ``model`` on ``data``: every attack of ``suite`` at
    every budget, the worst case per metric and the honest-evaluation checks (what ``robustdml
    attack`` computes).

    Args:
        eps: budgets in [0, 1] pixel units (``0.1``, ``"8/255"`` or a list); default the suite's
            around the dataset's threat model (needed for data that is not a named dataset).
        norm: ``"linf"`` (default) or ``"l2"``.
        suite: ``"strong"`` (what every reported figure uses), ``"complete"``, ``"fast"``, a list of
            attack names (with ``steps``, ``restarts``), or an :class:`AttackSuite`.
        surrogate: a module or a saved model's path, for the transfer attack.
        queries: evaluate a seeded sample of this many test images.
        normalize: L2-normalise the model's embeddings (else a model whose embeddings are not unit
            norm gets a warning).
        device: default the model's own.
        partial: a folder where finished attacks are kept as they complete; calling again with the
            same arguments after an interruption continues from them (remove it once the result is saved).
        distributed: share the attacks' batches among the processes of the open process group
            (every process calls this; under ``torchrun``), each getting the whole result.
    """
    test = resolve_data(data, gallery, root, image_size).subsample(queries, seed)
    suite = make_suite(suite, eps=eps, norm=norm, seed=seed, batch_size=batch_size, steps=steps, restarts=restarts,
                       attack_kwargs=attack_kwargs)
    threat = threat_of(test, suite)
    model, device, workers = checked_model(model, test, device, normalize, workers)
    session = EvaluationSession(model, test.query, test.gallery, EvalSettings(
        seed=seed, kmeans_restarts=kmeans_restarts, batch_size=suite.batch_size, ks=test.ks, device=device,
        workers=workers, progress=progress, distributed=distributed))
    found = evaluate_robustness(model, suite=suite, threat=threat, surrogate=_surrogate(surrogate, device),
                                checks=checks, session=session, partial=partial)
    found.about = {"dataset": test.name, "test_images": len(test.query)}
    return found


def evaluate_ranking(model: nn.Module, data, *, gallery=None, root=None, profile: str | None = None,
                     queries: int | None = None, seed: int = 0, attacks: list[str] | None = None,
                     attack_kwargs: dict | None = None, kmeans_restarts: int = 5, batch_size: int = 128,
                     image_size: int = 224, normalize: bool = False, device=None, workers: int | None = None,
                     progress: bool = False) -> RankingResult:
    """RobRank's nine ranking attacks and its ERS on ``data`` (what ``robustdml attack --suite
    robrank`` computes); ``profile`` defaults to ``rob28`` for images up to 32 px, else ``rob224``."""
    test = resolve_data(data, gallery, root, image_size)
    model, device, workers = checked_model(model, test, device, normalize, workers)
    profile = profile or ("rob28" if test.image_shape[-1] <= 32 else "rob224")
    session = EvaluationSession(model, test.query, test.gallery, EvalSettings(
        seed=seed, kmeans_restarts=kmeans_restarts, batch_size=batch_size, ks=test.ks, device=device, workers=workers,
        progress=progress))
    found = _evaluate_ranking(model, profile=profile, queries=queries, seed=seed, attacks=attacks,
                              attack_kwargs=attack_kwargs, batch_size=batch_size, session=session)
    found.about = {"dataset": test.name}
    return found


def certify(model: nn.Module, data, *, sigma: float, gallery=None, root=None, radii: list[float] | None = None,
            samples: int = 10_000, center_samples: int = 10_000, alpha: float = 0.01, delta: float = 0.05,
            queries: int | None = None, seed: int = 0, batch_size: int = 256, image_size: int = 224,
            normalize: bool = False, device=None, progress: bool = False) -> CertifyResult:
    """Center-smoothing certificates of clustering and retrieval with Gaussian noise of std ``sigma``
    (what ``robustdml certify`` computes): per image, the L2 radius within which its k-means
    assignment and its Recall@1 answer provably stay."""
    test = resolve_data(data, gallery, root, image_size).subsample(queries, seed)
    smoothing = Smoothing(sigma=sigma, samples=samples, center_samples=center_samples, alpha=alpha, delta=delta,
                          batch_size=batch_size, seed=seed)
    model, device, _ = checked_model(model, test, device, normalize, 0)
    found = _certify(model, test.query, test.gallery, smoothing=smoothing, radii=radii or default_radii(sigma),
                     device=device, kmeans_seed=seed, progress=progress)
    found.about = {"dataset": test.name, "queries": len(test.query)}
    return found

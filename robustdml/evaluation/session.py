"""The evaluation core: one :class:`EvaluationSession` per (model, test data, settings).

A session owns what every protocol needs of the clean model and computes each of it once, when
first asked: the clean embeddings of the test pool (the queries, then the gallery where there is
one), the clean k-means clustering, the clean metrics, each query's own gallery position, the
attacks' planned targets, and the one loop that perturbs the test pool a batch at a time. The
robust evaluation (:mod:`.robust`), RobRank's ranking protocol (:mod:`.ranking`) and the
certificates (:mod:`.certify`) are protocols over it; a benchmark cell builds one session and
every part of the cell reads the same clean state.

Under ``torchrun`` the processes share one session (:mod:`.shards`): each embeds, and perturbs,
its share of the batches, gathered to all; the first computes the clean clustering, the plans and
the metrics and sends them to the others. With a :class:`~.store.EntryFiles`
the attack writes every finished batch to disk and a rerun reads them back.

>>> session = EvaluationSession(model, query_set, settings=EvalSettings(seed=0, ks=(1, 2, 4, 8)))
>>> session.clean                      # clean metrics, the clustering computed once
>>> session.for_model(member)          # the same data and settings, another model
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from ..attacks import Attack, AttackContext
from ..attacks.base import CleanPool
from ..data import IndexedDataset
from ..errors import ConfigError
from ..models import EmbeddingNet, EnsembleNet
from ..models.fused import attack_copy
from .embed import embed
from .metrics import cluster_scores, kmeans, retrieval_metrics
from .perturb import perturb_pool
from .shards import Shards
from .store import EntryFiles


LAYOUTS = ("auto", "channels-last", "as-given")


@dataclass(frozen=True)
class EvalSettings:
    """The knobs every protocol shares, spelled once.

    Args:
        seed: seed of the clean k-means, of planned targets and of query subsamples.
        kmeans_restarts: k-means runs kept best of, for every clustering of the evaluation.
        batch_size: images embedded or perturbed at once.
        ks: the K of Recall@K.
        device: where the model runs.
        workers: data-loading processes.
        progress: progress bars.
        distributed: share the work among the processes of the open process group (``torchrun``;
            :mod:`.shards`); default one process, whatever is open.
        layout: the memory layout of the images the attacks perturb — ``"channels-last"``,
            ``"as-given"``, or ``"auto"`` (default): channels-last for robustdml's own models on a
            CPU, where their convolutions, pooling and gradients run about 1.3x faster (bench P6;
            the same arithmetic, summed in another order: the last bits differ), as given elsewhere
            (a model of one's own may ``view`` its input, which needs the layout it came in). With
            channels-last, the attacks run on :attr:`EvaluationSession.attack_model`.
    """

    seed: int = 0
    kmeans_restarts: int = 5
    batch_size: int = 256
    ks: tuple[int, ...] = (1, 2, 4, 8)
    device: str | torch.device = "cpu"
    workers: int = 0
    progress: bool = False
    distributed: bool = False
    layout: str = "auto"

    def __post_init__(self):
        for name in ("kmeans_restarts", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if self.layout not in LAYOUTS:
            raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)}, not {self.layout!r}")
        if not self.ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in self.ks):
            raise ConfigError(f"ks must be whole numbers >= 1, got {self.ks!r}")
        object.__setattr__(self, "ks", tuple(self.ks))
        object.__setattr__(self, "device", torch.device(self.device))


class EvaluationSession:
    """The clean state of one model on one test set, and the runs of attacks against it.

    Args:
        model: maps a batch of [0, 1] images to (B, D) embeddings; the protocols run it in eval mode.
        query_set: the test images (``(image, label)`` items).
        gallery_set: the retrieval gallery (None: leave-one-out retrieval in the queries).
        settings: :class:`EvalSettings`.
        surrogate: a separate model for the transfer attack.
        plan_seed: seed of the attacks' planned targets (default the settings' seed; a suite brings its own).
    """

    def __init__(self, model: nn.Module, query_set: Dataset, gallery_set: Dataset | None = None,
                 settings: EvalSettings | None = None, surrogate: nn.Module | None = None,
                 plan_seed: int | None = None):
        self.model, self.surrogate = model, surrogate
        self.settings = settings or EvalSettings()
        self.plan_seed = self.settings.seed if plan_seed is None else plan_seed
        self.query_set, self.gallery_set = query_set, gallery_set
        self.has_gallery = gallery_set is not None
        self.pool = query_set if gallery_set is None else ConcatDataset([query_set, gallery_set])
        self.n_query = len(query_set)
        # reference set of the retrieval attacks and metrics: the clean gallery (or the clean pool)
        self.ref_offset = self.n_query if self.has_gallery else 0
        self._plans: dict[str, torch.Tensor | None] = {}
        self.shards = Shards.of_launch() if self.settings.distributed else Shards()
        self._work = {"forwards": 0.0}  # shared with the sessions of sharing(), as the clean state is
        self._once: dict = {}  # the clean state, computed on first use; shared by the sessions of sharing()

    def _cached(self, key, compute: Callable):
        if key not in self._once:
            self._once[key] = compute()
        return self._once[key]

    @property
    def forwards(self) -> float:
        """Images this process passed through the model while attacking (this session and those of
        :meth:`sharing`)."""
        return self._work["forwards"]

    def count_forwards(self, images: float) -> None:
        self._work["forwards"] += images

    @property
    def device(self) -> torch.device:
        return self.settings.device

    @property
    def attack_layout(self) -> str:
        """``"channels-last"`` or ``"as-given"``: the memory layout the attacks perturb the images in
        (:class:`EvalSettings`' ``layout``, ``"auto"`` resolved)."""
        if self.settings.layout != "auto":
            return self.settings.layout
        own = isinstance(self.model, (EmbeddingNet, EnsembleNet))
        return "channels-last" if own and self.device.type == "cpu" else "as-given"

    @property
    def attack_model(self) -> nn.Module:
        """The model the attacks differentiate through: with the channels-last layout, robustdml's own
        models as :func:`~robustdml.models.fused.attack_copy` gives them (BatchNorm folded, weights
        channels-last: the same function, faster), else the model itself. The embeddings every figure
        is computed from come from the model itself."""
        own = isinstance(self.model, (EmbeddingNet, EnsembleNet))
        if not own or self.attack_layout != "channels-last":
            return self.model
        return self._cached("attack_model", lambda: attack_copy(self.model))

    # --- the clean state, each computed once --------------------------------------------------------
    @property
    def _embedded(self) -> tuple[torch.Tensor, np.ndarray]:
        # every process embeds its share of the batches (a collective: every process comes here)
        return self._cached("embedded", lambda: embed(self.model, self.pool, self.settings.batch_size, self.device,
                                                      self.settings.workers, shards=self.shards))

    @property
    def clean_emb(self) -> torch.Tensor:
        """(N, D) clean embeddings of the pool: the queries, then the gallery."""
        return self._embedded[0]

    @property
    def labels(self) -> np.ndarray:
        return self._embedded[1]

    @property
    def query_emb(self) -> torch.Tensor:
        return self.clean_emb[: self.n_query]

    @property
    def reference(self) -> torch.Tensor:
        """The clean retrieval database: the gallery, or the pool itself."""
        return self.clean_emb[self.ref_offset:]

    @property
    def reference_labels(self) -> torch.Tensor:
        return torch.from_numpy(self.labels[self.ref_offset:])

    @property
    def _clustering(self) -> tuple[np.ndarray, torch.Tensor]:
        def cluster():
            emb, k = self.clean_emb, self.classes  # on every process: first_computes runs its function on one
            return self.shards.first_computes(lambda: _clustered(emb, k, self.settings))
        return self._cached("clustering", cluster)

    @property
    def classes(self) -> int:
        return int(len(np.unique(self.labels)))

    @property
    def clusters(self) -> np.ndarray:
        """(N,) the clean k-means assignments of the pool."""
        return self._clustering[0]

    @property
    def centroids(self) -> torch.Tensor:
        return self._clustering[1]

    @property
    def clean(self) -> dict[str, float]:
        """Every registered metric of the clean pool, from the one clean clustering."""
        return self._cached("clean", lambda: self.metrics(self.clean_emb, clusters=self.clusters))

    @property
    def clean_pool(self) -> CleanPool:
        return self._cached(("pool", self.plan_seed), lambda: CleanPool(
            self.clean_emb, torch.from_numpy(self.labels), torch.from_numpy(self.clusters), self.centroids,
            self.reference, self.reference_labels, self.ref_offset, self.plan_seed))

    # --- metrics -------------------------------------------------------------------------------------
    def metrics(self, pool_emb: torch.Tensor, clusters: np.ndarray | None = None) -> dict[str, float]:
        """Every registered metric of pool embeddings (adversarial queries against the clean
        gallery): one k-means (unless ``clusters`` are given) and one kNN search (by the first process)."""
        self._embedded  # on every process: first_computes runs its function on one, which must not call it
        return self.shards.first_computes(lambda: self._metrics(pool_emb, clusters))

    def _metrics(self, pool_emb: torch.Tensor, clusters: np.ndarray | None) -> dict[str, float]:
        if clusters is None:
            clusters, _ = kmeans(pool_emb.numpy(), self.classes, seed=self.settings.seed,
                                 restarts=self.settings.kmeans_restarts)
        result = cluster_scores(self.labels, clusters)
        result.update(retrieval_metrics(pool_emb[: self.n_query], self.labels[: self.n_query], self.reference,
                                        self.reference_labels.numpy(), ks=self.settings.ks,
                                        leave_one_out=not self.has_gallery))
        return result

    # --- attacking -----------------------------------------------------------------------------------
    def self_index(self, index: torch.Tensor) -> torch.Tensor:
        """Each pool position's own gallery position, or -1."""
        own = index - self.ref_offset
        return torch.where(own >= 0, own, torch.full_like(own, -1))

    def plan(self, attack: Attack) -> torch.Tensor | None:
        """The attack's per-sample targets for the whole pool, computed once per attack class."""
        name = type(attack).__name__
        if name not in self._plans:
            pool = self.clean_pool  # on every process (shards.first_computes runs its function on one)
            self._plans[name] = self.shards.first_computes(lambda: attack.plan(pool))
        return self._plans[name]

    def context(self, labels: torch.Tensor, index: torch.Tensor, targets: torch.Tensor | None) -> AttackContext:
        """The one place an attack's per-batch context is built (``index``: pool positions)."""
        return AttackContext(labels=labels, centroids=self.centroids,
                             assignments=torch.from_numpy(self.clusters[index.numpy()]),
                             gallery=self.reference, gallery_labels=self.reference_labels,
                             self_index=self.self_index(index), surrogate=self.surrogate,
                             targets=None if targets is None else targets[index])

    def batches(self, positions: np.ndarray | None = None, batch_size: int | None = None,
                desc: str = "") -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """(images on the device, labels, pool positions) of the pool, or of ``positions`` of it, in order."""
        data = IndexedDataset(self.pool)
        if positions is not None:
            data = Subset(data, [int(p) for p in positions])
        loader = DataLoader(data, batch_size=batch_size or self.settings.batch_size, shuffle=False,
                            num_workers=self.settings.workers, pin_memory=self.device.type == "cuda")
        for images, labels, index in tqdm(loader, desc=desc, leave=False,
                                          disable=None if self.settings.progress else True):
            yield images.to(self.device, non_blocking=True), labels, index

    def attack(self, attack: Attack, desc: str = "", samples: int = 0, victim: nn.Module | None = None,
               trace_at: tuple[int, ...] = (), saved: EntryFiles | None = None):
        """Perturb the whole pool with ``attack`` crafted on this session's model; ``victim``
        (default: that model) embeds the result; ``saved``: where finished batches are kept (and
        read back). Returns (adversarial embeddings, (clean, adversarial) first images,
        {iteration: embeddings} at ``trace_at``)."""
        return perturb_pool(self, attack, desc, samples, victim or self.model, trace_at, saved)

    # --- related sessions ----------------------------------------------------------------------------
    def sharing(self, surrogate: nn.Module | None = None, plan_seed: int | None = None) -> "EvaluationSession":
        """This session's clean state (embeddings, clustering, clean metrics: not computed again)
        with a surrogate for the transfer attack and the attacks' planned targets of ``plan_seed``."""
        other = copy.copy(self)
        other.surrogate = surrogate if surrogate is not None else self.surrogate
        if plan_seed is not None and plan_seed != self.plan_seed:
            other.plan_seed, other._plans = plan_seed, {}
        return other

    def for_model(self, model: nn.Module, surrogate: nn.Module | None = None) -> "EvaluationSession":
        """The same test data and settings for another model (an ensemble's member), quietly."""
        return EvaluationSession(model, self.query_set, self.gallery_set,
                                 replace(self.settings, progress=False), surrogate, self.plan_seed)

    def with_queries(self, positions: np.ndarray) -> "EvaluationSession":
        """A session on ``positions`` of the queries (the gallery kept whole): its own clean state."""
        return EvaluationSession(self.model, Subset(self.query_set, [int(p) for p in positions]), self.gallery_set,
                                 self.settings, self.surrogate, self.plan_seed)


def _clustered(emb: torch.Tensor, k: int, settings: EvalSettings) -> tuple[np.ndarray, torch.Tensor]:
    clusters, centroids = kmeans(emb.numpy(), k, seed=settings.seed, restarts=settings.kmeans_restarts)
    return clusters, torch.from_numpy(centroids)

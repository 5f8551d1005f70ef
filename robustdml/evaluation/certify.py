"""Certified robustness of clustering and retrieval by center smoothing (Kumar & Goldstein, "Center
Smoothing: Certified Robustness for Networks with Structured Outputs", NeurIPS 2021); docs/certify.md.

The smoothed embedding of an image x is the center of the embeddings f(x + δ), δ ~ N(0, σ²I): of
``candidates`` draws, the one with the smallest median distance to ``center_samples`` other draws
(the paper's procedure for high-dimensional outputs: an approximate center of the smallest ball
holding half of the mass). It is kept only if a fresh set of as many draws confirms that the ball
of that median radius holds at least 1/2 − Δ + ε₁ of them (ε₁ Hoeffding's error at confidence α/2);
otherwise the image abstains. Certificate: with probability at least 1 − α, every
x' with ‖x' − x‖₂ ≤ ε has a smoothed embedding within

    R(ε) = 3 · q-quantile of ‖f(x + δ) − center‖ over ``samples`` fresh draws,
    q = Φ(Φ⁻¹(1/2 + Δ) + ε/σ) + sqrt(ln(2/α) / (2 · samples))

of x's (the factor 3: the approximate center's triangle inequality). From that ball:

- the k-means assignment of x (the centroids of the clustering of the smoothed test embeddings)
  cannot change while R(ε) is below the distance from the center to the nearest boundary of its
  Voronoi cell, min_j (‖z − c_j‖² − ‖z − c_a‖²) / (2‖c_a − c_j‖);
- its Recall@1 answer (the nearest item of the smoothed gallery, itself left out) stays correct
  while it is correct and R(ε) < (d⁻ − d⁺) / 2, d⁺ / d⁻ the distances to the nearest item of its own
  / another class.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from scipy.stats import norm
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..models.modes import eval_mode
from .metrics import cluster_scores, kmeans, retrieval_metrics
from .results import CertifyResult
from .session import EvaluationSession

#: the factor of the approximate center's triangle inequality (center = a sample, 2-approximate)
RADIUS_FACTOR = 3.0


@dataclass
class Smoothing:
    """Center smoothing's settings.

    Args:
        sigma: std of the Gaussian noise, in [0, 1] pixel units (L2 certificates).
        samples: draws for the certificate's quantile (the paper's n_cert).
        center_samples: draws the candidate centers are measured against, and again for the check
            (the paper's n_pred).
        candidates: candidate centers (the paper's n_cntr).
        alpha: 1 − confidence of each image's certificate (split evenly between center and radius).
        delta: Δ, the mass beyond 1/2 the center's ball must hold.
        batch_size: noisy copies embedded at once.
        seed: seed of the noise.
    """

    sigma: float
    samples: int = 10_000
    center_samples: int = 10_000
    candidates: int = 30
    alpha: float = 0.01
    delta: float = 0.05
    batch_size: int = 1_000
    seed: int = 0

    def __post_init__(self):
        if not self.sigma > 0:
            raise ConfigError(f"sigma must be positive, got {self.sigma}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"alpha must be between 0 and 1, got {self.alpha}")
        if not 0 < self.delta < 0.5:
            raise ConfigError(f"delta must be between 0 and 0.5, got {self.delta}")
        for name in ("samples", "center_samples", "candidates", "batch_size"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ConfigError(f"{name} must be a whole number >= 1, got {value}")
        needed = math.ceil(math.log(4 / self.alpha) / (2 * self.delta ** 2))
        if self.center_samples < needed:
            raise ConfigError(f"center_samples {self.center_samples} is too few for confidence 1 - {self.alpha} "
                              f"and delta {self.delta}: every image would abstain; use at least {needed}")

    @property
    def center_slack(self) -> float:
        """Hoeffding's deviation of the center check at confidence α/2."""
        return math.sqrt(math.log(4 / self.alpha) / (2 * self.center_samples))

    def quantile(self, radius: float) -> float:
        """The distance quantile whose ball certifies L2 inputs within ``radius`` (≥ 1: not certifiable)."""
        return float(norm.cdf(norm.ppf(0.5 + self.delta) + radius / self.sigma)
                     + math.sqrt(math.log(2 / self.alpha) / (2 * self.samples)))

    def largest_radius(self) -> float:
        """The largest input radius with a quantile below 1."""
        slack = math.sqrt(math.log(2 / self.alpha) / (2 * self.samples))
        if slack >= 1 - (0.5 + self.delta):
            return 0.0
        return float(self.sigma * (norm.ppf(1 - slack) - norm.ppf(0.5 + self.delta)))


def _noisy_embeddings(model: nn.Module, x: torch.Tensor, n: int, smoothing: Smoothing,
                      generator: torch.Generator) -> torch.Tensor:
    """(n, D) embeddings of x + N(0, σ²) noise (no clamping: the smoothing distribution is Gaussian)."""
    out = []
    for start in range(0, n, smoothing.batch_size):
        m = min(smoothing.batch_size, n - start)
        noise = torch.randn((m, *x.shape), generator=generator, device=x.device) * smoothing.sigma
        out.append(model(x.unsqueeze(0) + noise))
    return torch.cat(out)


@torch.no_grad()
def smoothed_center(model: nn.Module, x: torch.Tensor, smoothing: Smoothing,
                    generator: torch.Generator) -> tuple[torch.Tensor, bool]:
    """The smoothed embedding of one image (D,) and whether its check passed (else: abstain)."""
    candidates = _noisy_embeddings(model, x, smoothing.candidates, smoothing, generator)
    draws = _noisy_embeddings(model, x, smoothing.center_samples, smoothing, generator)
    medians = torch.cdist(candidates, draws).median(dim=1).values
    best = int(medians.argmin())
    center, radius = candidates[best], float(medians[best])
    check = _noisy_embeddings(model, x, smoothing.center_samples, smoothing, generator)
    inside = float(((check - center).norm(dim=1) <= radius).float().mean())
    good = max(smoothing.center_slack, 0.5 - (inside - smoothing.center_slack)) <= smoothing.delta
    return center, good


@torch.no_grad()
def output_radii(model: nn.Module, x: torch.Tensor, center: torch.Tensor, radii: list[float],
                 smoothing: Smoothing, generator: torch.Generator) -> np.ndarray:
    """R(ε) for every input radius ε (inf where ε is beyond what the samples can certify)."""
    draws = _noisy_embeddings(model, x, smoothing.samples, smoothing, generator)
    distances = (draws - center).norm(dim=1).cpu().numpy()
    out = np.full(len(radii), np.inf)
    for i, eps in enumerate(radii):
        q = smoothing.quantile(eps)
        if q < 1:
            out[i] = RADIUS_FACTOR * float(np.quantile(distances, q))
    return out


def voronoi_margin(z: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each point's assignment and its distance to the nearest boundary of its Voronoi cell."""
    d2 = ((z[:, None, :] - centroids[None, :, :]) ** 2).sum(-1)
    assign = d2.argmin(1)
    own = centroids[assign]
    gap = d2 - d2[np.arange(len(z)), assign][:, None]                 # ‖z - c_j‖² - ‖z - c_a‖²
    span = np.linalg.norm(own[:, None, :] - centroids[None, :, :], axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.where(span > 0, gap / (2 * span), np.inf)
    margin[np.arange(len(z)), assign] = np.inf
    return assign, margin.min(1)


def retrieval_margin(queries: np.ndarray, labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray,
                     self_index: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Whether each query's nearest gallery item shares its class, and (d⁻ − d⁺) / 2: how far its
    embedding may move with the answer unchanged (its own entry left out)."""
    d = np.linalg.norm(queries[:, None, :] - gallery[None, :, :], axis=-1)
    if self_index is not None:
        d[np.arange(len(queries)), self_index] = np.inf
    same = labels[:, None] == gallery_labels[None, :]
    d_pos = np.where(same, d, np.inf).min(1)
    d_neg = np.where(~same, d, np.inf).min(1)
    return d_pos < d_neg, (d_neg - d_pos) / 2


def default_radii(sigma: float) -> list[float]:
    """The radii certified when none are asked for: 0, 1/4, 1/2, 3/4 and 1 x sigma."""
    return [round(sigma * f, 6) for f in (0.0, 0.25, 0.5, 0.75, 1.0)]


def check_radii(radii, smoothing: Smoothing) -> list[float]:
    """The radii sorted; a one-line error where they are not numbers >= 0 or reach beyond what the
    smoothing's samples can certify."""
    if not isinstance(radii, (list, tuple)) or not all(isinstance(r, (int, float)) for r in radii):
        raise ConfigError(f"radii must be a non-empty list of numbers >= 0, got {radii!r}")
    radii = sorted(float(r) for r in radii)
    if not radii or radii[0] < 0:
        raise ConfigError("radii must be a non-empty list of numbers >= 0")
    if radii[-1] > smoothing.largest_radius():
        raise ConfigError(f"radius {radii[-1]} cannot be certified with sigma {smoothing.sigma} and "
                          f"{smoothing.samples} samples; the largest is {smoothing.largest_radius():.4g} "
                          f"(more samples or a larger sigma reach further)")
    return radii


def _finite(value) -> float | None:
    """A number for JSON: rounded, None where it is infinite (no boundary, or nothing certifiable)."""
    return round(float(value), 5) if np.isfinite(value) else None


def certify(model: nn.Module, query_set: Dataset | None = None, gallery_set: Dataset | None = None, *,
            smoothing: Smoothing, radii: list[float], device: str | torch.device = "cpu", kmeans_seed: int = 0,
            progress: bool = False, session: EvaluationSession | None = None) -> CertifyResult:
    """Center-smoothing certificates of every image of ``query_set`` (see the module doc).
    ``gallery_set=None``: leave-one-out retrieval within the query set. ``session``: an
    :class:`EvaluationSession` on the model and test data (its model, data, device, seed and
    progress are then used)."""
    if session is not None:
        model, query_set, gallery_set = session.model, session.query_set, session.gallery_set
        device, kmeans_seed, progress = session.device, session.settings.seed, session.settings.progress
    radii = check_radii(radii, smoothing)
    device = torch.device(device)
    start = time.perf_counter()
    generator = torch.Generator(device=device).manual_seed(smoothing.seed)
    with eval_mode(model):
        z, labels, good, big_r = _smooth_all(model, query_set, smoothing, generator, device, radii, progress)
        if gallery_set is None:
            gz, gl, self_index = z, labels, np.arange(len(z))
        else:
            gz, gl, _, _ = _smooth_all(model, gallery_set, smoothing, generator, device, None, progress)
            self_index = None
    clusters, centroids = kmeans(z, int(len(np.unique(labels))), seed=kmeans_seed)
    assign, cell_margin = voronoi_margin(z, centroids)
    correct, answer_margin = retrieval_margin(z, labels, gz, gl, self_index)
    assignment_ok = good[:, None] & (big_r < cell_margin[:, None])
    recall_ok = good[:, None] & correct[:, None] & (big_r < answer_margin[:, None])
    clean = {**cluster_scores(labels, clusters), **_retrieval_scores(z, labels, gz, gl, gallery_set is None),
             "recall@1": float(correct.mean()), "abstain_rate": float(1 - good.mean())}
    elapsed = time.perf_counter() - start
    return CertifyResult(
        sigma=smoothing.sigma, radii=radii, settings=asdict(smoothing), images=len(z), abstained=int((~good).sum()),
        clean=clean, certified_assignment=[float(v) for v in assignment_ok.mean(0)],
        certified_recall_at_1=[float(v) for v in recall_ok.mean(0)],
        per_image={"assignment_radius": _radius_of(assignment_ok, good, radii).tolist(),
                   "recall_radius": _radius_of(recall_ok, good, radii).tolist(),
                   "assignment": assign.tolist(), "labels": labels.tolist(),
                   # what decides each certificate: the output ball R(radius) against the two margins
                   "ball": [[_finite(v) for v in row] if ok else None for row, ok in zip(big_r, good)],
                   "assignment_margin": [_finite(v) for v in cell_margin],
                   "answer_margin": [_finite(v) for v in answer_margin]},
        seconds_per_image=elapsed / len(z), centroids=centroids.tolist(), embeddings=z, gallery=(gz, gl, self_index))


def _smooth_all(model, dataset, smoothing: Smoothing, generator, device, radii: list[float] | None, progress: bool):
    """Each image read once: (centers, labels, checks passed, R per radius where ``radii`` are given)."""
    centers, labels, goods, out = [], [], [], []
    for i in tqdm(range(len(dataset)), disable=not progress, desc="certify" if radii is not None else "gallery"):
        image, label = dataset[i]
        x = image.to(device)
        center, good = smoothed_center(model, x, smoothing, generator)
        centers.append(center.cpu())
        labels.append(int(label))
        goods.append(good)
        if radii is not None:
            out.append(output_radii(model, x, center, radii, smoothing, generator) if good
                       else np.full(len(radii), np.inf))
    return torch.stack(centers).numpy(), np.array(labels), np.array(goods), np.array(out)


def _radius_of(ok: np.ndarray, good: np.ndarray, radii: list[float]) -> np.ndarray:
    """Each image's largest certified radius (R(ε) grows with ε, so each row certifies a prefix of the grid), -1 if it abstained."""
    count = ok.sum(1)
    largest = np.where(count > 0, np.array(radii)[np.maximum(count - 1, 0)], 0.0)
    return np.where(good, largest, -1.0)


def _retrieval_scores(z, labels, gz, gl, leave_one_out: bool) -> dict[str, float]:
    """The registered retrieval metrics of the smoothed embeddings other than Recall@1 (which the
    certificate's own nearest-item rule gives)."""
    found = retrieval_metrics(torch.from_numpy(z), labels, torch.from_numpy(gz), gl, ks=(1,), leave_one_out=leave_one_out)
    return {k: v for k, v in found.items() if k != "recall@1"}


def eot_attack(model: nn.Module, x: torch.Tensor, objective, eps: float, sigma: float, steps: int = 20,
               draws: int = 32, seed: int = 0) -> torch.Tensor:
    """L2 PGD with expectation over the smoothing noise (EOT): maximises the mean of
    ``objective(embeddings)`` over ``draws`` noisy copies of x' per step, ‖x' − x‖₂ ≤ eps, x' in [0, 1].
    The adversary a certificate must withstand; used by the soundness tests."""
    from ..attacks import Norm
    from ..attacks.optim import gradient_ascent
    generator = torch.Generator(device=x.device).manual_seed(seed)
    x = x.detach().unsqueeze(0)

    def expected(adversarial: torch.Tensor) -> torch.Tensor:
        noise = torch.randn((draws, *x.shape[1:]), generator=generator, device=x.device) * sigma
        return objective(model(adversarial + noise)).mean()

    with eval_mode(model):
        delta = gradient_ascent(expected, x, torch.zeros_like(x), eps, Norm.L2, steps, 2.5 * eps / steps)
    return (x + delta).detach().squeeze(0)

"""The training loop: data, model, loss, method, optimiser, per-epoch evaluation, logs, checkpoints.

Run directory layout::

    RUN_DIR/config.yaml       resolved configuration
    RUN_DIR/log.csv           one row per epoch (loss, lr, metrics)
    RUN_DIR/tb/               TensorBoard events
    RUN_DIR/best/, last/      saved models (model.safetensors + model.json)
    RUN_DIR/checkpoint.pt     resume state (optimizer, scheduler, RNG, history)
    RUN_DIR/metrics.json      the best model's clean metrics
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..attacks import ThreatModel
from ..data import (ClassBalancedBatchSampler, IndexedDataset, PairBatchSampler, RandomBatchSampler, dataset_spec,
                    evaluation_sets, get_dataset)
from ..errors import ConfigError, TrainingDiverged  # noqa: F401  (TrainingDiverged re-exported)
from ..files import write_json
from ..losses import create_loss
from ..methods import TrainingSetup, create_method
from ..models import create_model, save_model
from ..models.graphed import begin_step, graphed_view
from .checkpoint import load_checkpoint, rng_state
from .config import TrainConfig
from .devices import default_workers, resolve_device
from .distributed import (ShardedBatchSampler, assert_in_sync, average_buffers, average_gradients, barrier,
                          distributed_criterion, gather_objects, init_distributed)
from .provenance import software_versions
from .run_files import RunFiles
from .validation import Validation

log = logging.getLogger(__name__)

# Training steps between host synchronisations (the NaN check and the progress bar's loss): reading
# the loss every step would make the host wait for the device at every step.
SYNC_EVERY = 20


# Bumped when a code change alters what the same config trains, so that a benchmark retrains cells
# made before it. 2: robust validation no longer writes test statistics into the model. 3: AdamW's
# fused kernel (the same update, rounded differently).
TRAINING_REVISION = 3

# What a run directory holds once a run has written into it: a new run there is refused (--resume continues it).
RUN_OUTPUTS = ("checkpoint.pt", "best", "last", "metrics.json", "attack", "certify")


@dataclass
class TrainResult:
    """What a run ends with. ``main`` is False on the processes of a multi-process run other than
    rank 0, which only train (rank 0 evaluates, writes and reports)."""

    best_epoch: int
    select_metric: str
    clean: dict[str, float] = field(default_factory=dict)
    main: bool = True

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k != "main"}


def adamw(params, device: torch.device, **options) -> torch.optim.AdamW:
    """AdamW, with PyTorch's fused kernel on the devices that have one (the CPU and CUDA): the same
    update in one pass over each parameter instead of a dozen elementwise ones. A three-member C2F2
    ensemble's step takes a fifth of the time on one CPU thread (``bench/training_speed.py``, T5)."""
    return torch.optim.AdamW(params, fused=device.type in ("cpu", "cuda"), **options)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_factor(cfg: TrainConfig, epoch: int) -> float:
    """The learning-rate multiplier of ``epoch`` (0-based) under ``cfg.schedule``."""
    if cfg.schedule == "step":
        return cfg.lr_gamma ** (epoch // cfg.lr_step)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / cfg.epochs))
    return 1.0


class Trainer(Validation, RunFiles):
    """Builds everything a run needs from a :class:`TrainConfig` and runs it in ``out_dir``."""

    def __init__(self, cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True):
        self.cfg, self.out, self.progress = cfg, Path(out_dir), progress
        self.checkpoint_path = self.out / "checkpoint.pt"
        if not resume and (held := [n for n in RUN_OUTPUTS if (self.out / n).exists()]):
            # a fresh model must not land beside another model's results (attack/, certify/, ...)
            raise ConfigError(f"{self.out} already holds a run ({', '.join(held)}); pass --resume to continue it "
                              f"or choose another --out")
        if resume and not self.checkpoint_path.exists():
            raise ConfigError(f"nothing to resume: {self.checkpoint_path} does not exist")
        self._init_process()
        self._build_data()
        self._build_model()
        self._build_optimizer()
        self.start_epoch, self.history = 0, []
        self.best = {"metric": -math.inf, "epoch": -1}
        if resume:
            self._restore(load_checkpoint(self.checkpoint_path))

    # --- building, in order ----------------------------------------------------------------------
    def _init_process(self) -> None:
        """Rank, device, seeds and data-loading processes."""
        self.rank, self.world, local_rank = init_distributed()
        self.device = resolve_device(self.cfg.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", local_rank)
        self.cuda = self.device.type == "cuda"
        seed_everything(self.cfg.seed)
        self.workers = self.cfg.workers if self.cfg.workers is not None else default_workers(self.device, self.world)

    def _build_data(self) -> None:
        cfg = self.cfg
        self.spec = dataset_spec(cfg.dataset)
        self.threat = ThreatModel.of(cfg.dataset)
        self.train_set = get_dataset(cfg.dataset, "train", cfg.root, train=True, image_size=cfg.image_size)
        self.query_set, self.gallery_set = evaluation_sets(cfg.dataset, cfg.root, image_size=cfg.image_size)
        if cfg.sampler == "pairs":
            self.sampler = PairBatchSampler(self.train_set.labels, cfg.batch_size, cfg.seed)
        elif cfg.sampler == "class-balanced" or (cfg.sampler == "auto" and cfg.samples_per_class):
            self.sampler = ClassBalancedBatchSampler(self.train_set.labels, cfg.batch_size, cfg.samples_per_class, cfg.seed)
        else:
            self.sampler = RandomBatchSampler(len(self.train_set), cfg.batch_size, cfg.seed)
        if self.world > 1:
            self.sampler = ShardedBatchSampler(self.sampler, self.rank, self.world)
        self.loader = DataLoader(IndexedDataset(self.train_set), batch_sampler=self.sampler, num_workers=self.workers,
                                 pin_memory=self.cuda, persistent_workers=self.workers > 0)

    def _build_model(self) -> None:
        """The method, the model and the loss it trains; the method learns the run's facts."""
        cfg = self.cfg
        # read once, here: reading a training image draws from the random streams (its augmentation)
        self.input_shape = list(self.train_set[0][0].shape)
        in_channels = int(self.input_shape[0])
        self.method = create_method(cfg.method, **cfg.method_kwargs)
        self.model = self.method.build_model(lambda: create_model(
            cfg.backbone, pretrained=cfg.pretrained, embedding_dim=cfg.embedding_dim, in_channels=in_channels,
            mean=cfg.mean, std=cfg.std, freeze_bn=cfg.freeze_bn, backbone_kwargs=cfg.backbone_kwargs)).to(self.device)
        self.criterion = self.method.build_criterion(lambda: create_loss(
            cfg.loss, self.train_set.num_classes, cfg.embedding_dim, **cfg.loss_kwargs)).to(self.device)
        self.method.setup(TrainingSetup(num_samples=len(self.train_set), seed=cfg.seed, threat=self.threat))
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.step_model = self._step_model()
        # the loss sees the global batch when several processes train together
        self.loss_fn = distributed_criterion(self.criterion) if self.world > 1 else self.criterion

    def _step_model(self) -> nn.Module:
        """The model as the training step calls it: behind CUDA graphs (:mod:`robustdml.models.graphed`)
        where ``cuda_graphs`` asks for them and they can run, else the model itself."""
        mode = self.cfg.graph_mode
        if mode == "off" or (mode == "auto" and self.world > 1):
            return self.model
        if not self.cuda:
            if mode == "on":
                log.info("cuda_graphs: on needs a CUDA device; training eagerly on %s", self.device.type)
            return self.model
        if not self.method.graphable:
            log.info("the %s method, as configured, takes second derivatives or the update's input gradient, "
                     "which graphed passes cannot give: training eagerly", self.cfg.method)
            return self.model
        return graphed_view(self.model)

    def _build_optimizer(self) -> None:
        """AdamW over backbone (at ``backbone_lr_mult``), head, the loss's own parameters (proxies, at
        ``proxy_lr_mult``) and the method's groups; the learning-rate schedule."""
        cfg = self.cfg
        head = {id(p) for p in self.model.head_parameters()}
        groups = [
            {"params": [p for p in self.model.parameters() if id(p) not in head], "lr": cfg.lr * cfg.backbone_lr_mult},
            {"params": self.model.head_parameters(), "lr": cfg.lr},
        ]
        loss_params = list(self.criterion.parameters())
        if loss_params:
            groups.append({"params": loss_params, "lr": cfg.lr * cfg.proxy_lr_mult})
        groups += self.method.param_groups(cfg.lr)
        self.optimizer = adamw(groups, self.device, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda e: lr_factor(cfg, e))

    def trained_on(self) -> dict:
        """What the saved models record of their data, so that evaluating them on other data is a
        deliberate choice (``--dataset-mismatch-ok``)."""
        return {"dataset": self.cfg.dataset, "input_shape": self.input_shape}

    def _model_extra(self, epoch: int, **more) -> dict:
        return {"epoch": epoch + 1, **more, "trained_on": self.trained_on(), "training_revision": TRAINING_REVISION}

    def trained_parameters(self) -> list[nn.Parameter]:
        """Every parameter the optimiser updates (model, loss, method)."""
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    # --- loop ------------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> float:
        cfg = self.cfg
        self.method.on_epoch_start(epoch)
        warm = epoch < cfg.warmup_epochs
        head = {id(p) for p in self.model.head_parameters()}
        for p in self.model.parameters():
            if id(p) not in head:
                p.requires_grad_(not warm)  # warm-up trains only the head and the proxies
        self.model.train()
        self.sampler.set_epoch(epoch)
        total = torch.zeros((), device=self.device)
        steps = len(self.loader)
        bar = tqdm(self.loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False,
                   disable=None if self.progress and self.rank == 0 else True)
        for step, (images, labels, index) in enumerate(bar, 1):
            total += self.train_step(images, labels, index)
            if step % SYNC_EVERY == 0 or step == steps:
                value = total.item()  # NaN or inf once any step's loss was
                if not math.isfinite(value):
                    raise TrainingDiverged(
                        f"loss became {value} at epoch {epoch + 1}, between steps {max(step - SYNC_EVERY, 0) + 1} "
                        f"and {step}; the last good checkpoint ({self.checkpoint_path}) is untouched - lower lr "
                        f"or check the data")
                bar.set_postfix(loss=f"{value / step:.4f}")
        self.scheduler.step()
        return total.item() / max(steps, 1)

    def train_step(self, images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """One optimiser step on one batch; returns the loss (on the device, detached)."""
        cfg = self.cfg
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if cfg.noise_sigma > 0:
            # smoothing-aware training: Gaussian noise as the smoothed model will see it (not clamped)
            images = images + cfg.noise_sigma * torch.randn_like(images)
        if cfg.channels_last and images.dim() == 4:
            images = images.contiguous(memory_format=torch.channels_last)
        graphed = self.step_model is not self.model
        if graphed:
            begin_step(self.step_model)
        # graphed passes need autocast's weight cache off (each pass casts the weights it reads)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda and cfg.amp, cache_enabled=not graphed):
            loss = self.method.loss(self.step_model, self.loss_fn, images, labels, index)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.method.after_backward()
        if self.world > 1:
            average_gradients(self.trained_parameters())
            average_buffers([self.model, self.criterion])
        if cfg.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        if self.world > 1 and cfg.check_sync:
            assert_in_sync([self.model, self.criterion])
        return loss.detach()

    def fit(self) -> TrainResult:
        """Train the remaining epochs; rank 0 evaluates, keeps the best model, logs and checkpoints."""
        main = self.rank == 0  # one process evaluates and writes; the others only train
        with self._writer(main) as writer:
            for epoch in range(self.start_epoch, self.cfg.epochs):
                self.run_epoch(epoch, main, writer)
        result = TrainResult(self.best["epoch"], self.cfg.select_metric, self.best.get("metrics", {}), main=main)
        if main:
            write_json(self.out / "metrics.json", {**result.to_dict(), "versions": software_versions()})
        return result

    def run_epoch(self, epoch: int, main: bool, writer) -> None:
        """Train one epoch, then the end-of-epoch sync every rank goes through in the same order:
        embed (sharded), evaluate (rank 0), gather every rank's RNG state, write (rank 0), barrier."""
        started = time.perf_counter()
        loss = self.train_epoch(epoch)
        seconds = time.perf_counter() - started
        evaluating = (epoch + 1) % self.cfg.eval_every == 0 or epoch + 1 == self.cfg.epochs
        embeddings = self.embed_test() if evaluating else None  # every rank embeds its share of the batches
        row = {"epoch": epoch + 1, "loss": loss, "lr": self.optimizer.param_groups[0]["lr"], "train_seconds": seconds}
        if main and evaluating:
            row.update(self._select(epoch, self.evaluate(embeddings)))
        rngs = gather_objects(rng_state())  # after evaluating: it draws from the generators too
        if main:
            self._record(epoch, row, rngs, writer)
        barrier()  # the other ranks wait until rank 0's checkpoint of this epoch is written

    def _select(self, epoch: int, metrics: dict[str, float]) -> dict[str, float]:
        """Keep the model if it is the best so far by ``select_metric``; returns ``metrics``."""
        cfg = self.cfg
        if cfg.select_metric != "last" and cfg.select_metric not in metrics:
            raise ConfigError(f"select_metric '{cfg.select_metric}' is not computed for {cfg.dataset}; "
                              f"choose from {', '.join(metrics)}")
        score = float(epoch) if cfg.select_metric == "last" else metrics[cfg.select_metric]
        if score > self.best["metric"]:
            self.best = {"metric": score, "epoch": epoch + 1, "metrics": metrics}
            save_model(self.model, self.out / "best", extra=self._model_extra(epoch, metrics=metrics))
        return metrics



def train(cfg: TrainConfig, out_dir: str | Path, resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a model as ``cfg`` says, in ``out_dir``. Returns the best epoch's metrics."""
    return Trainer(cfg, out_dir, resume=resume, progress=progress).fit()

"""What a training run writes: the checkpoint's state and its restoring, the per-epoch models,
TensorBoard events, ``log.csv`` and ``config.yaml``. A part of :class:`~robustdml.engine.trainer.Trainer`."""

from __future__ import annotations

import csv
import io
import logging
from contextlib import contextmanager

import yaml

from ..errors import ConfigError
from ..files import write_text
from ..models import save_model
from .checkpoint import save_checkpoint, set_rng_state

log = logging.getLogger(__name__)


class RunFiles:
    """The trainer's state and files (it reads the trainer's config, model, optimiser and history)."""

    def _state(self, epoch: int, rngs: list[dict]) -> dict:
        """``rngs``: every rank's RNG state, in rank order (one entry in a single process)."""
        return {"epoch": epoch, "model": self.model.state_dict(), "criterion": self.criterion.state_dict(),
                "method": self.method.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "rng": rngs[0], "rng_ranks": rngs, "best": dict(self.best),
                "history": list(self.history), "config": self.cfg.to_dict()}

    def _restore(self, state: dict) -> None:
        try:
            self.model.load_state_dict(state["model"])
            self.criterion.load_state_dict(state["criterion"])
            self.method.load_state_dict(state.get("method", {}))
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
        except (KeyError, RuntimeError, ValueError) as e:
            raise ConfigError(f"{self.checkpoint_path} does not match this configuration: {str(e).splitlines()[0]}") from None
        rngs = state.get("rng_ranks", [state["rng"]])
        if len(rngs) != self.world:
            log.warning("the checkpoint was written by %d process(es), this run has %d: the random streams "
                        "of a resumed run will differ from an uninterrupted one", len(rngs), self.world)
        set_rng_state(rngs[self.rank] if self.rank < len(rngs) else rngs[0])
        self.start_epoch, self.best, self.history = state["epoch"], dict(state["best"]), list(state["history"])
        log.info("resuming %s after epoch %d", self.out, self.start_epoch)

    def _record(self, epoch: int, row: dict, rngs: list[dict], writer) -> None:
        for key, value in row.items():
            if key != "epoch":
                writer.add_scalar(key, value, epoch + 1)
        self.history.append(row)
        save_model(self.model, self.out / "last", extra=self._model_extra(epoch))
        save_checkpoint(self.checkpoint_path, self._state(epoch + 1, rngs))
        self._write_log()
        log.info("epoch %d/%d  %s", epoch + 1, self.cfg.epochs,
                 "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k not in ("epoch", "lr")))

    @contextmanager
    def _writer(self, main: bool):
        """Rank 0's TensorBoard writer (the config is written beside it); ``None`` on the other ranks."""
        if not main:
            yield None
            return
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        from torch.utils.tensorboard import SummaryWriter
        writer = SummaryWriter(str(self.out / "tb"))
        try:
            yield writer
        finally:
            writer.close()

    def _write_log(self) -> None:
        keys = list(dict.fromkeys(k for row in self.history for k in row))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys)
        w.writeheader()
        w.writerows(self.history)
        write_text(self.out / "log.csv", buf.getvalue())

"""Running a benchmark: each cell trained (or its saved model read), then its parts evaluated on one
:class:`~robustdml.evaluation.session.EvaluationSession`; every finished cell written at once."""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

import numpy as np
import yaml

from ..attacks import ThreatModel
from ..data import dataset_spec, evaluation_sets
from ..engine.config import TrainConfig, training_settings
from ..engine.devices import resolve_device
from ..engine.provenance import settings_hash, software_versions
from ..engine.trainer import TRAINING_REVISION, Trainer
from ..errors import RobustDMLError
from ..evaluation.ranking import evaluate_ranking, query_subset
from ..evaluation.results import schema
from ..evaluation.robust import eps_key, evaluate_robustness
from ..evaluation.session import EvalSettings, EvaluationSession
from ..evaluation.store import discard
from ..files import write_json, write_text
from ..models import load_model
from ..reporting.tsne import tsne_points
from .config import SAVED, SURROGATE_SEED, TSNE_METHODS, BenchmarkConfig, plain, cell_name
from .folders import claimed, config_changed, locked, read_finished, set_aside
from .plan import PART_KEYS, CellPlan, differences, held_parts, model_files_hash, plan_line

log = logging.getLogger(__name__)

# the attack part's finished entries, kept until the cell's result is written: a killed benchmark
# continues the cell's attack where it stopped
ATTACK_PARTIAL = "attack.partial"


class Benchmark:
    def __init__(self, cfg: BenchmarkConfig, out_dir: str | Path, progress: bool = True, reuse_stale: bool = False):
        self.cfg, self.out, self.progress, self.reuse_stale = cfg, Path(out_dir), progress, reuse_stale

    def run(self) -> dict[str, str]:
        """Run every cell whose results are missing or were made with other settings; returns cell
        name -> status: "ok" (run from training on), "updated" (some evaluation parts re-run, the
        training reused), "skipped" (up to date), "stale" (kept with ``reuse_stale``), "failed", or
        "busy" (another process sharing the output folder holds the cell's lock and runs it)."""
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "benchmark.yaml", yaml.safe_dump(plain(self.cfg.__dict__), sort_keys=False))
        statuses = {}
        cells = self.cfg.cells()
        for i, cell in enumerate(cells, 1):
            name = cell_name(cell)
            with claimed(self.out / "cells" / name / ".lock") as mine:
                if not mine:  # another process sharing this --out (an overlapping --only) runs it now
                    log.info("[%d/%d] %s: being run by another process, left to it", i, len(cells), name)
                    statuses[name] = "busy"
                    continue
                statuses[name] = self._run_one(cell, i, len(cells))
        return statuses

    def _run_one(self, cell: dict, i: int, n: int) -> str:
        """Plan and run one cell (its lock held); its status."""
        name = cell_name(cell)
        result_path = self.out / "cells" / name / "result.json"
        start = time.time()
        try:
            plan = self.plan(cell, read_finished(result_path))  # read under the lock: another process may have finished it
            if not plan.run:
                log.info("[%d/%d] %s: %s", i, n, name, "kept with stale " + ", ".join(plan.stale)
                         if plan.stale else "up to date, skipped")
                if plan.stale:
                    write_json(result_path, {**plan.previous, "stale": plan.stale})
                return "stale" if plan.stale else "skipped"
            log.info("[%d/%d] %s: %s", i, n, name, plan_line(plan))
            result = self.run_cell(cell, plan)
            result.update(status="ok", seconds=round(time.time() - start, 1))
            status = "ok" if "train" in plan.run or plan.previous is None else "updated"
        except (RobustDMLError, RuntimeError, ValueError, OSError) as e:
            log.error("%s failed: %s", name, e)
            result = {"cell": cell, "status": "failed", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=5), "seconds": round(time.time() - start, 1)}
            status = "failed"
        write_json(result_path, result)
        if result["status"] == "ok":
            discard(self.out / "cells" / name / ATTACK_PARTIAL)
        return status

    # --- settings of each part ---------------------------------------------------------------------
    def part_settings(self, cell: dict) -> dict[str, dict]:
        """part -> {"hash", "settings"}: the full resolved settings each part of the cell runs with. A
        part's hash covers the training's too, so that a retrained model invalidates its evaluations."""
        cfg = self.cfg.train_config(cell)
        if cell["backbone"] == SAVED:
            train = {"model": self.cfg.models[cell["method"]], "files": model_files_hash(self.cfg.models[cell["method"]])}
        else:
            train = {**training_settings(cfg.to_dict()), "training_revision": TRAINING_REVISION}
        train_hash = settings_hash(train)
        query, gallery = evaluation_sets(cfg.dataset, cfg.root, image_size=cfg.image_size)
        data = {"dataset": cfg.dataset, "root": cfg.root, "image_size": cfg.image_size, "test_images": len(query),
                "gallery_images": len(gallery) if gallery is not None else 0}
        surrogate = (settings_hash({**training_settings(self.surrogate_config(cell).to_dict()),
                                    "training_revision": TRAINING_REVISION})
                     if self.cfg.surrogate else None)
        parts = {"train": train,
                 "attack": {"suite": self.cfg.suite(cfg).to_dict(), "attack_queries": self.cfg.attack_queries,
                            "surrogate": surrogate, "kmeans_seed": cfg.seed, "kmeans_restarts": cfg.kmeans_restarts,
                            **data}}
        if self.cfg.ranking:
            parts["ranking"] = {"ranking": plain(self.cfg.ranking), "seed": cfg.seed,
                                "kmeans_restarts": cfg.kmeans_restarts, **data}
        if self.cfg.certify:
            parts["certify"] = {"certify": plain(self.cfg.certify), "seed": cfg.seed, **data}
        return {name: {"hash": train_hash if name == "train" else settings_hash({**settings, "model": train_hash}),
                       "settings": settings} for name, settings in parts.items()}

    def plan(self, cell: dict, previous: dict | None) -> CellPlan:
        parts = self.part_settings(cell)
        if previous is None:
            return CellPlan(parts, list(parts))
        held = held_parts(previous)
        changed = {name: differences(held.get(name, {}).get("settings"), part["settings"])
                   for name, part in parts.items() if held.get(name, {}).get("hash") != part["hash"]}
        if not changed:
            return CellPlan(parts, [], previous=previous)
        if self.reuse_stale:
            return CellPlan(parts, [], stale=changed, previous=previous)
        run = list(parts) if "train" in changed else [p for p in parts if p in changed]
        return CellPlan(parts, run, stale=changed, previous=previous)

    def surrogate_config(self, cell: dict) -> TrainConfig:
        cfg = self.cfg.train_config({**cell, "method": "standard", "seed": SURROGATE_SEED})
        cfg.robust_eval = False
        return cfg

    def surrogate(self, cell: dict) -> Path | None:
        if not self.cfg.surrogate:
            return None
        cfg = self.surrogate_config(cell)
        run = self.out / "surrogates" / f"{cell['dataset']}-{cfg.backbone}"
        run.mkdir(parents=True, exist_ok=True)
        with locked(run / ".lock"):  # processes sharing one --out (--only) train it once
            if config_changed(run, cfg):
                log.info("the surrogate of %s was trained with other settings: training it again", run.name)
                set_aside(run, keep={".lock"})
            if not (run / "metrics.json").is_file():
                Trainer(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=self.progress).fit()
        return run

    # --- running ---------------------------------------------------------------------------------
    def run_cell(self, cell: dict, plan: CellPlan) -> dict:
        cfg = self.cfg.train_config(cell)
        result = {k: v for k, v in (plan.previous or {}).items() if k not in ("status", "error", "traceback", "stale")}
        for part in plan.run:  # what is re-run is replaced, what was removed from the config goes
            for key in PART_KEYS[part]:
                result.pop(key, None)
        for part in set(held_parts(result)) - set(plan.parts):
            for key in PART_KEYS[part]:
                result.pop(key, None)
        started = time.time()
        run = self.trained(cell, cfg, plan, result)
        seconds = {"train": round(time.time() - started, 1)}
        query, gallery = evaluation_sets(cfg.dataset, cfg.root, image_size=cfg.image_size)
        if set(plan.run) - {"train"}:  # the model loaded once, the clean test set embedded and clustered once
            device = resolve_device(cfg.device)
            session = EvaluationSession(load_model(run, device=device), query, gallery, EvalSettings(
                seed=cfg.seed, kmeans_restarts=cfg.kmeans_restarts, batch_size=cfg.eval_batch_size,
                ks=tuple(dataset_spec(cfg.dataset).recall_ks), device=device, progress=self.progress))
            for part, evaluate in (("attack", self.attacked), ("ranking", self.ranked), ("certify", self.certified)):
                if part in plan.run:
                    started = time.time()
                    result.update(evaluate(cell, cfg, session))
                    seconds[part] = round(time.time() - started, 1)
        result.update(schema=schema("cell"), cell=cell, parts=plan.parts, versions=software_versions(),
                      part_seconds=seconds, reused=[p for p in plan.parts if p not in plan.run],
                      provenance={"dataset": cfg.dataset, "root": cfg.root, "test_images": len(query)})
        return result

    def trained(self, cell: dict, cfg: TrainConfig, plan: CellPlan, result: dict) -> Path:
        """The folder of the cell's model: trained (or resumed) where the plan says so, else as it is."""
        run = self.out / "cells" / cell_name(cell) / "run"
        if cell["backbone"] == SAVED:
            result["config"] = plan.parts["train"]["settings"]
            log.info("%s: the saved model %s, nothing to train", cell_name(cell), self.cfg.models[cell["method"]])
            return Path(self.cfg.models[cell["method"]])
        if "train" not in plan.run:
            log.info("%s: training reused (0 s)", cell_name(cell))
            return run
        if plan.previous is not None or config_changed(run, cfg):
            set_aside(run)  # the model of other settings: kept in previous-run/, never resumed
        trainer = Trainer(cfg, run, resume=(run / "checkpoint.pt").is_file(), progress=self.progress)
        trainer.fit()
        epoch_seconds = [row["train_seconds"] for row in trainer.history if "train_seconds" in row]
        result["config"] = cfg.to_dict()
        if epoch_seconds:
            result["seconds_per_epoch"] = round(float(np.mean(epoch_seconds)), 1)
        return run

    def attacked(self, cell: dict, cfg: TrainConfig, session: EvaluationSession) -> dict:
        """The attack part: the suite on the cell's model (and the t-SNE of its worst attack)."""
        surrogate_run = self.surrogate(cell)
        if self.cfg.attack_queries is not None:
            session = session.with_queries(query_subset(session.n_query, self.cfg.attack_queries, cfg.seed))
        found = evaluate_robustness(session.model, suite=self.cfg.suite(cfg), threat=ThreatModel.of(cfg.dataset),
                                    surrogate=load_model(surrogate_run, session.device) if surrogate_run else None,
                                    session=session, partial=self.out / "cells" / cell_name(cell) / ATTACK_PARTIAL)
        result = {**found.to_dict(), "main_eps_key": eps_key(found.main_eps), "test_images": session.n_query}
        result.pop("schema")  # a cell holds several results: each of its nested ones names its own
        if cell["method"] in TSNE_METHODS and cell["backbone"] != SAVED and cell["seed"] == min(self.cfg.grid["seed"]):
            result["tsne"] = tsne_points(found, seed=cfg.seed)
        return result

    def ranked(self, cell: dict, cfg: TrainConfig, session: EvaluationSession) -> dict:
        """RobRank's ranking attacks and ERS on the cell's model."""
        return {"robrank": evaluate_ranking(session.model, seed=cfg.seed, session=session, **self.cfg.ranking).to_dict()}

    def certified(self, cell: dict, cfg: TrainConfig, session: EvaluationSession) -> dict:
        """The cell's center-smoothing certificates: the summary (per-image radii and centroids stay out
        of the cell's JSON; `robustdml certify` writes them)."""
        from ..evaluation.certify import certify
        queries = self.cfg.certify.get("queries")
        if queries is not None:
            session = session.with_queries(query_subset(session.n_query, queries, cfg.seed))
        found = certify(session.model, smoothing=self.cfg.smoothing(cfg.seed), radii=self.cfg.certify_radii(),
                        session=session)
        summary = found.to_dict()
        for key in ("per_image", "centroids"):
            summary.pop(key)
        return {"certify": summary}

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from robustdml.benchmark import Benchmark, load_benchmark_config
from robustdml.engine import Trainer
from robustdml.errors import ConfigError
from robustdml.reporting.report import build_report, group_tables, load_cells
from robustdml.reporting.report_figures import tsne_panels

REPO = Path(__file__).resolve().parents[2]


def tiny_config(tmp_path, methods=("standard", "mixup"), seeds=(0,), extra_cells=None, surrogate=False):
    cfg = {"name": "tiny", "base_config": str(REPO / "configs" / "digits.yaml"),
           "grid": {"dataset": ["digits"], "backbone": ["small-cnn"], "method": list(methods), "seed": list(seeds)},
           "train": {"epochs": 1, "embedding_dim": 16, "robust_eval": False},
           "attack": {"eps": [0.1], "steps": 2, "attacks": ["displacement", "noise"]}, "surrogate": surrogate}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_failing_cell_is_recorded_and_the_grid_goes_on(tmp_path):
    cfg = load_benchmark_config(tiny_config(tmp_path))
    cfg.grid["dataset"] = ["digits", "cub"]  # cub has no root: its cells fail
    statuses = Benchmark(cfg, tmp_path / "out", progress=False).run()
    assert statuses["digits-small-cnn-standard-s0"] == "ok" and statuses["digits-small-cnn-mixup-s0"] == "ok"
    assert statuses["cub-small-cnn-standard-s0"] == "failed"
    failed = json.loads((tmp_path / "out/cells/cub-small-cnn-standard-s0/result.json").read_text())
    assert failed["status"] == "failed" and "--root" in failed["error"]
    md, html = build_report(tmp_path / "out")
    text = md.read_text()
    assert "Failed cells" in text and "cub-small-cnn-standard-0" in text
    assert "| standard |" in text and "| mixup |" in text
    assert "data:image/png;base64," in html.read_text()


def test_report_numbers_equal_the_cell_json(tmp_path):
    cfg = load_benchmark_config(tiny_config(tmp_path, methods=("standard",), seeds=(0, 1)))
    Benchmark(cfg, tmp_path / "out", progress=False).run()
    md, _ = build_report(tmp_path / "out")
    cells = [json.loads(p.read_text()) for p in sorted((tmp_path / "out/cells").glob("*/result.json"))]
    eps = cells[0]["main_eps_key"]
    row = next(line for line in md.read_text().splitlines() if line.startswith("| standard |"))
    numbers = [tuple(map(float, pair)) for pair in re.findall(r"(-?[\d.]+) ± ([\d.]+)", row)]
    columns = [("clean", m) for m in ("nmi", "f1", "ari", "recall@1")] + [("adv", m) for m in ("nmi", "f1", "ari", "recall@1")]
    assert len(numbers) == len(columns)
    for (kind, metric), (mean, std) in zip(columns, numbers):
        values = [c["clean"][metric] if kind == "clean" else c["worst"][eps][metric] for c in cells]
        expected_mean = sum(values) / len(values)
        expected_std = (sum((v - expected_mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
        assert mean == pytest.approx(expected_mean, abs=5e-4)
        assert std == pytest.approx(expected_std, abs=5e-4)
    table = group_tables(load_cells(tmp_path / "out"))[("digits", "small-cnn")]["rows"]["standard"]
    assert table["adv nmi"][0] == pytest.approx(sum(c["worst"][eps]["nmi"] for c in cells) / 2)


def test_tsne_shows_each_method_once_from_its_lowest_seed():
    # a grid run one seed at a time (--only seed=N) leaves a t-SNE in every seed's cell
    def run(method, seed):
        return {"cell": {"method": method, "seed": seed}, "tsne": {"seed": seed}}
    group = {"runs": {"standard": [run("standard", 1), run("standard", 0)], "eat": [run("eat", 2), run("eat", 1)],
                      "pgd-at": [{"cell": {"method": "pgd-at", "seed": 0}}]}}
    assert tsne_panels(group) == [("standard (seed 0)", {"seed": 0}), ("eat (seed 1)", {"seed": 1})]


@pytest.mark.slow  # ~40 s; an unchanged finished cell is skipped in tests/engine/test_benchmark_stale.py
def test_interrupted_benchmark_redoes_no_finished_cell(tmp_path):
    config = tiny_config(tmp_path, methods=("standard", "mixup", "trades"))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "robustdml", "-q", "benchmark", "--config", str(config), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "cells" / "digits-small-cnn-standard-s0" / "result.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    before = first.read_bytes()
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "2 up to date" in done.stdout or "up to date" in done.stdout
    assert first.read_bytes() == before  # the finished cell was not redone
    report = (out / "report.md").read_text()
    for method in ("standard", "mixup", "trades"):
        assert f"| {method} | 1 |" in report


@pytest.mark.parametrize("dataset", ["cub", pytest.param("cars", marks=pytest.mark.slow),
                                     pytest.param("inshop", marks=pytest.mark.slow)])
def test_paper_config_trains_one_step_on_fixtures(dataset, tmp_path):
    from fixtures import MAKERS
    cfg = load_benchmark_config(REPO / "configs" / "benchmark-paper.yaml")
    assert dataset in cfg.grid["dataset"]
    root = MAKERS[dataset](tmp_path / "data")
    for backbone in cfg.grid["backbone"]:
        cell = {"dataset": dataset, "backbone": backbone, "method": "eat", "seed": 0}
        train_cfg = cfg.train_config(cell)
        assert train_cfg.embedding_dim == 512 and train_cfg.loss == "proxy_anchor"
        for key, value in {"root": str(root), "pretrained": False, "image_size": 32, "batch_size": 4, "workers": 0,
                           "embedding_dim": 8, "warmup_epochs": 0, "epochs": 1}.items():
            setattr(train_cfg, key, value)
        train_cfg.method_kwargs = {**train_cfg.method_kwargs, "steps": 1}
        trainer = Trainer(train_cfg.validate(), tmp_path / f"run-{backbone}", progress=False)
        loss = trainer.train_epoch(0)
        assert loss == loss and loss > 0  # a finite loss from one real step


def test_benchmark_runs_robrank_columns_and_certificates_into_the_report(tmp_path, monkeypatch):
    from robustdml.attacks.ranking import PROFILES
    monkeypatch.setitem(PROFILES, "tiny", {"eps": 0.1, "step_size": 0.03, "steps": 2})
    cfg = load_benchmark_config(tiny_config(tmp_path, methods=("standard",)))
    cfg.ranking = {"profile": "tiny", "queries": 20}
    cfg.attack_queries = 30
    cfg.certify = {"sigma": 0.1, "radii": [0, 0.01], "queries": 12, "samples": 100, "center_samples": 60,
                   "candidates": 5, "alpha": 0.1, "delta": 0.2}
    Benchmark(cfg.validate(), tmp_path / "out", progress=False).run()
    cell = json.loads((tmp_path / "out/cells/digits-small-cnn-standard-s0/result.json").read_text())
    assert cell["robrank"]["queries"] == 20 and set(cell["robrank"]["columns"]) >= {"CA+", "GTT"}
    assert len(cell["tsne"]["labels"]) == 30  # the clustering suite ran on the 30 sampled queries
    assert cell["seconds_per_epoch"] > 0
    md, _ = build_report(tmp_path / "out")
    rows = [line for line in md.read_text().splitlines() if line.startswith("| standard | 1 |") and line.count("|") == 17]
    assert len(rows) == 1
    row = rows[0]  # RobRank's table: one seed, so its cells give no spread
    assert f"| {cell['robrank']['clean']['recall@1']:.3g} |" in row and f"| {cell['robrank']['ers']:.3g} |" in row
    assert "±" not in row
    assert row.rstrip(" |").endswith(f"{cell['seconds_per_epoch']:.0f}")
    # the ES start check ran; a failed one is named under the table
    check = cell["robrank"]["checks"]["es_start"]
    assert check["other_start"] == "robrank" and ("other start direction is stronger" in md.read_text()) != check["passed"]
    check["passed"] = False
    (tmp_path / "out/cells/digits-small-cnn-standard-s0/result.json").write_text(json.dumps(cell))
    md, _ = build_report(tmp_path / "out")
    assert (f"`es_start` check failed; the ES columns and ERS above are optimistic) for: standard seed 0 "
            f"(ES:R {check['other']['ES:R']:.1f} against {cell['robrank']['columns']['ES:R']:.1f})") in md.read_text()
    found = cell["certify"]
    assert found["images"] == 12 and found["radii"] == [0, 0.01] and "per_image" not in found
    assert len(found["certified_assignment"]) == 2 and found["certified_assignment"][0] >= found["certified_assignment"][1]
    text = md.read_text()
    lines = text.splitlines()
    row = lines[next(i for i, line in enumerate(lines) if line.startswith("| method | seeds | abstain rate")) + 2]
    expected = [found["abstained"] / 12, found["clean"]["nmi"], found["clean"]["recall@1"],
                *found["certified_assignment"], *found["certified_recall_at_1"]]
    assert row == "| standard | 1 | " + " | ".join(f"{v:.3f}" for v in expected) + f" | {found['seconds_per_image']:.2f} |"
    assert (tmp_path / "out/report/digits-small-cnn-certified.png").is_file()
    for bad, message in [({"radii": [0]}, "needs sigma"), ({"sigma": 0}, "sigma must be positive"),
                         ({"sigma": 0.1, "center_samples": 10}, "too few"), ({"sigma": 0.1, "radius": [0]}, "not radius"),
                         ({"sigma": 0.1, "radii": [1.0]}, "cannot be certified"), ({"sigma": 0.1, "queries": 1}, "queries")]:
        cfg.certify = bad
        with pytest.raises(ConfigError, match=message):
            cfg.validate()
    cfg.certify = {}
    cfg.attack_queries = 1
    with pytest.raises(ConfigError, match="attack_queries"):
        cfg.validate()
    cfg.attack_queries = None
    cfg.ranking = {"profile": "tiny", "query": 5}
    with pytest.raises(Exception, match="ranking takes"):
        cfg.validate()


def test_only_runs_the_named_cells_and_rejects_values_not_in_the_grid(tmp_path):
    cfg = load_benchmark_config(tiny_config(tmp_path, methods=("standard", "mixup", "trades"), seeds=(0, 1)))
    cfg.restrict(["method=mixup", "method=trades", "seed=1"])
    assert [(c["method"], c["seed"]) for c in cfg.cells()] == [("mixup", 1), ("trades", 1)]
    with pytest.raises(ConfigError, match="not in the grid's method values"):
        cfg.restrict(["method=standard"])  # no longer in the (restricted) grid
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        cfg.restrict(["seed"])
    with pytest.raises(ConfigError, match="KEY one of"):
        cfg.restrict(["lr=0.1"])


@pytest.mark.slow
def test_processes_split_by_only_share_one_out_and_its_surrogate(tmp_path):
    """Two `--only` processes at once on one --out: both cells finish, the surrogate both need is
    trained once (a second concurrent training of it would find its checkpoint and fail)."""
    config = tiny_config(tmp_path, methods=("standard", "mixup"), surrogate=True)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "robustdml", "-q", "benchmark", "--config", str(config), "--out",
                               str(out), "--only", f"method={m}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for m in ("standard", "mixup")]
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
    for m in ("standard", "mixup"):
        cell = json.loads((out / f"cells/digits-small-cnn-{m}-s0/result.json").read_text())
        assert cell["status"] == "ok"
    assert (out / "surrogates/digits-small-cnn/metrics.json").is_file()
    log = (out / "surrogates/digits-small-cnn/log.csv").read_text().splitlines()
    assert len(log) == 2  # header + its one epoch, written once
    report = (out / "report.md").read_text()
    assert "| standard | 1 |" in report and "| mixup | 1 |" in report


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("benchmark-*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_benchmark_config_loads_and_validates(path):
    cfg = load_benchmark_config(path)
    cells = cfg.cells()
    assert cells and all(cfg.train_config(cell).validate() for cell in cells)
    if cfg.certify:
        assert cfg.smoothing().sigma > 0 and cfg.certify_radii()


def test_a_cell_another_process_runs_is_left_to_it(tmp_path):
    # two benchmark processes with overlapping --only sets share one --out: a cell is run by one of them
    import fcntl
    cfg = load_benchmark_config(tiny_config(tmp_path))
    out = tmp_path / "out"
    lock = out / "cells" / "digits-small-cnn-standard-s0" / ".lock"
    lock.parent.mkdir(parents=True)
    with open(lock, "a") as held:  # a lock on its own open file, as another process would hold it
        fcntl.flock(held, fcntl.LOCK_EX)
        statuses = Benchmark(cfg, out, progress=False).run()
    assert statuses == {"digits-small-cnn-standard-s0": "busy", "digits-small-cnn-mixup-s0": "ok"}
    assert not (lock.parent / "run").exists() and not (lock.parent / "result.json").exists()
    # once it is free the cell is run, and a finished one found under its lock is not run again
    assert Benchmark(cfg, out, progress=False).run()["digits-small-cnn-standard-s0"] == "ok"
    assert set(Benchmark(cfg, out, progress=False).run().values()) == {"skipped"}

"""A benchmark rerun re-runs exactly the parts whose settings changed, and says so."""

from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "reliability"))

from test_benchmark_faults import tiny_config  # noqa: E402

from robustdml.benchmark import Benchmark, load_benchmark_config  # noqa: E402
from robustdml.reporting.report import build_report  # noqa: E402

CELL = "digits-small-cnn-standard-s0"


def _edit(path: Path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def _cell(out: Path) -> dict:
    return json.loads((out / "cells" / CELL / "result.json").read_text())


def _weights(out: Path) -> bytes:
    return (out / "cells" / CELL / "run" / "best" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished one-cell benchmark, run once; each test works on a copy."""
    base = tmp_path_factory.mktemp("stale")
    config = tiny_config(base, methods=("standard",))
    assert Benchmark(load_benchmark_config(config), base / "out", progress=False).run() == {CELL: "ok"}
    return base


@pytest.fixture
def _first_run(finished, tmp_path):
    def copy(_=None):
        shutil.copytree(finished / "out", tmp_path / "out")
        shutil.copy(finished / "bench.yaml", tmp_path / "bench.yaml")
        return tmp_path / "bench.yaml", tmp_path / "out"
    return copy


def test_unchanged_settings_skip_the_cell(_first_run):
    config, out = _first_run()
    before = (out / "cells" / CELL / "result.json").read_bytes()
    assert Benchmark(load_benchmark_config(config), out, progress=False).run() == {CELL: "skipped"}
    assert (out / "cells" / CELL / "result.json").read_bytes() == before


def test_changed_attack_steps_re_attack_without_retraining(_first_run, caplog):
    config, out = _first_run()
    first, weights = _cell(out), _weights(out)
    assert first["parts"]["attack"]["settings"]["suite"]["steps"] == 2
    _edit(config, lambda d: d["attack"].update(steps=3))
    with caplog.at_level(logging.INFO, logger="robustdml"):
        assert Benchmark(load_benchmark_config(config), out, progress=False).run() == {CELL: "updated"}
    log = caplog.text
    assert "attack settings changed (suite.steps: 2 -> 3)" in log and "training reused" in log
    cell = _cell(out)
    assert cell["settings"]["steps"] == 3 and cell["parts"]["attack"]["settings"]["suite"]["steps"] == 3
    assert cell["parts"]["train"] == first["parts"]["train"] and cell["reused"] == ["train"]
    assert cell["part_seconds"]["train"] < 1.0  # the training time of this rerun: none
    assert _weights(out) == weights and not (out / "cells" / CELL / "previous-run").exists()
    md, html = build_report(out)
    assert "3 iterations" in md.read_text() and "3 iterations" in html.read_text()


def test_changed_epochs_retrain(_first_run):
    config, out = _first_run()
    _edit(config, lambda d: d["train"].update(epochs=2))
    assert Benchmark(load_benchmark_config(config), out, progress=False).run() == {CELL: "ok"}
    cell = _cell(out)
    assert cell["config"]["epochs"] == 2 and cell["reused"] == []
    assert (out / "cells" / CELL / "previous-run" / "best").is_dir()  # the superseded model is kept aside
    assert cell["seconds_per_epoch"] > 0
    log = (out / "cells" / CELL / "run" / "log.csv").read_text().splitlines()
    assert len(log) == 3  # header + two fresh epochs, not a resumed one-epoch run


def test_reuse_stale_keeps_and_marks(_first_run):
    config, out = _first_run()
    _edit(config, lambda d: d["attack"].update(steps=3))
    statuses = Benchmark(load_benchmark_config(config), out, progress=False, reuse_stale=True).run()
    assert statuses == {CELL: "stale"}
    cell = _cell(out)
    assert cell["settings"]["steps"] == 2 and "attack" in cell["stale"]
    md, html = build_report(out)
    text = md.read_text()
    assert "stale" in text and "suite.steps: 2 -> 3" in text
    # a later run without the flag brings it up to date
    assert Benchmark(load_benchmark_config(config), out, progress=False).run() == {CELL: "updated"}
    assert "stale" not in _cell(out)


@pytest.mark.slow  # RobRank's nine attacks and the certificates on top of the attack: ~30 s on 2 cores
def test_a_cell_loads_embeds_and_clusters_once_for_every_part(_first_run, monkeypatch):
    """attack, ranking and certify re-run on the trained model: one load of it, one embedding of the
    clean test set and one clean k-means, not one per part."""
    import robustdml.benchmark.runner as runner
    import robustdml.evaluation.session as session

    config, out = _first_run()
    _edit(config, lambda c: c.update(attack={**c["attack"], "steps": 3}, ranking={"queries": 4},
                                     certify={"sigma": 0.25, "queries": 3, "samples": 100, "center_samples": 100,
                                              "alpha": 0.2, "delta": 0.2, "radii": [0.0]}))
    loads, embedded, clustered = [], [], []
    real_load, real_embed, real_kmeans = runner.load_model, session.embed, session.kmeans
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: loads.append(a[0]) or real_load(*a, **k))

    def embed(*a, **k):
        found = real_embed(*a, **k)
        embedded.append(found[0])
        return found

    monkeypatch.setattr(session, "embed", embed)
    monkeypatch.setattr(session, "kmeans", lambda x, *a, **k: clustered.append(x) or real_kmeans(x, *a, **k))
    assert Benchmark(load_benchmark_config(config), out, progress=False).run() == {CELL: "updated"}
    assert len(loads) == 1
    assert len(embedded) == 1
    clean = embedded[0].numpy()
    assert sum(x.shape == clean.shape and (x == clean).all() for x in clustered) == 1
    assert len(clustered) > 1  # the attacked embeddings are clustered too, each once
    cell = _cell(out)
    assert "robrank" in cell and "certify" in cell and cell["part_seconds"]["train"] < 5


def test_a_cell_names_its_schema_and_a_later_one_is_refused(_first_run):
    import robustdml
    from robustdml.errors import ModelFileError

    config, out = _first_run()
    path = out / "cells" / CELL / "result.json"
    cell = json.loads(path.read_text())
    assert cell["schema"] == {"kind": "cell", "version": 1}
    with pytest.raises(ModelFileError, match="benchmark cell"):
        robustdml.load_result(path)
    path.write_text(json.dumps({**cell, "schema": {"kind": "cell", "version": 99}}))
    with pytest.raises(ModelFileError, match="schema version 99.*upgrade robustdml"):
        build_report(out)


def test_a_speed_only_setting_keeps_the_cell(_first_run):
    """cuda_graphs changes how fast a model trains, not what it trains: the cell stays finished."""
    config, out = _first_run()
    before = (out / "cells" / CELL / "result.json").read_bytes()
    _edit(config, lambda d: d.setdefault("train", {}).update(cuda_graphs="off"))
    assert Benchmark(load_benchmark_config(config), out, progress=False).run() == {CELL: "skipped"}
    assert (out / "cells" / CELL / "result.json").read_bytes() == before

"""A robust evaluation keeps its finished pieces: interrupted and rerun, it gives the uninterrupted result."""

import json
import logging

import pytest

import robustdml
from robustdml.evaluation.store import EntryFiles
from robustdml.models import load_model

ATTACKS = ["centroid-balanced", "displacement", "noise"]


def _evaluate(run, partial=None, **kw):
    model = load_model(run / "best")
    found = robustdml.evaluate(model, "digits", suite=ATTACKS, steps=2, queries=200, batch_size=64, partial=partial, **kw)
    out = found.to_dict()
    out.pop("seconds")
    return out


@pytest.fixture(scope="module")
def uninterrupted(digits_run):
    return _evaluate(digits_run[0])


class Crash(Exception):
    pass


def test_interrupted_during_the_third_entry_then_rerun_equals_uninterrupted(digits_run, uninterrupted, tmp_path,
                                                                             monkeypatch, caplog):
    partial = tmp_path / "partial"
    real = EntryFiles.save_batch
    written = []

    def crash_in_third_entry(self, number, part):
        written.append(self.name)
        if len(set(written)) == 3 and written.count(self.name) == 2:  # the third entry's second batch
            raise Crash
        real(self, number, part)

    monkeypatch.setattr(EntryFiles, "save_batch", crash_in_third_entry)
    with pytest.raises(Crash):
        _evaluate(digits_run[0], partial)
    monkeypatch.setattr(EntryFiles, "save_batch", real)
    assert len(list(partial.glob("*.safetensors"))) == 2  # two entries whole, the third in batches
    with caplog.at_level(logging.INFO, logger="robustdml"):
        resumed = _evaluate(digits_run[0], partial)
    assert resumed == uninterrupted
    assert "reused 2 finished entries and 1 finished batches" in caplog.text


def test_a_changed_attack_is_evaluated_again_and_the_rest_reused(digits_run, uninterrupted, tmp_path, caplog):
    partial = tmp_path / "partial"
    assert _evaluate(digits_run[0], partial) == uninterrupted
    entries = len(list(partial.glob("*.safetensors")))  # the suite's entries and the checks' reruns
    with caplog.at_level(logging.INFO, logger="robustdml"):
        _evaluate(digits_run[0], partial)
    assert f"reused {entries} finished entries" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="robustdml"):
        changed = _evaluate(digits_run[0], partial, attack_kwargs={"noise": {"steps": 3}})
    reused = [line for line in caplog.text.splitlines() if "reused" in line and "@" in line]
    assert reused and not any("noise@" in line for line in reused)  # the changed attack ran again
    assert f"reused {entries - 1} finished entries" in caplog.text
    assert changed["attacks"]["displacement"] == uninterrupted["attacks"]["displacement"]


def test_a_changed_evaluation_setting_starts_afresh(digits_run, tmp_path, caplog):
    partial = tmp_path / "partial"
    _evaluate(digits_run[0], partial)
    with caplog.at_level(logging.INFO, logger="robustdml"):
        _evaluate(digits_run[0], partial, kmeans_restarts=2)
    assert "other settings: starting it afresh" in caplog.text
    assert "nothing to reuse" in caplog.text
    assert json.loads((partial / "settings.json").read_text())["kmeans_restarts"] == 2

"""Saved results read back as the objects that wrote them, old files too; a file from a later
robustdml or not a result at all is a one-line error."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import robustdml


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(64, 8)

    def forward(self, x):
        return F.normalize(self.linear(x.flatten(1)), dim=1)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    result = robustdml.evaluate(_Net(), "digits", eps=["0.05", "0.1"], suite=["centroid", "noise"], steps=2,
                                queries=200)
    path = tmp_path_factory.mktemp("results") / "r.json"
    result.save(path)
    return result, path


def test_a_robust_result_reads_back_with_its_table(saved):
    result, path = saved
    again = robustdml.load_result(path)
    assert type(again) is type(result) and again.worst == result.worst and again.checks == result.checks
    assert again.main_eps == result.main_eps and again.about == result.about
    assert again.table() == result.table()
    assert json.loads(path.read_text())["schema"] == {"kind": "robust", "version": 1}


def test_a_file_written_before_the_schema_reads_as_version_0(saved, tmp_path):
    _, path = saved
    data = json.loads(path.read_text())
    del data["schema"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert robustdml.load_result(tmp_path / "old.json").worst == data["worst"]


def test_certificates_read_back(tmp_path):
    found = robustdml.certify(_Net(), "digits", sigma=0.25, samples=100, center_samples=100, alpha=0.2, delta=0.2,
                              queries=3, radii=[0.0])
    found.save(tmp_path / "c.json")
    again = robustdml.load_result(tmp_path / "c.json")
    assert again.certified_assignment == found.certified_assignment and again.table() == found.table()


@pytest.mark.parametrize("change, message", [
    (lambda d: d.update(schema={"kind": "robust", "version": 99}), "schema version 99.*upgrade robustdml"),
    (lambda d: d.clear() or d.update(hello=1), "not a robustdml result"),
    (lambda d: d.pop("settings"), "missing or malformed field"),
])
def test_unreadable_results_are_one_line_errors(saved, tmp_path, change, message):
    _, path = saved
    data = json.loads(path.read_text())
    change(data)
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(robustdml.RobustDMLError, match=message):
        robustdml.load_result(tmp_path / "bad.json")


def test_a_ranking_result_reads_back(tmp_path):
    from robustdml.evaluation.ranking import RankingResult
    found = RankingResult("rob28", 0.3, 6, 0, {"CA+": 1.0, "CA-": 90.0}, {"CA+": 50.0, "CA-": 50.0}, None,
                          {"nmi": 0.7, "recall@1": 0.8, "robrank_nmi": 0.69}, about={"dataset": "digits"})
    found.save(tmp_path / "r.json")
    again = robustdml.load_result(tmp_path / "r.json")
    assert again == found and again.table() == found.table()

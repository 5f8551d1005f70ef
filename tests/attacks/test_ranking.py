"""RobRank's ranking attacks: each reported number on constructed embeddings where the answer is
known by hand, the target choices, ERS on RobRank's published rows, and the evaluation end to end."""

import math

import pytest
import torch

from robustdml.attacks import AttackContext, create_attack
from robustdml.attacks.base import CleanPool
from robustdml.attacks.ranking import ERS_COLUMNS as COLUMNS, PROFILES, ers
from robustdml.data import get_dataset
from robustdml.errors import ConfigError
from robustdml.evaluation.checks import ES_START_TOLERANCE, es_start_check
from robustdml.evaluation.ranking import es_start_line, evaluate_ranking, query_subset
from robustdml.models import create_model


def _angles(*degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])


# a database of 5 unit vectors on a circle; classes 0, 0, 1, 1, 2
DATABASE = _angles(0, 20, 90, 110, 210)
LABELS = torch.tensor([0, 0, 1, 1, 2])


def _context(queries, labels, targets=None, self_index=None):
    return AttackContext(gallery=DATABASE, gallery_labels=LABELS, labels=labels,
                         self_index=self_index if self_index is not None else torch.full((len(queries),), -1),
                         targets=targets)


def _score(name, adversarial, clean, context, **options):
    return create_attack(name, 0.1, **options).score(adversarial, clean, context)


def test_candidate_attack_percentile_rank():
    # target query: database item 0 (angle 0)
    ctx = _context(_angles(0), torch.tensor([0]), targets=torch.tensor([0]))
    # a candidate already at the query: nothing is nearer, rank 0 (the top)
    assert _score("ca+", _angles(0), _angles(0), ctx)["CA+"].item() == 0
    # a candidate at 100 degrees: items at 0, 20 and 90 are nearer: 3 of 5
    assert _score("ca-", _angles(100), _angles(0), ctx)["CA-"].item() == pytest.approx(60)
    # opposite the query: all 5 nearer
    assert _score("ca+", _angles(180), _angles(0), ctx)["CA+"].item() == pytest.approx(100)


def test_query_attack_percentile_rank():
    ctx = _context(_angles(0), torch.tensor([0]), targets=torch.tensor([3]))  # candidate at 110 degrees
    # the query moved onto the candidate: it is first in the query's list
    assert _score("qa+", _angles(110), _angles(0), ctx)["QA+"].item() == 0
    # the query at 0 degrees: items at 0, 20, 90 come before the candidate at 110
    assert _score("qa-", _angles(0), _angles(0), ctx)["QA-"].item() == pytest.approx(60)


def test_tma_es_ltm_gtm_gtt_reported_numbers():
    labels = torch.tensor([0])
    own = torch.tensor([0])  # the query is database item 0
    ctx = _context(_angles(0), labels, targets=torch.tensor([2]), self_index=own)
    assert _score("tma", _angles(90), _angles(0), ctx)["TMA"].item() == pytest.approx(1.0)
    assert _score("tma", _angles(0), _angles(0), ctx)["TMA"].item() == pytest.approx(0.0, abs=1e-6)
    es = _score("es", _angles(60), _angles(0), ctx)
    assert es["ES:D"].item() == pytest.approx(1.0, abs=1e-6)  # a 60-degree chord of the unit circle
    assert es["ES:R"].item() == 0  # own entry masked, the nearest to 60 degrees is item 2 (class 1)
    assert _score("es", _angles(5), _angles(0), ctx)["ES:R"].item() == 100  # item 1, class 0
    assert _score("ltm", _angles(100), _angles(0), ctx)["LTM"].item() == 0
    assert _score("gtm", _angles(15), _angles(0), ctx)["GTM"].item() == 100
    # GTT, on 7 items: the clean top-1 (own entry masked) is item 1; still among the 4 nearest or not
    ctx_gtt = AttackContext(gallery=_angles(0, 20, 90, 110, 200, 250, 300), gallery_labels=torch.tensor([0, 0, 1, 1, 2, 2, 2]),
                            labels=labels, self_index=own, targets=torch.tensor([1]))
    assert _score("gtt", _angles(0), _angles(0), ctx_gtt)["GTT"].item() == 100
    assert _score("gtt", _angles(200), _angles(0), ctx_gtt)["GTT"].item() == 0  # 200, 250, 110, 300 are nearer


def _pool():
    return CleanPool(DATABASE, LABELS, torch.zeros(0, dtype=torch.long), torch.zeros(0, 2), DATABASE, LABELS, 0, seed=0)


def test_targets_follow_robrank():
    pool = _pool()
    # GTT: the nearest other item; GTM: the nearest item whose class differs from that top-1's
    assert create_attack("gtt", 0.1).plan(pool).tolist() == [1, 0, 3, 2, 3]
    assert create_attack("gtm", 0.1).plan(pool).tolist() == [2, 2, 1, 1, 0]
    # RobRank's slip: the position inside the other-class subset, used as a database position.
    # Item 0: top-1 is item 1 (class 0); the other-class subset is items 2, 3, 4, its nearest (item 2)
    # is subset position 0 -> database item 0 (the query itself)
    assert create_attack("gtm", 0.1, robrank_compat=True).plan(pool)[0].item() == 0
    # CA- / QA-: one of the nearest 1 % after the very nearest (at least one item): the second nearest
    assert create_attack("qa-", 0.1).plan(pool).tolist() == [1, 0, 3, 2, 3]
    ca_plus = create_attack("ca+", 0.1).plan(pool)
    assert ca_plus.shape == (5,) and ((ca_plus >= 0) & (ca_plus < 5)).all()


def test_es_first_step_ascends_one_fixed_direction_and_robrank_compat_the_opposite_one():
    clean = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    far = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=1)
    values = []
    for options, sign in (({}, -1.0), ({"robrank_compat": True}, 1.0)):
        attack = create_attack("es", 0.1, **options)
        state = attack.prepare(lambda x: x, clean, None)
        # at q' = q only the offsets are left: every coordinate of the gradient has one sign, the
        # same for every query (ours: minus the all-ones direction; RobRank's pairwise_distance: plus)
        start = clean.clone().requires_grad_(True)
        attack.objective(start, state).sum().backward()
        assert (torch.sign(start.grad) == sign).all()
        values.append(attack.objective(far, state))
    # away from the start the two objectives are the same distance
    assert torch.allclose(values[0], values[1], atol=1e-5)


def test_es_start_check_fails_only_when_the_other_start_is_stronger():
    reported = {"ES:D": 0.40, "ES:R": 63.6}
    # the other start weaker (RobRank's EST under our start is the reverse case): passed
    assert es_start_check(reported, {"ES:D": 0.30, "ES:R": 70.0}, "ours")["passed"]
    # stronger by exactly the tolerance: passed; by more, on either figure: failed
    tol_r, tol_d = ES_START_TOLERANCE["ES:R"], ES_START_TOLERANCE["ES:D"]
    assert es_start_check(reported, {"ES:D": 0.40, "ES:R": 63.6 - tol_r}, "ours")["passed"]
    assert not es_start_check(reported, {"ES:D": 0.40, "ES:R": 63.6 - tol_r - 0.1}, "ours")["passed"]
    assert not es_start_check(reported, {"ES:D": 0.40 + tol_d + 0.01, "ES:R": 63.6}, "ours")["passed"]
    # measured on RobRank's EST at its settings (seed 0): reported with RobRank's start, ours is far stronger
    failed = es_start_check(reported, {"ES:D": 0.483, "ES:R": 6.4}, "ours")
    assert not failed["passed"] and failed["gap"]["ES:R"] == pytest.approx(57.2)
    line = es_start_line({"columns": reported, "checks": {"es_start": failed}})
    assert line.startswith("check es_start: FAILED (ES from our start: ES:D 0.483, ES:R 6.4")
    passed = es_start_check({"ES:D": 0.483, "ES:R": 6.4}, reported, "robrank")
    assert es_start_line({"columns": {}, "checks": {"es_start": passed}}).startswith(
        "check es_start: passed (ES from RobRank's start")
    assert es_start_line({"columns": reported}) is None


@pytest.mark.parametrize("name", ["es", "gtm"])
def test_robrank_compat_takes_only_true_or_false(name):
    # "maybe" or "yes" from the command line arrives as a string: refused, not read as true
    with pytest.raises(ConfigError, match=f"{name}.robrank_compat must be true or false, got 'maybe'"):
        create_attack(name, 0.1, robrank_compat="maybe")
    assert create_attack(name, 0.1, robrank_compat=False).robrank_compat is False


@pytest.mark.parametrize("row,expected", [
    # rc2f2:ptripletN (undefended), rc2f2p:ptripletN (ACT), rc2f2d:ptripletN (EST) in doc/dmltab-fashion.txt
    ((1.1, 96.8, 0.3, 97.8, 0.990, 1.604, 0.1, 0.0, 12.6, 0.0), 4.2),
    ((33.6, 14.6, 38.5, 12.1, 0.259, 0.541, 48.5, 59.5, 60.2, 0.1), 63.3),
    ((14.9, 36.1, 20.9, 48.6, 0.966, 0.288, 62.0, 28.0, 20.8, 0.0), 38.7),
])
def test_ers_on_robrank_published_rows(row, expected):
    assert round(ers(dict(zip(COLUMNS, row))), 1) == expected


def test_query_subset_is_seeded_and_sorted():
    a, b = query_subset(100, 10, seed=3), query_subset(100, 10, seed=3)
    assert (a == b).all() and (a[1:] > a[:-1]).all() and len(a) == 10
    assert len(query_subset(100, None, 0)) == 100
    with pytest.raises(ConfigError):
        query_subset(100, 0, 0)


@pytest.fixture(scope="module")
def digits_model():
    torch.manual_seed(0)
    return create_model("small-cnn", embedding_dim=16, in_channels=1).eval()


def test_evaluate_ranking_end_to_end(digits_model, monkeypatch):
    test = get_dataset("digits", "test")
    monkeypatch.setitem(PROFILES, "tiny", {"eps": 0.1, "step_size": 0.03, "steps": 3})
    found = evaluate_ranking(digits_model, test, profile="tiny", queries=40, seed=1)
    assert found.queries == 40 and set(found.columns) == set(COLUMNS)
    assert 0 <= found.clean["robrank_nmi"] <= 1 and 0 <= found.clean["nmi"] <= 1
    for column in ("CA+", "CA-", "QA+", "QA-", "ES:R", "LTM", "GTM", "GTT"):
        assert 0 <= found.columns[column] <= 100
    # the attacks move each number the way they are built to
    assert found.columns["CA+"] < found.clean_columns["CA+"] and found.columns["QA+"] < found.clean_columns["QA+"]
    assert found.columns["CA-"] > found.clean_columns["CA-"] and found.columns["QA-"] > found.clean_columns["QA-"]
    assert found.columns["TMA"] > found.clean_columns["TMA"] and found.columns["ES:D"] > 0
    assert found.clean_columns["ES:D"] == pytest.approx(0, abs=1e-5) and found.clean_columns["GTT"] == 100
    assert found.ers == pytest.approx(ers(found.columns))
    # ES ran again from RobRank's start for the check; the columns stay those of our start
    check = found.checks["es_start"]
    assert check["other_start"] == "robrank" and set(check["other"]) == {"ES:D", "ES:R"}
    assert check["passed"] == es_start_check(found.columns, check["other"], "robrank")["passed"]
    assert check["gap"]["ES:R"] == pytest.approx(found.columns["ES:R"] - check["other"]["ES:R"])
    # asked for RobRank's start, the check runs ours, and its ES figures are the first run's reported ones
    flipped = evaluate_ranking(digits_model, test, profile="tiny", queries=40, seed=1, attacks=["es"],
                               attack_kwargs={"es": {"robrank_compat": True}})
    assert flipped.checks["es_start"]["other_start"] == "ours"
    assert flipped.checks["es_start"]["other"] == pytest.approx({c: found.columns[c] for c in ("ES:D", "ES:R")})
    assert flipped.columns == pytest.approx(check["other"])
    assert not evaluate_ranking(digits_model, test, profile="tiny", queries=10, attacks=["es"], check_es_start=False).checks
    # eps 0: the attacked numbers are the clean ones
    monkeypatch.setitem(PROFILES, "zero", {"eps": 0.0, "step_size": 0.03, "steps": 3})
    still = evaluate_ranking(digits_model, test, profile="zero", queries=40, seed=1)
    for column in COLUMNS:
        assert still.columns[column] == pytest.approx(still.clean_columns[column], abs=1e-4)


def test_evaluate_ranking_rejects_bad_options(digits_model):
    test = get_dataset("digits", "test")
    with pytest.raises(ConfigError, match="profile"):
        evaluate_ranking(digits_model, test, profile="rob999")
    with pytest.raises(ConfigError, match="not in the robrank suite"):
        evaluate_ranking(digits_model, test, attack_kwargs={"centroid": {}})
    with pytest.raises(ConfigError, match="takes no option"):
        evaluate_ranking(digits_model, test, attack_kwargs={"gtm": {"compat": True}})


def test_a_subset_of_the_attacks_fills_its_columns_and_no_ers(digits_model, monkeypatch):
    monkeypatch.setitem(PROFILES, "tiny", {"eps": 0.1, "step_size": 0.03, "steps": 2})
    test = get_dataset("digits", "test")
    found = evaluate_ranking(digits_model, test, profile="tiny", queries=10, attacks=["gtm", "es"],
                             attack_kwargs={"gtm": {"robrank_compat": True}, "es": {"robrank_compat": True}})
    assert set(found.columns) == {"GTM", "ES:D", "ES:R"} and found.ers is None and "es_start" in found.checks
    assert not evaluate_ranking(digits_model, test, profile="tiny", queries=10, attacks=["gtm"]).checks
    with pytest.raises(ConfigError, match="not a robrank attack"):
        evaluate_ranking(digits_model, test, profile="tiny", attacks=["centroid"])

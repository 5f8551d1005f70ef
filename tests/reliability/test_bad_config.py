"""Bad configs and arguments: a one-line error before any work starts, a non-zero exit, never a
traceback. Property-based over config values and CLI arguments."""

import tempfile

import pytest
from clirun import run_main
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from robustdml.cli.main import main
from robustdml.engine import Trainer, TrainConfig, TrainResult
from robustdml.engine.config import config_from_dict


BAD_TRAIN = [
    (["epoch=3"], "did you mean 'epochs'"),
    (["batch_sise=32"], "did you mean 'batch_size'"),
    (["epochs=three"], "expects int"),
    (["lr=[1, 2]"], "expects float"),
    (["method=pgd-at", "method_kwargs.eps=-0.1"], "eps must be"),
    (["method=pgd-at", "method_kwargs.steps=0"], "steps must be"),
    (["method=eat", "method_kwargs.members=0"], "members"),
    (["method=eat", "method_kwargs.members=3", "method_kwargs.parts_per_member=4"], "parts_per_member"),
    (["samples_per_class=4", "batch_size=64"], "classes per batch"),
    (["method=pgd-at", "method_kwargs.epsilon=0.1"], "takes no option"),
]


@pytest.mark.parametrize("overrides,match", BAD_TRAIN)
def test_bad_train_config_is_one_line_before_any_work(tmp_path, overrides, match):
    run = run_main  # in this process: tests/cli/test_cli.py runs the same first case through the real executable
    proc = run("train", "--config", "configs/digits.yaml", "--out", str(tmp_path / "run"), *overrides)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and match in lines[0], lines
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # nothing started


def test_scientific_notation_is_a_float():
    cfg = config_from_dict({"lr": 1e-4})
    assert cfg.lr == 1e-4
    from robustdml.cli.config import apply_overrides
    assert apply_overrides({}, ["lr=1e-4", "weight_decay=5e-5"]) == {"lr": 1e-4, "weight_decay": 5e-5}


KEYS = list(TrainConfig.__dataclass_fields__) + ["epoch", "learning_rate", "method_kwargs.eps", "method_kwargs.steps",
                                                 "method_kwargs.members", "loss_kwargs.margin", "nonsense"]
VALUES = st.one_of(st.integers(-3, 300), st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.none(),
                   st.sampled_from(["", "abc", "pgd-at", "eat", "cosine", "digits", "cub", "resnet18", "[1, 2]",
                                    "{a: 1}", "1e-3", "-0.5", "nan", "recall@1", "robust_nmi", "auto", "cuda"]))


def _render(value) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from(KEYS), VALUES), max_size=4))
def test_train_never_tracebacks(monkeypatch_fit, pairs):
    overrides = [f"{k}={_render(v)}" for k, v in pairs]
    with tempfile.TemporaryDirectory() as out:
        code = main(["train", "--config", "configs/digits.yaml", "--out", f"{out}/run", "-q", *overrides])
    assert code in (0, 2)


@pytest.fixture(scope="module")
def monkeypatch_fit():
    """Stand-in for the training loop: validation and set-up run for real, the epochs do not."""
    original = Trainer.fit
    Trainer.fit = lambda self: TrainResult(0, self.cfg.select_metric, {})
    yield
    Trainer.fit = original


ATTACK_ARGS = st.lists(st.one_of(
    st.tuples(st.just("--eps"), st.lists(st.floats(-1, 1, allow_nan=False).map(lambda f: f"{f:.3f}"), min_size=1, max_size=2)),
    st.tuples(st.just("--steps"), st.integers(-2, 3).map(str).map(lambda s: [s])),
    st.tuples(st.just("--restarts"), st.integers(-1, 2).map(str).map(lambda s: [s])),
    st.tuples(st.just("--attack"), st.lists(st.sampled_from(["noise", "magic", "transfer"]), min_size=1, max_size=2)),
    st.tuples(st.just("--norm"), st.sampled_from(["linf", "l2"]).map(lambda s: [s])),
), max_size=3)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ATTACK_ARGS)
def test_attack_never_tracebacks(saved_model, args):
    flat = [x for flag, values in args for x in [flag, *values]]
    with tempfile.TemporaryDirectory() as out:
        try:
            code = main(["attack", str(saved_model), "--dataset", "digits", "--attack", "noise", *flat,
                         "--out", out, "-q"])
        except SystemExit as e:  # argparse rejects malformed flags itself, with its usage line
            code = e.code
    assert code in (0, 2)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from robustdml.models import create_model, save_model
    path = tmp_path_factory.mktemp("model")
    save_model(create_model("small-cnn", embedding_dim=8), path)
    return path

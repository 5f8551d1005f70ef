import pytest
import torch

import robustdml
from robustdml.engine import config_from_dict, train
from robustdml.engine.checkpoint import load_checkpoint
from robustdml.errors import ConfigError, ModelFileError

FAST = {"dataset": "digits", "backbone": "small-cnn", "embedding_dim": 16, "epochs": 2, "batch_size": 64,
        "lr": 1e-3, "proxy_lr_mult": 10.0, "schedule": "cosine"}


def test_training_writes_the_run_directory(tmp_path):
    result = train(config_from_dict(FAST), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ("config.yaml", "log.csv", "checkpoint.pt", "metrics.json", "best/model.safetensors",
                 "best/model.json", "last/model.safetensors"):
        assert (run / name).is_file(), name
    assert list((run / "tb").iterdir())
    assert len((run / "log.csv").read_text().strip().splitlines()) == 1 + FAST["epochs"]
    assert set(result.clean) >= {"nmi", "f1", "ari", "recall@1", "map@r"}
    model = robustdml.load_model(run)
    emb = model(torch.rand(3, 1, 8, 8))
    assert emb.shape == (3, 16)


def test_existing_run_is_not_overwritten(tmp_path):
    train(config_from_dict({**FAST, "epochs": 1}), tmp_path / "run", progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(ConfigError, match="--resume"):
        train(config_from_dict({**FAST, "epochs": 1}), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    # Stop after one epoch, then resume to three (a schedule that does not depend on the epoch count).
    train(config_from_dict({**FAST, "epochs": 1, "schedule": "none"}), tmp_path / "a", progress=False)
    train(config_from_dict({**FAST, "epochs": 3, "schedule": "none"}), tmp_path / "a", resume=True, progress=False)
    train(config_from_dict({**FAST, "epochs": 3, "schedule": "none"}), tmp_path / "b", progress=False)
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert a["epoch"] == b["epoch"] == 3
    for key in b["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert torch.equal(a["criterion"]["proxies"], b["criterion"]["proxies"])


class Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pt"
    torch.save({"epoch": 1, "payload": Boom()}, path)
    with pytest.raises(ModelFileError, match="refusing"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("data,match", [
    ({"epoch": 3}, "did you mean 'epochs'"),
    ({"epochs": "many"}, "expects int"),
    ({"lr": -1}, "lr must be positive"),
    ({"method": "magic"}, "method must be one of"),
    ({"loss": "nonsense"}, "not a pytorch-metric-learning loss"),
    ({"batch_size": 1}, "batch_size"),
])
def test_bad_config_values(data, match):
    with pytest.raises(ConfigError, match=match):
        config_from_dict(data)


def test_default_digits_config_reaches_the_floor(digits_run):
    _, result = digits_run
    assert result.clean["recall@1"] >= 0.85
    assert result.clean["nmi"] >= 0.30

"""Files handed to robustdml are data: nothing in them runs, and malformed ones get clear errors."""

import json

import pytest
import torch
from safetensors.torch import save_file

from robustdml.cli.main import main
from robustdml.engine.checkpoint import load_checkpoint
from robustdml.errors import ModelFileError
from robustdml.models import create_model, load_model, save_model


class RunsCode:
    def __reduce__(self):
        return (exec, ("open('PWNED', 'w').write('x')",))


def test_pickled_code_in_a_checkpoint_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"epoch": 1, "model": {"w": torch.ones(1)}, "payload": RunsCode()}, tmp_path / "checkpoint.pt")
    with pytest.raises(ModelFileError, match="refusing"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    assert not (tmp_path / "PWNED").exists()


def test_resume_from_a_malicious_checkpoint_is_a_clean_error(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/digits.yaml", "--out", str(run), "-q", "epochs=1",
                 "robust_eval=false", "embedding_dim=16"]) == 0
    monkeypatch.chdir(tmp_path)
    torch.save({"payload": RunsCode()}, run / "checkpoint.pt")
    assert main(["train", "--out", str(run), "--resume", "-q"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not (tmp_path / "PWNED").exists()


def test_safetensors_with_wrong_shapes(tmp_path):
    model = create_model("small-cnn", embedding_dim=16)
    save_model(model, tmp_path)
    state = dict(model.state_dict())
    state["embedding.weight"] = torch.zeros(16, 7)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ModelFileError, match=r"embedding.weight \(16, 7\)"):
        load_model(tmp_path)


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["model"]["spec"].update(evil=1), "unknown field"),
    (lambda c: c.update(format="something-else"), "not a robustdml model"),
    (lambda c: c["model"].update(kind="pickle"), "unknown model kind"),
    (lambda c: c["model"]["spec"].update(embedding_dim="big"), "invalid model spec|embedding_dim"),
])
def test_json_config_with_unknown_or_bad_fields(tmp_path, edit, match):
    save_model(create_model("small-cnn", embedding_dim=16), tmp_path)
    config = json.loads((tmp_path / "model.json").read_text())
    edit(config)
    (tmp_path / "model.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=match):
        load_model(tmp_path)


def test_truncated_weight_file(tmp_path):
    save_model(create_model("small-cnn", embedding_dim=16), tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="safetensors"):
        load_model(tmp_path)

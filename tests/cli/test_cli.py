import json

import pytest
import torch
from clirun import run_cli, run_main

from robustdml.cli.main import main
from robustdml.engine.provenance import git_commit

FAST = ["epochs=1", "embedding_dim=16", "batch_size=64", "lr=0.001"]


def test_data_info_digits(capsys):
    assert main(["data", "info", "--dataset", "digits"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train"]["classes"] == 5 and info["test"]["classes"] == 5
    assert (info["train"]["label_min"], info["train"]["label_max"]) == (0, 4)
    assert (info["test"]["label_min"], info["test"]["label_max"]) == (5, 9)
    assert info["train"]["images"] + info["test"]["images"] == 1797


def test_data_info_fixture(fixture_dataset, capsys):
    name, root = fixture_dataset
    assert main(["data", "info", "--dataset", name, "--root", str(root)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert all({"images", "classes", "label_min", "label_max"} <= set(v) for v in info.values())


def test_every_command_reads_the_commit_when_it_starts(capsys):
    # a long run records the code it loaded, not the checkout when it ends
    git_commit.cache_clear()
    assert main(["data", "info", "--dataset", "digits"]) == 0
    assert git_commit.cache_info().currsize == 1


def test_train_then_evaluate_writes_float_json(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/digits.yaml", "--out", str(run), "-q", *FAST]) == 0
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--dataset", "digits", "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    assert "nmi" in printed and "recall@1" in printed
    result = json.loads(out.read_text())
    assert set(result) == {"clean", "versions"}
    # what made the figures: the software and, in a checkout, the commit (as the training's metrics)
    for versions in (result["versions"], json.loads((run / "metrics.json").read_text())["versions"]):
        assert versions["torch"] == torch.__version__ and versions["commit"] == git_commit()
    assert git_commit() is None or len(git_commit().removesuffix("+dirty")) == 40
    for key in ("nmi", "f1", "ari", "recall@1", "recall@2", "recall@4", "recall@8", "map@r"):
        assert isinstance(result["clean"][key], float)


BAD_INPUT = [
    (["train", "--config", "configs/digits.yaml", "--out", "{tmp}/r", "epoch=3"], "did you mean 'epochs'"),
    (["train", "--config", "{tmp}/missing.yaml", "--out", "{tmp}/r"], "does not exist"),
    (["train", "--config", "configs/digits.yaml", "--out", "{tmp}/r", "lr=abc"], "expects float"),
    (["evaluate", "{tmp}/nomodel", "--dataset", "digits"], "no model"),
    (["evaluate", "{tmp}/nomodel", "--dataset", "digits", "--kmeans-restarts", "0"], "--kmeans-restarts"),
    (["data", "info", "--dataset", "cub", "--root", "{tmp}/nothing"], "does not exist"),
]


@pytest.mark.parametrize("args,match", BAD_INPUT)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, match):
    # the first case through the real executable, the rest in this process
    run = run_cli if args == BAD_INPUT[0][0] else run_main
    proc = run(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("robustdml: error")]
    assert len(lines) == 1 and match in lines[0]


@pytest.mark.parametrize("extra,match", [
    (["--eps", "-0.1"], "eps"),
    (["--eps", "8"], "did you mean 8/255?"),
    (["--eps", "8/0"], "a fraction like 8/255"),
    (["--attack", "noise", "--norm", "l2"], "give L2 budgets with eps"),
    (["--dataset", "fashion-zs"], "pass --dataset-mismatch-ok"),
    (["--steps", "0"], "steps"),
    (["--attack", "fgsm-magic"], "unknown attack"),
    (["--kmeans-restarts", "0"], "--kmeans-restarts"),
    (["--steps", "20"], "strong suite is fixed"),
    (["--attack", "centroid", "--attack-option", "centroid.optimizer=adam"], "optimizer"),
    (["--attack", "centroid", "--attack-option", "retrieval.steps=3"], "not in the suite"),
])
def test_attack_bad_input(digits_run, extra, match, tmp_path):
    run, _ = digits_run
    if "fashion-zs" in extra:  # a digits model on Fashion-MNIST (tiny official files)
        from fixtures import make_fashion
        extra = [*extra, "--root", str(make_fashion(tmp_path / "fashion"))]
    proc = run_main("attack", str(run), "--dataset", "digits", *extra)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert match in proc.stderr.strip().splitlines()[-1]


def test_attack_missing_or_corrupt_model(tmp_path, digits_run):
    proc = run_cli("attack", str(tmp_path / "none"), "--dataset", "digits")
    assert proc.returncode == 2 and "no model" in proc.stderr and "Traceback" not in proc.stderr
    import shutil
    run, _ = digits_run
    broken = tmp_path / "broken"
    shutil.copytree(run / "best", broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    proc = run_main("attack", str(broken), "--dataset", "digits")
    assert proc.returncode == 2 and "safetensors" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without CUDA")
@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_unavailable_device_is_one_line(tmp_path, digits_run, command):
    run, _ = digits_run
    proc = run_main(command, str(run), "--dataset", "digits", "--device", "cuda")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "CUDA is not available" in proc.stderr.strip().splitlines()[-1]


def test_fashion_train_then_robrank_suite(tmp_path, capsys):
    """RobRank's recipe on tiny Fashion-MNIST files: pair batches, ptriplet, C2F2; then the robrank
    suite writes every column and the ERS."""
    from fixtures import make_fashion
    root = make_fashion(tmp_path / "fashion", per_class=(8, 4))
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/fashion-robrank.yaml", "--out", str(run), "-q", f"root={root}",
                 "epochs=1", "batch_size=16"]) == 0
    out = tmp_path / "robrank.json"
    assert main(["attack", str(run), "--dataset", "fashion", "--root", str(root), "--suite", "robrank",
                 "--queries", "6", "--attack-option", "gtm.robrank_compat=true", "--json", str(out), "-q"]) == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert result["profile"] == "rob28" and result["queries"] == 6 and result["options"] == {"gtm": {"robrank_compat": True}}
    assert set(result["columns"]) == {"CA+", "CA-", "QA+", "QA-", "TMA", "ES:D", "ES:R", "LTM", "GTM", "GTT"}
    assert "ERS" in printed and "6 queries" in printed
    assert result["checks"]["es_start"]["other_start"] == "robrank" and "check es_start: " in printed
    assert main(["attack", str(run), "--dataset", "fashion", "--root", str(root), "--suite", "robrank",
                 "--steps", "3"]) == 2
    assert "fixed by its profile" in capsys.readouterr().err
    # our own suites run on the same model as on digits
    fast = tmp_path / "fast.json"
    assert main(["attack", str(run), "--dataset", "fashion", "--root", str(root), "--suite", "fast",
                 "--json", str(fast), "--out", str(tmp_path / "plots"), "-q"]) == 0
    worst = json.loads(fast.read_text())["worst"]
    assert list(worst) == [f"{77 / 255:.6g}"]  # the fashion threat model's eps, RobRank's for 28x28


def test_train_on_a_timm_backbone_from_the_command_line(tmp_path):
    from robustdml import load_model
    run = tmp_path / "timm"
    assert main(["train", "--config", "configs/digits.yaml", "--out", str(run), "-q", *FAST, "robust_eval=false",
                 "backbone=timm/test_resnet", "backbone_lr_mult=0.1"]) == 0
    model = load_model(run)  # rebuilt from the saved description alone
    assert model.spec.backbone == "timm/test_resnet" and model.spec.in_channels == 1
    assert main(["train", "--config", "configs/digits.yaml", "--out", str(tmp_path / "bad"), "-q",
                 "backbone=timm/no_such_model"]) != 0


def test_certify_writes_curves_and_rejects_bad_settings(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "configs/digits.yaml", "--out", str(run), "-q", *FAST, "robust_eval=false",
                 "noise_sigma=0.25"]) == 0
    assert main(["certify", str(run), "--dataset", "digits", "--sigma", "0.25", "--samples", "500", "--alpha", "0.1",
                 "--center-samples", "800", "--queries", "6", "--radii", "0", "0.05", "-q"]) == 0
    found = json.loads((run / "certify" / "digits-sigma0.25.json").read_text())
    assert found["queries"] == 6 and len(found["certified_assignment"]) == 2
    assert len(found["centroids"]) == len(set(found["per_image"]["labels"]))  # k = the classes present
    assert (run / "certify" / "digits-sigma0.25.png").is_file()
    printed = capsys.readouterr().out
    assert "abstain rate" in printed and "smoothed R@1 is the Recall@1 of the smoothed embeddings" in printed
    for args, message in [(["--sigma", "0"], "sigma must be positive"),
                          (["--sigma", "0.25", "--center-samples", "100"], "too few"),
                          (["--sigma", "0.25", "--samples", "100", "--radii", "1.0"], "cannot be certified")]:
        assert main(["certify", str(run), "--dataset", "digits", "--queries", "4", "-q", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_attack_budgets_outputs_and_data_records(digits_run, tmp_path):
    """8/255 is a budget; results are named by dataset and suite, so runs of other suites never
    replace each other; the model's record of its data is checked (and can be overridden)."""
    import shutil
    run, _ = digits_run
    model = tmp_path / "model"
    shutil.copytree(run / "best", model / "best")
    common = ["attack", str(model), "--dataset", "digits", "--queries", "200", "--attack", "noise", "centroid",
              "--steps", "1", "-q"]  # names, files and records are tested here, not figures: 200 queries
    proc = run_cli(*common, "--eps", "8/255", "0.1")
    assert proc.returncode == 0, proc.stderr
    assert "L∞ 8/255" in proc.stdout and "@ L∞ 0.1" in proc.stdout and "a custom suite: 2 attacks" in proc.stdout
    custom = list((model / "attack").glob("digits-custom-*.json"))
    assert len(custom) == 1
    result = json.loads(custom[0].read_text())
    assert list(result["worst"]) == [f"{8 / 255:.6g}", "0.1"] and result["dataset"] == "digits"
    assert result["versions"]["commit"] == git_commit() and result["versions"]["robustdml"]
    assert (model / "attack" / custom[0].stem / "metrics_vs_eps.png").is_file()
    assert run_main(*common[:6], "--suite", "fast", "-q").returncode == 0
    assert (model / "attack" / "digits-fast.json").is_file() and custom[0].is_file()  # both kept
    info = json.loads((model / "best" / "model.json").read_text())["trained_on"]
    assert info == {"dataset": "digits", "input_shape": [1, 8, 8]}
    from fixtures import make_fashion
    root = str(make_fashion(tmp_path / "fashion"))
    proc = run_main("attack", str(model), "--dataset", "fashion", "--root", root, "--suite", "fast", "-q")
    assert proc.returncode == 2 and "was trained on digits (1x8x8 images)" in proc.stderr
    assert not (model / "attack" / "fashion-fast.json").exists()
    proc = run_main("attack", str(model), "--dataset", "fashion", "--root", root, "--suite", "fast", "-q",
                    "--queries", "200", "--dataset-mismatch-ok")
    assert proc.returncode == 0, proc.stderr
    assert (model / "attack" / "fashion-fast.json").is_file() and (model / "attack" / "digits-fast.json").is_file()


def test_training_into_a_directory_with_results_is_refused(digits_run, tmp_path):
    import shutil
    run, _ = digits_run
    target = tmp_path / "run"
    (target / "attack").mkdir(parents=True)
    (target / "attack" / "digits-strong.json").write_text("{}")
    proc = run_main("train", "--config", "configs/digits.yaml", "--out", str(target), "-q", *FAST)
    assert proc.returncode == 2 and "already holds a run (attack)" in proc.stderr
    assert (target / "attack" / "digits-strong.json").read_text() == "{}"
    shutil.rmtree(target)


@pytest.mark.parametrize("value,expected", [("8/255", 8 / 255), ("0.1", 0.1), (0.25, 0.25), ("77 / 255", 77 / 255)])
def test_eps_is_read_as_a_person_writes_it(value, expected):
    from robustdml.attacks import parse_eps
    from robustdml.evaluation.suite import AttackSuite
    from robustdml.engine.config import config_from_dict
    assert parse_eps(value) == pytest.approx(expected)
    assert AttackSuite.from_dict({"attacks": ["noise"], "eps": [value]}).eps == [pytest.approx(expected)]
    assert config_from_dict({"robust_eval_eps": value}).robust_eval_eps == pytest.approx(expected)


def test_budgets_that_cannot_be_meant_are_refused():
    from robustdml.attacks import ThreatModel, create_attack
    from robustdml.errors import ConfigError
    from robustdml.evaluation.suite import AttackSuite
    from robustdml.methods import create_method
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        AttackSuite.from_dict({"attacks": ["noise"], "eps": [8]})
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        create_attack("displacement", 8)
    with pytest.raises(ConfigError, match="did you mean 8/255"):
        create_method("pgd-at", eps=8)
    with pytest.raises(ConfigError, match="L2 budgets"):
        AttackSuite(["noise"], norm="l2").eps_values(ThreatModel(0.1))
    assert AttackSuite(["noise"], norm="l2", eps=[2.0]).eps_values(ThreatModel(0.1)) == [2.0]  # L2 may exceed 1


def test_top_level_help_and_version_do_not_import_torch():
    """`robustdml --help` answers without the heavy imports (each command builds only its own options)."""
    import subprocess
    import sys
    code = ("import sys\nfrom robustdml.cli.main import main\nfor argv in (['--help'], ['--version']):\n"
            "    try:\n        main(argv)\n    except SystemExit:\n        pass\nprint('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "attack" in done.stdout and "robustdml 0.1.0" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "False"

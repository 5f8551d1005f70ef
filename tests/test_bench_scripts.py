"""The GPU benchmark runs end to end (a smoke run on the CPU) and says clearly when no GPU is there."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_speed.py"


@pytest.mark.slow  # ~11 s of a subprocess
def test_gpu_benchmark_smoke_run_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--backbone", "resnet18", "--size", "32",
                           "--batch", "4", "--steps", "1", "--repeats", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, _, rest = proc.stdout.partition("\n")
    name, ratio = first.split()
    details = json.loads(rest)
    assert name == "G1" and float(ratio) > 0
    assert details["bf16_channels_last_images_per_s"] > 0 and details["fp32_images_per_s"] > 0
    fast, slow = details["bf16_channels_last_images_per_s"], details["fp32_images_per_s"]
    # the throughputs are printed to 0.1 image/s, the ratio from the unrounded ones: allow that rounding
    assert abs(float(ratio) - fast / slow) < 0.01 + 0.05 * (1 / fast + 1 / slow) * fast / slow


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_benchmark_without_a_gpu_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "needs a GPU" in proc.stderr.strip()


@pytest.mark.slow
def test_method_cost_runs_on_a_fashion_fixture(tmp_path):
    from fixtures import make_fashion
    root = make_fashion(tmp_path / "fashion", per_class=(26, 2))  # 260 training images: one batch of 256
    out = tmp_path / "cost.json"
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "method_cost.py"), "--root", str(root), "--steps", "1",
                           "--batches", "1", "--warmup", "1", "--device", "cpu", "--methods", "standard", "pgd-at",
                           "eat", "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    info = json.loads(out.read_text())
    rows = info["methods"]
    assert set(rows) == {"standard", "pgd-at", "eat"} and info["adversary_steps"] == 1
    for row in rows.values():
        assert row["step_s"] > 0 and row["epoch_s"] == pytest.approx(row["step_s"] * row["steps_per_epoch"], rel=0.01, abs=0.1)
    assert rows["eat"]["step_s"] > rows["standard"]["step_s"]  # three members, each with its own attack
    assert f"M1 {rows['eat']['epoch_s'] / rows['pgd-at']['epoch_s']:.2f}" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("method, fast_steps, fast_init, carry_by, free", [
    ("est", None, None, None, False), ("est", 2, None, None, False), ("est", 2, "zero", None, False),
    ("act", 2, None, "image", False), ("act", 3, None, None, True)])
def test_method_cost_times_the_fast_adversary_beside_the_full_one(method, fast_steps, fast_init, carry_by, free,
                                                                   tmp_path):
    from fixtures import make_fashion
    root = make_fashion(tmp_path / "fashion", per_class=(26, 2))
    out = tmp_path / "cost.json"
    extra = ((["--fast-steps", str(fast_steps)] if fast_steps else []) + (["--fast-init", fast_init] if fast_init else [])
             + (["--fast-carry-by", carry_by] if carry_by else []) + (["--fast-free"] if free else []))
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "method_cost.py"), "--root", str(root), "--steps", "4",
                           "--batches", "1", "--warmup", "1", "--device", "cpu", "--methods", method, "--fast", *extra,
                           "--json", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(out.read_text())["methods"][method]
    steps = fast_steps or 1  # the config's one carried step unless told otherwise
    init = fast_init or "carry"  # the config's start unless told otherwise
    assert row["fast"]["method_kwargs"] == {"init": init, "steps": steps, "step_size": pytest.approx(77 / 1020),
                                            **({"carry_by": carry_by} if carry_by else {}),
                                            **({"free_step": True} if free else {})}
    assert row["F2"] == pytest.approx(row["fast"]["step_s"] / row["step_s"], rel=0.01, abs=0.002)
    assert row["F2"] < 1  # one to three carried steps against four
    kind = "carried" if init == "carry" else "zero-start"
    per_image = " (one per image)" if carry_by == "image" else ""
    free_step = " + the free step" if free else ""
    assert f"F2{method} {row['F2']:.2f} 0.15      # {steps} {kind} step(s){per_image}{free_step}: fast epoch" in proc.stdout


@pytest.mark.slow
def test_process_split_runs_on_a_fashion_fixture(tmp_path):
    from fixtures import make_fashion
    root = make_fashion(tmp_path / "fashion", per_class=(26, 2))
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "process_split.py"), "--root", str(root), "--steps", "1",
                           "--batches", "1", "--warmup", "0", "--threads", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, _, rest = proc.stdout.partition("\n")
    info = json.loads(rest)
    assert len(info["step_s_split"]) == 2 and info["step_s_one_process"] > 0
    assert first.startswith(f"S1 {2 * info['step_s_one_process'] / max(info['step_s_split']):.2f} ")


def test_graph_benchmark_steps_run_eagerly_on_the_cpu():
    """G2's two sides are the trainer's step; on the CPU the graphed view passes every call through."""
    sys.path.insert(0, str(SCRIPT.parent))
    import graph_speed

    for method, graphed, kwargs in (("pgd-at", False, {}), ("pgd-at", True, {}), ("eat", True, {"members": 2})):
        step, view = graph_speed._step(torch.device("cpu"), method, graphed, 1, 8, **kwargs)
        before = [p.detach().clone() for p in view.parameters()]
        step()
        assert any(not torch.equal(a, p) for a, p in zip(before, view.parameters()))  # it trained
        assert graph_speed.graph_count(view) == 0
    lines, _ = graph_speed.run(torch.device("cpu"))
    assert lines[0].startswith("G2 skipped")


@pytest.mark.slow  # ~30 s: sixteen digits epochs profiled
def test_fast_adversary_breakdown_splits_a_batch_and_its_ratios_add_up():
    import re
    sys.path.insert(0, str(SCRIPT.parent))
    import fast_adversary
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "fast_adversary.py"), "--breakdown"],
                          capture_output=True, text=True, cwd=SCRIPT.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    parts = {}
    for row in proc.stdout.strip().splitlines():
        name = row.split(":")[0]
        parts[name] = [float(v) for v in re.findall(r"(\d+\.\d) ms", row)]
        assert len(parts[name]) == 3 and all(v > 0 for v in parts[name]), row
        if name != "default":
            ratio, floor = (float(v) for v in re.findall(r"ratio (\d\.\d\d), with no adversary setup (\d\.\d\d)", row)[0])
            assert ratio == pytest.approx(sum(parts[name]) / sum(parts["default"]), abs=0.011)
            steps, _, update = parts[name]
            assert floor == pytest.approx((steps + update) / (parts["default"][0] + parts["default"][2]), abs=0.011)
    assert set(parts) == {"default", *fast_adversary.FAST}
    assert parts["default"][0] > 4 * parts["F1"][0]  # ten adversary steps against one


@pytest.mark.slow  # ~20 s: eight digits epochs of a 3-member ensemble
def test_fast_adversary_times_the_chosen_settings_for_eat():
    sys.path.insert(0, str(SCRIPT.parent))
    import fast_adversary

    lines, details = fast_adversary.run(torch.device("cpu"), "eat", repeats=1, settings=["F1freeloss"])
    assert len(lines) == 1 and lines[0].startswith("F1freeloss-eat ") and details["method"] == "eat"
    assert 0 < details["F1freeloss-eat"]["fast_epoch_s"] < details["F1freeloss-eat"]["default_epoch_s"]

"""The GPU benchmark runs end to end (a smoke run on the CPU) and says clearly when no GPU is there."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_speed.py"


def test_gpu_benchmark_smoke_run_on_cpu():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--backbone", "resnet18", "--size", "32",
                           "--batch", "4", "--steps", "1", "--repeats", "1"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    first, _, rest = proc.stdout.partition("\n")
    name, ratio = first.split()
    details = json.loads(rest)
    assert name == "G1" and float(ratio) > 0
    assert details["bf16_channels_last_images_per_s"] > 0 and details["fp32_images_per_s"] > 0
    assert abs(float(ratio) - details["bf16_channels_last_images_per_s"] / details["fp32_images_per_s"]) < 0.02


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_benchmark_without_a_gpu_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "needs a GPU" in proc.stderr.strip()

"""`robustdml attack` killed with kill -9 resumes; under torchrun two CPU processes (gloo) share the
work and give the figures of one, and a lost worker ends the launch with one line and a rerun that
completes it."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # each test runs the attack command two or three times in subprocesses

REPO = Path(__file__).resolve().parents[2]
TORCHRUN = Path(sys.executable).parent / "torchrun"
ARGS = ["--dataset", "digits", "--attack", "centroid-balanced", "displacement", "noise", "--steps", "3",
        "--queries", "256", "--batch-size", "64"]


def _attack(model, out, launcher=(), quiet=False):
    command = [*launcher, *([] if launcher else [sys.executable]), "-m", "robustdml", *(["-q"] if quiet else []),
               "attack", str(model), "--out", str(out), *ARGS]
    return command


def _result(out) -> dict:
    (path,) = Path(out).glob("digits-custom-*.json")
    found = json.loads(path.read_text())
    found.pop("seconds")
    return found


def _passes(stderr: str) -> list[int]:
    return json.loads(re.search(r"attack passes per process: (\[[0-9, ]+\])", stderr).group(1))


def _env(threads: int):
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": str(REPO)}


def _kill_when(entries: int, folder: Path, proc, pick_pid) -> None:
    """Wait until ``entries`` entries are finished under ``folder`` and a batch of the next, then
    kill -9 ``pick_pid()``."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(folder.glob("*.partial/*.safetensors"))) >= entries and list(folder.glob("*.partial/*/batch-*")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(pick_pid(), signal.SIGKILL)
    proc.wait(timeout=120)


def test_kill_9_during_the_third_entry_then_rerun_equals_uninterrupted(digits_run, tmp_path):
    model, killed, whole = digits_run[0] / "best", tmp_path / "killed", tmp_path / "whole"
    subprocess.run(_attack(model, whole, quiet=True), cwd=REPO, env=_env(2), check=True, capture_output=True)
    proc = subprocess.Popen(_attack(model, killed, quiet=True), cwd=REPO, env=_env(2), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _kill_when(2, killed, proc, lambda: proc.pid)  # two entries whole and a batch of the third
    assert len(list(killed.glob("*.partial/*.safetensors"))) == 2
    rerun = subprocess.run(_attack(model, killed), cwd=REPO, env=_env(2), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "reused centroid-balanced@0.1" in rerun.stderr and "reused displacement@0.1" in rerun.stderr
    assert _result(killed) == _result(whole)
    assert not list(killed.glob("*.partial"))  # the pieces are removed once the result is saved


@pytest.mark.skipif(shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="no torchrun")
def test_two_processes_give_the_figures_of_one_each_running_half(digits_run, tmp_path):
    model = digits_run[0] / "best"
    one = subprocess.run(_attack(model, tmp_path / "one"), cwd=REPO, env=_env(1), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    two = subprocess.run(_attack(model, tmp_path / "two", (str(TORCHRUN), "--standalone", "--nproc_per_node=2")),
                         cwd=REPO, env=_env(1), capture_output=True, text=True)
    assert two.returncode == 0, two.stderr
    a, b = _result(tmp_path / "one"), _result(tmp_path / "two")
    for eps, metrics in a["worst"].items():
        for name, value in metrics.items():
            assert round(b["worst"][eps][name], 3) == round(value, 3), (eps, name)
    assert {k: v["passed"] for k, v in a["checks"].items()} == {k: v["passed"] for k, v in b["checks"].items()}
    assert a == b  # in fact every figure: a sample's perturbation depends on its batch, not on the processes
    (total,), halves = _passes(one.stderr), _passes(two.stderr)
    assert len(halves) == 2 and halves[0] == halves[1] and sum(halves) == total  # 4 batches: 2 each


@pytest.mark.skipif(shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="no torchrun")
def test_a_killed_worker_ends_the_launch_in_one_line_and_a_rerun_completes_it(digits_run, tmp_path):
    model, killed, whole = digits_run[0] / "best", tmp_path / "killed", tmp_path / "whole"
    launcher = (str(TORCHRUN), "--standalone", "--nproc_per_node=2")
    subprocess.run(_attack(model, whole, launcher, quiet=True), cwd=REPO, env=_env(1), check=True, capture_output=True)
    proc = subprocess.Popen(_attack(model, killed, launcher, quiet=True), cwd=REPO, env=_env(1),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def worker_of_rank_1() -> int:
        for pid in os.listdir("/proc"):
            try:
                environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except (OSError, ValueError):
                continue
            if b"RANK=1" in environ and any(e.startswith(b"TORCHELASTIC_RUN_ID=") for e in environ) \
                    and str(killed).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
        raise AssertionError("no worker of rank 1 found")

    _kill_when(0, killed, proc, worker_of_rank_1)
    stderr = proc.stderr.read()
    assert proc.returncode != 0
    ours = [line for line in stderr.splitlines() if line.startswith("robustdml: ")]
    assert ours and all("run the same command again to continue" in line for line in ours), stderr[-2000:]
    rerun = subprocess.run(_attack(model, killed, launcher), cwd=REPO, env=_env(1), capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert "reused" in rerun.stderr
    assert _result(killed) == _result(whole)


@pytest.mark.skipif(shutil.which("torchrun", path=str(TORCHRUN.parent)) is None, reason="no torchrun")
def test_evaluate_shared_by_two_processes_writes_the_figures_of_one(digits_run, tmp_path):
    model = digits_run[0] / "best"
    written = {}
    for name, launcher in (("one", [sys.executable]), ("two", [str(TORCHRUN), "--standalone", "--nproc_per_node=2"])):
        out = tmp_path / f"{name}.json"
        done = subprocess.run([*launcher, "-m", "robustdml", "-q", "evaluate", str(model), "--dataset", "digits",
                               "--batch-size", "64", "--json", str(out)], cwd=REPO, env=_env(1), capture_output=True,
                              text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "runs in the first" not in done.stderr  # shared, not left to one process
        written[name] = json.loads(out.read_text())
    assert written["two"] == written["one"]  # the same batches embedded, so the same numbers to the bit

"""S1: on a CPU, is a grid faster as one process using every core, or as one single-threaded
process per core? Measured side by side in one run with ``method_cost.py``'s real training steps
(RobRank's Fashion-MNIST recipe: C2F2, 128-pair batches, the defence's adversary at K steps):

1. one process with ``--threads`` torch threads (default: every core) times its training step;
2. ``--threads`` processes at once, one thread each, time the same step while they share the cores.

S1 = throughput of (2) / throughput of (1) = threads x step(1) / step(2). Above 1, running a grid's
cells as that many one-thread processes (``--only``, one output folder) finishes it sooner.

    python bench/process_split.py                       # pgd-at, K = 4 (the CPU cut's adversary)
    python bench/process_split.py --method eat --steps 4 --batches 3

Needs Fashion-MNIST (``--root``, default Debian's dataset-fashion-mnist folder), so it is not part of
``make bench``. Prints ``S1 <ratio>`` and the step times as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

COST = Path(__file__).parent / "method_cost.py"


def launch(args, threads: int, out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(COST), "--methods", args.method, "--steps", str(args.steps),
           "--batches", str(args.batches), "--warmup", str(args.warmup), "--device", "cpu", "--json", str(out)]
    if args.root:
        cmd += ["--root", args.root]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL)


def step_seconds(procs: list[tuple[subprocess.Popen, Path]]) -> list[float]:
    steps = []
    for proc, out in procs:
        if proc.wait() != 0:
            raise SystemExit(f"error: {COST.name} failed (exit {proc.returncode})")
        (row,) = json.loads(out.read_text())["methods"].values()
        steps.append(row["step_s"])
    return steps


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="pgd-at", choices=("standard", "est", "act", "hm", "pgd-at", "eat"))
    p.add_argument("--steps", type=int, default=4, help="training adversary's PGD steps (default 4, the CPU cut's)")
    p.add_argument("--batches", type=int, default=5, help="timed steps per process (median taken)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="cores to share (default: all)")
    p.add_argument("--root", help="Fashion-MNIST folder (default: Debian's dataset-fashion-mnist)")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        one_out = Path(tmp) / "one.json"
        (one,) = step_seconds([(launch(args, args.threads, one_out), one_out)])
        outs = [Path(tmp) / f"split{i}.json" for i in range(args.threads)]
        split = step_seconds([(launch(args, 1, out), out) for out in outs])
    slowest = max(split)
    ratio = args.threads * one / slowest
    print(f"S1 {ratio:.2f} (throughput of {args.threads} one-thread processes / one {args.threads}-thread process)")
    print(json.dumps({"method": args.method, "adversary_steps": args.steps, "threads": args.threads,
                      "step_s_one_process": one, "step_s_split": split}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Run every benchmark and print one line per figure, `NAME RATIO TARGET`, the moment it is
measured, then the details.

    make bench            # or: python bench/run.py
    make bench-quick      # every benchmark on reduced sizes (python bench/run.py --quick)
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

import attack_speed  # noqa: E402
import eat_speed  # noqa: E402
import eval_scale  # noqa: E402
import eval_speed  # noqa: E402
import fast_adversary  # noqa: E402
import graph_speed  # noqa: E402
import ranking_speed  # noqa: E402
import session_reuse  # noqa: E402
import training_speed  # noqa: E402

BENCHMARKS = [attack_speed, training_speed, eat_speed, fast_adversary, graph_speed, eval_speed, ranking_speed,
              session_reuse, eval_scale]
#: reduced sizes for --quick: the same figures, noisier, in minutes
QUICK = {attack_speed: {"steps": 3, "batch": 8, "size": 32}, training_speed: {"steps": 3, "batch": 8, "size": 32, "layout_batch": 64},
         eat_speed: {"steps": 2}, fast_adversary: {"repeats": 3}, graph_speed: {"steps": 4}, eval_speed: {"n": 10_000}, ranking_speed: {"batch": 8, "database": 2_000},
         session_reuse: {"images": 1_000}, eval_scale: {"images": 1_500}}


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    quick = "--quick" in sys.argv[1:]
    details = {}
    for bench in BENCHMARKS:
        figures, info = bench.run(device, **(QUICK.get(bench, {}) if quick else {}))
        figures = [figures] if isinstance(figures, str) else figures
        print("\n".join(figures), flush=True)  # each line as soon as it is measured
        details[figures[0].split()[0]] = info
    print()
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(json.dumps({"device": machine, "torch": torch.__version__, "quick": quick, **details}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

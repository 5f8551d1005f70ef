"""Run every benchmark and print one line per figure, `NAME RATIO TARGET`, then the details.

    make bench            # or: python bench/run.py
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
import eval_speed  # noqa: E402
import fast_adversary  # noqa: E402
import ranking_speed  # noqa: E402
import session_reuse  # noqa: E402
import training_speed  # noqa: E402

BENCHMARKS = [attack_speed, training_speed, eat_speed, fast_adversary, eval_speed, ranking_speed, session_reuse]


def main() -> int:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    lines, details = [], {}
    for bench in BENCHMARKS:
        figures, info = bench.run(device)
        figures = [figures] if isinstance(figures, str) else figures
        lines.extend(figures)
        details[figures[0].split()[0]] = info
    print("\n".join(lines))
    print()
    machine = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(json.dumps({"device": machine, "torch": torch.__version__, **details}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

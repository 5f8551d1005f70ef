"""The benchmark grid: cells of (dataset, backbone, method, seed), each trained and then evaluated
with the full attack suite. Every finished cell's results are written at once; a failing cell is
recorded while the grid goes on.

Every cell records, for each of its parts (training, attack suite, RobRank's ranking attacks,
certificates), the full resolved settings that produced it and their hash. A rerun compares them
with the config's: an unchanged cell is skipped, a cell whose training was interrupted resumes, a
changed attack suite (or ranking, or certify) section re-runs just that part on the trained model, a
changed training config retrains the cell (the earlier run is kept in ``previous-run/``) and
evaluates it again. ``reuse_stale`` keeps changed parts deliberately; the report marks them stale.

Layout::

    OUT/benchmark.yaml                  the resolved benchmark config
    OUT/surrogates/DATASET-BACKBONE/    standard models (seed 100) used by the transfer attack
    OUT/cells/DATASET-BACKBONE-METHOD-sSEED/run/          the training run
    OUT/cells/DATASET-BACKBONE-METHOD-sSEED/result.json   status, parts (settings + hash), versions,
                                                          clean/attack/worst/checks, robrank, certify
"""

from .config import BenchmarkConfig, cell_name, load_benchmark_config
from .runner import Benchmark

__all__ = ["Benchmark", "BenchmarkConfig", "cell_name", "load_benchmark_config"]

#!/usr/bin/env bash
# Every figure that only a CUDA device gives, in one command sized for a short hold of one GPU
# (about 8 minutes on an H100 or H200; each part has its own time limit, so a slow part cannot
# take the rest with it):
#   1. the GPU-only tests (graphed training equals eager training; batched EAT members);
#   2. G2 and M1g (bench/graph_speed.py: a graphed defended C2F2 step / eager; graphed EAT / pgd-at);
#   3. P3 and P3b (bench/eat_speed.py: EAT's members looped and batched against pgd-at);
#   4. M1 under RobRank's Fashion-MNIST recipe at its 32-step adversary, eager and graphed
#      (bench/method_cost.py): each method's epoch, so what a Fashion grid costs on this GPU follows.
# Each part's output goes to OUTDIR/<part>.log the moment it is printed, the JSON beside it.
#
#   bench/gpu_checks.sh OUTDIR [FASHION_DIR]
#
# It needs a Python with a CUDA build of PyTorch and robustdml's dependencies (PYTHON=..., default
# python3); the tree itself is put on PYTHONPATH, so no install is needed. FASHION_DIR holds the four
# Fashion-MNIST IDX files (default: where Debian's dataset-fashion-mnist puts them); without it part 4
# is skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: bench/gpu_checks.sh OUTDIR [FASHION_DIR]}
fashion=${2:-/usr/share/datasets/fashion-mnist}
py=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! $py -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "gpu_checks: needs a CUDA device and a CUDA build of PyTorch ($py sees none)" >&2
  exit 2
fi
missing=$($py -c "
import importlib.util
names = {'pytorch_metric_learning': 'pytorch-metric-learning', 'faiss': 'faiss-cpu', 'sklearn': 'scikit-learn',
         'safetensors': 'safetensors', 'yaml': 'PyYAML', 'tqdm': 'tqdm', 'matplotlib': 'matplotlib'}
print(' '.join(p for m, p in names.items() if importlib.util.find_spec(m) is None))")
if [ -n "$missing" ]; then
  echo "gpu_checks: install these first: $missing" >&2
  exit 2
fi

part() {  # NAME SECONDS COMMAND...: one part, time-boxed, its output kept as it comes
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s)"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "== $name: exit $rc after $((SECONDS - start)) s" | tee -a "$out/$name.log"
}

$py -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" | tee "$out/device.log"
part tests 240 $py -m pytest -q -p no:cacheprovider tests/models/test_graphed.py tests/methods/test_eat.py -k "graph or batched"
part graph_speed 150 $py bench/graph_speed.py
part eat_speed 120 $py -c "import sys; sys.path.insert(0, 'bench'); import torch, eat_speed
figures, details = eat_speed.run(torch.device('cuda')); print('\n'.join(figures)); print(details)"
if [ -f "$fashion/train-images-idx3-ubyte.gz" ] || [ -f "$fashion/train-images-idx3-ubyte" ]; then
  for graphs in off on; do
    part "method_cost_graphs_$graphs" 150 $py bench/method_cost.py --root "$fashion" --batches 4 --warmup 2 \
      --graphs "$graphs" --json "$out/method_cost_graphs_$graphs.json"
  done
else
  echo "== method_cost skipped: no Fashion-MNIST in $fashion (give its folder as the second argument)"
fi

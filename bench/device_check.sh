#!/usr/bin/env bash
# The device check: on a machine with a GPU, the detection simulation and the serving benchmark with every
# model on the GPU (params.yaml compute.accelerator: gpu), their figures written with the device named to
# bench/device/ (results.json, provenance.json, RESULTS.md), never over this repository's CPU figures.
#
# Needs what `.ci/run` installs (.venv, .venv-ls) and a CUDA build of torch in .venv. Run from anywhere:
#   bash bench/device_check.sh            # about 15 minutes on one GPU
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible to torch (torch.cuda.is_available() is False): run this on a machine with one')"
$PY -c "import torch; print('device check on', torch.cuda.get_device_name(0), 'torch', torch.__version__)"

cp params.yaml /tmp/flywheel-params.yaml.cpu
trap 'cp /tmp/flywheel-params.yaml.cpu params.yaml' EXIT   # the CPU default comes back whatever happens
$PY - <<'PY'
import re
from pathlib import Path
path = Path("params.yaml")
text = path.read_text()
text = re.sub(r"(?m)^(  accelerator: )cpu", r"\g<1>gpu", text, count=1)
text = re.sub(r"(?m)^(  precision: )32-true", r"\g<1>16-mixed", text, count=1)
path.write_text(text)
PY
grep -A3 "^compute:" params.yaml

export FLYWHEEL_BENCH_DIR="$PWD/bench/device"
mkdir -p "$FLYWHEEL_BENCH_DIR"
.venv/bin/flywheel bench simulate --task detection --order random --budget 200 --held-out 300 --seeds 1
.venv/bin/flywheel bench serving
echo "figures: $FLYWHEEL_BENCH_DIR/RESULTS.md"
if [ -n "${OUT:-}" ]; then cp "$FLYWHEEL_BENCH_DIR"/results.json "$FLYWHEEL_BENCH_DIR"/provenance.json "$FLYWHEEL_BENCH_DIR"/RESULTS.md "$OUT"/; fi

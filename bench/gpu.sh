#!/usr/bin/env bash
# The GPU benchmark in one command, on a machine with a CUDA GPU:
#
#   bash bench/gpu.sh [MORE bench/throughput.py OPTIONS]
#
# Runs bench/throughput.py for a U-Net with a ResNet34 encoder (random weights) in fp32, fp16
# and fp16 + torch.compile, each for the three RTS configurations, then bench/project.py at
# the rates just measured, and appends both tables to bench/RESULTS.md. Needs, in the Python
# it runs ($PYTHON, default python3: an active virtualenv's), DeepSeg with a CUDA torch and
# segmentation-models-pytorch: pip install -e '.[smp]'.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python=${PYTHON:-python3}
"$python" -c "import torch; assert torch.cuda.is_available()" 2>/dev/null \
    || { echo "bench/gpu.sh: $python has no torch that sees a CUDA GPU" >&2; exit 1; }
"$python" -c "import segmentation_models_pytorch" 2>/dev/null \
    || { echo "bench/gpu.sh: needs segmentation-models-pytorch: pip install -e '.[smp]'" >&2; exit 1; }
"$python" bench/throughput.py --arch unet-resnet34 --modes fp32 fp16 fp16-compile --record "$@"
"$python" bench/project.py --record

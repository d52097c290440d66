#!/usr/bin/env bash
# Hot-swap GPU memory check (see scripts/gpu_check.py). Needs a CUDA machine; exit 0 = all checks passed.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
exec python scripts/gpu_check.py "$@"

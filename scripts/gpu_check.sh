#!/usr/bin/env bash
# GPU checks (see scripts/gpu_check.py): hot-swap memory (phases 1-3) and the shadow mirror's forward on
# its own CUDA stream (phase 4). Needs a CUDA machine; exit 0 = all checks passed.
#
#   scripts/gpu_check.sh [--phases 4] [--device cpu] ...   (arguments go to scripts/gpu_check.py)
#
# A machine without network: when the gateway's imports are missing, the wheels in .whl/ (cp312
# manylinux) are installed with --no-deps into /tmp/inferloop-site (scripts/offline_env.sh).
# Environment: PYTHON (python3); TREE (a commit id printed in the header, for the log).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
source scripts/offline_env.sh
echo "== $(date -u +%FT%TZ) scripts/gpu_check.py $*${TREE:+ (tree $TREE)}"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv || true
exec "$py" scripts/gpu_check.py "$@"

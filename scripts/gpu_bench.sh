#!/usr/bin/env bash
# Gateway throughput benchmark on a CUDA machine (issue 7): loadtests/bench_gateway.py, the same
# driver as the CPU figures in BENCHMARKS.md, with --device cuda.
#
#   scripts/gpu_bench.sh [OUTDIR]        (default: $OUT if set, else docs/results)
#
# Writes, one file per bench run as soon as it ends, so a run cut short still leaves the earlier ones:
#   gateway-cuda-c64.md    (a) (b) (c) (d) with every forward on the GPU, 64 connections
#   gateway-cpu-c64.md     the same servers and cores with --device cpu: the baseline on the same machine
#   gateway-cuda-c256.md   (a) (b) (c) on the GPU at 256 connections, only if the time budget allows
#   gpu_bench.log          everything printed, with the GPU and torch versions
# About 4 minutes on a 16-core machine. Pinning: with 8+ cores wrk gets cores 0-3 (4 threads) and each
# server cores 4-5, so the gateway's event loop and its device thread each have a core (the bare
# servers run their forward inline and use one); with fewer cores, core 0 and core 1 as on the CPU runs.
#
# Environment: DEVICE=cpu runs the "cuda" parts on the CPU (to exercise this script without a GPU);
# RUNS (3), DURATION (4 s), WARMUP (2 s), CPU_BASELINE (1), C256 (1), BUDGET_S (170: the 256-connection
# run starts only if less time than this has passed), CLIENT_CORES, SERVER_CORES, PYTHON (python3).
#
# A machine without network: wheels in .whl/ (cp312 manylinux) are installed with --no-deps into
# /tmp/inferloop-site when the gateway's imports are missing, and .devbench/bin (a carried wrk with its
# libraries) is put first on PATH.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${1:-${OUT:-docs/results}}
mkdir -p "$out"
out=$(cd "$out" && pwd)
if [ -z "${GPU_BENCH_LOGGED:-}" ]; then  # run again under tee: the log holds everything printed
  set -o pipefail
  GPU_BENCH_LOGGED=1 bash "$0" "$out" 2>&1 | tee "$out/gpu_bench.log"
  exit
fi

py=${PYTHON:-python3}
device=${DEVICE:-cuda}
runs=${RUNS:-3}
duration=${DURATION:-4}
warmup=${WARMUP:-2}
budget=${BUDGET_S:-170}
export PYTHONUNBUFFERED=1

if [ -d .devbench/bin ]; then
  export PATH="$root/.devbench/bin:$PATH"
fi
source scripts/offline_env.sh
command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk, or carry it in .devbench/bin)" >&2; exit 2; }

if [ "$(nproc)" -ge 8 ]; then
  client=${CLIENT_CORES:-0-3}
  server=${SERVER_CORES:-4-5}
else
  client=${CLIENT_CORES:-0}
  server=${SERVER_CORES:-1}
fi

echo "== $(date -u +%FT%TZ) $(uname -m), $(nproc) cores, wrk: $(wrk --version 2>&1 | head -1)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
"$py" -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__,
      'cuda', torch.cuda.is_available() and torch.cuda.get_device_name(0))"
[ -f BENCH_COMMIT ] && echo "tree: $(cat BENCH_COMMIT)"

start=$SECONDS
bench() {  # DEVICE CONNECTIONS NAME [--only ...]
  local dev=$1 conns=$2 name=$3
  shift 3
  echo "== $name: --device $dev, $conns connections (t+$((SECONDS - start)) s)"
  "$py" -m loadtests.bench_gateway --device "$dev" --runs "$runs" --duration "$duration" --warmup "$warmup" \
    --connections "$conns" --client-core "$client" --server-core "$server" --output "$out/$name.md" "$@"
}

bench "$device" 64 "gateway-$device-c64" --only gateway-batched gateway-single
if [ "${CPU_BASELINE:-1}" = 1 ] && [ "$device" != cpu ]; then
  bench cpu 64 gateway-cpu-c64 --only gateway-batched gateway-single
fi
if [ "${C256:-1}" = 1 ]; then
  if [ $((SECONDS - start)) -lt "$budget" ]; then
    bench "$device" 256 "gateway-$device-c256" --only gateway-batched
  else
    echo "== skipped 256 connections: $((SECONDS - start)) s elapsed (BUDGET_S=$budget)"
  fi
fi
echo "== done in $((SECONDS - start)) s; results in $out"

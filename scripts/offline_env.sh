# Sourced by the device scripts (gpu_check.sh, gpu_bench.sh) from the repository root, with $py set.
# A GPU machine without network: when the gateway's imports are missing, install the wheels in .whl/
# (cp312 manylinux, carried along) with --no-deps into /tmp/inferloop-site and put it on PYTHONPATH.
imports="import httpx, litestar, msgspec, uvicorn, httptools, uvloop, aiobotocore, croniter, prometheus_client, safetensors, scipy, yaml"
if ! "$py" -c "$imports" 2>/dev/null; then
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "missing Python packages and no wheels in .whl/: pip install -e ." >&2
    exit 2
  fi
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/inferloop-site .whl/*.whl
  export PYTHONPATH="/tmp/inferloop-site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  "$py" -c "$imports"
fi

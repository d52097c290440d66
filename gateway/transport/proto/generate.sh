#!/usr/bin/env bash
# Regenerate ../grpc_predict_v2_pb2.py (inferloop.gateway.transport.grpc_predict_v2_pb2) from grpc_predict_v2.proto (run from anywhere).
#
# The generated modules are committed: serving needs only grpcio and protobuf, not grpcio-tools (whose
# current releases require protobuf 7, while tritonclient[grpc] requires protobuf < 7). Generate with a
# protoc of the oldest protobuf major the project supports (6.x: grpcio-tools < 1.80), so the module
# runs on protobuf 6 and 7 alike. Only the messages are generated: the service is registered by hand
# in grpc_service.py, which reads request bytes itself (a malformed message is INVALID_ARGUMENT there).
# No .pyi: without types-protobuf installed mypy types the messages Any either way (grpc_messages.py).
set -euo pipefail
cd "$(dirname "$0")"
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python -m pip install -q --target "$tools" "grpcio-tools>=1.71,<1.80" "protobuf>=6.30,<7"
PYTHONPATH="$tools" python -m grpc_tools.protoc -I. --python_out=.. grpc_predict_v2.proto
# A private descriptor pool, not protobuf's default one: tritonclient, MLServer and KServe register the
# same message names (`inference.ModelInferRequest`...) there, and a process importing both would fail.
sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(/' \
  ../grpc_predict_v2_pb2.py
sed -i '1i # ruff: noqa\n# mypy: ignore-errors' ../grpc_predict_v2_pb2.py

"""The generated OIP v2 message classes (`grpc_predict_v2_pb2`, see proto/generate.sh), typed Any:
protobuf ships no type stubs, and its generated module defines its classes at import time."""

from __future__ import annotations

import importlib
from typing import Any

pb: Any = importlib.import_module("inferloop.gateway.transport.grpc_predict_v2_pb2")

"""Wire and storage types of the registry: manifests, stage pointers, events.

A `VersionManifest` *is* the version: once written it never changes. Field names are part of the
contract (DESIGN.md); add fields with defaults, never rename.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

OutputKind = Literal["regression", "binary", "multiclass", "none"]
EventKind = Literal[
    "registered", "gate_passed", "gate_failed", "promoted", "rolled_back", "archived",
    "drift_detected", "retrain_requested", "swapped", "load_failed", "shadow_evaluated", "cleared",
    "sampling_changed",
]


class Struct(msgspec.Struct, frozen=True, forbid_unknown_fields=False, omit_defaults=False):
    """Base: unknown fields are tolerated on read so newer writers don't break older readers.
    Frozen, as every subclass already is (a non-frozen base under frozen subclasses is a type error)."""


class ModelSpec(Struct, frozen=True):
    """Architecture of a state-dict artifact, enough to rebuild the module without pickle."""

    kind: str
    in_features: int
    out_features: int
    hidden: list[int] = []
    activation: str = "relu"


class ArtifactInfo(Struct, frozen=True):
    digest: str
    size: int
    format: str  # "safetensors" (built-in MLP + `spec`), "torch.export" (.pt2) or "onnx"
    spec: ModelSpec | None = None  # the architecture to rebuild; only for "safetensors"


class DataPartition(Struct, frozen=True):
    name: str
    digest: str
    rows: int


class DataLineage(Struct, frozen=True):
    uri: str
    partitions: list[DataPartition]
    digest: str  # sha256 over the ordered (name, digest) list


class CodeLineage(Struct, frozen=True):
    commit: str | None
    dirty: bool
    repository: str | None = None


class EntrypointLineage(Struct, frozen=True):
    """The user's training function that built a version (`training.entrypoint`): enough to tell
    whether the code that would rebuild it is still the code that built it."""

    entrypoint: str  # "package.module:function"
    module_file: str  # where its module was loaded from
    module_digest: str  # sha256 of that file's bytes
    package_digest: str  # sha256 over the package's .py files (the module's alone for a top-level module)
    code: CodeLineage  # commit and dirty flag of the git repository that holds the module
    root: str | None = None  # the directory put on sys.path to import it (the policy's project root)


class Environment(Struct, frozen=True):
    python: str
    torch: str
    cuda: str | None
    platform: str
    packages_digest: str
    device: str


class Lineage(Struct, frozen=True):
    code: CodeLineage
    environment: Environment
    params: dict[str, Any] = {}
    seed: int | None = None
    data: DataLineage | None = None
    world_size: int = 1
    entrypoint: EntrypointLineage | None = None  # set for builds of `training.entrypoint` code


class FeatureSpec(Struct, frozen=True):
    name: str
    dtype: str = "FP32"


class TensorSpec(Struct, frozen=True):
    """One named input or output: OIP datatype (FP32, INT64, ...) and shape, -1 for a dynamic axis;
    axis 0 is always the batch."""

    name: str
    datatype: str
    shape: list[int]


class InputSignature(Struct, frozen=True):
    """What a version takes and gives. `features` name the columns of a 2-D tabular input (drift bins
    them); `output_kind` (the task) says how outputs become labels for shadow agreement.

    `inputs` / `output_tensors` empty (every version registered before they existed, and the built-in
    MLP): one FP32 input `[n, len(features)]` and one FP32 output `output` of `[n, outputs]`.
    `input_layout` says how a program takes its inputs: "args" (positional tensors, in `inputs` order)
    or "dict" (one dict of named tensors)."""

    features: list[FeatureSpec]
    output_kind: OutputKind = "regression"
    outputs: int = 1
    classes: list[str] = []
    inputs: list[TensorSpec] = []
    output_tensors: list[TensorSpec] = []
    input_layout: Literal["args", "dict"] = "args"

    def tensor_inputs(self) -> list[TensorSpec]:
        return self.inputs or [TensorSpec("input", "FP32", [-1, len(self.features)])]

    def tensor_outputs(self) -> list[TensorSpec]:
        return self.output_tensors or [TensorSpec("output", "FP32", [-1, self.outputs])]


class BinnedReference(Struct, frozen=True):
    """Fixed bins for drift: `edges` are inner cut points (bins are open at both ends),
    `fractions` has len(edges)+1 entries for the value bins plus one last entry for missing values."""

    name: str
    edges: list[float]
    fractions: list[float]
    count: int


class ReferenceStats(Struct, frozen=True):
    features: list[BinnedReference]
    predictions: BinnedReference | None = None
    sample_size: int = 0


class GateCheck(Struct, frozen=True):
    gate: Literal["absolute", "relative"]
    metric: str
    passed: bool
    candidate: float | None
    threshold: float | None = None
    production: float | None = None
    production_version: int | None = None
    detail: str = ""


class ValidationRecord(Struct, frozen=True):
    passed: bool
    checks: list[GateCheck]
    holdout_digest: str | None = None
    tolerance: float = 0.0


class VersionManifest(Struct, frozen=True):
    name: str
    version: int
    created_at: str
    identity: str  # sha256 of (artifact digest, lineage without environment/time): dedup key
    artifact: ArtifactInfo
    lineage: Lineage
    signature: InputSignature
    metrics: dict[str, float] = {}
    reference: ReferenceStats | None = None
    warmup: list[list[float]] = []
    warmup_inputs: dict[str, Any] = {}  # tensor signatures: a few rows per input (nested lists), for warm-up
    tags: list[str] = []
    parent: int | None = None
    validation: ValidationRecord | None = None


class StagePointer(Struct, frozen=True):
    version: int | None  # None: the stage was cleared
    artifact_digest: str
    updated_at: str
    actor: str
    reason: str
    previous_version: int | None = None
    move_id: str = ""


class Event(Struct, frozen=True):
    seq: int
    kind: str
    time: str
    id: str
    prev_digest: str | None  # sha256 of the previous event's stored bytes: an edited history shows
    actor: str = ""
    reason: str = ""
    stage: str | None = None
    version: int | None = None
    from_version: int | None = None
    details: dict[str, Any] = {}


encoder = msgspec.json.Encoder(order="sorted")


def encode(obj: Any) -> bytes:
    """Canonical JSON (sorted keys) so identical content gives identical bytes and digests."""
    return encoder.encode(obj)


class Change(Struct, frozen=True):
    """One pointer move in the registry-wide change record."""

    generation: int
    model: str
    stage: str
    move_id: str
    version: int | None
    at: str


class ChangeRecord(Struct, frozen=True):
    """`changes.json`: advanced (compare-and-swap) after every pointer move, so a replica polls this
    one object instead of every pointer. `changes` holds the newest moves, oldest first; a reader whose
    last generation is older than the first entry missed some and reads every pointer."""

    generation: int = 0
    changes: list[Change] = []

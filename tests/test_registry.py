"""Registry contract suite: runs on file:// and on s3:// (a real moto server)."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest
import torch

from inferloop.registry import (
    AsyncRegistry,
    Conflict,
    CorruptArtifact,
    InvalidName,
    NotFound,
    Registry,
    UnsupportedArtifact,
    layout,
)

from .helpers import register_tiny, tiny_model


@pytest.fixture
def reg(registry_uri: str):
    with Registry.open(registry_uri) as r:
        yield r


def test_seed_example_runs_as_written(reg: Registry) -> None:
    x = torch.randn(64, 8)
    model = tiny_model(0)
    with reg.track("revenue-forecast") as run:
        run.log_param("learning_rate", 0.001)
        run.log_param("data_version", "v14.3")
        run.log_metric("rmse", 3.2)
        version = run.register(model, example_inputs=x[:8], reference=x, tags=["commit:a4f9c22"])
    reg.promote("revenue-forecast", version, stage="staging")
    m = reg.get_manifest("revenue-forecast", version)
    assert m.lineage.params == {"learning_rate": 0.001, "data_version": "v14.3"}
    assert m.metrics == {"rmse": 3.2}
    assert m.tags == ["commit:a4f9c22"]
    assert m.lineage.environment.torch == str(torch.__version__)
    assert len(m.lineage.environment.packages_digest) == 64
    assert len(m.warmup) == 8 and len(m.reference.features) == 9  # 8 features and the output
    feat = m.reference.features[0]
    assert len(feat.fractions) == len(feat.edges) + 2 and abs(sum(feat.fractions) - 1) < 1e-9
    assert m.reference.predictions is not None
    assert reg.get_pointer("revenue-forecast", "staging").version == version
    # the artifact rebuilds without pickle and computes the same function
    loaded = reg.load_model("revenue-forecast", version)
    with torch.inference_mode():
        assert torch.allclose(loaded(x), model(x))


def test_same_artifact_and_lineage_registered_twice_is_one_version_one_blob(reg: Registry, registry_uri) -> None:
    v1 = register_tiny(reg, "m", 1)
    v2 = register_tiny(reg, "m", 1)
    assert v1 == v2 == 1
    assert reg.latest_version("m") == 1
    assert [e.kind for e in reg.history("m")] == ["registered"]
    v3 = register_tiny(reg, "m", 2)
    assert v3 == 2
    if registry_uri.startswith("file://"):
        blobs = [f for _, _, fs in os.walk(registry_uri[7:] + "/blobs") for f in fs]
        assert len(blobs) == 2


def test_promote_three_then_roll_back_twice_walks_back(reg: Registry) -> None:
    versions = [register_tiny(reg, "m", s) for s in (1, 2, 3)]
    for v in versions:
        reg.promote("m", v, "production", actor="alice", reason=f"ship v{v}")
    p = reg.rollback("m", "production", actor="bob", reason="bad v3")
    assert (p.version, p.previous_version) == (2, 3)
    p = reg.rollback("m", "production", actor="bob", reason="bad v2")
    assert (p.version, p.previous_version) == (1, 2)
    with pytest.raises(NotFound, match="no earlier version"):
        reg.rollback("m", "production")
    moves = [e for e in reg.history("m") if e.kind in ("promoted", "rolled_back")]
    assert [(e.kind, e.from_version, e.version) for e in moves] == [
        ("promoted", None, 1), ("promoted", 1, 2), ("promoted", 2, 3), ("rolled_back", 3, 2), ("rolled_back", 2, 1)]
    assert all(e.actor and e.reason and e.time for e in moves)
    archived = [e.version for e in reg.history("m") if e.kind == "archived"]
    assert archived == [1, 2, 3, 2]
    # rollback to a named version
    assert reg.rollback("m", "production", to_version=3).version == 3
    assert reg.verify("m") == []


def test_history_is_paged(reg: Registry) -> None:
    register_tiny(reg, "m", 1)
    for i in range(5):
        reg.append_event("m", "drift_detected", reason=f"r{i}")
    first = reg.history("m", limit=2)
    rest = reg.history("m", after=first[-1].seq, limit=100)
    assert [e.seq for e in first + rest] == list(range(1, 7))


def test_stale_expected_version_is_a_conflict(reg: Registry) -> None:
    v1, v2, v3 = (register_tiny(reg, "m", s) for s in (1, 2, 3))
    reg.promote("m", v1, "production", expected_version=None)
    with pytest.raises(Conflict):
        reg.promote("m", v2, "production", expected_version=None)
    reg.promote("m", v2, "production", expected_version=v1)
    with pytest.raises(Conflict):
        reg.promote("m", v3, "production", expected_version=v1)
    assert reg.get_pointer("m", "production").version == v2
    assert len([e for e in reg.history("m") if e.kind == "promoted"]) == 2


def test_stale_etag_is_a_conflict_at_the_store(registry_uri: str) -> None:
    """The CAS primitive itself: a write carrying an old ETag loses (S3 If-Match → 412)."""

    async def go() -> None:
        async with AsyncRegistry.open(registry_uri) as core:
            key = "models/m/stages/production.json"
            etag1 = await core.store.put_if_match(key, b'{"a":1}', None)
            with pytest.raises(Conflict):
                await core.store.put_if_match(key, b'{"a":2}', None)
            etag2 = await core.store.put_if_match(key, b'{"a":3}', etag1)
            with pytest.raises(Conflict):
                await core.store.put_if_match(key, b'{"a":4}', etag1)
            assert (await core.store.get(key)).data == b'{"a":3}'
            assert await core.store.get_if_changed(key, etag2) is None  # conditional GET: unchanged
            assert (await core.store.get_if_changed(key, etag1)).data == b'{"a":3}'

    asyncio.run(go())


def test_concurrent_promotions_in_tasks_one_winner_per_move(registry_uri: str) -> None:
    async def go() -> None:
        with Registry.open(registry_uri) as reg:
            versions = [register_tiny(reg, "m", s) for s in range(1, 9)]
        async with AsyncRegistry.open(registry_uri) as core:
            results = await asyncio.gather(
                *(core.promote("m", v, "production", actor=f"t{v}", expected_version=None) for v in versions),
                return_exceptions=True)
            winners = [r for r in results if not isinstance(r, BaseException)]
            losers = [r for r in results if isinstance(r, BaseException)]
            assert len(winners) == 1 and all(isinstance(e, Conflict) for e in losers)
            pointer = await core.get_pointer("m", "production")
            assert pointer.version == winners[0].version
            promoted = await core.history("m", kinds={"promoted"})
            assert len(promoted) == 1 and promoted[0].version == pointer.version

    asyncio.run(go())


def test_altered_blob_is_refused_on_read(reg: Registry, registry_uri: str, tamper) -> None:
    v = register_tiny(reg, "m", 1)
    digest = reg.get_manifest("m", v).artifact.digest
    key = layout.blob(digest)
    original = reg.get_blob(digest)
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF
    tamper.overwrite(registry_uri, key, bytes(tampered))
    with pytest.raises(CorruptArtifact, match="corrupt"):
        reg.get_blob(digest)
    with pytest.raises(CorruptArtifact):
        reg.load_model("m", v)
    assert any("corrupt" in p for p in reg.verify("m"))


def test_promotion_refuses_missing_manifest_or_blob(reg: Registry, registry_uri: str, tamper) -> None:
    with pytest.raises(NotFound, match="not found"):
        reg.promote("m", 1, "production")
    v = register_tiny(reg, "m", 1)
    digest = reg.get_manifest("m", v).artifact.digest
    tamper.remove(registry_uri, layout.blob(digest))
    with pytest.raises(NotFound, match="missing"):
        reg.promote("m", v, "production")
    assert reg.get_pointer("m", "production") is None


def test_malformed_manifest_in_storage_is_a_clear_error(reg: Registry, registry_uri: str, tamper) -> None:
    register_tiny(reg, "m", 1)
    tamper.overwrite(registry_uri, layout.manifest("m", 2), b"{not json")
    with pytest.raises(CorruptArtifact, match="malformed manifest"):
        reg.get_manifest("m", 2)
    with pytest.raises(CorruptArtifact):
        reg.promote("m", 2, "production")
    assert reg.get_pointer("m", "production") is None


def test_tampered_history_is_detected(reg: Registry, registry_uri: str, tamper) -> None:
    for s in (1, 2):
        reg.promote("m", register_tiny(reg, "m", s), "production", actor="alice", reason="ok")
    events = reg.history("m")
    edited = events[1]
    forged = edited.__class__(**{**{f: getattr(edited, f) for f in edited.__struct_fields__}, "actor": "mallory"})
    from inferloop.registry.manifest import encode
    tamper.overwrite(registry_uri, layout.event("m", edited.seq), encode(forged))
    problems = reg.verify("m")
    assert any("chain broken" in p for p in problems)


@pytest.mark.parametrize("bad", ["", "a/b", "..", "../etc", "A", "x" * 200, "a b", ".hidden"])
def test_bad_model_names_are_refused(reg: Registry, bad: str) -> None:
    with pytest.raises(InvalidName):
        reg.get_manifest(bad, 1)
    with pytest.raises(InvalidName):
        reg.track(bad)


def test_unknown_model_version_stage(reg: Registry) -> None:
    register_tiny(reg, "m", 1)
    with pytest.raises(NotFound):
        reg.get_manifest("nope", 1)
    with pytest.raises(NotFound):
        reg.get_manifest("m", 7)
    with pytest.raises(InvalidName, match="unknown stage"):
        reg.promote("m", 1, "prod")
    with pytest.raises(InvalidName):
        reg.promote("m", "latest", "production")
    with pytest.raises(InvalidName):
        reg.promote("m", 0, "production")


def test_unsupported_modules_and_pickles_are_refused(reg: Registry, registry_uri, tamper,
                                                      tmp_path) -> None:
    with pytest.raises(UnsupportedArtifact, match="cannot register a dict"):
        with reg.track("m") as run:
            run.register({"weights": [1.0]}, example_inputs=torch.zeros(2, 8))
    assert reg.list_versions("m") == []
    v = register_tiny(reg, "m", 1)
    # A pickle that would create a file if it were ever unpickled, stored under its own digest.
    import pickle

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    payload = pickle.dumps(Evil())
    digest = hashlib.sha256(payload).hexdigest()
    tamper.overwrite(registry_uri, layout.blob(digest), payload)
    from inferloop.registry.artifact import load_module

    spec = reg.get_manifest("m", v).artifact.spec
    with pytest.raises(UnsupportedArtifact):
        load_module(reg.get_blob(digest), spec)
    with pytest.raises(UnsupportedArtifact):
        load_module(payload, spec, fmt="torch-pickle")
    assert not marker.exists()


def test_wrong_architecture_is_refused(reg: Registry) -> None:
    from inferloop.registry.artifact import load_module
    from inferloop.registry.manifest import ModelSpec

    v = register_tiny(reg, "m", 1)
    m = reg.get_manifest("m", v)
    with pytest.raises(UnsupportedArtifact, match="does not match"):
        load_module(reg.get_blob(m.artifact.digest), ModelSpec("mlp", 8, 1, [32]))


def test_listing_is_paged(reg: Registry) -> None:
    for s in range(1, 6):
        register_tiny(reg, "m", s)
    register_tiny(reg, "other", 1)
    assert reg.list_versions("m", limit=2) == [1, 2]
    assert reg.list_versions("m", start_after=2, limit=10) == [3, 4, 5]
    assert reg.list_models() == ["m", "other"]
    assert reg.list_models(start_after="m") == ["other"]
    assert reg.latest_version("m") == 5


def test_clearing_a_stage_keeps_history_and_polls_as_empty(reg: Registry, registry_uri: str) -> None:
    v1 = register_tiny(reg, "m", 1)
    reg.promote("m", v1, "shadow", actor="t")
    state = asyncio.run(_poll(registry_uri, None))
    assert state.pointer.version == v1
    reg.clear("m", "shadow", actor="t", reason="stop shadowing")
    assert reg.get_pointer("m", "shadow") is None
    assert asyncio.run(_poll(registry_uri, state.etag)).pointer is None
    assert reg.rollback("m", "shadow").version == v1  # rollback of a clear restores it
    assert [e.kind for e in reg.history("m")][-2:] == ["cleared", "rolled_back"]


async def _poll(uri: str, etag):
    async with AsyncRegistry.open(uri) as core:
        return await core.poll_pointer("m", "shadow", etag)

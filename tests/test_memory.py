"""Shared memory through the Python API, on every store."""
import pytest

import tracecraft


def test_values_are_json(client_factory):
    tc = client_factory("alice")
    for key, value in [("n", 42), ("f", 1.5), ("s", "complete"), ("cfg", {"a": [1, None, True]}),
                       ("empty", ""), ("u", "日本語 ✓")]:
        record = tc.memory.set(key, value)
        assert record["by"] == "alice" and record["at"].endswith("Z") and record["version"]
        assert tc.memory.get(key) == value
    assert client_factory("bob").memory.record("n")["by"] == "alice"


def test_missing_key(client_factory):
    tc = client_factory("alice")
    with pytest.raises(tracecraft.NotFound, match="not set"):
        tc.memory.get("missing")
    assert tc.memory.get("missing", None) is None


def test_list_matches_whole_segments(client_factory):
    tc = client_factory("alice")
    for key in ["phase1", "phase1.a", "phase1.b.c", "phase10.x", "phase2", "other.phase1"]:
        tc.memory.set(key, 1)
    assert tc.memory.list("phase1") == ["phase1.a", "phase1.b.c", "phase1"] or \
        sorted(tc.memory.list("phase1")) == ["phase1", "phase1.a", "phase1.b.c"]
    assert "phase10.x" not in tc.memory.list("phase1")
    assert sorted(tc.memory.list()) == sorted(["phase1", "phase1.a", "phase1.b.c", "phase10.x",
                                               "phase2", "other.phase1"])
    assert tc.memory.list("nothing") == []


def test_delete(client_factory):
    tc = client_factory("alice")
    tc.memory.set("k", 1)
    tc.memory.delete("k")
    with pytest.raises(tracecraft.NotFound):
        tc.memory.get("k")


def test_limits_and_bad_values(client_factory):
    tc = client_factory("alice")
    with pytest.raises(tracecraft.UsageError, match="limit"):
        tc.memory.set("big", "x" * (tracecraft.MAX_VALUE + 1))
    with pytest.raises(tracecraft.UsageError):
        tc.memory.set("obj", object())
    with pytest.raises(tracecraft.UsageError):
        tc.memory.set("../escape", 1)


def test_objects_stay_inside_the_project(client_factory, store):
    tc = client_factory("alice", project="p1")
    tc.memory.set("a.b", 1)
    tc.send("bob", "hi")
    tc.claim("s")
    keys = [e.key for e in store.list("")]
    assert keys and all(k.startswith("p1/") for k in keys)
    assert "p1/memory/a/b.json" in keys


def test_corrupt_memory_object_is_reported(client_factory, store):
    tc = client_factory("alice")
    store.put("proj/memory/bad.json", b"\xff not json")
    with pytest.raises(tracecraft.CorruptObject, match="not valid JSON"):
        tc.memory.get("bad")

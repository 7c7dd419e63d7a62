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


def test_compare_and_swap_writes(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    first = alice.memory.set("plan", "v1", if_absent=True)
    with pytest.raises(tracecraft.Refused, match=f"already set \\(version {first['version']}"):
        bob.memory.set("plan", "other", if_absent=True)
    second = bob.memory.set("plan", "v2", if_version=first["version"])
    with pytest.raises(tracecraft.Refused, match=f"at version {second['version']}"):
        alice.memory.set("plan", "v3", if_version=first["version"])
    assert alice.memory.get("plan") == "v2"
    with pytest.raises(tracecraft.Refused):
        alice.memory.delete("plan", if_version=first["version"])
    alice.memory.delete("plan", if_version=second["version"])
    assert alice.memory.get("plan", None) is None
    with pytest.raises(tracecraft.Refused, match="unset"):
        alice.memory.set("plan", "v4", if_version=second["version"])


def test_incr_and_history(client_factory):
    alice = client_factory("alice")
    assert alice.memory.incr("n")["value"] == 1
    assert alice.memory.incr("n", 41)["value"] == 42
    assert alice.memory.incr("n", -0.5)["value"] == 41.5
    alice.memory.set("s", "text")
    with pytest.raises(tracecraft.UsageError, match="not a number"):
        alice.memory.incr("s")
    history = alice.memory.history("n")
    assert [h["value"] for h in history] == [41.5, 42, 1]
    assert [h["revision"] for h in history] == [3, 2, 1]
    for i in range(30):
        alice.memory.set("many", i)
    kept = alice.memory.history("many")
    assert [h["value"] for h in kept] == list(range(29, 29 - 1 - tracecraft.HISTORY_LIMIT, -1))


def test_eight_processes_fifty_increments_each(atomic_settings, client_factory_atomic):
    from conftest import race, raced, racer_outputs
    observer = client_factory_atomic("observer")
    runs = racer_outputs(race([("memincr", atomic_settings, f"w{i}", 50) for i in range(8)]))
    assert raced(*runs), "the processes did not run at the same time"
    assert observer.memory.get("counter") == 400
    assert observer.memory.record("counter")["revision"] == 400

"""What operations cost in requests (the targets of the benchmark, kept as exact counts), and
that what a client remembers between calls is only ever a hint: a stale one costs a read,
never a wrong answer."""
import time

import pytest

import tracecraft
from fakes import CountingStore


def counted(client):
    client.store = CountingStore(client.store)
    return client.store


def cost(counter, action):
    before = counter.calls
    action()
    return counter.calls - before


def test_claim_and_complete_cost_one_then_two_or_three(client_factory):
    alice = client_factory("alice")
    calls = counted(alice)
    assert cost(calls, lambda: alice.claim("a")) == 1
    assert cost(calls, lambda: alice.renew("a")) == 1
    assert cost(calls, lambda: alice.complete("a")) == 2              # lease + status.json
    alice.claim("b")
    assert cost(calls, lambda: alice.complete("b", note="n")) == 3    # + handoff.json
    assert alice.step_status("b")["note"] == "n"
    alice.claim("c")
    assert cost(calls, lambda: alice.release("c")) == 1
    assert cost(calls, lambda: alice.complete("fresh")) == 4     # read, claim, lease, status
    assert alice.step_status("fresh")["status"] == "complete"


def test_memory_set_costs_one_request_after_this_agents_own_write(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    calls = counted(alice)
    alice.memory.set("k", 1)
    assert cost(calls, lambda: alice.memory.set("k", 2)) == 1
    assert cost(calls, lambda: alice.memory.incr("k")) == 1
    assert cost(calls, lambda: alice.memory.get("k")) == 1
    bob.memory.set("k", 10)                                   # alice's version is now stale
    assert cost(calls, lambda: alice.memory.set("k", 11)) == 3   # refused, read, written
    assert [h["value"] for h in alice.memory.history("k")] == [11, 10, 3, 2, 1]
    assert alice.memory.record("k")["revision"] == 5


def test_send_costs_one_request_once_the_tail_is_known(client_factory):
    alice, bob, carol = client_factory("alice"), client_factory("bob"), client_factory("carol")
    bob.heartbeat(renew=False)
    calls = counted(alice)
    assert cost(calls, lambda: alice.send("bob", "one")) == 2    # the log's tail is listed once
    assert cost(calls, lambda: alice.send("bob", "two")) == 1
    carol.send("bob", "three")
    assert cost(calls, lambda: alice.send("bob", "four")) == 3   # refused, tail listed, written
    assert [m["text"] for m in bob.inbox()] == ["one", "two", "three", "four"]


def test_remembered_state_survives_the_process_and_is_only_a_hint(client_factory):
    """A second client of the same agent (a later command-line call) uses what the first
    remembered; a lease taken over meanwhile is still refused to its old holder."""
    first = client_factory("alice")
    first.claim("s", ttl=1)
    first.close()                                             # saves what it remembers
    later = client_factory("alice")
    calls = counted(later)
    assert cost(calls, lambda: later.renew("s", ttl=1)) == 1
    time.sleep(1.2)
    client_factory("bob").claim("s")                          # takes the expired lease over
    with pytest.raises(tracecraft.LostLease, match="bob"):
        later.complete("s")
    with pytest.raises(tracecraft.LostLease):
        first.renew("s")
    assert later.step_status("s")["holder"] == "bob"


def test_a_corrupt_or_missing_cache_changes_nothing(client_factory, tmp_path, monkeypatch):
    alice = client_factory("alice")
    alice.claim("s")
    alice.memory.set("k", 1)
    alice.close()
    paths = list((tmp_path / "cache").rglob("*.json"))
    assert len(paths) == 2
    for path in paths:
        path.write_text("{not json")
    alice = client_factory("alice")
    assert alice.complete("s")["status"] == "complete"
    assert alice.memory.set("k", 2)["revision"] == 2
    monkeypatch.setenv("XDG_CACHE_HOME", "/dev/null/nowhere")   # cannot be created
    bob = client_factory("bob")
    bob.claim("t")
    assert bob.complete("t")["status"] == "complete"
    assert bob.memory.incr("n")["value"] == 1 and bob.memory.get("n") == 1


def test_agents_derive_holdings_from_the_leases(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.heartbeat(renew=False)
    alice.claim("x")
    alice.claim("y", ttl=0.5)
    bob.claim("z")
    bob.complete("z")
    time.sleep(2.1)                     # S3 dates are whole seconds: a second either way
    listed = {a["agent"]: a for a in bob.agents()}
    assert listed["alice"]["holding"] == ["x"]                 # y expired, z ended
    assert alice.heartbeat()["holding"] == ["x", "y"]          # renews even the expired one
    assert {a["agent"]: a for a in bob.agents()}["alice"]["holding"] == ["x", "y"]

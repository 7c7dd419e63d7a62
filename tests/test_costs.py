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
    # is it planned (dependencies to check, dependents to tell)? + the lease + status.json
    assert cost(calls, lambda: alice.complete("a")) == 3
    alice.claim("b")
    assert cost(calls, lambda: alice.complete("b", note="n")) == 4    # + handoff.json
    assert cost(calls, lambda: alice.step_status("b")) == 2   # the lease, and its tagged messages
    assert alice.step_status("b")["note"] == "n"
    alice.claim("c")
    assert cost(calls, lambda: alice.release("c")) == 2    # + is it planned (ready again)?
    before = calls.calls
    with pytest.raises(tracecraft.Refused, match="not claimed"):
        alice.complete("fresh")
    assert calls.calls - before == 2                  # planned? and one read: nobody holds it
    assert cost(calls, lambda: alice.complete("fresh", force=True)) == 4   # + end, status
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
    # the first send lists the log's tail once and, finding it empty, asks whether bob exists
    assert cost(calls, lambda: alice.send("bob", "one")) == 3
    assert cost(calls, lambda: alice.send("bob", "two")) == 1
    carol.send("bob", "three")
    assert cost(calls, lambda: alice.send("bob", "four")) == 3   # refused, tail listed, written
    assert [m["text"] for m in bob.inbox()] == ["one", "two", "three", "four"]


def test_remembered_state_survives_the_process_and_is_only_a_hint(client_factory, store_clock):
    """A second client of the same agent (a later command-line call) uses what the first
    remembered; a lease taken over meanwhile is still refused to its old holder."""
    first = store_clock.wrap(client_factory("alice"))
    first.claim("s", ttl=30)
    first.close()                                             # saves what it remembers
    later = store_clock.wrap(client_factory("alice"))
    calls = counted(later)
    assert cost(calls, lambda: later.renew("s", ttl=30)) == 1
    store_clock.advance(32)
    store_clock.wrap(client_factory("bob")).claim("s")        # takes the expired lease over
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


def test_agents_derive_holdings_from_the_leases(client_factory, store_clock):
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    alice.heartbeat(renew=False)
    alice.claim("x")
    alice.claim("y", ttl=20)
    bob.claim("z")
    bob.complete("z")
    store_clock.advance(22)
    listed = {a["agent"]: a for a in bob.agents()}
    assert listed["alice"]["holding"] == ["x"]                 # y expired, z ended
    assert alice.heartbeat()["holding"] == ["x", "y"]          # renews even the expired one
    assert {a["agent"]: a for a in bob.agents()}["alice"]["holding"] == ["x", "y"]


def test_a_remembered_tail_that_outlived_its_store_leaves_no_dead_inbox(client_factory,
                                                                       monkeypatch, store_clock):
    """Alice remembers sending message 2; the messages are wiped (a store made again under the
    same name).  Her next message is number 3: readers wait out the gap, then read past it."""
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    alice.send("bob", "one")
    alice.send("bob", "two")
    for entry in list(alice.store.list("proj/messages/bob/")):
        alice.store.delete(entry.key)
    alice.send("bob", "after the reset")
    assert bob.inbox() == []                      # a fresh gap: perhaps a message not yet listed
    store_clock.advance(tracecraft.LOG_HOLE_SECONDS + 2)
    assert [m["text"] for m in bob.inbox()] == ["after the reset"]
    alice.send("bob", "next")
    assert [m["text"] for m in bob.inbox()] == ["next"]


def test_a_nonsense_remembered_tail_is_ignored(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    bob.heartbeat(renew=False)
    for bad in (-3, True, "7", 2.5):
        alice.records.keep("tails", "bob", {"n": bad})
        alice.send("bob", f"with {bad!r}")
    assert [m["text"] for m in bob.inbox()] == ["with -3", "with True", "with '7'", "with 2.5"]


def test_hints_never_decide_an_answer(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.memory.set("k", "text")
    bob.memory.set("k", 5)
    assert alice.memory.incr("k")["value"] == 6     # not "k holds str": that was the hint
    todo = [1]
    alice.memory.set("todo", todo)
    todo.append(2)                                  # the caller's object changes afterwards
    alice.memory.set("todo", todo)
    assert [h["value"] for h in alice.memory.history("todo")] == [[1, 2], [1]]


def test_heartbeat_reports_a_remembered_lease_taken_over(client_factory, store_clock):
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    alice.claim("s", ttl=20)
    store_clock.advance(22)
    bob.claim("s")
    warnings = []
    alice.warn = warnings.append
    assert alice.heartbeat()["holding"] == []
    assert len(warnings) == 1 and "lost step s" in warnings[0] and "bob" in warnings[0]
    alice.heartbeat()
    assert len(warnings) == 1                       # said once: the lease is forgotten


class SlowWrites(CountingStore):
    """Answers every write `delay` seconds after the store took it."""

    def __init__(self, store, delay):
        super().__init__(store)
        self.delay = delay

    def put(self, *args, **kwargs):
        etag = self.store.put(*args, **kwargs)
        time.sleep(self.delay)
        return etag


def test_a_lease_answered_late_is_not_taken_for_a_live_one(client_factory):
    """The lease began when the claim reached the store, not when its answer came back."""
    alice = client_factory("alice")
    store = alice.store
    alice.store = SlowWrites(store, 2.5)
    alice.claim("s", ttl=1)
    alice.store = store
    with pytest.raises(tracecraft.LostLease, match="expired"):
        alice.complete("s")

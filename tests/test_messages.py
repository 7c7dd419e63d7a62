"""Inboxes: numbered logs, cursors in the bucket, exactly-once delivery, on every store."""
import json
import os
import random
import threading
import time

import pytest

import tracecraft
from conftest import race, raced, racer_outputs, stop_readers, texts_read
from fakes import CountingStore, Recording


def texts(messages):
    return [m["text"] for m in messages]


def test_direct_and_broadcast_merge_in_one_order(client_factory, settings):
    alice, bob, carol = client_factory("alice"), client_factory("bob"), client_factory("carol")
    alice.send("bob", "one")
    carol.send("_broadcast", "two")
    alice.send("bob", "three")
    bob.send("_broadcast", "mine")
    carol.send("_broadcast", "four")
    seen = bob.inbox(everything=True)
    inbox = bob.inbox()
    assert inbox == seen == client_factory("bob").inbox(everything=True)   # one order for all
    assert [m["text"] for m in inbox if m["kind"] == "direct"] == ["one", "three"]
    assert [m["text"] for m in inbox if m["kind"] == "broadcast"] == ["two", "four"]
    if settings["backend"] == "local":
        # Across logs the store's clock decides; S3 stores stamp whole seconds, so only the
        # local store (nanoseconds) shows the exact interleaving here.
        assert texts(inbox) == ["one", "two", "three", "four"]
    first = next(m for m in inbox if m["kind"] == "direct")
    assert first["from"] == "alice" and first["at"].endswith("Z") and first["seq"] == 1
    assert bob.inbox() == []                       # read means read
    assert sorted(texts(carol.inbox())) == ["mine"]


def test_unread_all_peek_and_position_in_the_bucket(client_factory):
    alice = client_factory("alice")
    for i in range(3):
        alice.send("bob", f"m{i}")
    bob = client_factory("bob")
    assert texts(bob.inbox(peek=True)) == ["m0", "m1", "m2"]
    assert texts(bob.inbox(peek=True)) == ["m0", "m1", "m2"]
    assert texts(bob.inbox()) == ["m0", "m1", "m2"]
    alice.send("bob", "m3")
    # The same identity elsewhere (a new client: another process or machine) continues.
    assert texts(client_factory("bob").inbox()) == ["m3"]
    assert texts(bob.inbox(everything=True)) == ["m0", "m1", "m2", "m3"]
    assert bob.inbox() == []


def test_numbers_have_no_gaps_and_no_repeats(client_factory_atomic):
    """4 threads send 25 messages each to one inbox at once (on the stores whose create-only
    writes are atomic: on moto two senders can both win a number, and one message is lost)."""
    senders = [client_factory_atomic(f"s{i}") for i in range(4)]
    runs, start = [], threading.Barrier(4)

    def send_all(client):
        start.wait()   # all four threads exist before any sends: they start together
        run = [{"began": time.time()}]
        for j in range(25):
            client.send("bob", f"{client.agent}:{j}")
        run.append({"ended": time.time()})
        runs.append(run)
    threads = [threading.Thread(target=send_all, args=(c,)) for c in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(runs) == 4 and raced(*runs), "the senders did not send at the same time"
    messages = client_factory_atomic("bob").inbox()
    assert sorted(m["seq"] for m in messages) == list(range(1, 101))
    assert sorted(texts(messages)) == sorted(f"s{i}:{j}" for i in range(4) for j in range(25))
    for i in range(4):   # each sender's messages stay in its sending order
        mine = [m["text"] for m in messages if m["from"] == f"s{i}"]
        assert mine == [f"s{i}:{j}" for j in range(25)]


def test_delete_removes_read_direct_messages(client_factory, store):
    alice, bob = client_factory("alice"), client_factory("bob")
    for i in range(3):
        alice.send("bob", f"d{i}")
    alice.send("_broadcast", "all")
    assert len(bob.inbox(delete=True)) == 4
    left = [e.size for e in store.list("proj/messages/bob/")]
    assert left == [0, 0, 0]       # emptied, not removed: their numbers stay taken for good
    alice.send("bob", "after")
    assert texts(bob.inbox()) == ["after"]
    assert texts(client_factory("carol").inbox()) == ["all"]


def test_bad_objects_in_the_log_do_not_stop_the_inbox(client_factory, store):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.send("bob", "good1")
    store.put(bob.inbox._key("bob", 2), b"{broken")
    store.put(bob.inbox._key("bob", 3), b"[1, 2]")
    store.put("proj/messages/bob/stray.json", b"{}")
    alice.records.keep("tails", "bob", None)
    alice.send("bob", "good2")
    warnings = []
    bob.warn = warnings.append
    assert texts(bob.inbox()) == ["good1", "good2"]
    assert len(warnings) == 3 and "stray" in warnings[0]   # the stray object is named too


def test_wait_blocks_until_a_message_arrives(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    with pytest.raises(tracecraft.WaitTimeout):
        bob.inbox(wait=0.3)
    threading.Timer(0.4, lambda: alice.send("bob", "late")).start()
    started = time.monotonic()
    assert texts(bob.inbox(wait=10)) == ["late"]
    assert time.monotonic() - started < 5


def test_reading_k_new_messages_costs_o_k_requests(client_factory, settings):
    alice = client_factory("alice")
    bob = client_factory("bob")
    for i in range(2 * tracecraft.LOG_PAGE + 20):   # more than a first listing page of history
        alice.send("bob", str(i))
    bob.inbox()
    counts = []
    for _ in range(2):
        for i in range(5):
            alice.send("bob", "new")
        bob.store = counting = CountingStore(bob.store)
        assert len(bob.inbox()) == 5
        counts.append(counting.calls)
        bob.store = counting.store
        for i in range(2 * tracecraft.LOG_PAGE + 20):
            alice.send("bob", "old")
        bob.inbox()
    assert counts[0] == counts[1] == 5 + 4   # k GETs, cursor GET and CAS, two listings


def test_validation(client_factory):
    alice = client_factory("alice")
    for bad in ["", "../x", "a/b", "_other"]:
        with pytest.raises(tracecraft.UsageError):
            alice.send(bad, "x")


# -- exactly once, with real processes and skewed clocks (atomic stores only) -------------------------

def test_exactly_once_with_skewed_senders_and_racing_readers(atomic_settings, client_factory_atomic):
    """4 sender processes with clocks skewed by up to +-10 minutes send messages in turn to two
    agents and to everyone; each recipient is read by two racing processes.  Every message
    reaches each recipient exactly once; broadcasts reach everyone but the sender.  10,000
    messages on the local store; 600 on SeaweedFS (its larger runs are in the benchmark)."""
    per_sender = 2500 if atomic_settings["backend"] == "local" else 150
    client_factory_atomic("warmup")
    agents = ["r1", "r2"]
    procs = race([("send", atomic_settings, f"s{i}", per_sender, random.uniform(-600, 600))
                  for i in range(4)]
                 + [("read", atomic_settings, agent, 0) for agent in agents for _ in range(2)])
    senders, readers = procs[:4], procs[4:]
    runs = racer_outputs(senders)
    sent = [m for run in runs for m in run]
    stop_readers(readers)
    reads = racer_outputs(readers)
    received = {agent: [] for agent in agents}
    for lines, agent in zip(reads, [a for a in agents for _ in range(2)]):
        received[agent] += texts_read(lines)
    assert len(sent) == 4 * per_sender
    assert raced(*runs), "the senders did not send at the same time"
    for n, agent in enumerate(agents):
        assert all(reads[2 * n: 2 * n + 2]) and raced(*reads[2 * n: 2 * n + 2]), \
            f"the two readers of {agent} did not read at the same time"
    for agent in agents:
        expected = sorted(m["text"] for m in sent if m["to"] in (agent, "_broadcast"))
        got = sorted(received[agent])
        assert got == expected, f"{agent}: {len(got)} received, {len(expected)} expected"


# -- issue 11: numbers are never reused, stray objects move nothing, waits end on time -------------

def test_a_number_is_never_reused_after_inbox_delete(local_cli):
    """b and c send three each; a reads them all with --delete; b, remembering its tail 3,
    sends again: its message is number 7 and reaches a (it used to be written as number 4,
    below a's cursor, and never shown)."""
    for sender in ("b", "c"):
        for i in range(3):
            local_cli.ok("send", "a", f"{sender}{i}", agent=sender)
    read = json.loads(local_cli.ok("inbox", "--delete", "--json", agent="a"))["messages"]
    assert [m["text"] for m in read] == ["b0", "b1", "b2", "c0", "c1", "c2"]
    local_cli.ok("send", "a", "after the delete", agent="b")
    again = json.loads(local_cli.ok("inbox", "--json", agent="a"))["messages"]
    assert [(m["seq"], m["text"]) for m in again] == [(7, "after the delete")]
    log = local_cli.root / "messages" / "a"
    assert sorted(p.stat().st_size > 0 for p in log.iterdir()) == [False] * 6 + [True]
    assert json.loads(local_cli.ok("inbox", "--all", "--json", agent="a"))["messages"] == again


def test_a_stray_object_in_a_log_moves_no_cursor_and_no_tail(local_cli):
    local_cli.ok("send", "a", "first", agent="b")
    log = local_cli.root / "messages" / "a"
    for stray in ("000000000000-x.json", "000000000000-1000000000000.json", "zzz.json",
                  "999999999999-01.json", "-00000000001-1000000000001.json",
                  "\u0669\u0669\u0669\u0669\u0669\u0669\u0660\u0660\u0660\u0660\u0660\u0660-1000000.json",
                  "x999999999999-1.json"):
        (log / stray).write_text("{}")
        old = time.time() - 120      # older than any gap a reader waits out
        os.utime(log / stray, (old, old))
    local_cli.ok("send", "a", "second", agent="c")       # a sender new to the log lists its tail
    result = local_cli("inbox", "--json", agent="a")
    assert result.returncode == 0 and "stray" in result.stderr
    assert [m["text"] for m in json.loads(result.stdout)["messages"]] == ["first", "second"]
    local_cli.ok("send", "a", "third", agent="d")
    assert [m["text"] for m in json.loads(local_cli.ok("inbox", "--json", agent="a"))
            ["messages"]] == ["third"]
    numbered = sorted(p.name for p in log.iterdir() if p.name.startswith("9999999999")
                      and p.name != "999999999999-01.json")   # the stray ones stay as they are
    assert numbered == ["999999999997-3.json", "999999999998-2.json", "999999999999-1.json"]


def test_inbox_wait_one_second_ends_after_one_second(local_cli):
    started = time.monotonic()
    result = local_cli("inbox", "--wait", "1", agent="a")
    assert result.returncode == 3 and "no new message within 1s" in result.stderr
    assert time.monotonic() - started < 1 + 5          # the process starting up, on a busy box


def test_inbox_wait_one_second_ends_after_one_second_in_the_api(client_factory):
    bob = client_factory("bob")
    for wait in (1, 1.0):                              # 1.0 == True: it used to wait forever
        started = time.monotonic()
        with pytest.raises(tracecraft.WaitTimeout):
            bob.inbox(wait=wait)
        assert 1 <= time.monotonic() - started < 1 + 4   # not forever, on a busy box



def test_an_idle_inbox_wait_lists_nothing_and_still_gets_the_message(client_factory):
    """While idle a wait asks for the next number of each log (exists), never lists; a message
    sent meanwhile is read as usual."""
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.send("bob", "before")
    assert texts(bob.inbox()) == ["before"]
    bob.store = recording = Recording(bob.store)
    with pytest.raises(tracecraft.WaitTimeout):
        bob.inbox(wait=1.0)
    names = [name for name, _ in recording.calls]
    assert names.count("list") == 2 and names[:3].count("list") == 2   # the first read only
    asked = {key.rpartition("/")[2] for name, key in recording.calls if name == "exists"}
    assert asked == {tracecraft._log_name(2), tracecraft._log_name(1)}   # bob's 2, _broadcast's 1
    threading.Timer(0.5, lambda: alice.send("_broadcast", "to all")).start()
    assert texts(bob.inbox(wait=30)) == ["to all"]
    alice.send("bob", "direct")
    assert texts(bob.inbox(wait=30)) == ["direct"]


def test_a_waiting_reader_gets_a_message_behind_a_hole(client_factory, store_clock,
                                                        monkeypatch):
    """A sender that remembers a tail its store no longer has skips numbers: the next key
    never appears, and the wait's periodic full read finds the message once the gap is a
    hole."""
    monkeypatch.setattr(tracecraft, "INBOX_RESYNC_SECONDS", 0.5)
    alice, bob = (store_clock.wrap(client_factory(agent)) for agent in ("alice", "bob"))
    alice.records.keep("tails", "bob", {"n": 2})   # remembered from a store since wiped

    def send():
        alice.send("bob", "behind a hole")
        store_clock.advance(tracecraft.LOG_HOLE_SECONDS + 5)
    threading.Timer(0.3, send).start()
    got = bob.inbox(wait=30)
    assert texts(got) == ["behind a hole"] and got[0]["seq"] == 3


def test_messages_tagged_with_a_step(local_cli):
    """send --step tags a message; inbox --step shows only those and leaves every message
    unread; step-status lists the step's messages; an untagged message has step null."""
    local_cli.ok("send", "bob", "plain", agent="alice")
    local_cli.ok("send", "bob", "about", "design", "--step", "design", agent="alice")
    local_cli.ok("send", "_broadcast", "design is ready", "--step", "design", agent="carol")
    tagged = json.loads(local_cli.ok("inbox", "--step", "design", "--json", agent="bob"))
    assert [m["text"] for m in tagged["messages"]] == ["about design", "design is ready"]
    assert {m["step"] for m in tagged["messages"]} == {"design"}
    unread = json.loads(local_cli.ok("inbox", "--json", agent="bob"))["messages"]
    assert [(m["text"], m["step"]) for m in unread] == [
        ("plain", None), ("about design", "design"), ("design is ready", "design")]
    result = local_cli("step-status", "design", "--json", agent="bob")
    status = json.loads(result.stdout)
    assert result.returncode == 1 and status["status"] == "pending"   # never claimed
    assert [(m["text"], m["kind"], m["to"]) for m in status["messages"]] == [
        ("about design", "direct", "bob"), ("design is ready", "broadcast", "_broadcast")]
    assert "about design" in local_cli("step-status", "design", agent="bob").stdout
    bad = local_cli("inbox", "--step", "design", "--delete", agent="bob")
    assert bad.returncode == 2 and "--step" in bad.stderr and "Traceback" not in bad.stderr

"""Direct and broadcast messages through the Python API, on every store."""
import tracecraft


def test_direct_and_broadcast_are_merged_in_sending_order(client_factory):
    alice, bob, carol = client_factory("alice"), client_factory("bob"), client_factory("carol")
    alice.send("bob", "one")
    carol.send("_broadcast", "two")
    alice.send("bob", "three")
    bob.send("_broadcast", "mine")
    inbox = bob.inbox()
    assert [m["text"] for m in inbox] == ["one", "two", "three"]
    assert [m["kind"] for m in inbox] == ["direct", "broadcast", "direct"]
    assert inbox[0]["from"] == "alice" and inbox[0]["at"].endswith("Z")
    assert [m["text"] for m in carol.inbox()] == ["mine"]


def test_ids_sort_and_never_collide_within_a_microsecond(client_factory):
    alice = client_factory("alice")
    ids = [alice.send("bob", str(i))["id"] for i in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert [m["text"] for m in client_factory("bob").inbox()] == [str(i) for i in range(50)]


def test_delete_removes_direct_messages_only(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.send("bob", "direct")
    alice.send("_broadcast", "all")
    assert len(bob.inbox(delete=True)) == 2
    assert [m["text"] for m in bob.inbox()] == ["all"]


def test_bad_messages_in_the_bucket_do_not_stop_the_inbox(client_factory, store):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.send("bob", "good")
    store.put("proj/messages/bob/0-garbage.json", b"{broken")
    store.put("proj/messages/bob/1-wrongshape.json", b"[1, 2]")
    warnings = []
    bob.warn = warnings.append
    assert [m["text"] for m in bob.inbox()] == ["good"]
    assert len(warnings) == 2


def test_validation(client_factory):
    alice = client_factory("alice")
    for bad in ["", "../x", "a/b", "_other"]:
        try:
            alice.send(bad, "x")
        except tracecraft.UsageError:
            continue
        raise AssertionError(f"send to {bad!r} was accepted")

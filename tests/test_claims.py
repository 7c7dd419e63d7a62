"""Claims are leases: one winner among racing processes, expiry by the store's clock, fencing."""
import json
import threading
import time

import pytest

import tracecraft
from conftest import assert_rounds_raced, race, racer_outputs
from fakes import CountingStore, Recording


def claim_race(settings, racers, rounds):
    """Start `racers` processes that claim step-0..step-<rounds-1> together, round by round;
    returns, per round, the list of winners and the losers' messages, once it is clear that
    they raced."""
    results = racer_outputs(race([("claim", settings, f"racer{i}", rounds)
                                  for i in range(racers)],
                                 envs=[{"RACER_ROUND_GAP": "0.3"}] * racers))
    assert all(len(r) == rounds for r in results)
    assert_rounds_raced([[r[n] for r in results] for n in range(rounds)])
    return [([f"racer{i}" for i, r in enumerate(results) if r[n]["won"]],
             [r[n]["holder"] for r in results if not r[n]["won"]]) for n in range(rounds)]


def test_fifty_processes_one_winner_twenty_rounds(atomic_settings, client_factory_atomic):
    observer = client_factory_atomic("observer")
    for n, (winners, losers) in enumerate(claim_race(atomic_settings, 50, 20)):
        assert len(winners) == 1, f"round {n}: winners {winners}"
        status = observer.step_status(f"step-{n}")
        assert status["holder"] == winners[0] and status["generation"] == 1
        assert all(f"held by {winners[0]}" in text for text in losers)


def test_twenty_processes_race_for_expired_leases(atomic_settings, client_factory_atomic):
    old = client_factory_atomic("old")
    for n in range(5):
        old.claim(f"step-{n}", ttl=1)
    time.sleep(2.2)   # S3 stamps whole seconds: wait past the ttl by the store's clock
    observer = client_factory_atomic("observer")
    for n, (winners, _) in enumerate(claim_race(atomic_settings, 20, 5)):
        assert len(winners) == 1, f"round {n}: takers {winners}"
        status = observer.step_status(f"step-{n}")
        assert status["holder"] == winners[0] and status["generation"] == 2


def test_taken_over_holder_cannot_renew_complete_or_release(client_factory, store_clock):
    # Leases of tens of seconds on a clock that moves: no real second can make them expire early
    # (S3 stamps whole seconds), however busy the machine is.
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    assert alice.claim("s", ttl=30)["generation"] == 1
    with pytest.raises(tracecraft.Refused, match="held by alice"):
        bob.claim("s")
    store_clock.advance(32)
    assert bob.claim("s")["generation"] == 2
    for action in (alice.renew, alice.release, alice.complete):
        with pytest.raises(tracecraft.LostLease, match="lost"):
            action("s")
    info = bob.step_status("s")
    assert info["status"] == "in_progress" and info["holder"] == "bob"
    bob.complete("s", note="done by bob")
    assert bob.step_status("s")["status"] == "complete"


def test_expired_but_untaken_lease_cannot_complete_but_can_renew(client_factory):
    """The expiry test that waits on the real clock, on every backend (the others move the
    store's clock instead: fakes.StoreClock)."""
    alice = client_factory("alice")
    alice.claim("s", ttl=1)
    time.sleep(2.2)
    assert alice.step_status("s")["status"] == "expired"
    with pytest.raises(tracecraft.LostLease, match="expired"):
        alice.complete("s")
    alice.renew("s", ttl=60)      # nobody took it over: the holder may renew
    alice.complete("s")


def test_renew_keeps_the_lease_alive(client_factory, store_clock):
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    # At t=50: past the first lease (it ends at t=40) and inside the renewed one (t=70).
    alice.claim("s", ttl=40)
    store_clock.advance(30)
    alice.renew("s")
    store_clock.advance(20)
    with pytest.raises(tracecraft.Refused, match="held by alice"):
        bob.claim("s")


def test_a_skewed_client_clock_cannot_steal_a_live_lease(client_factory):
    alice = client_factory("alice")
    alice.claim("s", ttl=60)
    thief = client_factory("thief")
    thief.clock = lambda: time.time() + 7200    # two hours ahead
    with pytest.raises(tracecraft.Refused, match="held by alice"):
        thief.claim("s")
    assert thief.step_status("s")["lease_left"] > 50


def test_release_lets_another_agent_claim_with_the_next_generation(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.claim("s")
    alice.release("s")
    assert alice.step_status("s")["status"] == "pending"
    assert bob.claim("s")["generation"] == 2


def test_claim_again_by_holder_is_idempotent(client_factory):
    alice = client_factory("alice")
    alice.claim("s")
    again = alice.claim("s")
    assert again["already_held"] is True and again["generation"] == 1


def test_ended_steps_are_final(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.claim("s")
    alice.complete("s", note="all yours")
    with pytest.raises(tracecraft.Refused, match="already complete"):
        bob.claim("s")
    with pytest.raises(tracecraft.Refused, match="already complete"):
        alice.complete("s")
    with pytest.raises(tracecraft.Refused, match="already complete"):
        bob.complete("s", force=True)


def test_force_is_recorded(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.claim("s")
    with pytest.raises(tracecraft.LostLease, match="held by alice"):
        bob.complete("s")
    record = bob.complete("s", force=True, note="alice vanished")
    assert record["forced"] is True and record["ended_by"] == "bob" and record["holder"] == "alice"
    info = bob.step_status("s")
    assert info["forced"] is True and info["ended_by"] == "bob" and info["note"] == "alice vanished"


def claim_lands_before_the_next_write(writer, claimant, step):
    """Make `writer`'s next write of the step's lease find `claimant`'s claim there first."""
    real_put = writer.store.put

    def put(key, *args, **kwargs):
        if key.endswith(f"/steps/{step}/claim.json"):
            writer.store.put = real_put
            claimant.claim(step)
        return real_put(key, *args, **kwargs)
    writer.store.put = put


@pytest.mark.parametrize("before", ["unclaimed", "expired"])
def test_a_forced_end_acts_on_what_it_read(client_factory, store_clock, before):
    """A claim that lands between a forced completion's read and its write is not ended by it:
    the forcer is told the lease changed, and the new holder keeps the step."""
    alice, bob, carol = (store_clock.wrap(client_factory(n)) for n in ("alice", "bob", "carol"))
    if before == "expired":
        alice.claim("s", ttl=30)
        store_clock.advance(32)
    claim_lands_before_the_next_write(bob, carol, "s")
    with pytest.raises(tracecraft.LostLease, match="changed meanwhile .carol holds it now"):
        bob.complete("s", force=True)
    info = bob.step_status("s")
    assert info["status"] == "in_progress" and info["holder"] == "carol"
    assert carol.complete("s")["ended_by"] == "carol"


def test_an_ended_lease_is_never_remembered(client_factory):
    """complete() forgets the lease before anything else: a status.json write that fails must not
    leave the ended lease remembered, to be acted on by a later call."""
    alice = client_factory("alice")
    alice.claim("s")
    real_put = alice.store.put

    def failing(key, *args, **kwargs):
        if key.endswith("/status.json"):
            raise tracecraft.Unreachable("the store went away")
        return real_put(key, *args, **kwargs)
    alice.store.put = failing
    with pytest.raises(tracecraft.Unreachable):
        alice.complete("s")
    alice.store.put = real_put
    assert alice.records.remembered(alice.steps.key("s", "claim")) is None
    with pytest.raises(tracecraft.Refused, match="already complete"):
        alice.complete("s")                       # which also writes the missing status.json
    assert json.loads(alice.store.get(alice.steps.key("s", "status")).body)["status"] == "complete"


def test_an_agent_without_an_id_is_told_so_before_any_request(tmp_path):
    observer = tracecraft.connect(project="p", backend="local", root=str(tmp_path),
                                  config=None, read_only=True)
    observer.store = counting = CountingStore(observer.store)
    for action in (observer.renew, observer.release, observer.complete, observer.claim):
        with pytest.raises(tracecraft.UsageError, match="no agent id"):
            action("s")
    assert counting.calls == 0


def test_failed_and_blocked_stop_wait_for(client_factory):
    alice = client_factory("alice")
    alice.claim("a")
    alice.complete("a")
    alice.claim("b")
    alice.complete("b", status="failed", note="tests are red")
    with pytest.raises(tracecraft.StepEnded, match="step b ended failed.*tests are red"):
        alice.wait_for(["a", "b"], timeout=5)
    alice.claim("c")
    alice.complete("c", status="blocked", note="needs a key")
    assert alice.step_status("c")["status"] == "blocked"
    with pytest.raises(tracecraft.StepEnded, match="blocked"):
        alice.wait_for(["c"], timeout=5)


def test_wait_for_returns_statuses(client_factory):
    alice = client_factory("alice")
    for step in ("a", "b"):
        alice.claim(step)
    alice.complete("a", note="n1")
    alice.complete("b")
    done = alice.wait_for(["a", "b", "a"], timeout=1)
    assert set(done) == {"a", "b"} and done["a"]["note"] == "n1"
    for timeout in (0.3, 1.0):
        started = time.monotonic()
        with pytest.raises(tracecraft.WaitTimeout, match="waiting for: c"):
            alice.wait_for(["a", "c"], timeout=timeout)
        assert timeout <= time.monotonic() - started < timeout + 3   # on a busy box


def test_heartbeat_renews_every_held_lease(client_factory, store_clock):
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    alice.claim("x", ttl=40)
    alice.claim("y", ttl=40)
    store_clock.advance(30)
    record = alice.heartbeat()
    assert sorted(record["holding"]) == ["x", "y"]
    store_clock.advance(20)       # past the first leases, inside the renewed ones
    for step in ("x", "y"):
        with pytest.raises(tracecraft.Refused, match="held by alice"):
            bob.claim(step)
    listed = {a["agent"]: a for a in bob.agents()}
    assert listed["alice"]["state"] == "online" and sorted(listed["alice"]["holding"]) == ["x", "y"]
    alice.complete("x")
    assert {a["agent"]: a for a in bob.agents()}["alice"]["holding"] == ["y"]


@pytest.mark.parametrize("memory", ["shared", "separate"])
def test_the_same_agent_ending_a_step_twice_at_once_succeeds_once(atomic_settings, memory,
                                                                  client_factory_atomic, tmp_path):
    """Two processes of one agent complete the same step at the same instant, sharing what the
    agent remembers (two terminals of one machine) or not (two machines): one is told it did,
    the other that the step is already complete, and one note is kept.  Both used to be told
    they succeeded."""
    rounds = 16
    holder = client_factory_atomic("same")
    for r in range(rounds):
        holder.claim(f"step-{r}")
    holder.close()                                   # its leases are remembered for the racers
    envs = [{"RACER_ROUND_GAP": "0.2"}, {"RACER_ROUND_GAP": "0.2"}] if memory == "shared" else \
        [{"XDG_CACHE_HOME": str(tmp_path / f"machine{i}"), "RACER_ROUND_GAP": "0.2"}
         for i in range(2)]
    results = racer_outputs(race([("complete", atomic_settings, "same", rounds)] * 2, envs=envs))
    overlapped = 0
    observer = client_factory_atomic("observer")
    for r in range(rounds):
        a, b = results[0][r], results[1][r]
        assert a["won"] != b["won"], f"round {r}: {a} {b}"
        overlapped += a["began"] < b["ended"] and b["began"] < a["ended"]
        winner, loser = (a, b) if a["won"] else (b, a)
        assert "already complete (by same, this agent)" in loser["said"], loser
        info = observer.step_status(f"step-{r}")
        assert info["status"] == "complete" and info["note"] == f"by process {winner['pid']}"
    # evidence that they raced: a completion takes milliseconds, so on a busy machine only some
    # rounds overlap to the millisecond; without any, this would prove nothing
    assert overlapped >= 3, f"only {overlapped} of {rounds} rounds really raced"


def test_wait_for_reports_a_later_step_failing_and_returns_when_all_complete(client_factory):
    """Idle rounds read the first pending step's lease; the others are read in turn, so a
    later step that fails still ends the wait."""
    alice = client_factory("alice")
    for step in ("a", "b", "c"):
        alice.claim(step)
    boss = client_factory("boss")
    threading.Timer(0.5, lambda: alice.complete("c", status="failed", note="red")).start()
    boss.store = recording = Recording(boss.store)
    with pytest.raises(tracecraft.StepEnded, match="step c ended failed.*red"):
        boss.wait_for(["a", "b", "c"], timeout=60)
    reads = [key.split("/")[-2] for name, key in recording.calls if name == "get"]
    assert reads[:3] == ["a", "b", "c"] and reads.count("a") > reads.count("c")
    for step in ("d", "e"):
        alice.claim(step)

    def complete():
        alice.complete("e")
        alice.complete("d")
    threading.Timer(0.5, complete).start()
    assert set(boss.wait_for(["d", "e"], timeout=60)) == {"d", "e"}

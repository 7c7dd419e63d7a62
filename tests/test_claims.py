"""Claims under real concurrency: many processes, one winner, on stores that are truly atomic."""
import json
import subprocess
import sys
import time

import pytest

from conftest import REPO
import tracecraft

RACERS, ROUNDS = 20, 10


def test_one_winner_per_step_among_racing_processes(atomic_settings, client_factory_atomic):
    client_factory_atomic("warmup")   # creates the bucket before the race starts
    start = time.time() + 3.0         # time for 20 interpreters to start on 2 cores
    procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "racer.py"), "claim",
                               json.dumps(atomic_settings), f"racer{i}", str(start), str(ROUNDS)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(RACERS)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append([json.loads(line) for line in out.splitlines()])
    assert all(len(r) == ROUNDS for r in results)
    for round_ in range(ROUNDS):
        winners = [f"racer{i}" for i, r in enumerate(results) if r[round_]["won"]]
        assert len(winners) == 1, f"round {round_}: winners {winners}"
        holder = client_factory_atomic("observer").step_status(f"step-{round_}")["holder"]
        assert holder == winners[0]
        losers = [r[round_]["holder"] for r in results if not r[round_]["won"]]
        assert all(f"held by {winners[0]}" in text for text in losers)


def test_claim_again_by_holder_is_idempotent(client_factory):
    alice = client_factory("alice")
    alice.claim("s")
    assert alice.claim("s")["already_held"] is True


def test_completed_step_cannot_be_claimed(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.claim("s")
    alice.complete("s", note="all yours")
    with pytest.raises(tracecraft.Refused, match="already complete"):
        bob.claim("s")


def test_wait_for_returns_statuses(client_factory):
    alice = client_factory("alice")
    alice.complete("a", note="n1")
    alice.complete("b")
    done = alice.wait_for(["a", "b", "a"], timeout=1)
    assert set(done) == {"a", "b"} and done["a"]["note"] == "n1"
    with pytest.raises(tracecraft.WaitTimeout, match="c"):
        alice.wait_for(["a", "c"], timeout=0.3)

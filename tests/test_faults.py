"""Section 3's retry policy under injected faults: nothing lost, nothing duplicated.

Every test runs against SeaweedFS behind FaultProxy, which fails 20% of requests: connections
dropped before or after the store saw the request, 500/503 answers before or after it acted,
delays, responses cut short.  The figures are printed (run pytest with -s to see them)."""
import json
import os
import time

import pytest

import tracecraft
from conftest import (CLI, assert_rounds_raced, clean_env, race, raced, racer_outputs,
                      stop_readers, texts_read)
from fakes import FaultProxy
from scenario import run_seed_scenario

RATE = 0.2


@pytest.fixture
def faulty(seaweed, bucket_name, monkeypatch):
    """Settings for SeaweedFS seen through a 20% fault proxy; the retry budget is raised so
    that a run of bad luck (0.2^12) is not mistaken for a store that is down."""
    monkeypatch.setenv("TRACECRAFT_MAX_ATTEMPTS", "12")
    monkeypatch.setenv("TRACECRAFT_TIMEOUT", "60")
    tracecraft.open_store({"backend": "s3", "endpoint": seaweed.endpoint,
                           "access_key": seaweed.access_key, "secret_key": seaweed.secret_key,
                           "bucket": bucket_name}).ensure_bucket()
    # The faults are drawn from a seed: FAULT_SEED=<seed> replays a failed run's faults (the
    # order in which racing processes meet them still varies).
    seed = int(os.environ.get("FAULT_SEED") or time.time())
    proxy = FaultProxy(seaweed.endpoint, rate=RATE, seed=seed)
    settings = {"backend": "s3", "endpoint": proxy.endpoint, "access_key": seaweed.access_key,
                "secret_key": seaweed.secret_key, "region": "us-east-1", "bucket": bucket_name}
    print(f"\nfault proxy seed: {seed} (FAULT_SEED={seed} replays it)")   # shown on failure
    yield settings, proxy
    proxy.stop()
    print(f"faults injected: {json.dumps(proxy.counts)}")


def test_seed_scenario_completes(faulty, tmp_path):
    settings, proxy = faulty
    run_seed_scenario(settings, tmp_path, extra_env={"TRACECRAFT_MAX_ATTEMPTS": "12"})
    assert sum(proxy.counts[k] for k in FaultProxy.KINDS) > 0


def test_a_thousand_messages_arrive_exactly_once(faulty):
    """4 senders x 250 messages to two agents and everyone, through 20% faults."""
    settings, proxy = faulty
    procs = race([("send", settings, f"s{i}", 250, 0) for i in range(4)]
                 + [("read", settings, agent, 0) for agent in ("r1", "r1", "r2", "r2")])
    senders, readers = procs[:4], procs[4:]
    runs = racer_outputs(senders, timeout=600)
    sent = [m for run in runs for m in run]
    stop_readers(readers)
    got = racer_outputs(readers, timeout=600)
    assert raced(*runs), "the senders did not send at the same time"
    assert len(sent) == 1000
    for agent, readers in (("r1", got[0:2]), ("r2", got[2:4])):
        assert all(readers) and raced(*readers), f"the readers of {agent} did not race"
        received = texts_read(readers[0] + readers[1])
        expected = sorted(m["text"] for m in sent if m["to"] in (agent, "_broadcast"))
        assert sorted(received) == expected, (agent, len(received), len(expected))
    print(f"\n1,000 messages, 0 lost, 0 duplicated; proxy: {proxy.counts}")


def test_four_processes_fifty_increments(faulty):
    settings, proxy = faulty
    runs = racer_outputs(race([("memincr", settings, f"w{i}", 50) for i in range(4)]),
                         timeout=600)
    assert raced(*runs), "the processes did not run at the same time"
    with tracecraft.connect(project="race", agent="observer", **settings) as client:
        assert client.memory.get("counter") == 200
        assert client.memory.record("counter")["revision"] == 200


def test_twenty_racers_one_winner_who_knows_it(faulty):
    settings, proxy = faulty
    rounds = 3
    results = racer_outputs(race([("claim", settings, f"racer{i}", rounds) for i in range(20)]),
                            timeout=600)
    assert_rounds_raced([[r[n] for r in results] for n in range(rounds)])
    with tracecraft.connect(project="race", agent="observer", **settings) as client:
        for n in range(rounds):
            winners = [f"racer{i}" for i, r in enumerate(results) if r[n]["won"]]
            assert len(winners) == 1, (n, winners)
            assert client.step_status(f"step-{n}")["holder"] == winners[0]


def test_a_store_that_keeps_failing_is_exit_4_within_the_deadline(seaweed, tmp_path, bucket_name):
    proxy = FaultProxy(seaweed.endpoint, rate=1.0, kinds=("error_before",))
    try:
        runner = CLI(tmp_path, dict(clean_env(tmp_path), TRACECRAFT_MAX_ATTEMPTS="3"))
        started = time.monotonic()
        result = runner("init", "--project", "p", "--agent", "a", "--endpoint", proxy.endpoint,
                        "--bucket", bucket_name, "--access-key", seaweed.access_key,
                        "--secret-key", seaweed.secret_key)
        assert result.returncode == 4
        assert "the store answered 50" in result.stderr and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert time.monotonic() - started < 10
        assert proxy.counts["requests"] == 3
    finally:
        proxy.stop()

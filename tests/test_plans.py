"""Section 6e (plans): steps with dependencies, what is ready, `next` for a fleet, reopening,
and the structured handoffs a step ends with."""
import json
import subprocess
import sys
import threading
import time

import pytest

import tracecraft
from conftest import ATOMIC_BACKENDS, assert_rounds_raced, most_at_once, race, racer_outputs

PLAN = "lint:\ntest: lint\nbuild: lint\n# the last one\ndeploy: test build\n"


def waiting_for(client, meanwhile):
    """What client.next(wait=20) returns when `meanwhile()` runs while it waits."""
    got = {}
    waiter = threading.Thread(target=lambda: got.update(step=client.next(wait=20)))
    waiter.start()
    time.sleep(0.5)
    meanwhile()
    waiter.join(30)
    return got["step"]


def states(client):
    return {s["step"]: s["state"] for s in client.plans.show()["steps"]}


def test_a_plan_loads_from_text_or_json_and_loading_it_twice_changes_nothing(local_cli):
    loaded = json.loads(local_cli.ok("plan", "load", "-", "--json", stdin=PLAN))
    assert loaded == {"added": ["lint", "test", "build", "deploy"], "unchanged": [],
                      "ready": ["lint"]}
    again = json.loads(local_cli.ok("plan", "load", "-", "--json", stdin=PLAN))
    assert again == {"added": [], "unchanged": ["lint", "test", "build", "deploy"], "ready": []}
    as_json = [{"step": "lint"}, {"step": "test", "after": ["lint"]},
               {"step": "build", "after": ["lint"]}, {"step": "deploy", "after": ["test", "build"]}]
    (local_cli.cwd / "plan.json").write_text(json.dumps({"steps": as_json}))
    assert json.loads(local_cli.ok("plan", "load", "plan.json", "--json"))["added"] == []
    shown = json.loads(local_cli.ok("plan", "show", "--json"))
    assert [(s["step"], s["state"], s["after"]) for s in shown["steps"]] == [
        ("lint", "ready", []), ("test", "waiting", ["lint"]), ("build", "waiting", ["lint"]),
        ("deploy", "waiting", ["test", "build"])]
    assert set(shown["steps"][0]) == {"step", "state", "after", "labels", "priority", "note",
                                      "holder"}
    # a step's dependencies never change: planning it differently is refused, naming it
    changed = local_cli("plan", "add", "deploy", "--after", "lint")
    assert changed.returncode == 1 and "deploy is already in the plan, differently" in \
        changed.stderr
    human = local_cli.ok("plan", "show")
    assert "PLAN  4 steps: 1 ready, 3 waiting" in human and "deploy" in human


def test_cycles_and_unknown_dependencies_are_refused_naming_them(local_cli):
    cycle = local_cli("plan", "load", "-", stdin="a: c\nb: a\nc: b\n")
    assert cycle.returncode == 1 and "cycle: a -> c -> b -> a" in cycle.stderr, cycle.stderr
    itself = local_cli("plan", "add", "x", "--after", "x")
    assert itself.returncode == 1 and "cycle: x -> x" in itself.stderr
    unknown = local_cli("plan", "load", "-", stdin="a:\nb: a typo\n")
    assert unknown.returncode == 1 and "unknown dependencies" in unknown.stderr \
        and "typo" in unknown.stderr
    assert json.loads(local_cli.ok("plan", "show", "--json"))["steps"] == []   # nothing written
    bad = local_cli("plan", "load", "-", stdin="this line has no colon\n")
    assert bad.returncode == 2 and "plan line 1" in bad.stderr
    for junk in ('{"steps": 3}', '[{"step": "a", "after": "b"}]', '[{"step": "a", "x": 1}]',
                 '[{"step": "a", "priority": 1.5}]', '[{"step": "a/b"}]', "[1]", "{"):
        result = local_cli("plan", "load", "-", stdin=junk)
        assert result.returncode == 2 and "Traceback" not in result.stderr, (junk, result.stderr)


def test_next_takes_the_highest_priority_then_plan_order_and_labels(client_factory):
    alice = client_factory("alice")
    alice.plans.load([{"step": "low"}, {"step": "first"}, {"step": "second"},
                      {"step": "urgent", "priority": 5}, {"step": "gpu", "labels": ["gpu"]}])
    assert [r["step"] for r in alice.ready()["ready"]] == ["urgent", "low", "first", "second",
                                                           "gpu"]
    assert alice.next(label="gpu")["step"] == "gpu"
    assert [alice.next()["step"] for _ in range(4)] == ["urgent", "low", "first", "second"]
    with pytest.raises(tracecraft.NotFound, match="5 in progress"):
        alice.next()
    with pytest.raises(tracecraft.NotFound):
        alice.next(label="gpu")


def test_next_gives_the_note_and_the_handoffs_of_the_dependencies(local_cli):
    local_cli.ok("plan", "add", "design", "--note", "mockups first")
    local_cli.ok("plan", "add", "build", "--after", "design", "--note", "use make")
    first = json.loads(local_cli.ok("next", "--json"))
    assert first["step"] == "design" and first["note"] == "mockups first" and first["ended"] is False
    assert first["lease"]["holder"] == "designer" and first["lease"]["generation"] == 1
    nothing = local_cli("next")
    assert nothing.returncode == 1 and "nothing is ready" in nothing.stderr
    local_cli.ok("complete", "design", "--note", "in artifacts/design",
                 "--next-action", "wire the API")
    got = json.loads(local_cli.ok("next", "--json"))
    assert {"step", "note", "after", "handoffs"} <= set(got)
    assert got["after"] == ["design"] and got["note"] == "use make"
    assert got["handoffs"] == [{"step": "design", "status": "complete", "by": "designer",
                                "note": "in artifacts/design", "next_agent": None,
                                "next_action": "wire the API", "changed_files": [],
                                "needs_review": False}]
    local_cli.ok("complete", "build")
    ended = local_cli("next", "--wait", "5")
    assert ended.returncode == 0 and "Every planned step has ended" in ended.stdout
    ended = json.loads(local_cli.ok("next", "--wait", "5", "--json"))
    assert set(ended) == set(got) | {"ended"}   # the same keys as when a step is claimed
    assert ended["step"] is None and ended["ended"] is True and ended["lease"] is None


def test_complete_refuses_a_step_whose_dependencies_are_not_complete(client_factory):
    alice = client_factory("alice")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}])
    alice.claim("b")
    with pytest.raises(tracecraft.Refused, match="b waits for a, not complete yet"):
        alice.complete("b")
    assert alice.complete("b", status="failed")["status"] == "failed"   # failing is always allowed
    alice.claim("a")
    assert alice.complete("a")["status"] == "complete"
    alice.plans.add("c", after=["a"])
    alice.plans.add("d", after=["c"])
    assert alice.complete("d", force=True)["forced"] is True


def test_a_failed_dependency_blocks_its_dependents_until_it_is_reopened(cli):
    cli.ok("plan", "load", "-", stdin="a:\nb: a\nc: b\n")
    cli.ok("next")
    cli.ok("complete", "a", "--status", "failed", "--note", "flaky disk")
    ready = json.loads(cli("ready", "--json").stdout)
    assert ready["ready"] == [] and ready["blocked"] == [
        {"step": "b", "after": "a", "status": "failed", "by": "designer", "note": "flaky disk"}]
    shown = json.loads(cli.ok("plan", "show", "--json"))
    assert [s["state"] for s in shown["steps"]] == ["failed", "blocked", "blocked"]
    status = json.loads(cli.ok("status", "--json"))
    assert [b["step"] for b in status["blocked"]] == ["b"]
    assert "BLOCKED IN THE PLAN" in cli.ok("status")
    assert cli("reopen", "b").returncode == 1   # only a failed or blocked step
    reopened = json.loads(cli.ok("reopen", "a", "--json"))
    assert reopened["status"] == "pending" and reopened["generation"] == 1
    assert json.loads(cli.ok("ready", "--json"))["blocked"] == []
    again = json.loads(cli.ok("next", "--json"))
    assert again["step"] == "a" and again["lease"]["generation"] == 2   # generations continue
    cli.ok("complete", "a")
    assert json.loads(cli.ok("next", "--json"))["step"] == "b"
    with tracecraft.connect(project="proj", agent="x", config=None, **cli.settings) as tc:
        history = tc.steps.lease("a").record["holders"]
    assert [h["how"] for h in history] == ["reopened", "failed"]
    assert history[1]["note"] == "flaky disk" and history[1]["agent"] == "designer"


def test_a_blocked_step_is_blocked_with_the_short_flag(local_cli):
    local_cli.ok("plan", "load", "-", stdin="a:\nb: a\n")
    local_cli.ok("next")
    local_cli.ok("complete", "a", "--blocked", "--note", "needs a key")
    shown = json.loads(local_cli.ok("plan", "show", "--json"))
    assert [s["state"] for s in shown["steps"]] == ["blocked", "blocked"]
    assert local_cli("complete", "a", "--blocked", "--status", "failed").returncode == 2


@pytest.mark.parametrize("settings", ATOMIC_BACKENDS, indirect=True)   # waits on leases: two stores suffice
def test_an_expired_or_released_lease_makes_its_step_ready_again(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "slow"}, {"step": "given-back"}])
    assert alice.next(ttl=1)["step"] == "slow"
    assert alice.next()["step"] == "given-back"
    alice.release("given-back")
    assert bob.next()["step"] == "given-back"   # at once: release marks it ready again
    time.sleep(2.5)
    taken = bob.next()
    assert taken["step"] == "slow" and taken["lease"]["generation"] == 2
    with pytest.raises(tracecraft.LostLease):
        alice.complete("slow")


def test_next_wait_sees_new_work_and_ends_when_everything_has_ended(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}])
    alice.next()
    assert waiting_for(bob, lambda: alice.complete("a"))["step"] == "b"
    bob.complete("b")
    assert alice.next(wait=10) is None
    alice.plans.add("late", after=["b"])   # adding to a running plan: ready at once
    assert alice.next()["step"] == "late"
    with pytest.raises(tracecraft.WaitTimeout):
        bob.next(wait=0.5)


@pytest.mark.parametrize("settings", ATOMIC_BACKENDS, indirect=True)   # waits on leases: two stores suffice
def test_a_completer_killed_before_telling_the_plan_is_repaired(client_factory, monkeypatch):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}, {"step": "c", "after": ["b"]}])
    # 2 s: a 1 s lease could expire before complete() under load (moto stamps whole seconds)
    alice.next(ttl=2)
    monkeypatch.setattr(alice.plans, "ended", lambda step, lease: None)   # died right there
    alice.complete("a")
    with pytest.raises(tracecraft.NotFound, match="1 in progress"):
        bob.next()   # a's marker says it is held, for as long as its lease could last...
    time.sleep(3.2)
    assert bob.next()["step"] == "b"   # ... then its lease is read: ended, so b is ready
    # killed after the marker went, before the dependents were marked: nothing in flight,
    # so the plan is recomputed
    monkeypatch.setattr(bob.plans, "_mark_ready", lambda *args, **kwargs: [])
    bob.complete("b")
    monkeypatch.undo()
    assert alice.next()["step"] == "c"


def test_objects_in_the_plan_written_by_another_tool_are_skipped(client_factory):
    alice = client_factory("alice")
    warnings = []
    alice.warn = warnings.append
    alice.plans.load([{"step": "a"}])
    for key, body in (("plan/steps/junk.json", b"[1]"), ("plan/steps/odd.json", b'{"after": 3}'),
                      ("plan/ready/0000000-000000000000000000-x.json", b"{" * 100),
                      ("plan/ready/short.json", b"{}"), ("plan/blocked/q.json", b"nope")):
        alice.store.put(alice.key(*key.split("/")), body)
    assert [s["step"] for s in alice.plans.show()["steps"]] == ["a"]
    assert alice.next()["step"] == "a"
    assert alice.ready()["blocked"] == []
    assert any("junk" in w for w in warnings) and any("q.json" in w for w in warnings)


def test_a_structured_handoff_names_the_next_agent_and_the_changed_files(local_cli, tmp_path):
    repo = local_cli.cwd
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    (repo / "kept.py").write_text("x")
    subprocess.run(["git", "add", "kept.py"], cwd=repo, check=True)
    subprocess.run(["git", "-c", "user.email=a@b", "-c", "user.name=a", "commit", "-qm", "c"],
                   cwd=repo, check=True)
    (repo / "kept.py").write_text("changed")
    (repo / "new file.txt").write_text("new")
    (repo / "dir").mkdir()
    (repo / "dir" / "staged.md").write_text("s")
    subprocess.run(["git", "add", "dir/staged.md"], cwd=repo, check=True)
    local_cli.ok("claim", "api")
    done = json.loads(local_cli.ok(
        "complete", "api", "--to", "reviewer", "--next-action", "review auth", "--needs-review",
        "--changed-files-from-git", "--note", "tests pass", "--json"))
    assert sorted(done["handoff"]["changed_files"]) == [".tracecraft.json", "dir/staged.md",
                                                       "kept.py", "new file.txt"]
    assert done["handoff"]["next_agent"] == "reviewer" and done["handoff"]["needs_review"]
    record = json.loads((local_cli.root / "steps" / "api" / "handoff.json").read_text())
    assert record["state"] == "needs_review" and record["schema"] == 2
    assert record["next_action"] == "review auth" and record["note"] == "tests pass"
    inbox = json.loads(local_cli.ok("inbox", "--json", agent="reviewer"))["messages"]
    assert len(inbox) == 1 and "needs review" in inbox[0]["text"] \
        and "review auth" in inbox[0]["text"] and "kept.py" in inbox[0]["text"]
    # outside a git work tree the list is empty, never an error
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    config = {"TRACECRAFT_CONFIG": str(repo / ".tracecraft.json")}
    local_cli.ok("claim", "docs", cwd=outside, env=config)
    plain = json.loads(local_cli.ok("complete", "docs", "--changed-files-from-git", "--json",
                                    cwd=outside, env=config))
    assert plain["handoff"]["changed_files"] == []
    bad = local_cli("complete", "docs", "--to", "not/an/agent")
    assert bad.returncode == 2


def test_unknown_steps_are_named_instead_of_silently_pending(local_cli):
    status = local_cli("step-status", "desing")
    assert status.returncode == 1 and "no step desing is in a plan or was ever claimed" in \
        status.stderr
    waited = local_cli("wait-for", "desing", "--timeout", "0.5")
    assert waited.returncode == 3 and "desing" in waited.stderr and "typo" in waited.stderr
    local_cli.ok("plan", "add", "design")
    quiet = local_cli("step-status", "design")
    assert quiet.stdout.startswith("pending") and "typo" not in quiet.stderr


def test_next_costs_the_same_however_many_steps_are_done(tmp_path):
    """Counted on the local store (requests do not depend on the store)."""
    from fakes import CountingStore
    alice = tracecraft.connect(project="proj", agent="alice", backend="local",
                               root=str(tmp_path / "store"), bucket="costs")

    def cost_of_next(done):
        alice.plans.load([{"step": f"d{done}-{i}"} for i in range(done)] +
                         [{"step": f"todo-{done}", "priority": -1}])
        for _ in range(done):
            alice.complete(alice.next()["step"])
        counter = alice.store = CountingStore(alice.store)
        assert alice.next()["step"] == f"todo-{done}"
        alice.store = counter.store
        return counter.calls
    few, many = cost_of_next(3), cost_of_next(120)
    alice.close()
    assert few == many <= 4, (few, many)


@pytest.mark.parametrize("layout", ["layered", "fan-out"])
def test_racing_workers_do_every_step_once_and_never_before_its_dependencies(
        atomic_settings, client_factory_atomic, layout):
    boss = client_factory_atomic("boss")
    if layout == "layered":   # 5 layers of 8, each step after two of the layer before
        plan = [{"step": f"L{layer}-{i}",
                 "after": [f"L{layer - 1}-{i}", f"L{layer - 1}-{(i + 1) % 8}"] if layer else []}
                for layer in range(5) for i in range(8)]
    else:
        plan = [{"step": "root"}] + [{"step": f"leaf-{i}", "after": ["root"]} for i in range(40)]
    boss.plans.load(plan)
    procs = race([("work", atomic_settings, f"w{i}", 30) for i in range(8)])   # 30 ms a step
    runs = racer_outputs(procs)
    done = [line for run in runs for line in run]
    assert sorted(line["step"] for line in done) == sorted(s["step"] for s in plan)   # once each
    assert all(line["generation"] == 1 for line in done)   # no takeover, no double claim
    claimed = {line["step"]: line["claimed"] for line in done}
    leases = {s["step"]: boss.step_status(s["step"]) for s in plan}
    for spec in plan:   # claimed only after each dependency had been claimed and had ended
        for dep in spec.get("after", []):
            assert claimed[spec["step"]] > claimed[dep], (spec["step"], dep)
            assert leases[spec["step"]]["claimed_at"] >= leases[dep]["ended_at"], (spec, dep)
    assert set(states(boss).values()) == {"complete"}
    assert sum(bool(run) for run in runs) >= 4   # the work was shared
    assert most_at_once([{"began": line["began"], "ended": line["claimed"]}
                         for line in done]) >= 3   # several next() calls at the same instant


@pytest.mark.parametrize("settings", ATOMIC_BACKENDS, indirect=True)   # waits on leases: two stores suffice
def test_an_idle_next_wait_lists_nothing_and_reads_one_key_a_round(client_factory):
    from fakes import Recording
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "busy"}, {"step": "after-busy", "after": ["busy"]}])
    alice.next()
    bob.store = recording = Recording(bob.store)
    with pytest.raises(tracecraft.WaitTimeout):
        bob.next(wait=2.0)
    names = [name for name, _ in recording.calls]
    # the first look at once; then, the pulse read first, a second that waiting starts from
    assert names.count("list") == 2
    rounds = [key.rsplit("/", 1)[-1] for name, key in recording.calls[
        len(names) - names[::-1].index("list") + 1:] if name == "head"]
    pulses = rounds.count("pulse.json")   # one key a round: the pulse 3 rounds in 4,
    assert len(rounds) >= 4 and pulses > len(rounds) - pulses >= 1   # the step in flight the 4th
    assert len(set(rounds)) == 2
    assert set(names) <= {"head", "list", "put"} and names.count("put") <= 1   # a heartbeat
    threading.Timer(0.5, lambda: alice.complete("busy")).start()
    assert bob.next(wait=30)["step"] == "after-busy"


def test_an_idle_next_wait_lists_again_only_when_what_it_watches_changes(client_factory):
    from fakes import Recording
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}])
    alice.next()
    recording = bob.store = Recording(bob.store)
    with pytest.raises(tracecraft.WaitTimeout):
        bob.next(wait=1.2)   # 5 rounds: a HEAD of the pulse and of a's marker each
    lists = [key for name, key in recording.calls if name == "list"]
    assert len(lists) <= 2, lists   # the first look, and one when a's marker was chosen to watch


def test_next_wait_sees_the_end_of_a_step_it_began_to_watch_only_just_now(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "a"}, {"step": "b"}])
    alice.next(), alice.next()
    take, ends = bob.plans._take, ["a", "b"]

    def look(label, ttl, cache, watch=None, repaired=False):   # each step in flight ends just
        found = take(label, ttl, cache, watch, repaired)       # after bob chose to watch it
        if watch and ends and ends[0] in watch[0]:
            alice.complete(ends.pop(0))
        return found
    bob.plans._take = look
    assert bob.next(wait=5) is None   # every planned step has ended: seen before a minute's
    assert ends == []                 # look would have seen it


def test_a_refused_load_writes_nothing_or_finishes_the_steps_it_wrote(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "lint"}, {"step": "deploy", "after": ["lint"]}])
    with pytest.raises(tracecraft.Refused, match="deploy is already in the plan, differently"):
        alice.plans.load([{"step": "fresh", "after": ["lint"]},
                          {"step": "deploy", "after": ["fresh"]}])
    assert set(states(alice)) == {"lint", "deploy"}   # refused before anything was written
    write, raced = alice.records.write, []

    def racing(key, record, **kwargs):   # bob plans `late` differently while alice loads
        if record.get("step") == "late" and not raced:
            raced.append(bob.plans.add("late", after=["lint"]))
        return write(key, record, **kwargs)
    alice.records.write = racing
    with pytest.raises(tracecraft.Refused, match="added before it: early"):
        alice.plans.load([{"step": "early", "after": ["lint"]}, {"step": "late"},
                          {"step": "later", "after": ["late"]}])
    alice.records.write = write
    assert set(states(alice)) == {"lint", "deploy", "early", "late"}
    alice.claim("lint")
    alice.complete("lint")   # early was written: lint's end makes it ready like the others
    assert {r["step"] for r in alice.ready()["ready"]} == {"deploy", "early", "late"}


def test_a_plan_held_up_by_a_failure_has_not_ended_and_a_waiter_sees_the_reopen(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}])
    alice.next()
    alice.complete("a", status="failed")
    with pytest.raises(tracecraft.NotFound, match="nothing is ready: 1 blocked"):
        bob.next()   # b never ran: not "every planned step has ended"
    assert waiting_for(bob, lambda: alice.reopen("a"))["step"] == "a"


@pytest.mark.parametrize("settings", ATOMIC_BACKENDS, indirect=True)   # waits on leases: two stores suffice
def test_a_completer_killed_before_marking_its_dependents_is_repaired_while_work_goes_on(
        client_factory, monkeypatch):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}, {"step": "long"}])
    alice.next(ttl=2), alice.next()   # (a 1 s lease could expire before complete() under load)

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed()
    monkeypatch.setattr(alice.plans, "_mark_ready", killed)
    with pytest.raises(Killed):
        alice.complete("a")   # the lease ended, b not marked ready: died right there
    monkeypatch.undo()
    time.sleep(3.2)   # a's marker is checked again once a's lease could have ended...
    assert bob.next()["step"] == "b"   # ... though `long` is in flight: no waiting for it


@pytest.mark.parametrize("settings", ["local"], indirect=True)   # counting: one backend is enough
def test_completing_a_step_with_many_dependencies_costs_the_same_however_many_are_done(
        client_factory):
    from fakes import CountingStore
    alice = client_factory("alice")

    def cost(done):   # a step after 40 others (its dependencies read from one listing)
        names = [f"d{done}-{i}" for i in range(done)] + [f"dep{done}-{i}" for i in range(40)]
        alice.plans.load([{"step": n} for n in names]
                         + [{"step": f"fin{done}", "after": names[done:]}])
        for name in names:
            alice.complete(name, force=True)
        alice.claim(f"fin{done}")
        counter = alice.store = CountingStore(alice.store)
        alice.complete(f"fin{done}")
        alice.store = counter.store
        return counter.calls
    assert cost(2) == cost(30)


def test_a_plan_file_too_large_is_refused_not_cut_short(local_cli):
    (local_cli.cwd / "big.txt").write_text("a:\n#" + "x" * tracecraft.MAX_RECORD + "\nb: a\n")
    big = local_cli("plan", "load", "big.txt")
    assert big.returncode == 2 and "larger than 8 MiB" in big.stderr, big.stderr
    assert json.loads(local_cli.ok("plan", "show", "--json"))["steps"] == []


def test_a_blocked_mark_that_is_no_longer_true_is_dropped(client_factory):
    alice = client_factory("alice")
    alice.plans.load([{"step": "a"}, {"step": "b", "after": ["a"]}, {"step": "c", "after": ["b"]}])
    alice.next()
    alice.complete("a", status="failed")
    assert [b["step"] for b in alice.ready()["blocked"]] == ["b"]
    alice.claim("b")
    alice.complete("b", force=True)   # forced to an end: b is no longer blocked by anything
    assert alice.ready()["blocked"] == []
    assert not list(alice.store.list(alice.key("plan", "blocked") + "/"))   # and it is gone


def test_text_plans_take_comments_after_the_dependencies(local_cli):
    loaded = json.loads(local_cli.ok("plan", "load", "-", "--json",
                                     stdin="lint:   # fast\ntest: lint # then this\n"))
    assert loaded["added"] == ["lint", "test"]
    shown = json.loads(local_cli.ok("plan", "show", "--json"))["steps"]
    assert [s["after"] for s in shown] == [[], ["lint"]]


def test_a_forced_end_is_not_stopped_by_a_corrupt_plan_definition(client_factory):
    alice = client_factory("alice")
    alice.plans.add("s")
    alice.store.put(alice.key("plan", "steps", "s.json"), b'{"after": "nonsense"}')
    alice.claim("s")
    with pytest.raises(tracecraft.CorruptObject):
        alice.complete("s")
    assert alice.complete("s", force=True)["status"] == "complete"


def test_next_lists_one_page_of_markers_however_many_are_ready(tmp_path, monkeypatch):
    """Counted on the local store: with more ready steps than a listing page, next lists one."""
    from fakes import Recording
    monkeypatch.setattr(tracecraft, "MARKERS_PAGE", 5)
    alice = tracecraft.connect(project="proj", agent="alice", backend="local",
                               root=str(tmp_path / "store"), bucket="pages")
    alice.plans.load([{"step": f"s{i:02d}"} for i in range(12)])
    alice.store = recording = Recording(alice.store)
    assert alice.next()["step"] == "s00"
    assert [name for name, _ in recording.calls].count("list") == 1
    for _ in range(4):
        alice.next()   # the first page is now held: the next pages are listed as needed
    recording.calls.clear()
    assert alice.next()["step"] == "s05"
    assert [name for name, _ in recording.calls].count("list") == 2
    alice.close()

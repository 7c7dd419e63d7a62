"""Path reservations (section 6f): what overlapping means, reservations as leases on the store's
clock, shared and exclusive, tied to a step, atomic across racing processes, and the git guard."""
import json
import os
import subprocess
import time

import pytest

import tracecraft
from conftest import most_at_once, race, racer_outputs, settings_for

# (a, b, overlap): the decision, pinned.  Symmetric by construction; checked both ways.
OVERLAPS = [
    ("src/api/**", "src/api/auth.py", True),
    ("src/*.py", "src/api/auth.py", False),      # another depth
    ("src/*.py", "src/a*.py", True),
    ("docs/**", "src/**", False),
    ("src/api", "src/api/auth.py", True),        # a plain name covers what is under it
    ("src/api/", "src/api/x/y.py", True),
    ("src/*", "src/api/auth.py", False),         # '*' stays within one segment
    ("**", "anything/at/all", True),
    ("**/*.py", "src/a.py", True),
    ("**/*.py", "src/a.js", True),               # conservative: src/a.js may be a directory
    ("**/*.py", "src/*.js", False),
    ("a/**/b", "a/x/y/b", True),
    ("src/[ab]*.py", "src/c*.py", False),
    ("src/[!a]*", "src/a.py", False),
    ("src/[!a]*", "src/?b", True),
    ("[a-c].txt", "[c-e].txt", True),
    ("[a-c].txt", "[d-e].txt", False),
    ("[!a-c].txt", "[a-c].txt", False),
    ("a*b.txt", "a*c.txt", False),
    ("*x*.txt", "*y*.txt", True),
    ("x?.txt", "x.txt", False),
    ("./src//api/", "src/api/**", True),         # normalised alike
]


@pytest.mark.parametrize("a, b, overlap", OVERLAPS)
def test_the_overlap_table(a, b, overlap):
    a, b = tracecraft.check_glob(a), tracecraft.check_glob(b)
    assert tracecraft.globs_overlap(a, b) is overlap
    assert tracecraft.globs_overlap(b, a) is overlap


def test_a_glob_matches_paths_as_git_names_them():
    match = tracecraft.glob_matches
    assert match("src/api/**", "src/api/auth.py") and match("src/api", "src/api/x/y")
    assert match("src/*.py", "src/a.py") and not match("src/*.py", "src/api/a.py")
    assert match("[*]", "*") and not match("[*]", "a")   # a path is never read as a glob


@pytest.mark.parametrize("glob", ["/etc/passwd", "../x", "a/../../b", "a\\b", "src/[z-a]", "",
                                  "C:/x", "a\x01b", "x" * 600])
def test_bad_globs_are_refused(glob):
    with pytest.raises(tracecraft.UsageError, match="glob"):
        tracecraft.check_glob(glob)


def test_the_command_line_reserves_lists_and_unreserves(local_cli):
    out = json.loads(local_cli.ok("reserve", "src/api/**", "--note", "auth", "--json"))
    keys = ["glob", "agent", "shared", "step", "note", "at", "expires_in"]
    [made] = out["reservations"]
    assert list(made) == keys and made["agent"] == "designer" and made["expires_in"] == 1800
    refused = local_cli("reserve", "src/api/auth.py", agent="bob")
    assert refused.returncode == 1 and "designer" in refused.stderr and "src/api/**" in refused.stderr
    assert "auth" in refused.stderr and "Traceback" not in refused.stderr
    local_cli.ok("reserve", "src/*.py", "--shared", "--ttl", "10m", agent="bob")
    listed = json.loads(local_cli.ok("reservations", "--json"))["reservations"]
    assert [(r["glob"], r["agent"], r["shared"]) for r in listed] == \
        [("src/*.py", "bob", True), ("src/api/**", "designer", False)]
    assert all(list(r) == keys for r in listed) and listed[0]["expires_in"] == 600
    assert "src/api/**  designer  exclusive" in local_cli.ok("reservations")
    gone = json.loads(local_cli.ok("unreserve", "--json"))["released"]
    assert [r["glob"] for r in gone] == ["src/api/**"] and gone[0]["expires_in"] is None
    assert "src/api/**" not in local_cli.ok("reservations")
    for args, flag in ((("reserve", "/etc"), "glob"), (("claim", "s", "--paths", "../x"), "--paths")):
        bad = local_cli(*args)
        assert bad.returncode == 2 and flag in bad.stderr and "Traceback" not in bad.stderr
    assert local_cli("step-status", "s").stdout.startswith("pending")   # nothing was claimed


def test_expiry_by_the_store_clock_and_renewal_by_heartbeat(client_factory, store_clock):
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    alice.reserve(["src/**"], ttl=30)
    store_clock.advance(20)
    alice.heartbeat()                      # renewed: 30 s from t=20
    store_clock.advance(20)                # t=40: past the first ttl, inside the renewed one
    with pytest.raises(tracecraft.Refused, match="alice"):
        bob.reserve(["src/x.py"])
    store_clock.advance(12)                # t=52: expired
    assert alice.reservations() == []
    warned = []
    alice.warn = warned.append
    alice.heartbeat()                      # too late: it is dropped, not renewed, and it is told
    assert any("expired before it was renewed" in w for w in warned)
    bob.reserve(["src/x.py"])
    assert [r["agent"] for r in bob.reservations()] == ["bob"]


def test_shared_ones_coexist_but_not_with_an_exclusive_one(client_factory):
    alice, bob, carol = (client_factory(name) for name in ("alice", "bob", "carol"))
    alice.reserve(["docs/**"], shared=True)
    bob.reserve(["docs/*.md"], shared=True)
    with pytest.raises(tracecraft.Refused, match="shared by alice"):
        carol.reserve(["docs/a.md"])
    with pytest.raises(tracecraft.Refused, match="bob"):
        alice.reserve(["docs/**"])          # exclusive now: bob's shared one overlaps
    alice.reserve(["src/**"])
    alice.reserve(["src/api/**", "src/**"])   # this agent's own never stand in its way
    assert sorted(r["glob"] for r in carol.reservations()) == \
        sorted(["docs/*.md", "docs/**", "src/**", "src/api/**"])


def test_claim_with_paths_lives_with_the_step(client_factory):
    alice, bob = client_factory("alice"), client_factory("bob")
    alice.claim("api", paths=["src/api/**"])
    [r] = bob.reservations()
    assert (r["step"], r["agent"]) == ("api", "alice") and r["expires_in"] > 1700
    with pytest.raises(tracecraft.Refused, match="alice for step api"):
        bob.claim("tests", paths=["src/api/test_auth.py"])
    assert bob.step_status("tests")["status"] == "pending"     # the refused claim was undone
    alice.complete("api", note="done")
    assert bob.reservations() == []
    bob.claim("tests", paths=["src/api/test_auth.py"])
    bob.release("tests")
    assert bob.reservations() == []


def test_a_dead_processes_step_reservations_die_with_its_lease(client_factory, store_clock):
    alice, bob = (store_clock.wrap(client_factory(name)) for name in ("alice", "bob"))
    alice.claim("a", ttl=30, paths=["lib/**"])
    alice.claim("b", ttl=300, paths=["bin/**"])
    alice.records._memo.clear()            # the process died: nobody drops them
    alice.records._unsaved.clear()
    store_clock.advance(40)                # a's lease expired
    bob.reserve(["lib/x.py"])
    bob.complete("b", force=True)          # b ended by another agent
    bob.reserve(["bin/run"])
    assert sorted(r["glob"] for r in bob.reservations()) == ["bin/run", "lib/x.py"]


def test_a_skewed_client_clock_cannot_steal_a_live_reservation(request, tmp_path, bucket_name,
                                                               monkeypatch):
    settings = settings_for(request, "seaweed", tmp_path, bucket_name)
    tracecraft.open_store(dict(settings)).ensure_bucket()
    alice = tracecraft.connect(project="p", agent="alice", **settings)
    bob = tracecraft.connect(project="p", agent="bob", **settings)
    alice.reserve(["src/**"], ttl=120)
    real = time.time
    monkeypatch.setattr(tracecraft.time, "time", lambda: real() + 600)   # bob's clock: 10 min on
    with pytest.raises(tracecraft.Refused, match="alice"):
        bob.reserve(["src/a.py"])
    monkeypatch.undo()
    assert [r["agent"] for r in bob.reservations()] == ["alice"]
    alice.close()
    bob.close()


GROUPS = [["src/**", "src/api/**", "src/api/auth.py", "src/*/auth.py", "src/api/*.py", "src/api"],
          ["docs/**", "docs/a.md", "docs/*.md", "docs/a*", "docs/[ab].md", "docs"]]


def test_twelve_processes_reserve_overlapping_globs_one_winner_per_group(atomic_settings,
                                                                         client_factory_atomic):
    racers = [(g, glob) for g, group in enumerate(GROUPS) for glob in group]
    rounds = 3
    results = racer_outputs(race([("reserve", atomic_settings, f"racer{i}", rounds)
                                  for i in range(len(racers))],
                                 envs=[{"RACER_GLOB": glob, "RACER_ROUND_GAP": "0.3"}
                                       for _, glob in racers]))
    raced = sum(most_at_once([r[n] for r in results]) >= 2 for n in range(rounds))
    assert raced >= 2, "the racers did not race"
    listed = client_factory_atomic("observer").reservations()
    for n in range(rounds):
        for g in range(len(GROUPS)):
            members = [i for i, (group, _) in enumerate(racers) if group == g]
            winners = [i for i in members if results[i][n]["won"]]
            assert len(winners) == 1, f"round {n}, group {g}: winners {winners}"
            assert all(f"racer{winners[0]}" in results[i][n]["said"]
                       for i in members if i != winners[0])
            held = [r["agent"] for r in listed if r["glob"].startswith(f"r{n}/")
                    and r["glob"].split("/")[1] == GROUPS[g][0].split("/")[0]]
            assert held == [f"racer{winners[0]}"]


def test_a_corrupt_table_is_a_clear_error(local_cli, tmp_path):
    store = tracecraft.open_store({"backend": "local", "root": str(tmp_path / "store"),
                                   "bucket": "tracecraft"})
    for body in (b"not json", json.dumps({"reservations": [{"glob": "/etc", "agent": "x"}]}).encode(),
                 json.dumps({"reservations": "all"}).encode()):
        store.put("proj/reservations/table.json", body)
        for args in (("reservations",), ("reserve", "src/**"), ("unreserve",)):
            result = local_cli(*args)
            assert result.returncode == 4, (args, result.stderr)
            assert "reservations/table.json" in result.stderr and "Traceback" not in result.stderr


def test_the_mcp_tools(client_factory):
    alice = client_factory("alice")
    result = tracecraft._tool_result(alice, "reserve", {"globs": ["src/**"], "note": "x"})
    assert not result["isError"] and result["structuredContent"]["reservations"][0]["glob"] == "src/**"
    listed = tracecraft._tool_result(alice, "reservations", {})["structuredContent"]
    assert [r["agent"] for r in listed["reservations"]] == ["alice"]
    bad = tracecraft._tool_result(alice, "reserve", {"globs": ["../x"]})
    assert bad["isError"] and "glob" in bad["content"][0]["text"]
    claimed = tracecraft._tool_result(alice, "claim", {"step": "s", "paths": ["lib/**"]})
    assert not claimed["isError"]
    gone = tracecraft._tool_result(alice, "unreserve", {})["structuredContent"]["released"]
    assert sorted(r["glob"] for r in gone) == ["lib/**", "src/**"]


def _git(work, *args, **kwargs):
    return subprocess.run(["git", *args], cwd=work, capture_output=True, text=True, **kwargs)


def test_the_guard_refuses_a_commit_on_another_agents_paths(local_cli, tmp_path):
    work = local_cli.cwd
    env = dict(local_cli.env, GIT_CONFIG_NOSYSTEM="1")
    for args in (("init", "-q"), ("config", "user.email", "d@x"), ("config", "user.name", "d")):
        assert _git(work, *args, env=env).returncode == 0
    hooks = work / ".git" / "hooks"
    hooks.mkdir(exist_ok=True)
    theirs = hooks / "pre-commit"
    theirs.write_text("#!/bin/sh\necho ran >> \"$(git rev-parse --git-dir)/chained-ran\"\n")
    theirs.chmod(0o755)
    original = theirs.read_bytes()
    local_cli.ok("guard", "install")
    installed = theirs.read_bytes()
    assert b"tracecraft guard" in installed and (hooks / "pre-commit.tracecraft-chained").exists()
    assert "already installed" in local_cli.ok("guard", "install")
    assert theirs.read_bytes() == installed

    local_cli.ok("reserve", "src/**", "--note", "refactoring", agent="bob")
    local_cli.ok("reserve", "docs/**")                      # the committer's own
    local_cli.ok("reserve", "lib/**", "--shared", agent="bob")
    for name in ("src/a.py", "docs/a.md", "lib/b.py"):
        (work / name).parent.mkdir(exist_ok=True)
        (work / name).write_text("x\n")

    def commit(*paths):
        _git(work, "add", *paths, env=env)
        return _git(work, "commit", "-qm", "m", env=env)
    refused = commit("src/a.py")
    assert refused.returncode != 0
    assert "bob" in refused.stderr and "src/**" in refused.stderr and "--no-verify" in refused.stderr
    assert (work / ".git" / "chained-ran").exists()          # the hook that was there ran first
    _git(work, "reset", "-q", env=env)
    assert commit("docs/a.md", "lib/b.py").returncode == 0    # its own, and a shared one
    # offline (here: no config found): a warning, and the commit goes ahead
    (work / "docs/a.md").write_text("z\n")
    _git(work, "add", "docs/a.md", env=env)
    away = _git(work, "commit", "-qm", "m", env=dict(env, TRACECRAFT_CONFIG=str(tmp_path / "no")))
    assert away.returncode == 0 and "not checked" in away.stderr
    local_cli.ok("guard", "uninstall")
    assert theirs.read_bytes() == original and not (hooks / "pre-commit.tracecraft-chained").exists()
    assert local_cli("guard", "uninstall").returncode == 1


def test_the_guard_outside_a_git_work_tree(local_cli):
    result = local_cli("guard", "install")
    assert result.returncode == 2 and "git" in result.stderr and "Traceback" not in result.stderr


def test_a_table_grown_with_dead_step_reservations_is_tidied(client_factory, store_clock):
    """Entries tied to steps that ended elsewhere are dropped once the table holds more than
    64: it stays bounded, whoever reserves."""
    alice = store_clock.wrap(client_factory("alice"))
    for i in range(80):   # each lease has expired by the next reservation: its entry is dead
        alice.claim(f"s{i}", ttl=1)
        alice.reservations.reserve([f"dir{i}/**"], held=alice.steps.step_status(f"s{i}"))
        store_clock.advance(5)
    table = alice.records.read(alice.key("reservations", "table.json"))[0]["reservations"]
    assert 1 <= len(table) <= 65 and table[-1]["glob"] == "dir79/**"
    assert alice.reservations() == []   # none of them is live

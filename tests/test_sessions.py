"""Section 6g (sessions): transcripts mirrored exactly once, redacted, and read back."""

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest

import tracecraft
from conftest import COMMAND, REPO
from fakes import CountingStore
from harnesses import (SECRETS, add_hermes_rows, claude_line, make_claude, make_codex,
                       make_hermes, make_openclaw)

SESSION_TAGS = ("aws-access-key-id", "anthropic", "openai", "huggingface", "github", "slack",
                "bearer", "aws-secret-access-key", "private-key")


def redacted(data):
    return tracecraft.Redactor()(data, {})


def reassembled(client, session, harness=None):
    out = io.BytesIO()
    client.sessions.read(session, harness, out)
    return out.getvalue()


@pytest.fixture
def harness_env(tmp_path, monkeypatch):
    """Each harness's home in the test's directory, as its environment variable names it."""
    homes = {"CLAUDE_CONFIG_DIR": tmp_path / "claude", "CODEX_HOME": tmp_path / "codex",
             "OPENCLAW_STATE_DIR": tmp_path / "openclaw", "HERMES_HOME": tmp_path / "hermes"}
    for name, path in homes.items():
        monkeypatch.setenv(name, str(path))
    monkeypatch.delenv("OPENCLAW_HOME", raising=False)
    return {name: str(path) for name, path in homes.items()}


# -- redaction -------------------------------------------------------------------------------

def test_every_secret_pattern_is_redacted_and_json_lines_stay_json():
    lines = [json.dumps({"type": "user", "message": {"content": f"use {secret} now"}}) + "\n"
             for secret in SECRETS]
    lines.append('{"a": "-----BEGIN EC PRIVATE KEY-----\\nabc", "b": "-----END EC PRIVATE '
                 'KEY-----"}\n')   # a key block across two JSON values: redacted value by value
    lines.append('plain text, not JSON: Bearer abcdefghijklmnopqrstuvwxyz0123\n')
    lines.append(json.dumps({"ok": "risk-assessment-of-the-new-pipeline desk-proj-x "
                             "ASIA0123 AKIAZZZZ0000ZZZZ0000X long, the bearer "
                             "responsibilities"}) + "\n")   # no secrets
    counts = {}
    out = tracecraft.Redactor(literals=[("store-secret", "s3cr3t-value-123")])(
        "".join(lines).encode() + b'{"k": "s3cr3t-value-123"}\n', counts)
    text = out.decode()
    for secret in SECRETS + ["s3cr3t-value-123"]:
        assert secret.split("\n")[min(1, secret.count("\n"))][-12:] not in text, secret
    out_lines = text.split("\n")[:-1]
    assert len(out_lines) == len(lines) + 1
    for original, line in zip(lines, out_lines):
        if original.startswith("{"):
            json.loads(line)   # still JSON
    assert out_lines[-2] == lines[-1].rstrip("\n"), "a word that only contains a prefix is no key"
    assert set(counts) >= set(SESSION_TAGS) | {"store-secret"}
    assert counts["private-key"] == 2 and counts["bearer"] == 2
    assert '"b": "-----END EC PRIVATE KEY-----"' in text   # what is between is kept
    for tag in SESSION_TAGS:
        assert f"[REDACTED:{tag}]" in text
    assert "Bearer [REDACTED:bearer]" in text   # the word stays, the token goes


def test_a_projects_own_patterns_and_bad_ones():
    counts = {}
    redactor = tracecraft.Redactor(extra={"ticket": r"TICKET-[0-9]{4}", "multi": r"a\nb"})
    assert redactor(b'{"t": "TICKET-1234"}\na\nb\n', counts) == \
        b'{"t": "[REDACTED:ticket]"}\na\nb\n'   # a pattern never spans a line
    assert counts == {"ticket": 1}
    with pytest.raises(tracecraft.ConfigError, match="not usable"):
        tracecraft.Redactor(extra={"bad": "("})
    with pytest.raises(tracecraft.UsageError):
        tracecraft.Redactor(extra={"bad/name": "x"})


# -- finding each harness's transcripts ------------------------------------------------------------

def test_each_harness_is_found_where_it_keeps_its_transcripts(tmp_path, harness_env):
    cwd = str(tmp_path / "my.project")
    older, _ = make_claude(harness_env["CLAUDE_CONFIG_DIR"], cwd)
    newer, newer_path = make_claude(harness_env["CLAUDE_CONFIG_DIR"], cwd)
    os.utime(newer_path, (time.time() + 5, time.time() + 5))
    other, _ = make_claude(harness_env["CLAUDE_CONFIG_DIR"], str(tmp_path / "other"))
    found = tracecraft.find_transcripts("claude-code", cwd)
    assert [t.session for t in found] == [newer, older]
    # another encoding of the directory name: the lines' cwd decides
    cwd2 = str(tmp_path / "a_b c")
    odd, _ = make_claude(harness_env["CLAUDE_CONFIG_DIR"], cwd2, encode=lambda p: "x-y-z")
    assert [t.session for t in tracecraft.find_transcripts("claude-code", cwd2)] == [odd]
    codex, _ = make_codex(harness_env["CODEX_HOME"], cwd)
    make_codex(harness_env["CODEX_HOME"], str(tmp_path / "other"), when="2026-12-01T08-00-00")
    assert [t.session for t in tracecraft.find_transcripts("codex", cwd)] == [codex]
    claw, _ = make_openclaw(harness_env["OPENCLAW_STATE_DIR"])
    assert [t.session for t in tracecraft.find_transcripts("openclaw", cwd)] == [claw]
    assert claw.startswith("main__")
    hermes, db = make_hermes(harness_env["HERMES_HOME"])
    try:
        assert [t.session for t in tracecraft.find_transcripts("hermes", cwd)] == [hermes]
    finally:
        db.close()


# -- mirroring -------------------------------------------------------------------------------

def test_mirror_round_trip_whole_lines_segments_and_costs(client_factory, tmp_path):
    alice = client_factory("alice")
    cwd = str(tmp_path / "w")
    session, path = make_claude(str(tmp_path / "claude"), cwd, lines=12)
    transcript = tracecraft.Transcript("claude-code", session, path, cwd)
    with open(path, "a") as f:
        f.write('{"half": "a line still being wri')
    first = alice.sessions.mirror(transcript)
    assert first["lines"] == 12 and first["parts"] == 1
    source = open(path, "rb").read()
    whole = source[:source.rindex(b"\n") + 1]
    assert reassembled(alice, session) == redacted(whole)
    meta = alice.sessions.get(session)
    assert meta["lines"] == 12 and meta["state"] == "active" and meta["agent"] == "alice"
    assert meta["redactions"] == {"anthropic": 1, "slack": 1}
    assert meta["first_event"] == "2026-12-02T10:00:00.000Z"
    # the half line waits; once it is whole it is mirrored: two requests, none when idle
    alice.store = counting = CountingStore(alice.store)
    assert alice.sessions.mirror(transcript)["parts"] == 0 and counting.calls == 0
    with open(path, "a") as f:
        f.write('tten"}\n' + claude_line(12, cwd, session))
    assert alice.sessions.mirror(transcript)["lines"] == 2 and counting.calls == 2
    assert reassembled(alice, session) == redacted(open(path, "rb").read())
    # a rewritten source (shorter, then other first bytes) starts a new segment
    before = reassembled(alice, session)
    with open(path, "w") as f:
        f.write(claude_line(0, cwd, "rotated"))
    alice.sessions.mirror(transcript)
    with open(path, "w") as f:
        f.write(claude_line(0, cwd, "rotated-again") + claude_line(1, cwd, "rotated-again"))
    alice.sessions.mirror(transcript)
    assert reassembled(alice, session) == before + redacted(
        claude_line(0, cwd, "rotated").encode() + open(path, "rb").read())
    # another agent, on another machine with no hint, reads and mirrors without doubling
    bob = client_factory("bob")
    with open(path, "a") as f:
        f.write(claude_line(2, cwd, "rotated-again"))
    assert bob.sessions.mirror(transcript)["lines"] == 1
    assert alice.sessions.mirror(transcript)["lines"] == 0
    assert reassembled(bob, session).endswith(redacted(open(path, "rb").read()))
    # --tail and stop
    tail = io.BytesIO()
    alice.sessions.read(session, "claude-code", tail, tail=2)
    assert tail.getvalue().count(b"\n") == 2 and reassembled(alice, session).endswith(tail.getvalue())
    assert alice.sessions.stop(session)["state"] == "ended"
    assert [s["session"] for s in alice.sessions.list(agent="alice")] == [session]
    assert alice.sessions.list(agent="nobody") == []


def test_a_large_transcript_is_mirrored_in_parts_and_compacted(client_factory, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(tracecraft, "PART_BYTES", 4096)
    alice = client_factory("alice")
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=200)
    transcript = tracecraft.Transcript("claude-code", session, path)
    result = alice.sessions.mirror(transcript)
    assert result["parts"] > 5 and result["lines"] == 200
    expected = redacted(open(path, "rb").read())
    assert reassembled(alice, session) == expected
    compacted = alice.sessions.compact(session)
    assert compacted["parts"] == 1 and compacted["lines"] == 200
    assert reassembled(alice, session) == expected
    parts = [e for e in alice.store.list(alice.key("sessions", "claude-code", session, "part-"))]
    assert len(parts) == 1
    with open(path, "a") as f:
        f.write(claude_line(200, str(tmp_path), session))
    alice.sessions.mirror(transcript)
    assert reassembled(alice, session) == redacted(open(path, "rb").read())


def test_hermes_rows_are_mirrored_as_json_lines(client_factory, tmp_path, harness_env):
    alice = client_factory("alice")
    session, db = make_hermes(harness_env["HERMES_HOME"])
    try:
        [transcript] = tracecraft.find_transcripts("hermes")
        assert alice.sessions.mirror(transcript)["lines"] == 6
        add_hermes_rows(db, session, 3, start=6)   # written while the WAL holds them
        assert alice.sessions.mirror(transcript)["lines"] == 3
    finally:
        db.close()
    lines = [json.loads(line) for line in reassembled(alice, session).splitlines()]
    assert [line["id"] for line in lines] == list(range(1, 10))
    assert lines[2]["content"] == {"parts": ["p2"]}   # \x00json: content is JSON
    assert "[REDACTED:anthropic]" in lines[1]["content"]
    assert set(lines[0]) >= {"session_id", "role", "content", "tool_calls", "timestamp"}


# -- exactly once: killed and racing mirrors on real stores ----------------------------------------

def test_killed_racing_mirrors_never_double_or_skip_a_byte(atomic_cli, tmp_path):
    """A writer appends (secrets and half lines included) while two followers mirror the one
    session, each killed with SIGKILL at random moments and started again; the cache of one is
    deleted on the way.  Then the reassembly is the redacted source, byte for byte."""
    session, path = make_claude(str(tmp_path / "claude"), str(atomic_cli.cwd), lines=5)
    writer = subprocess.Popen([sys.executable, str(REPO / "tests" / "harnesses.py"), "append",
                               path, "6"], cwd=atomic_cli.cwd, stdout=subprocess.PIPE)
    logs, caches = [], [tmp_path / "cache-a", tmp_path / "cache-b"]

    def start(n):
        log = open(tmp_path / f"mirror-{len(logs)}.jsonl", "w")
        logs.append(log.name)
        env = dict(atomic_cli.env, XDG_CACHE_HOME=str(caches[n]))
        return subprocess.Popen([*COMMAND, "session", "mirror", "--transcript", path,
                                 "--follow", "--interval", "0.05", "--json"],
                                cwd=atomic_cli.cwd, env=env, stdout=log,
                                stderr=subprocess.DEVNULL)
    mirrors, kills, rng = [start(0), start(1)], 0, random.Random(13)
    try:
        while writer.poll() is None:
            time.sleep(rng.uniform(0.15, 0.6))
            n = rng.randrange(2)
            mirrors[n].send_signal(signal.SIGKILL)
            mirrors[n].wait()
            kills += 1
            if kills == 4:
                subprocess.run(["rm", "-rf", str(caches[n])])   # its local state is lost
            mirrors[n] = start(n)
    finally:
        for proc in mirrors:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    writer.wait()
    atomic_cli.ok("session", "mirror", "--transcript", path)
    source = open(path, "rb").read()
    client = tracecraft.connect(project="proj", agent="reader", **atomic_cli.settings)
    try:
        assert reassembled(client, session) == redacted(source)
        meta = client.sessions.get(session)
        counts = {}
        redacted_again = tracecraft.Redactor()(source, counts)
        assert meta["lines"] == source.count(b"\n") and meta["bytes"] == len(redacted_again)
        assert meta["redactions"] == counts
    finally:
        client.close()
    flushes = [json.loads(line) for name in logs for line in open(name) if line.strip()]
    assert kills >= 6 and sum(f["parts"] for f in flushes) > 20
    assert sum(f["lost"] for f in flushes) >= 1, "the two mirrors never raced"


def test_a_compaction_is_invisible_to_readers(client_factory_atomic, tmp_path, monkeypatch):
    monkeypatch.setattr(tracecraft, "PART_BYTES", 2048)
    alice = client_factory_atomic("alice")
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=300)
    alice.sessions.mirror(tracecraft.Transcript("claude-code", session, path))
    expected = redacted(open(path, "rb").read())
    readers = [client_factory_atomic(f"r{i}") for i in range(3)]
    reads, stop = [], threading.Event()

    def read(client):
        while not stop.is_set():
            began = time.monotonic()
            got = reassembled(client, session)
            reads.append((began, time.monotonic(), got == expected))
    threads = [threading.Thread(target=read, args=(c,)) for c in readers]
    for thread in threads:
        thread.start()
    time.sleep(0.3)
    began = time.monotonic()
    assert alice.sessions.compact(session)["parts"] == 1
    ended = time.monotonic()
    time.sleep(0.3)
    stop.set()
    for thread in threads:
        thread.join()
    assert all(ok for _, _, ok in reads), "a reader saw a missing or doubled byte"
    assert any(b < ended and e > began for b, e, _ in reads), "no read overlapped the compaction"


# -- the command line, hooks, agents and status ---------------------------------------------------

def test_session_commands_and_their_json(local_cli, tmp_path):
    env = {"CLAUDE_CONFIG_DIR": str(tmp_path / "claude")}
    cwd = os.path.realpath(local_cli.cwd)
    session, path = make_claude(env["CLAUDE_CONFIG_DIR"], cwd, lines=30)
    out = json.loads(local_cli.ok("session", "mirror", "--json", env=env))
    assert out["sessions"][0]["session"] == session and out["sessions"][0]["lines"] == 30
    listed = json.loads(local_cli.ok("session", "list", "--json"))["sessions"]
    assert set(listed[0]) == {"session", "harness", "agent", "host", "cwd", "source",
                              "first_event", "last_event", "bytes", "lines", "parts", "state",
                              "redacted", "redactions", "updated"}
    assert listed[0]["agent"] == "designer" and listed[0]["cwd"] == cwd
    shown = json.loads(local_cli.ok("session", "show", session, "--tail", "3", "--json"))
    assert len(shown["tail"]) == 3 and json.loads(shown["tail"][-1])["uuid"] == "u29"
    raw = subprocess.run([*COMMAND, "session", "show", session, "--raw"], cwd=local_cli.cwd,
                         env=local_cli.env, capture_output=True).stdout
    assert raw == redacted(open(path, "rb").read())
    human = local_cli.ok("session", "show", session)
    assert "redactions:" in human and "u29" in human
    agents = json.loads(local_cli.ok("agents", "--json"))["agents"]
    assert agents[0]["sessions"] == [{"session": session, "harness": "claude-code",
                                      "state": "active", "last_event": listed[0]["last_event"]}]
    assert session in local_cli.ok("status") and session in local_cli.ok("agents")
    status = json.loads(local_cli.ok("status", "--json"))
    assert status["agents"][0]["sessions"][0]["session"] == session
    assert json.loads(local_cli.ok("session", "stop", session, "--json"))["state"] == "ended"
    assert "(ended)" in local_cli.ok("session", "show", session)
    missing = local_cli("session", "show", "no-such-session")
    assert missing.returncode == 1 and "no mirrored session" in missing.stderr
    nothing = local_cli("session", "mirror", "--harness", "codex", env=env)
    assert nothing.returncode == 1 and "no codex session" in nothing.stderr


def test_hostile_transcripts_records_and_settings(local_cli, tmp_path):
    fifo = tmp_path / "pipe.jsonl"
    os.mkfifo(fifo)
    result = local_cli("session", "mirror", "--transcript", str(fifo), timeout=20)
    assert result.returncode == 2 and "not a regular file" in result.stderr
    bad = local_cli("session", "mirror", "--transcript", str(tmp_path / "x.jsonl"),
                    "--session-id", "../up")
    assert bad.returncode == 2 and "session id" in bad.stderr
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=3)
    local_cli.ok("session", "mirror", "--transcript", path)
    meta = local_cli.root / "sessions" / "claude-code" / session / "meta.json"
    meta.write_text('{"session": "x", "parts": [[1, "two"]]}')
    shown = local_cli("session", "show", session)
    assert shown.returncode == 4 and "not a tracecraft record" in shown.stderr
    listed = local_cli("session", "list")
    assert listed.returncode == 0 and "skipped" in listed.stderr
    config = json.loads((local_cli.cwd / ".tracecraft.json").read_text())
    config["redact_patterns"] = {"broken": "(unclosed"}
    (local_cli.cwd / ".tracecraft.json").write_text(json.dumps(config))
    result = local_cli("session", "mirror", "--transcript", path, "--session-id", "other")
    assert result.returncode == 4 and "broken" in result.stderr
    for result in (bad, shown, listed, result):
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr


def hook(cli, event, session, path, cwd, **more):
    payload = dict({"session_id": session, "transcript_path": path, "cwd": str(cwd),
                    "hook_event_name": event}, **more)
    return cli("session", "hook", stdin=json.dumps(payload), timeout=20)


def test_claude_code_hooks_record_a_session_and_deliver_messages(local_cli, tmp_path):
    settings = local_cli.cwd / ".claude" / "settings.json"
    settings.parent.mkdir()
    settings.write_text(json.dumps({"permissions": {"allow": ["Bash(ls)"]}, "hooks": {
        "Stop": [{"matcher": "", "hooks": [{"type": "command", "command": "echo theirs"}]}]}}))
    local_cli.ok("hooks", "claude-code", "--install", "--inbox")
    local_cli.ok("hooks", "claude-code", "--install", "--inbox")   # twice: nothing doubles
    merged = json.loads(settings.read_text())
    assert merged["permissions"] == {"allow": ["Bash(ls)"]}
    commands = {event: [h["command"] for g in groups for h in g["hooks"]]
                for event, groups in merged["hooks"].items()}
    assert set(commands) == {"SessionStart", "Stop", "SessionEnd", "UserPromptSubmit"}
    assert commands["Stop"][0] == "echo theirs" and len(commands["Stop"]) == 2
    assert all(len([c for c in found if "session hook" in c]) == 1 for found in commands.values())
    printed = json.loads(local_cli.ok("hooks", "claude-code", "--json"))
    assert set(printed["hooks"]) == {"SessionStart", "Stop", "SessionEnd"}

    session, path = make_claude(str(tmp_path / "claude"), str(local_cli.cwd), lines=4)
    started = hook(local_cli, "SessionStart", session, path, local_cli.cwd, source="startup")
    assert started.returncode == 0 and started.stdout == ""
    again = hook(local_cli, "SessionStart", session, path, local_cli.cwd, source="resume")
    assert again.returncode == 0 and again.stdout == ""   # one background mirror, not two
    deadline = time.time() + 30
    while time.time() < deadline:
        result = local_cli("session", "show", session, "--json")
        if result.returncode == 0 and json.loads(result.stdout)["lines"] == 4:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the background mirror never mirrored the session")
    def mirrors():
        return subprocess.run(["pgrep", "-f", f"session-id {session}"], capture_output=True,
                              text=True).stdout.split()
    deadline = time.time() + 10
    while len(mirrors()) > 1 and time.time() < deadline:   # the second gives way to the first
        time.sleep(0.1)
    assert len(mirrors()) == 1
    with open(path, "a") as f:
        f.write(claude_line(4, str(local_cli.cwd), session))
    stopped = hook(local_cli, "Stop", session, path, local_cli.cwd, stop_hook_active=False)
    assert stopped.returncode == 0 and stopped.stdout == ""
    assert json.loads(local_cli.ok("session", "show", session, "--json"))["lines"] == 5
    ended = hook(local_cli, "SessionEnd", session, path, local_cli.cwd, reason="exit")
    assert ended.returncode == 0 and ended.stdout == ""
    assert json.loads(local_cli.ok("session", "show", session, "--json"))["state"] == "ended"
    deadline = time.time() + 10
    while subprocess.run(["pgrep", "-f", f"session-id {session}"],
                         capture_output=True).returncode == 0:
        assert time.time() < deadline, "the background mirror outlived its session"
        time.sleep(0.1)
    # UserPromptSubmit: nothing at all when there is no message, the messages when there are
    quiet = hook(local_cli, "UserPromptSubmit", session, path, local_cli.cwd, prompt="go on")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    local_cli.ok("send", "designer", "tests are red <b>", agent="reviewer")
    told = hook(local_cli, "UserPromptSubmit", session, path, local_cli.cwd, prompt="go on")
    assert told.returncode == 0 and "reviewer: tests are red <b>" in told.stdout
    garbage = local_cli("session", "hook", stdin="not json")
    assert garbage.returncode == 1 and garbage.stdout == "" and "hook" in garbage.stderr


def test_mcp_session_tools(local_cli, tmp_path):
    pytest.importorskip("mcp")
    from test_mcp import call, data, server
    import anyio
    from mcp import ClientSession
    from mcp.client.stdio import stdio_client
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=6)
    local_cli.ok("session", "mirror", "--transcript", path)

    async def scenario():
        async with stdio_client(server(local_cli, "reviewer")) as (r, w):
            async with ClientSession(r, w) as mcp:
                await mcp.initialize()
                listed = data(await call(mcp, "session_list"))["sessions"]
                assert [s["session"] for s in listed] == [session]
                shown = data(await mcp.call_tool("session_show", {"session": session, "tail": 2}))
                assert len(shown["tail"]) == 2 and shown["lines"] == 6
                bad = await mcp.call_tool("session_show", {"session": session, "tail": -1})
                assert bad.is_error and "tail" in bad.content[0].text
    anyio.run(scenario)


def test_a_following_mirror_with_nothing_new_asks_the_store_nothing(seaweed, tmp_path,
                                                                    bucket_name):
    """Counted at a proxy in front of SeaweedFS: a follower looking every 0.1 s at a transcript
    that does not change makes no request; a new line costs two (the part, the list)."""
    sys.path.insert(0, str(REPO / "tests" / "bench"))
    from proxy import CountingProxy
    from conftest import CLI, clean_env
    host, port = seaweed.endpoint.rsplit("//", 1)[1].split(":")
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=5)
    with CountingProxy(host, int(port)) as proxy:
        work = tmp_path / "work"
        work.mkdir()
        cli = CLI(work, clean_env(tmp_path))
        cli.ok("init", "--project", "proj", "--agent", "mirror", "--bucket", bucket_name,
               "--endpoint", proxy.endpoint, "--access-key", seaweed.access_key,
               "--secret-key", seaweed.secret_key)
        follower = subprocess.Popen([*COMMAND, "session", "mirror", "--transcript", path, "-f",
                                     "--interval", "0.1", "--json"], cwd=work, env=cli.env,
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert json.loads(follower.stdout.readline())["lines"] == 5
            time.sleep(0.5)   # the follower's exit paths and heartbeat are not part of a look
            mark = proxy.log.mark()
            time.sleep(2)
            assert proxy.log.labels(mark) == []
            with open(path, "a") as f:
                f.write(claude_line(5, str(tmp_path), session))
            assert json.loads(follower.stdout.readline())["lines"] == 1
            assert sorted(proxy.log.labels(mark)) == ["PUT-cas session-meta",
                                                      "PUT-create session-part"]
        finally:
            follower.kill()
            follower.wait()


# -- what an attack on the mirror found (each test pins a class) ----------------------------------

def test_secrets_after_escapes_colours_and_in_every_form_are_redacted():
    lines = [{"content": "sk-proj-" + "A1b2" * 6 + "\nsk-ant-api03-" + "x9Y8" * 6},
             {"content": "token list:\nghp_" + "a1B2c3D4e5" * 4},
             {"content": "KEY\tsk-ant-" + "q" * 30}, {"content": "\u001b[32mghp_" + "Z9" * 20},
             {"content": "ids:\nAKIAIOSFODNN7EXAMPLE"}, {"content": "\nBearer abc123def456ghi789"},
             {"content": "\nhf_" + "k" * 34}, {"content": "secret:\nstore-secret-value-1"},
             {"Credentials": {"AccessKeyId": "ASIAIOSFODNN7EXAMPLE",
                              "SecretAccessKey": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
                              "SessionToken": "IQoJb3JpZ2luX2Vj" * 8}},
             {"content": "Aws_Secret_Access_Key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"},
             {"content": "xapp-1-A0123456789-abcdefghij"},
             {"content": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA\nAAAA"},
             {"content": "-----BEGIN PGP PRIVATE KEY BLOCK-----\nlQOYBF0\n-----END PGP PRIVATE "
                         "KEY BLOCK-----"},
             {"a": "-----BEGIN PRIVATE KEY-----abc", "important": "keep me",
              "c": "-----END PRIVATE KEY-----"}]
    data = "".join(json.dumps(line) + "\n" for line in lines).encode()
    data += b'{"n": 1e400, "same": 1, "same": 2, "k": "-----BEGIN PRIVATE KEY-----x"}\n'
    counts = {}
    out = tracecraft.Redactor(literals=[("store-secret", "store-secret-value-1")])(data, counts)
    text = out.decode()
    for leak in ("x9Y8x9Y8", "a1B2c3D4e5a1B2", "qqqqqqqqqq", "Z9Z9Z9Z9", "AKIAIOSFODNN7EXAMPLE",
                 "abc123def456", "kkkkkkkkkk", "store-secret-value-1", "bPxRfiCYEXAMPLEKEY",
                 "IQoJb3JpZ2luX2Vj", "xapp-1-A0123", "b3BlbnNzaC1rZXkt", "lQOYBF0"):
        assert leak not in text, leak
    assert '"important": "keep me"' in text and '"n": 1e400, "same": 1, "same": 2' in text
    assert len(text.splitlines()) == len(lines) + 1
    for line in text.splitlines():
        json.loads(line)
    assert counts["private-key"] == 4 and counts["aws-session-token"] == 1


def test_a_poison_line_and_a_key_flood_neither_crash_nor_stall(tmp_path):
    poison = b'{"a":"-----BEGIN PRIVATE KEY-----abc","b":["\\ud800","-----END PRIVATE KEY-----"]}\n'
    out = tracecraft.Redactor()(poison, {})
    assert json.loads(out)["b"][0] == "\ud800" and b"abc" not in out
    flood = json.dumps({"x": '-----BEGIN PRIVATE KEY-----"' * 20000}).encode() + b"\n"
    counts = {}
    assert len(tracecraft.Redactor()(flood, counts)) < len(flood) and counts["private-key"] >= 1


def test_a_part_passed_over_by_a_compaction_is_never_listed(client_factory_atomic, tmp_path):
    """A mirror pauses (a laptop asleep) between writing its part and listing it; meanwhile a
    compaction elsewhere passes its part's number over.  The part must not be listed: it
    could be swept as an orphan and leave the session unreadable."""
    alice, bob = client_factory_atomic("alice"), client_factory_atomic("bob")
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=3)
    transcript = tracecraft.Transcript("claude-code", session, path)
    alice.sessions.mirror(transcript)
    with open(path, "a") as f:
        f.write(claude_line(3, str(tmp_path), session))
    alice.sessions.mirror(transcript)   # two parts: something to compact
    with open(path, "a") as f:
        f.write(claude_line(4, str(tmp_path), session))
    take = alice.sessions._take_part

    def take_then_compact_elsewhere(*args):
        number = take(*args)
        alice.sessions._take_part = take   # once
        bob.sessions.compact(session)
        return number
    alice.sessions._take_part = take_then_compact_elsewhere
    assert alice.sessions.mirror(transcript)["lost"] >= 1
    meta = bob.sessions.find(session)[0]
    listed = {p[0] for p in meta["parts"]}
    stored = {int(e.key[-12:-6]) for e in bob.store.list(bob.key("sessions", "claude-code",
                                                                 session, "part-"))}
    assert listed <= stored and reassembled(bob, session) == redacted(open(path, "rb").read())


def test_replaced_sources_and_changing_ones(client_factory, tmp_path):
    alice = client_factory("alice")
    path = tmp_path / "rot.jsonl"
    path.write_text('{"type":"session","id":"s"}\n')
    transcript = tracecraft.Transcript("claude-code", "rot", str(path))
    alice.sessions.mirror(transcript)
    with open(path, "a") as f:
        f.write('{"type":"user","text":"aaaaaaaaaaaaaaaaaaaa"}\n')
    alice.sessions.mirror(transcript)
    replaced = ('{"type":"session","id":"s"}\n{"type":"compaction","summary":"the whole '
                'conversation so far, summarised"}\n{"type":"user","text":"next"}\n')
    (tmp_path / "new").write_text(replaced)
    os.replace(tmp_path / "new", path)   # same first line, longer: resumed mid-line before
    alice.sessions.mirror(transcript)
    got = reassembled(alice, "rot")
    assert got.endswith(replaced.encode()) and all(_json(line) for line in got.splitlines())
    # a source whose first bytes change all the time ends a call instead of running forever
    heads = iter(range(10 ** 6))
    transcript.head = lambda length: str(next(heads))
    alice.sessions.mirror(transcript)
    assert next(heads) < 10


def _json(line):
    json.loads(line)
    return True


def test_hermes_oddities_are_clear(client_factory, tmp_path, harness_env):
    import sqlite3
    alice = client_factory("alice")
    os.makedirs(harness_env["HERMES_HOME"])
    db = sqlite3.connect(os.path.join(harness_env["HERMES_HOME"], "state.db"))
    db.execute("CREATE TABLE messages (id, session_id, role, content)")
    db.execute("INSERT INTO messages VALUES (1, 42, 'user', 'a number for a session id')")
    db.execute("INSERT INTO messages VALUES (2, 42, 'user', 'again')")
    db.execute("INSERT INTO messages VALUES ('x', 'texty', 'user', 'a text id')")
    db.commit()
    db.close()
    found = {t.session: t for t in tracecraft.find_transcripts("hermes")}
    assert alice.sessions.mirror(found["42"])["lines"] == 2
    with pytest.raises(tracecraft.UsageError, match="not integers"):
        alice.sessions.mirror(found["texty"])


def test_hostile_session_records_are_reported(local_cli, tmp_path):
    session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=2)
    local_cli.ok("session", "mirror", "--transcript", path)
    meta = local_cli.root / "sessions" / "claude-code" / session / "meta.json"
    record = json.loads(meta.read_text())
    for change in ({"first_event": None, "last_event": None}, {"harness": "codex"},
                   {"harness": "bogus"}, {"session": "another"}):
        broken = {k: v for k, v in dict(record, **change).items() if v is not None}
        meta.write_text(json.dumps(broken))
        with open(path, "a") as f:
            f.write(claude_line(9, str(tmp_path), session))
        result = local_cli("session", "mirror", "--transcript", path)
        assert result.returncode in (0, 4) and "Traceback" not in result.stderr, change
        assert "internal error" not in result.stderr, (change, result.stderr)
        if "first_event" not in change:
            assert result.returncode == 4 and "another session" in result.stderr, change
    nul = local_cli("session", "hook", stdin=json.dumps({
        "hook_event_name": "Stop", "session_id": session, "transcript_path": "a\u0000b",
        "cwd": str(tmp_path)}))
    assert nul.returncode == 1 and "NUL" in nul.stderr and nul.stdout == ""


def test_hooks_keep_lookalikes_and_start_one_mirror_however_many_starts(local_cli, tmp_path):
    settings = local_cli.cwd / ".claude" / "settings.json"
    settings.parent.mkdir()
    theirs = {"type": "command", "command": "/opt/tracecraft/bin/mylogger session hook"}
    settings.write_text(json.dumps({"hooks": {"Stop": [{"matcher": "", "hooks": [theirs]}]}}))
    local_cli.ok("hooks", "claude-code", "--install", "--command", "tracecraft")
    hooks = json.loads(settings.read_text())["hooks"]
    assert theirs in hooks["Stop"][0]["hooks"]
    assert hooks["SessionStart"][0]["hooks"][0]["command"] == "tracecraft session hook"
    session, path = make_claude(str(tmp_path / "claude"), str(local_cli.cwd), lines=3)
    payload = json.dumps({"session_id": session, "transcript_path": path,
                          "cwd": str(local_cli.cwd), "hook_event_name": "SessionStart"})
    starts = [subprocess.Popen([*COMMAND, "session", "hook"], cwd=local_cli.cwd,
                               env=local_cli.env, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(6)]
    for start in starts:
        assert start.communicate(payload, timeout=30)[0] == ""

    def mirrors():
        return subprocess.run(["pgrep", "-f", f"session-id {session}"], capture_output=True,
                              text=True).stdout.split()
    try:
        deadline = time.time() + 15
        while (len(mirrors()) != 1 or local_cli("session", "show", session).returncode) and \
                time.time() < deadline:
            time.sleep(0.1)
        assert len(mirrors()) == 1
        end = dict(json.loads(payload), hook_event_name="SessionEnd")
        assert local_cli("session", "hook", stdin=json.dumps(end)).returncode == 0
        deadline = time.time() + 10
        while mirrors() and time.time() < deadline:
            time.sleep(0.1)
        assert not mirrors()
    finally:
        for pid in mirrors():
            os.kill(int(pid), signal.SIGKILL)

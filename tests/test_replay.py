"""The replay page (section 9, from section 6h's timeline), in a real browser: Debian's chromium,
headless, scripts run, the DOM it leaves asserted on."""

import json
import os
import re
import shutil
import subprocess
import time

import pytest

import tracecraft
from conftest import COMMAND
from harnesses import make_claude

HOSTILE = ["<img src=x onerror=alert(1)>", "</script><script>document.title='pwned'</script>",
           "javascript:alert(1)", '"><svg onload=alert(2)>']


def chromium():
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        message = "chromium not found (make test installs it: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def browse(path, fragment="", screenshot=None, tmp_path=None):
    """The DOM of the page after its scripts ran (and, if asked, a screenshot of it)."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
               "--virtual-time-budget=5000", "--window-size=1400,900",
               f"--user-data-dir={tmp_path / 'chromium-profile'}"]
    url = f"file://{path}{fragment}"
    if screenshot:
        subprocess.run(command + [f"--screenshot={screenshot}", url], capture_output=True,
                       timeout=120, check=True)
    return subprocess.run(command + ["--dump-dom", url], capture_output=True, text=True,
                          timeout=120, check=True).stdout


def alice_and_bob(tmp_path):
    """Two agents on the local store of local_cli, both seen."""
    root = str(tmp_path / "store")
    agents = [tracecraft.connect(project="proj", agent=name, backend="local", root=root)
              for name in ("alice", "bob")]
    for agent in agents:
        agent.heartbeat(renew=False)
    return agents


@pytest.fixture
def project(local_cli, tmp_path):
    """Two agents coordinating, a lease taken over, hostile texts everywhere, a session."""
    alice, bob = alice_and_bob(tmp_path)
    try:
        alice.claim("design")
        alice.release("design")
        bob.claim("design")   # a takeover of a released lease: generation 2
        bob.complete("design", note=HOSTILE[0])
        alice.claim("<b>build<b>")
        alice.complete("<b>build<b>", status="failed", note=HOSTILE[1])
        for text in HOSTILE:
            alice.send("bob", text)
        bob.send("_broadcast", "all hands")
        alice.memory.set("design.status", {"link": HOSTILE[2]})
        (tmp_path / "spec.md").write_text("x")
        bob.artifacts.upload(str(tmp_path / "spec.md"), step="design")
        session, path = make_claude(str(tmp_path / "claude"), str(tmp_path), lines=6)
        with open(path, "a") as f:
            f.write(json.dumps({"type": "user", "message": {"role": "user", "content": HOSTILE[3]},
                                "timestamp": "2026-12-02T10:00:09.000Z"}) + "\n")
        alice.sessions.mirror(tracecraft.Transcript("claude-code", session, path))
        bob.plans.load([{"step": "design"}, {"step": "<b>build<b>"},
                        {"step": "ship", "after": ["design", "<b>build<b>"]}])
    finally:
        alice.close()
        bob.close()
    return local_cli


def test_the_replay_shows_every_kind_of_event_and_runs_nothing_an_agent_wrote(project,
                                                                               tmp_path):
    out = tmp_path / "replay.html"
    result = json.loads(project.ok("replay", "--out", str(out), "--json"))
    page = out.read_text()
    assert result["path"] == str(out) and set(result["agents"]) >= {"alice", "bob"}
    assert "http://" not in page and "https://" not in page   # nothing to fetch when opened
    assert page.count("<script") == 2 and "</script><script>document" not in page
    dom = browse(out, screenshot=tmp_path / "replay.png", tmp_path=tmp_path)
    assert os.path.getsize(tmp_path / "replay.png") > 10_000
    assert "<title>tracecraft replay</title>" in dom and "pwned" not in dom.split("<body")[0]
    body = dom.split("<body", 1)[1]
    assert "<img" not in body and "<svg" not in body and "<b>build" not in body
    assert body.count('class="row') == result["events"] or result["events"] > 30
    for text in ("&lt;img src=x onerror=alert(1)&gt;", "javascript:alert(1)", "&lt;b&gt;build"):
        assert text in body
    kinds = set(re.findall(r'<span class="k" style="[^"]*">(\w+)</span>', body))
    assert {"claim", "release", "takeover", "complete", "failed", "message", "memory",
            "artifact", "prompt", "said", "tool"} <= kinds | {"seen"} and "takeover" in kinds
    assert 'data-name="alice"' in body and 'data-name="bob"' in body
    assert re.search(r'id="count">\d+ of \d+ events', body)
    # the plan's edges: a step in no lease yet is listed, with what it waits for
    assert "<li>ship  pending  after design, &lt;b&gt;build&lt;b&gt;</li>" in body


def test_filters_and_links_in_the_page(project, tmp_path):
    out = tmp_path / "replay.html"
    project.ok("replay", "--out", str(out))
    everything = int(re.search(r'id="count">(\d+) of', browse(out, tmp_path=tmp_path))[1])
    messages = browse(out, "#kinds=message", tmp_path=tmp_path)
    assert int(re.search(r'id="count">(\d+) of', messages)[1]) == 5 < everything
    found = browse(out, "#q=svg%20onload", tmp_path=tmp_path)
    assert int(re.search(r'id="count">(\d+) of', found)[1]) == 2   # the message, the prompt
    bob = browse(out, "#agents=bob&kinds=complete", tmp_path=tmp_path)
    assert int(re.search(r'id="count">(\d+) of', bob)[1]) == 1
    linked = browse(out, "#e3", tmp_path=tmp_path)
    detail = linked.split('id="detail"', 1)[1].split("</pre>", 1)[0]
    assert "link to this event" in linked and '"id": 3' in detail


def test_replay_narrows_by_agent_and_time(project, tmp_path):
    out = tmp_path / "r.html"
    only = json.loads(project.ok("replay", "--out", str(out), "--agent", "bob", "--json"))
    later = json.loads(project.ok("replay", "--out", str(out), "--since", "2999-01-01",
                                  "--json"))
    full = json.loads(project.ok("replay", "--out", str(out), "--json"))
    assert 0 < only["events"] < full["events"] and later["events"] == 0
    bad = project("replay", "--since", "yesterday")
    assert bad.returncode == 2 and "--since" in bad.stderr


def start_ui(cli, *flags):
    proc = subprocess.Popen([*COMMAND, "ui", "--port", "0", "--verbose", *flags], cwd=cli.cwd,
                            env=cli.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    line = proc.stdout.readline()
    url = re.search(r"at (http://\S+) ", line)
    assert url, (line, proc.stderr.read() if proc.poll() is not None else "")
    return proc, url[1]


def request(url, method="GET", host=None, headers=()):
    import http.client
    from urllib.parse import urlsplit
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    conn.putrequest(method, parts.path + ("?" + parts.query if parts.query else ""),
                    skip_host=True)
    conn.putheader("Host", host or parts.netloc)
    for name, value in headers:
        conn.putheader(name, value)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.getheaders()), body


def test_the_live_page_shows_new_events_without_a_reload(project, tmp_path):
    proc, url = start_ui(project, "--refresh", "0")   # the browser's clock is virtual: fast
    try:
        status, headers, page = request(url)
        assert status == 200 and b"tracecraft replay" in page
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "connect-src 'self'" in policy
        assert "'unsafe-inline'" not in policy and headers["X-Content-Type-Options"] == "nosniff"
        assert request(url, host="evil.example:80")[0] == 403   # DNS rebinding
        assert request(url, method="POST")[0] == 405 and request(url, method="DELETE")[0] == 405
        assert request(url + "nothing")[0] == 404

        def write_when_the_page_polls():
            for line in proc.stderr:
                if "GET /events" in line:
                    tc = tracecraft.connect(project="proj", agent="carol", backend="local",
                                            root=str(tmp_path / "store"))
                    tc.send("alice", "<img src=x onerror=alert(9)> arrived live")
                    tc.close()
                    break
            for _ in proc.stderr:
                pass
        import threading
        writer = threading.Thread(target=write_when_the_page_polls, daemon=True)
        writer.start()
        command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                   "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'profile'}",
                   "--dump-dom", url + "#q=arrived%20live"]
        dom = subprocess.run(command, capture_output=True, text=True, timeout=120).stdout
        body = dom.split("<body", 1)[1]
        assert re.search(r'id="count">1 of \d+ events', body), "the new event never came"
        assert "&lt;img src=x onerror=alert(9)&gt; arrived live" in body and "<img" not in body
        assert 'data-name="carol"' in body   # a new agent gets its lane and filter
    finally:
        proc.terminate()
        proc.wait(10)


def test_another_address_needs_the_token(project):
    proc, url = start_ui(project, "--bind", "127.0.0.2")
    try:
        assert "token=" in url
        bare = url.split("?")[0]
        assert request(bare)[0] == 403
        assert request(url)[0] == 200
        token = url.split("token=")[1]
        assert request(bare + "events", headers=[("X-Tracecraft-Token", token)])[0] == 200
        assert request(bare + "events", host="evil.example")[0] == 403   # no token: refused
        assert request(url, host="this-machine.example:8700")[0] == 200   # the token admits
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_replay_of_the_readme_scenario(tmp_path):
    """The README's two agents, replayed and photographed by headless chromium: the picture
    in the README is this test's (UPDATE_DOCS=1 writes it to docs/replay.png)."""
    from conftest import CLI, clean_env
    from scenario import run_seed_scenario
    settings = {"backend": "local", "root": str(tmp_path / "store"), "bucket": "tracecraft"}
    run_seed_scenario(settings, tmp_path)
    designer = tracecraft.connect(project="myproject", agent="designer", **settings)
    try:
        session, path = make_claude(str(tmp_path / "claude"), str(tmp_path / "designer"), lines=8,
                                    start=time.time() - 6)
        designer.sessions.mirror(tracecraft.Transcript("claude-code", session, path))
    finally:
        designer.close()
    cli = CLI(tmp_path / "designer", clean_env(tmp_path))
    out, picture = tmp_path / "replay.html", tmp_path / "replay.png"
    result = json.loads(cli.ok("replay", "--out", str(out), "--json"))
    assert set(result["agents"]) == {"designer", "developer"}
    dom = browse(out, screenshot=picture, tmp_path=tmp_path)
    for text in ("Design is ready", "design.status", "implementation", "done"):
        assert text in dom
    assert os.path.getsize(picture) > 20_000
    if os.environ.get("UPDATE_DOCS"):
        shutil.copy(picture, os.path.join(os.path.dirname(__file__), "..", "docs", "replay.png"))


def test_what_broke_the_replay_and_the_live_view(local_cli, tmp_path):
    """Lone surrogates, a refresh that fails halfway, a takeover seen live, huge notes, odd
    times, odd queries, messages to an agent that never ran, and --agent as a filter."""
    a, b = alice_and_bob(tmp_path)
    try:
        a.memory.set("k", "a value")
        a.claim("big")
        a.complete("big", note="n" * 200_000)
        b.send("ghost", "to an agent that never ran")
        path = tmp_path / "t.jsonl"
        path.write_text('{"type":"user","timestamp":"0001-01-01T00:00:00Z","message":{"role":'
                        '"user","content":"year one"}}\n{"type":"user","timestamp":'
                        '"2026-12-02T01:00:02Z","message":{"role":"user","content":"lone '
                        '\\ud800 in a transcript"}}\n')
        a.sessions.mirror(tracecraft.Transcript("claude-code", "odd", str(path)))
        state = {}
        first = a.timeline(state=state)
        assert any(e.get("to") == "ghost" for e in first["events"])
        assert all(not e["at"].startswith("0001") for e in first["events"])
        assert all(len(e.get("note", "")) < 5000 for e in first["events"])
        a.claim("s")
        a.timeline(state=state)
        a.release("s")
        b.claim("s")   # a takeover: alice's claim must not come again
        b.send("alice", "during a failing look")
        entries = a.memory.entries
        a.memory.entries = lambda *x: (_ for _ in ()).throw(tracecraft.StoreError("503"))
        with pytest.raises(tracecraft.StoreError):
            a.timeline(state=state)
        a.memory.entries = entries
        later = a.timeline(state=state)["events"]
        assert [e["text"] for e in later if e["kind"] == "message"] == ["during a failing look"]
        assert [(e["kind"], e["agent"]) for e in later if e.get("step") == "s"] == \
            [("release", "alice"), ("takeover", "bob")]
    finally:
        a.close()
        b.close()
    out = tmp_path / "r.html"
    assert json.loads(local_cli.ok("replay", "--out", str(out), "--json"))["events"] > 5
    assert b"\\ud800" not in out.read_bytes() and "\ufffd" in out.read_text()
    dom = browse(out, "#q=lone", tmp_path=tmp_path)
    assert re.search(r'id="count">[12] of', dom)
    proc, url = start_ui(local_cli)
    try:
        assert request(url)[0] == 200
        for after in ("9" * 5000, "-1", "", "%C2%B2"):
            status, _, body = request(url + "events?after=" + after)
            assert status == 200, after
        import socket
        from urllib.parse import urlsplit
        where = urlsplit(url)
        with socket.create_connection((where.hostname, where.port), timeout=30) as raw:
            raw.sendall(b"GET /events?after=\xb2 HTTP/1.1\r\nHost: " + where.netloc.encode()
                        + b"\r\nConnection: close\r\n\r\n")   # a byte that isdigit() takes
            assert raw.recv(100).startswith(b"HTTP/1.0 200")
        status, _, body = request(url + "events?after=999999")
        assert status == 200 and json.loads(body) == {"events": []}
    finally:
        proc.terminate()
        proc.wait(10)
    before = sorted(os.listdir(local_cli.root / "agents"))
    local_cli.ok("status", "--agent", "typo-bob")
    local_cli.ok("session", "list", "--agent", "typo-bob")
    assert sorted(os.listdir(local_cli.root / "agents")) == before   # a filter, not an identity

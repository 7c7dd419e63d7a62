"""The replay page (section 9, from section 6h's timeline), in a real browser: Debian's chromium,
headless, scripts run, the DOM it leaves asserted on."""

import json
import os
import re
import shutil
import subprocess

import pytest

import tracecraft
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


@pytest.fixture
def project(local_cli, tmp_path):
    """Two agents coordinating, a lease taken over, hostile texts everywhere, a session."""
    root = str(tmp_path / "store")
    alice = tracecraft.connect(project="proj", agent="alice", backend="local", root=root)
    bob = tracecraft.connect(project="proj", agent="bob", backend="local", root=root)
    try:
        alice.heartbeat(renew=False)
        bob.heartbeat(renew=False)
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

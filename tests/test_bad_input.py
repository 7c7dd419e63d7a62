"""Hostile and careless input through the real command line: a clear message, the right exit code,
no traceback, and nothing written."""
import json
import os
import subprocess
import sys

import pytest

from conftest import CLI, TRACECRAFT, clean_env

LONG = "x" * 1100
CASES = [
    # (arguments, exit code, words the message must contain)
    (["memory", "set", "", "v"], 2, "empty"),
    (["memory", "set", ".", "v"], 2, "empty segment"),
    (["memory", "set", "..", "v"], 2, "empty segment"),
    (["memory", "set", "/abs", "v"], 2, "'/'"),
    (["memory", "set", "../up", "v"], 2, "empty segment"),
    (["memory", "set", "a\x01b", "v"], 2, "control character"),
    (["memory", "set", LONG, "v"], 2, "limit"),
    (["memory", "get", "a.\ufffe"], 2, "control character"),
    (["claim", ""], 2, "empty"),
    (["claim", "."], 2, "'.' or '..'"),
    (["claim", ".."], 2, "'.' or '..'"),
    (["claim", "../x"], 2, "'/'"),
    (["claim", "/etc/passwd"], 2, "'/'"),
    (["claim", "..\\x"], 2, "'\\'"),
    (["claim", "tab\there"], 2, "control character"),
    (["claim", LONG], 2, "limit"),
    (["claim", "s", "--ttl", "soon"], 2, "not a duration"),
    (["claim", "s", "--ttl=-5m"], 2, "not a duration"),
    (["claim", "s", "--ttl", "0"], 2, "positive"),
    (["send", "", "hi"], 2, "empty"),
    (["send", "_everyone", "hi"], 2, "reserved"),
    (["send", "../_broadcast", "hi"], 2, "'/'"),
    (["send", "bob\nx", "hi"], 2, "control character"),
    (["send", LONG, "hi"], 2, "limit"),
    (["memory", "set", "k", "1", "--if-version", "a\r\nX-Injected: 1"], 2, "not a version"),
    (["wait-for", "../x"], 2, "'/'"),
    (["step-status", ""], 2, "empty"),
    (["artifact", "download", "../x"], 2, "'/'"),
    (["artifact", "download", "/etc/passwd"], 2, "'/'"),
    (["artifact", "download", "..\\x"], 2, "'\\'"),
    (["artifact", "download", ".hidden"], 2, "must not start with '.'"),
    (["artifact", "upload", "missing-file.txt"], 2, "cannot read"),
    (["artifact", "upload", "-"], 2, "needs a name"),
    (["inbox", "--peek", "--delete"], 2, "cannot be combined"),
    (["no-such-command"], 2, "invalid choice"),
    (["claim", "s", "--no-such-flag"], 2, "unrecognized arguments"),
    (["memory"], 2, "required"),
    (["--agent", "_x", "claim", "s"], 2, "reserved"),
    (["--agent", "", "heartbeat"], 2, "no agent id"),
    (["--project", "../p", "claim", "s"], 2, "'/'"),
]


def snapshot(root):
    files = {}
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if "/.locks/" not in path and "/.tmp/" not in path:
                files[path] = os.stat(path).st_mtime_ns
    return files


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad")
    runner = CLI(tmp, clean_env(tmp))
    runner.ok("init", "--project", "p", "--agent", "designer", "--root", str(tmp / "store"))
    runner.root = tmp / "store"
    return runner


@pytest.mark.parametrize("args,code,words", CASES, ids=[" ".join(c[0])[:40] for c in CASES])
def test_bad_input(project, args, code, words):
    before = snapshot(project.root)
    result = project(*args)
    assert result.returncode == code, (result.stdout, result.stderr)
    assert words in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(project.root) == before, "a rejected command wrote to the store"


@pytest.mark.parametrize("args", [["send", "bob", "-"], ["memory", "set", "k", "-"]])
def test_values_over_the_size_limit(project, args):
    before = snapshot(project.root)
    result = project(*args, stdin="x" * (1024 * 1024 + 1))
    assert result.returncode == 2 and "1024 KiB limit" in result.stderr
    assert snapshot(project.root) == before


def test_invalid_utf8_arguments_and_names(project, tmp_path):
    """Undecodable bytes reach Python as surrogate escapes; they are refused, not crashed on."""
    for args in ([b"claim", b"st\xffep"], [b"memory", b"set", b"k", b"\xff\xfe"],
                 [b"send", b"bob", b"bad \xc3\x28 text"]):
        result = subprocess.run([sys.executable, TRACECRAFT.encode(), *args], cwd=project.cwd,
                                env=project.env, capture_output=True)
        assert result.returncode == 2, result.stderr
        assert b"not valid UTF-8" in result.stderr and b"Traceback" not in result.stderr
    odd = tmp_path / os.fsdecode(b"file-\xff.txt")
    odd.write_bytes(b"data")
    upload = project("artifact", "upload", str(odd))
    assert upload.returncode == 2 and "not valid UTF-8" in upload.stderr
    assert project.ok("artifact", "upload", str(odd), "--name", "renamed.txt").startswith("Uploaded")


def test_config_problems(tmp_path):
    runner = CLI(tmp_path, clean_env(tmp_path))
    config = tmp_path / ".tracecraft.json"
    for content, words in ((b"{not json", "not valid JSON"), (b"[1, 2]", "JSON object"),
                           (b'{"backend": "ftp", "project": "p"}', "unknown backend"),
                           (b'{"backend": "local", "project": "p", "root": 5}', "must be a string"),
                           (b'{"backend": "s3", "project": "p", "endpoint": "http://h:abc",'
                            b' "access_key": "k", "secret_key": "s"}', "not an http(s) URL"),
                           (b"\xff\xfe", "not valid JSON")):
        config.write_bytes(content)
        result = runner("inbox")
        assert result.returncode == 4, (content, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr
    config.write_text('{"backend": "local", "project": "p", "agent": "a"}')
    config.chmod(0o000)
    if os.getuid() != 0:   # root reads anything
        result = runner("inbox")
        assert result.returncode == 4 and "cannot read config" in result.stderr


def test_a_config_readable_by_others_draws_a_warning(tmp_path):
    runner = CLI(tmp_path, clean_env(tmp_path))
    runner.ok("init", "--project", "p", "--agent", "a")
    config = tmp_path / ".tracecraft.json"
    data = json.loads(config.read_text())
    data.update(secret_key="s3cr3t-value")
    config.write_text(json.dumps(data))
    config.chmod(0o644)
    result = runner("memory", "set", "k", "v")
    assert result.returncode == 0
    assert "readable by others" in result.stderr and "s3cr3t-value" not in result.stderr
    config.chmod(0o666)    # writable by others: not trusted at all
    assert runner("memory", "get", "k").returncode == 4


def test_corrupt_objects_are_reported_and_do_not_hide_the_rest(project):
    store = project.root / "tracecraft" / "p"
    project.ok("send", "reader", "good message")
    (store / "agents").mkdir(parents=True, exist_ok=True)
    (store / "agents" / "broken.json").write_bytes(b"\x00\xffgarbage")
    (store / "agents" / "wrongshape.json").write_text('{"holding": "not a list"}')
    (store / "steps" / "bad").mkdir(parents=True)
    (store / "steps" / "bad" / "claim.json").write_text('{"state": "held", "ttl": "forever"}')
    (store / "memory").mkdir(exist_ok=True)
    (store / "memory" / "junk.json").write_text("[]")
    agents = project("agents", "--json")
    assert agents.returncode == 0 and "skipped" in agents.stderr
    names = {a["agent"] for a in json.loads(agents.stdout)["agents"]}
    assert {"designer", "wrongshape"} <= names and "broken" not in names
    inbox = project("inbox", agent="reader")
    assert inbox.returncode == 0 and "good message" in inbox.stdout
    for args in (["step-status", "bad"], ["claim", "bad"], ["memory", "get", "junk"]):
        result = project(*args)
        assert result.returncode == 4 and "Traceback" not in result.stderr
        assert "not" in result.stderr and ("tracecraft record" in result.stderr
                                           or "JSON object" in result.stderr)


def test_every_key_stays_inside_the_project(project):
    hostile = ["..", "../..", "/", "\\", "a/../../b", "%2e%2e", "..%2f", "~", "$HOME", "*", "?"]
    before = set(snapshot(project.root))
    for name in hostile:
        for args in (["claim", name], ["memory", "set", name, "v"], ["send", name, "x"],
                     ["complete", name], ["artifact", "download", name], ["step-status", name],
                     ["memory", "set", f"a.{name}", "v"]):
            result = project(*args)
            assert result.returncode in (0, 1, 2), (args, result.stderr)
            assert "Traceback" not in result.stderr
    prefix = str(project.root / "tracecraft" / "p") + os.sep
    for path in set(snapshot(project.root)) - before:
        assert path.startswith(prefix), path

"""Section 8: the real command line in subprocesses, against every store."""
import json
import os
import re
import subprocess
import sys
import time

import pytest

from conftest import CLI, TRACECRAFT, clean_env, init_args

STAMP = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\]"


def test_seed_scenario(settings, tmp_path):
    """The README's two-terminal walkthrough, word for word where the seed shows output."""
    env = clean_env(tmp_path)
    designer_dir, developer_dir = tmp_path / "designer", tmp_path / "developer"
    designer_dir.mkdir()
    developer_dir.mkdir()
    designer, developer = CLI(designer_dir, env), CLI(developer_dir, env)
    designer.ok("init", "--project", "myproject", "--agent", "designer", *init_args(settings))
    developer.ok("init", "--project", "myproject", "--agent", "developer", *init_args(settings))

    assert designer.ok("claim", "design") == "Claimed step design as designer\n"
    assert designer.ok("memory", "set", "design.status", "complete") == \
        "Set design.status = complete\n"
    assert designer.ok("send", "developer", "Design is ready") == \
        "Sent to developer: Design is ready\n"

    assert re.fullmatch(STAMP + r" \(direct\) designer: Design is ready\n",
                        developer.ok("inbox"))
    assert developer.ok("memory", "get", "design.status") == "complete\n"

    held = developer("claim", "design")
    assert held.returncode == 1 and "held by designer" in held.stderr

    waiter = subprocess.Popen([sys.executable, TRACECRAFT, "wait-for", "design", "--timeout", "30"],
                              cwd=developer_dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    assert waiter.poll() is None, "wait-for returned before the step was complete"
    designer.ok("complete", "design", "--note", "done")
    out, err = waiter.communicate(timeout=30)
    assert waiter.returncode == 0, err
    assert out == "\u2713 design complete\n"

    status = developer.ok("step-status", "design")
    assert status.splitlines()[0] == "complete"
    assert "designer" in status and "handoff: done" in status

    assert developer.ok("claim", "implementation") == "Claimed step implementation as developer\n"

    (designer_dir / "mockup.html").write_bytes(b"<html>\x00\xff binary-safe</html>\n")
    designer.ok("artifact", "upload", "mockup.html", "--step", "design")
    listing = developer.ok("artifact", "list")
    assert "design/mockup.html" in listing and "by designer" in listing
    developer.ok("artifact", "download", "mockup.html", "--step", "design")
    assert (developer_dir / "mockup.html").read_bytes() == \
        (designer_dir / "mockup.html").read_bytes()

    agents = designer.ok("agents")
    assert re.search(r"^designer\s+online", agents, re.M)
    assert re.search(r"^developer\s+online\s+\S+ ago\s+implementation$", agents, re.M)


def test_json_output_is_one_document(cli):
    claim = json.loads(cli.ok("--json", "claim", "s1"))
    assert claim["agent"] == "designer" and claim["step"] == "s1" and claim["at"].endswith("Z")
    assert json.loads(cli.ok("memory", "set", "n", "42", "--json"))["value"] == 42
    got = json.loads(cli.ok("memory", "get", "n", "--json"))
    assert got["value"] == 42 and got["by"] == "designer" and got["version"]
    cli.ok("send", "bob", "hi")
    inbox = json.loads(cli.ok("inbox", "--json", agent="bob"))
    assert [m["text"] for m in inbox["messages"]] == ["hi"]
    status = json.loads(cli("step-status", "s1", "--json").stdout)
    assert status["status"] == "in_progress" and status["holder"] == "designer"
    error = cli("memory", "get", "missing", "--json")
    assert error.returncode == 1
    assert json.loads(error.stdout)["exit_code"] == 1


def test_exit_codes(cli):
    assert cli("memory", "get", "nope").returncode == 1
    assert cli("step-status", "never").returncode == 1           # not complete
    assert cli("claim", "s").returncode == 0
    assert cli("claim", "s", agent="other").returncode == 1      # held
    assert cli("claim", "../etc").returncode == 2                # bad input
    assert cli("memory", "set", "a..b", "x").returncode == 2
    assert cli("send", "evil/../_broadcast", "x").returncode == 2
    assert cli("bogus-command").returncode == 2
    assert cli("claim", "s", "--bogus-flag").returncode == 2
    assert cli("wait-for", "s", "--timeout", "banana").returncode == 2
    started = time.monotonic()
    timed_out = cli("wait-for", "s", "--timeout", "1")
    elapsed = time.monotonic() - started
    assert timed_out.returncode == 3 and "still" not in timed_out.stdout
    assert "waiting for: s" in timed_out.stderr
    assert elapsed < 1 + 0.5 + 1.5   # the timeout, its half-second slack, and process start-up


def test_wait_for_honours_timeout_closely(cli):
    started = time.monotonic()
    result = cli("wait-for", "x", "y", "--timeout", "2")
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    # Process start-up is measured separately: --version runs the same interpreter start.
    t0 = time.monotonic()
    cli.ok("--version")
    startup = time.monotonic() - t0
    assert elapsed - startup < 2 + 0.5


def test_complete_rules(cli):
    cli.ok("claim", "s")
    other = cli("complete", "s", agent="mallory")
    assert other.returncode == 1 and "held by designer" in other.stderr
    forced = json.loads(cli.ok("complete", "s", "--force", "--json", agent="mallory"))
    assert forced["forced"] is True and forced["by"] == "mallory"
    again = cli("complete", "s")
    assert again.returncode == 1 and "already complete" in again.stderr
    assert cli("claim", "s", agent="late").returncode == 1
    # Completing an unclaimed step claims it first.
    cli.ok("complete", "fresh", "--note", "did it in one go")
    info = json.loads(cli("step-status", "fresh", "--json").stdout)
    assert info["status"] == "complete" and info["holder"] == "designer"
    assert info["note"] == "did it in one go"


def test_config_is_found_from_subdirectories_and_overridden_by_env(cli):
    sub = cli.cwd / "a" / "b"
    sub.mkdir(parents=True)
    assert cli.ok("claim", "deep", cwd=sub) == "Claimed step deep as designer\n"
    assert cli.ok("claim", "other", cwd=sub, agent="developer") == \
        "Claimed step other as developer\n"
    mode = os.stat(cli.cwd / ".tracecraft.json").st_mode & 0o777
    assert mode == 0o600


def test_missing_config_is_a_clear_error(tmp_path):
    runner = CLI(tmp_path, clean_env(tmp_path))
    result = runner("inbox")
    assert result.returncode == 4
    assert "tracecraft init" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / ".tracecraft.json").write_text("{not json")
    broken = runner("inbox")
    assert broken.returncode == 4 and "not valid JSON" in broken.stderr


def test_init_defaults_to_local_store_and_ignores_config_in_git(tmp_path):
    work = tmp_path / "repo"
    (work / ".git").mkdir(parents=True)
    runner = CLI(work, clean_env(tmp_path))
    out = runner.ok("init", "--project", "demo", "--agent", "me")
    assert "local directory" in out
    assert (work / ".gitignore").read_text().splitlines() == [".tracecraft.json"]
    config = json.loads((work / ".tracecraft.json").read_text())
    assert config["backend"] == "local" and "secret_key" not in config
    runner.ok("init", "--project", "demo", "--agent", "me")
    assert (work / ".gitignore").read_text().splitlines() == [".tracecraft.json"]
    assert runner.ok("memory", "set", "k", "v") == "Set k = v\n"
    data = tmp_path / "home" / ".local" / "share" / "tracecraft" / "tracecraft"
    assert (data / "demo" / "memory" / "k.json").is_file()


def test_wrong_secret_is_exit_4_with_a_clear_message(seaweed, tmp_path, bucket_name):
    runner = CLI(tmp_path, clean_env(tmp_path))
    result = runner("init", "--project", "p", "--agent", "a", "--endpoint", seaweed.endpoint,
                    "--bucket", bucket_name, "--access-key", seaweed.access_key,
                    "--secret-key", "wrong-secret")
    assert result.returncode == 4, result.stderr
    assert "refused the credentials" in result.stderr and "secret key" in result.stderr
    assert "wrong-secret" not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr


def test_unreachable_store_is_exit_4(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = CLI(tmp_path, clean_env(tmp_path))
    result = runner("init", "--project", "p", "--agent", "a", "--endpoint",
                    f"http://127.0.0.1:{port}", "--access-key", "k", "--secret-key", "s",
                    env={"TRACECRAFT_MAX_ATTEMPTS": "2"})
    assert result.returncode == 4
    assert "cannot reach the store" in result.stderr and "connection refused" in result.stderr


def test_help_teaches(tmp_path):
    runner = CLI(tmp_path, clean_env(tmp_path))
    top = runner.ok("--help")
    for command in ["init", "agents", "memory", "send", "inbox", "claim", "complete",
                    "step-status", "wait-for", "artifact"]:
        assert command in top
    assert "exit codes" in top
    assert "--note" in runner.ok("complete", "--help")
    assert runner.ok("--version").startswith("tracecraft ")


def test_send_reads_stdin_and_joins_words(cli):
    cli.ok("send", "bob", "several", "words")
    cli.ok("send", "bob", "-", stdin="from stdin\nwith two lines")
    texts = [m["text"] for m in json.loads(cli.ok("inbox", "--json", agent="bob"))["messages"]]
    assert texts == ["several words", "from stdin\nwith two lines"]

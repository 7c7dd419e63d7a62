"""The seed's README walkthrough, run through the real command line; shared by the CLI and fault tests."""
import re
import subprocess
import sys
import time

from conftest import CLI, TRACECRAFT, clean_env, init_args

STAMP = r"\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\]"


def run_seed_scenario(settings, tmp_path, extra_env=None, python=sys.executable):
    """The README's two-terminal walkthrough, word for word where the seed shows output, run
    as `python tracecraft.py` by the interpreter `python`."""
    env = dict(clean_env(tmp_path), **(extra_env or {}))
    designer_dir, developer_dir = tmp_path / "designer", tmp_path / "developer"
    designer_dir.mkdir()
    developer_dir.mkdir()
    # `python tracecraft.py`, the form that is run from a copy of the file (`curl -O`)
    designer, developer = (CLI(path, env, command=[python, TRACECRAFT])
                           for path in (designer_dir, developer_dir))
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

    waiter = subprocess.Popen([python, TRACECRAFT, "wait-for", "design", "--timeout", "30"],
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

"""Section 4's LocalStore under the conditions a directory meets: a writer stopped while it holds
a lock, processes whose clocks are wrong, links planted in the store, a directory that may not
be read, a disk that is full.  Each through the real command line, in processes of its own."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import tracecraft
from conftest import TRACECRAFT

HOLD_LOCK = """
import sys, time
sys.path.insert(0, sys.argv[1])
import tracecraft
store = tracecraft.LocalStore(sys.argv[2], "tracecraft")
with store._lock(sys.argv[3]):
    print("locked", flush=True)
    time.sleep(600)
"""

SKEWED = """
import runpy, sys, time
real, skew = time.time, float(sys.argv[1])
time.time = lambda: real() + skew
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_stopped_lock_holder_makes_writers_give_up_by_the_deadline(local_cli):
    store_root = str(local_cli.root.parent.parent)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, os.path.dirname(TRACECRAFT),
                               store_root, "proj/memory/k.json"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        holder.send_signal(signal.SIGSTOP)
        started = time.monotonic()
        result = local_cli("memory", "set", "k", "v", env={"TRACECRAFT_TIMEOUT": "2"})
        elapsed = time.monotonic() - started
        assert result.returncode == 4, result.stderr
        assert f"process {holder.pid}" in result.stderr and "(stopped)" in result.stderr
        assert elapsed < 2 + 5
        assert local_cli("memory", "set", "other", "v").returncode == 0   # other keys go on
    finally:
        holder.send_signal(signal.SIGCONT)
        holder.kill()
        holder.wait()
    local_cli.ok("memory", "set", "k", "v")                              # and so does this one


def test_a_process_whose_clock_runs_ahead_cannot_steal_a_live_lease(local_cli):
    """The local store's clock is the file system's, not each caller's own time.time()."""
    local_cli.ok("claim", "s", "--ttl", "30m")
    for skew in (7200, -7200):
        result = subprocess.run([sys.executable, "-c", SKEWED, str(skew), TRACECRAFT, "claim",
                                 "s"], cwd=local_cli.cwd, env=dict(local_cli.env,
                                                                   TRACECRAFT_AGENT="thief"),
                                capture_output=True, text=True)
        assert result.returncode == 1 and "held by designer" in result.stderr, result.stderr
        status = subprocess.run([sys.executable, "-c", SKEWED, str(skew), TRACECRAFT,
                                 "step-status", "s", "--json"], cwd=local_cli.cwd,
                                env=local_cli.env, capture_output=True, text=True)
        assert 1700 < json.loads(status.stdout)["lease_left"] <= 1800


def test_a_holder_whose_clock_steps_back_cannot_end_an_expired_lease(client_factory_atomic,
                                                                    monkeypatch):
    """Judged on this machine's clock, a remembered lease uses the monotonic clock too.  (Not on
    moto: it runs in this process, so its clock would step back with ours.)"""
    alice = client_factory_atomic("alice")
    alice.claim("s", ttl=1)
    time.sleep(2.2)
    real = time.time
    monkeypatch.setattr(tracecraft.time, "time", lambda: real() - 3600)
    with pytest.raises(tracecraft.LostLease, match="expired"):
        alice.complete("s")


def test_links_in_the_store_are_never_followed(local_cli, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.json"
    secret.write_text('{"value": "stolen", "revision": 1}')
    memory = local_cli.root / "memory"
    memory.mkdir(parents=True, exist_ok=True)
    (memory / "leak.json").symlink_to(secret)
    (memory / "dir").symlink_to(outside, target_is_directory=True)
    got = local_cli("memory", "get", "leak")
    assert got.returncode == 4 and "stolen" not in got.stdout
    written = local_cli("memory", "set", "dir.x", "1")
    assert written.returncode == 4 and "symbolic link" in written.stderr
    assert sorted(p.name for p in outside.iterdir()) == ["secret.json"]
    assert secret.read_text() == '{"value": "stolen", "revision": 1}'
    listed = local_cli("memory", "list")
    assert listed.returncode == 0 and "leak" not in listed.stdout


def test_a_directory_that_cannot_be_read_is_exit_4(local_cli, tmp_path):
    local_cli.ok("memory", "set", "k", "1")
    local_cli.ok("claim", "s")
    if os.getuid() == 0:
        pytest.skip("root reads every directory")   # see the next test for root
    for sub in ("memory", "agents", "steps"):
        (local_cli.root / sub).chmod(0)
    try:
        for args in (["memory", "list"], ["agents"], ["status"]):
            result = local_cli(*args)
            assert result.returncode == 4 and "permission denied" in result.stderr
            assert "Traceback" not in result.stderr
    finally:
        for sub in ("memory", "agents", "steps"):
            (local_cli.root / sub).chmod(0o755)


def test_a_directory_that_cannot_be_read_is_exit_4_in_process(local_cli, monkeypatch, capsys):
    """Root reads every directory, so the refusal is made by os.scandir itself, in this process
    (the class of error is what matters: an OSError of the local store is exit 4)."""
    local_cli.ok("memory", "set", "k", "1")
    monkeypatch.chdir(local_cli.cwd)
    for name, value in local_cli.env.items():
        monkeypatch.setenv(name, value)
    real = os.scandir

    def refuse(path="."):
        if str(path).startswith(str(local_cli.root)):
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)
    monkeypatch.setattr(os, "scandir", refuse)
    for args in (["memory", "list"], ["agents"], ["status"]):
        assert tracecraft.main(args) == 4
        assert "permission denied" in capsys.readouterr().err


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MB file system (tmpfs), where it can be mounted (root on Linux)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True)
    if made.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_reported_as_such(local_cli, tmp_path, tiny_disk):
    big = local_cli.cwd / "big.bin"
    big.write_bytes(os.urandom(3 << 20))
    local_cli.ok("artifact", "upload", "big.bin")
    download = local_cli("artifact", "download", "big.bin", "-o", str(tiny_disk / "big.bin"))
    assert download.returncode == 2 and "the disk is full" in download.stderr
    assert os.listdir(tiny_disk) == []                       # no partial file left behind
    config = json.loads((local_cli.cwd / ".tracecraft.json").read_text())
    config["root"] = str(tiny_disk / "store")
    (local_cli.cwd / ".tracecraft.json").write_text(json.dumps(config))
    local_cli.ok("memory", "set", "k", "1")
    upload = local_cli("artifact", "upload", "big.bin", "--name", "again.bin")
    assert upload.returncode == 4 and "the disk is full" in upload.stderr
    assert [p.name for p in (tiny_disk / "store" / ".tmp").iterdir()] == []

"""Artifacts through the Python API, on every store, and through the real CLI."""
import hashlib
import json
import os
import random
import signal
import stat
import subprocess
import time

import pytest

import tracecraft
from conftest import CLI, COMMAND, clean_env, init_args, race, racer_outputs
from fakes import StoreClock


def test_round_trip_keeps_bytes_and_metadata(client_factory, tmp_path):
    alice, bob = client_factory("alice"), client_factory("bob")
    data = os.urandom(300_000) + b"\x00\xff"
    src = tmp_path / "report final.pdf"
    src.write_bytes(data)
    meta = alice.artifacts.upload(str(src), step="design")
    assert meta["size"] == len(data) and meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["content_type"] == "application/pdf" and meta["uploader"] == "alice"
    listed = bob.artifacts.list()
    assert [(m["step"], m["name"]) for m in listed] == [("design", "report final.pdf")]
    assert listed[0]["sha256"] == meta["sha256"]
    out = tmp_path / "out"
    out.mkdir()
    path, got = bob.artifacts.download("report final.pdf", step="design", dest=str(out))
    assert path == str(out / "report final.pdf") and (out / "report final.pdf").read_bytes() == data
    assert bob.artifacts.list(step="other") == []


def test_no_silent_overwrite(client_factory, tmp_path):
    alice = client_factory("alice")
    src = tmp_path / "a.txt"
    src.write_text("one")
    alice.artifacts.upload(str(src))
    src.write_text("two")
    with pytest.raises(tracecraft.Refused, match="overwrite=True"):   # a parameter, not a flag
        alice.artifacts.upload(str(src))
    alice.artifacts.upload(str(src), overwrite=True)
    dest = tmp_path / "dl.txt"
    alice.artifacts.download("a.txt", dest=str(dest))
    assert dest.read_text() == "two"


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "..\\x", "a/b", ".hidden", ".."])
def test_crafted_names_never_escape(client_factory, tmp_path, name):
    alice = client_factory("alice")
    with pytest.raises(tracecraft.UsageError):
        alice.artifacts.download(name, dest=str(tmp_path))
    src = tmp_path / "f"
    src.write_text("x")
    with pytest.raises(tracecraft.UsageError):
        alice.artifacts.upload(str(src), name=name)


def test_missing_artifact_and_file(client_factory, tmp_path):
    alice = client_factory("alice")
    with pytest.raises(tracecraft.NotFound):
        alice.artifacts.download("nope.txt", dest=str(tmp_path))
    assert os.listdir(tmp_path) == [] or all(not f.startswith(".tracecraft-")
                                             for f in os.listdir(tmp_path))
    with pytest.raises(tracecraft.UsageError, match="cannot read"):
        alice.artifacts.upload(str(tmp_path / "does-not-exist"))


def on_commit(store, suffix, wrapper):
    """Make each staged write to a key ending in `suffix` commit through
    wrapper(commit, **conditions) (the moment an artifact's bytes become visible); returns
    the undo."""
    real_stage = store.stage

    def stage(key, body, *args, **kwargs):
        staged = real_stage(key, body, *args, **kwargs)
        if key.endswith(suffix):
            real_commit = staged.commit
            staged.commit = lambda **conditions: wrapper(real_commit, **conditions)
        return staged
    store.stage = stage
    return lambda: setattr(store, "stage", real_stage)


def test_a_retried_upload_that_landed_is_not_reported_as_a_clash(client_factory, tmp_path):
    """The first PUT succeeded but its answer was lost: the retry's 412 is our own write."""
    alice = client_factory("alice")
    src = tmp_path / "a.bin"
    src.write_bytes(b"payload")

    def commit_twice(commit, **conditions):
        commit(**conditions)                       # lands ...
        exc = tracecraft.PreconditionFailed("412 on the retry")
        exc.retried = True                         # ... and the retry finds it there
        raise exc
    undo = on_commit(alice.store, "a.bin", commit_twice)
    meta = alice.artifacts.upload(str(src))
    assert meta["size"] == 7
    undo()
    src.write_bytes(b"different")
    with pytest.raises(tracecraft.Refused, match="already exists"):
        alice.artifacts.upload(str(src))


# -- issue 11: an artifact's bytes and metadata are one outcome, whatever races or dies -------------


def test_racing_overwrites_always_leave_a_downloadable_artifact(atomic_settings, tmp_path,
                                                                client_factory_atomic):
    """Four processes upload race.bin again and again with --overwrite while a fifth downloads
    it: every download verifies (it used to fail its SHA-256 check for good when the bytes of
    one upload met the metadata of another), and the last state is one of the uploads."""
    first = tmp_path / "race.bin"
    first.write_bytes(b"first:0:".ljust(64) * 3200)
    client_factory_atomic("first").artifacts.upload(str(first))
    rounds = 8
    *uploaders, reader = race([("upload", atomic_settings, f"up{i}", rounds) for i in range(4)]
                              + [("download", atomic_settings, "reader", 6)])
    done = racer_outputs(uploaders)
    got = racer_outputs([reader])[0]
    assert all(len(d) == rounds for d in done) and len(got) >= 5
    # evidence of a race: every uploader was uploading while every other one was
    assert max(d[0]["began"] for d in done) < min(d[-1]["ended"] for d in done)
    for g in got:   # every download verified, and its bytes are the recorded uploader's
        assert g["got"].split(":")[0] == g["uploader"]
    assert len({g["got"] for g in got}) > 1, "the downloads saw no upload land: no race"
    observer = client_factory_atomic("observer")
    final = _download_bytes(observer)
    writer, i = final[:64].decode().strip().split(":")[:2]
    assert writer.startswith("up") and 0 <= int(i) < rounds
    listed = [m for m in observer.artifacts.list() if m["name"] == "race.bin"]
    assert listed[0]["uploader"] == writer and listed[0]["sha256"] == hashlib.sha256(final).hexdigest()


def _download_bytes(client):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path, _ = client.artifacts.download("race.bin", dest=tmp)
        with open(path, "rb") as f:
            return f.read()


@pytest.mark.parametrize("dies", ["before its bytes are committed", "while its file is read"])
def test_an_upload_that_dies_after_its_metadata_leaves_the_artifact_before_it(
        client_factory, tmp_path, dies):
    """The window a kill -9 rarely hits, hit every time: the new upload's metadata is written,
    its bytes never arrive.  The artifact downloads, verified, as the upload before it, and is
    listed as that one; once that upload's time is up, the metadata is healed to say so."""
    clock = StoreClock()
    alice, bob = clock.wrap(client_factory("alice")), clock.wrap(client_factory("bob"))
    one, two = tmp_path / "one.bin", tmp_path / "two.bin"
    one.write_bytes(b"one" * 1000)
    two.write_bytes(b"TWO" * 1000)   # the same size: only the bytes tell them apart
    alice.artifacts.upload(str(one), name="a.bin")
    real_stage = alice.store.stage

    def dying(key, body, *args, **kwargs):
        if dies == "while its file is read":
            body.read(100)
            raise KeyboardInterrupt   # the process ends here
        staged = real_stage(key, body, *args, **kwargs)
        staged.commit = killed
        return staged

    def killed(**conditions):
        raise KeyboardInterrupt   # the process ends here, its metadata written
    alice.store.stage = dying
    with pytest.raises(KeyboardInterrupt):
        alice.artifacts.upload(str(two), name="a.bin", overwrite=True)
    alice.store.stage = real_stage
    path, meta = bob.artifacts.download("a.bin", dest=str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == one.read_bytes()
    assert meta["sha256"] == hashlib.sha256(one.read_bytes()).hexdigest()
    assert meta["uploader"] == "alice"
    assert [m["sha256"] for m in bob.artifacts.list()] == [meta["sha256"]]
    meta_key = bob.key("artifacts", "shared", ".meta", "a.bin.json")
    assert json.loads(bob.store.get(meta_key).body)["size"] == 3000   # still says two's
    clock.advance(3600)
    bob.artifacts.download("a.bin", dest=str(tmp_path / "healed.bin"))
    healed = json.loads(bob.store.get(meta_key).body)
    assert healed["sha256"] == meta["sha256"] and healed["uploader"] == "alice"
    assert meta["sha256"] not in [u["sha256"] for u in healed["previous"]]
    alice.artifacts.upload(str(two), name="a.bin", overwrite=True)   # and it can be replaced
    _, again = bob.artifacts.download("a.bin", dest=str(tmp_path / "again.bin"))
    assert again["sha256"] == hashlib.sha256(two.read_bytes()).hexdigest()


def test_a_killed_upload_never_leaves_an_undownloadable_artifact(atomic_settings, tmp_path):
    """kill -9 at a random moment of `artifact upload --overwrite` (between metadata and bytes
    included): the artifact downloads, verified, as one upload or the other."""
    settings = dict(atomic_settings)
    env = clean_env(tmp_path)
    work = tmp_path / "w"
    work.mkdir()
    cli = CLI(work, env)
    cli.ok("init", "--project", "proj", "--agent", "killer", *init_args(settings))
    versions = {}
    for n in range(8):
        data = f"version {n}:".encode().ljust(32) * 40_000     # 1.3 MB
        versions[hashlib.sha256(data).hexdigest()] = n
        (work / "big.bin").write_bytes(data)
        proc = subprocess.Popen([*COMMAND, "artifact", "upload", "big.bin",
                                 "--overwrite"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(random.uniform(0.05, 0.45))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if n == 0 and proc.returncode != 0:
            cli.ok("artifact", "upload", "big.bin", "--overwrite")   # something to kill over
        result = cli("artifact", "download", "big.bin", "-o", str(tmp_path / "out.bin"),
                     "--overwrite", "--json")
        assert result.returncode == 0, result.stderr
        got = (tmp_path / "out.bin").read_bytes()
        assert hashlib.sha256(got).hexdigest() in versions
        assert json.loads(result.stdout)["sha256"] == hashlib.sha256(got).hexdigest()


def test_a_device_is_no_file_to_upload(local_cli):
    """/dev/zero seeks and says its size is 0: it would be uploaded as an empty artifact."""
    result = local_cli("artifact", "upload", "/dev/zero")
    assert result.returncode == 2 and "/dev/zero is a device, not a file" in result.stderr
    assert json.loads(local_cli.ok("artifact", "list", "--json")) == {"artifacts": []}


def test_a_growing_file_is_uploaded_as_it_was_and_downloads(local_cli, tmp_path):
    """Hash what is sent: a file appended to while it is uploaded is recorded, and downloads,
    as it was when the upload began."""
    import threading
    path = local_cli.cwd / "log.txt"
    path.write_bytes(b"line\n" * 2_000_000)           # 10 MB
    stop = threading.Event()

    def grow():
        with open(path, "ab") as f:
            while not stop.is_set():
                f.write(b"more\n" * 1000)
                f.flush()
    writer = threading.Thread(target=grow)
    writer.start()
    try:
        uploaded = json.loads(local_cli.ok("artifact", "upload", "log.txt", "--json"))
    finally:
        stop.set()
        writer.join()
    assert uploaded["size"] >= 10_000_000
    out = tmp_path / "copy.txt"
    local_cli.ok("artifact", "download", "log.txt", "-o", str(out))
    got = out.read_bytes()
    assert len(got) == uploaded["size"] and got == path.read_bytes()[:len(got)]
    assert hashlib.sha256(got).hexdigest() == uploaded["sha256"]


def test_a_file_changed_in_place_while_uploading_is_refused_or_whole(settings, tmp_path,
                                                                    client_factory):
    """Bytes rewritten while they are sent: the store refuses them (their MD5 is sent with them)
    and the upload says the file changed; or the change came too late to matter."""
    import threading
    alice = client_factory("alice")
    path = tmp_path / "data.bin"
    path.write_bytes(b"a" * 8_000_000)
    stop = threading.Event()

    def scribble():
        with open(path, "r+b") as f:
            while not stop.is_set():
                f.seek(random.randrange(0, 8_000_000))
                f.write(b"Z")
                f.flush()
    writer = threading.Thread(target=scribble)
    writer.start()
    try:
        try:
            meta = alice.artifacts.upload(str(path))
        except tracecraft.UsageError as exc:
            assert "changed while it was being uploaded" in str(exc)
            meta = None
    finally:
        stop.set()
        writer.join()
    if meta is not None:
        dest = tmp_path / "back.bin"
        _, got = alice.artifacts.download("data.bin", dest=str(dest))
        assert hashlib.sha256(dest.read_bytes()).hexdigest() == meta["sha256"] == got["sha256"]


# -- issue 11: downloads write only regular files, never silently over one -------------------------

def test_download_refuses_devices_fifos_links_and_existing_files(local_cli, tmp_path):
    cli = local_cli
    (cli.cwd / "a.txt").write_text("shared")
    cli.ok("artifact", "upload", "a.txt")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    target = tmp_path / "target.txt"
    target.write_text("keep me")
    link = tmp_path / "link"
    link.symlink_to(target)
    specials = [(fifo, "not a regular file"), (link, "symbolic link")]
    try:
        device = tmp_path / "null"
        os.mknod(device, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        specials.append((device, "not a regular file"))
    except PermissionError:
        pass   # not root: no device node to test with
    for path, words in specials:
        before = os.lstat(path)
        result = cli("artifact", "download", "a.txt", "-o", str(path), "--overwrite")
        assert result.returncode == 2 and words in result.stderr, result.stderr
        after = os.lstat(path)
        assert (after.st_mode, after.st_ino) == (before.st_mode, before.st_ino)
    assert target.read_text() == "keep me"
    existing = tmp_path / "existing.txt"
    existing.write_text("mine")
    existing.chmod(0o640)
    refused = cli("artifact", "download", "a.txt", "-o", str(existing))
    assert refused.returncode == 1 and "--overwrite" in refused.stderr
    assert existing.read_text() == "mine"
    cli.ok("artifact", "download", "a.txt", "-o", str(existing), "--overwrite")
    assert existing.read_text() == "shared" and existing.stat().st_mode & 0o777 == 0o640
    for bad, words in (("", "not empty"), (str(tmp_path / "nowhere" / "x"), "no directory")):
        result = cli("artifact", "download", "a.txt", "-o", bad)
        assert result.returncode == 2 and words in result.stderr
    (cli.cwd / "dir-in-the-way").mkdir()
    (cli.cwd / "dir-in-the-way" / "a.txt").mkdir()
    in_the_way = cli("artifact", "download", "a.txt", "-o", str(cli.cwd / "dir-in-the-way"))
    assert in_the_way.returncode == 2 and "is a directory" in in_the_way.stderr


def test_a_new_download_gets_the_users_umask(local_cli, tmp_path):
    (local_cli.cwd / "a.txt").write_text("x")
    local_cli.ok("artifact", "upload", "a.txt")
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        dest = tmp_path / f"u{umask:o}.txt"
        subprocess.run([*COMMAND, "artifact", "download", "a.txt", "-o",
                        str(dest)], cwd=local_cli.cwd, env=local_cli.env, check=True,
                       preexec_fn=lambda umask=umask: os.umask(umask), capture_output=True)
        assert dest.stat().st_mode & 0o777 == mode


# -- issue 11: no partial files left behind --------------------------------------------------------

def test_leftovers_of_killed_transfers_are_cleaned_up_by_age(local_cli, tmp_path):
    store_tmp = local_cli.root.parent.parent / ".tmp"
    old = time.time() - 2 * tracecraft.STALE_TEMP_SECONDS
    stale, fresh = store_tmp / "put-0123456789abcdef.tmp", store_tmp / "put-fedcba9876543210.tmp"
    partial = local_cli.cwd / ".tracecraft-0123456789abcdef.tmp"
    for path in (stale, fresh, partial):
        path.write_bytes(b"x" * 1000)
    for path in (stale, partial):
        os.utime(path, (old, old))
    (local_cli.cwd / "a.txt").write_text("x")
    local_cli.ok("artifact", "upload", "a.txt")
    assert not stale.exists() and fresh.exists()      # a write in progress keeps its file
    local_cli.ok("artifact", "download", "a.txt", "-o", str(local_cli.cwd / "b.txt"))
    assert not partial.exists()


def test_a_terminated_transfer_leaves_no_partial_file(local_cli, tmp_path):
    big = local_cli.cwd / "big.bin"
    big.write_bytes(os.urandom(64 << 20))
    local_cli.ok("artifact", "upload", "big.bin")
    store_tmp = local_cli.root.parent.parent / ".tmp"
    for args in (["artifact", "upload", "big.bin", "--overwrite"],
                 ["artifact", "download", "big.bin", "-o", str(tmp_path / "dl.bin")]):
        proc = subprocess.Popen([*COMMAND, *args], cwd=local_cli.cwd,
                                env=local_cli.env, stderr=subprocess.PIPE)
        time.sleep(0.4)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert b"Traceback" not in err
        leftovers = [p.name for p in list(store_tmp.iterdir()) + list(tmp_path.iterdir())
                     if p.name.startswith(("put-", ".tracecraft-"))]
        assert leftovers == [], (args, proc.returncode, leftovers)


def test_an_upload_in_progress_is_not_taken_over(client_factory, tmp_path):
    """B finds the metadata of A's upload but not yet its bytes: B is told A is uploading, and
    does not take its place (it used to, and then took its metadata back, leaving A's bytes with
    none)."""
    import threading
    alice, bob = client_factory("alice"), client_factory("bob")
    (tmp_path / "a.bin").write_bytes(b"A" * 5000)
    (tmp_path / "b.bin").write_bytes(b"B" * 7000)
    sending, go_on = threading.Event(), threading.Event()

    def slow(commit, **conditions):
        sending.set()
        go_on.wait(10)
        return commit(**conditions)
    on_commit(alice.store, "/x.bin", slow)
    uploading = threading.Thread(target=alice.artifacts.upload, args=(str(tmp_path / "a.bin"),),
                                 kwargs={"name": "x.bin"})
    uploading.start()
    assert sending.wait(10)
    with pytest.raises(tracecraft.Refused, match="being uploaded by another agent"):
        bob.artifacts.upload(str(tmp_path / "b.bin"), name="x.bin")
    go_on.set()
    uploading.join()
    _, meta = bob.artifacts.download("x.bin", dest=str(tmp_path / "got.bin"))
    assert meta["uploader"] == "alice" and (tmp_path / "got.bin").read_bytes() == b"A" * 5000
    with pytest.raises(tracecraft.Refused, match="already exists"):   # the same bytes again
        alice.artifacts.upload(str(tmp_path / "a.bin"), name="x.bin")


def test_listings_read_stores_whose_etags_are_no_md5(client_factory, tmp_path):
    """With SSE-KMS an ETag is not the MD5 of the bytes: the listing still names the upload."""
    alice = client_factory("alice")
    (tmp_path / "a.txt").write_text("one")
    alice.artifacts.upload(str(tmp_path / "a.txt"))

    class KmsStore:
        def __init__(self, store):
            self.store = store

        def __getattr__(self, name):
            return getattr(self.store, name)

        def list(self, *args, **kwargs):
            for entry in self.store.list(*args, **kwargs):
                entry.etag = '"0123456789abcdef0123456789abcdef-1"'   # no MD5
                yield entry
    alice.store = KmsStore(alice.store)
    listed = alice.artifacts.list()
    assert [(m["name"], m["uploader"], m["size"]) for m in listed] == [("a.txt", "alice", 3)]

"""Big artifacts (issue 16): above the threshold a file goes to S3 as a multipart upload, read
and hashed once, committed after its metadata; a lost condition, a failure or an interruption
aborts it.  A threshold of 1 MiB makes S3's smallest parts (5 MiB): an 11 MiB file is 3 parts."""
import hashlib
import io
import json
import os
import subprocess

import pytest

import tracecraft
from conftest import COMMAND, race, racer_outputs, settings_for

MiB = 1 << 20
THRESHOLD = {"TRACECRAFT_MULTIPART_THRESHOLD": str(MiB)}


@pytest.fixture
def small_threshold(monkeypatch):
    monkeypatch.setenv("TRACECRAFT_MULTIPART_THRESHOLD", str(MiB))


@pytest.fixture
def client_factory_seaweed(request, tmp_path, bucket_name):
    """make(agent) -> a client on SeaweedFS (the store whose parts and conditions are real)."""
    settings = settings_for(request, "seaweed", tmp_path, bucket_name)
    clients = []

    def make(agent):
        clients.append(tracecraft.connect(project="proj", agent=agent, config=None, **settings))
        clients[-1].store.ensure_bucket()
        return clients[-1]
    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def big_data():
    return os.urandom(11 * MiB)


def uploads_in_progress(store):
    """The multipart uploads the store's bucket holds, from the server itself."""
    resp = store.request("GET", query=[("uploads", "")])
    return tracecraft._xml_values(resp.body.decode(), "UploadId")


def open_store(request, kind, tmp_path, bucket):
    store = tracecraft.open_store(dict(settings_for(request, kind, tmp_path, bucket),
                                       _from_flags=True))
    store.ensure_bucket()
    return store


def test_part_size_stays_within_s3s_limits():
    part_size = tracecraft.part_size
    assert part_size(11 * MiB, MiB) == 5 * MiB              # never below S3's 5 MiB
    assert part_size(1 << 30, 64 * MiB) == 8 * MiB          # an eighth of the threshold
    assert part_size(80 << 30, 64 * MiB) > 8 * MiB          # 8 MiB parts would be 10,240
    for size in (80 << 30, (1 << 40) + 1, 5 << 40):
        part = part_size(size, 64 * MiB)
        assert -(-size // part) <= 10_000 and part % MiB == 0 and part <= 5 << 30
    with pytest.raises(tracecraft.UsageError, match="5 TiB"):
        part_size((5 << 40) + 1, 64 * MiB)


def test_the_threshold_is_64_mib_unless_set(monkeypatch):
    monkeypatch.delenv("TRACECRAFT_MULTIPART_THRESHOLD", raising=False)
    assert tracecraft.multipart_threshold() == 64 * MiB
    for bad in ("0", "-1", "1e6", "64MiB", str((5 << 30) + 1)):
        monkeypatch.setenv("TRACECRAFT_MULTIPART_THRESHOLD", bad)
        with pytest.raises(tracecraft.ConfigError, match="TRACECRAFT_MULTIPART_THRESHOLD"):
            tracecraft.multipart_threshold()


def test_a_big_artifact_round_trips_in_parts(settings, client_factory, small_threshold, big_data,
                                             tmp_path):
    """Upload in 3 parts, list (a multipart ETag is no MD5: the size tells the upload), download
    verified, refuse a second create, replace with --overwrite."""
    source = tmp_path / "big.bin"
    source.write_bytes(big_data)
    alice, bob = client_factory("alice"), client_factory("bob")
    meta = alice.artifacts.upload(str(source))
    assert meta["size"] == len(big_data)
    assert meta["sha256"] == hashlib.sha256(big_data).hexdigest()
    if settings["backend"] != "local":
        etag = alice.store.head(alice.key("artifacts", "shared", "big.bin")).etag
        assert etag.strip('"').endswith("-3"), etag   # three parts
        assert uploads_in_progress(alice.store) == []
    assert [m["sha256"] for m in bob.artifacts.list()] == [meta["sha256"]]
    _, got = bob.artifacts.download("big.bin", dest=str(tmp_path / "got.bin"))
    assert (tmp_path / "got.bin").read_bytes() == big_data and got == meta
    with pytest.raises(tracecraft.Refused, match="already exists"):
        alice.artifacts.upload(str(source))
    source.write_bytes(big_data[:-1] + b"!")
    replaced = alice.artifacts.upload(str(source), overwrite=True)
    _, got = bob.artifacts.download("big.bin", dest=str(tmp_path / "again.bin"))
    assert (tmp_path / "again.bin").read_bytes() == source.read_bytes()
    assert got["sha256"] == replaced["sha256"] != meta["sha256"]


@pytest.mark.parametrize("kind", ["moto", "seaweed"])
def test_complete_honours_create_only(request, kind, tmp_path, bucket_name, small_threshold,
                                      big_data):
    """CompleteMultipartUpload with If-None-Match: * (SeaweedFS 4.48 and moto honour it; so
    does AWS): a second upload is refused, and its parts aborted.  (One after the other: moto
    forgets every other upload of a key once one completes, and answers 500 for them.)"""
    store = open_store(request, kind, tmp_path, bucket_name)
    with store.stage("k", io.BytesIO(big_data)) as first:
        first.commit(if_none_match=True)
    with store.stage("k", io.BytesIO(big_data[::-1])) as second:
        with pytest.raises(tracecraft.PreconditionFailed):
            second.commit(if_none_match=True)
    assert uploads_in_progress(store) == []
    into = tracecraft.HashingFile(io.BytesIO())
    store.get("k", into=into)
    assert into.sha256.hexdigest() == hashlib.sha256(big_data).hexdigest()


def test_complete_honours_compare_and_swap_on_seaweed(request, tmp_path, bucket_name,
                                                      small_threshold, big_data):
    """If-Match on CompleteMultipartUpload (moto 5.2.5 ignores it): a stale version is refused,
    and the same upload commits once the version is right."""
    store = open_store(request, "seaweed", tmp_path, bucket_name)
    etag = store.put("k", b"small")
    with store.stage("k", io.BytesIO(big_data)) as staged:
        with pytest.raises(tracecraft.PreconditionFailed):
            staged.commit(if_match='"0123456789abcdef0123456789abcdef"')
        staged.commit(if_match=etag)
    assert store.head("k").size == len(big_data) and uploads_in_progress(store) == []


def test_a_failed_part_aborts_the_upload(request, seaweed, tmp_path, bucket_name, small_threshold,
                                         big_data):
    """The store refuses part 2: the upload fails, its parts are aborted (the server lists no
    upload), and no metadata was written (it comes after the parts)."""
    from fakes import RefusingProxy
    proxy = RefusingProxy(seaweed.endpoint, lambda method, path: method == "PUT"
                          and "partNumber=2&" in path)
    settings = dict(settings_for(request, "seaweed", tmp_path, bucket_name),
                    endpoint=proxy.endpoint)
    source = tmp_path / "big.bin"
    source.write_bytes(big_data)
    try:
        alice = tracecraft.connect(project="proj", agent="alice", config=None, **settings)
        alice.store.ensure_bucket()
        with pytest.raises(tracecraft.StoreError, match="InvalidRequest"):
            alice.artifacts.upload(str(source))
        assert proxy.refused >= 1
        assert uploads_in_progress(alice.store) == [] and alice.artifacts.list() == []
        alice.close()
    finally:
        proxy.stop()


def troubled(seaweed, trouble):
    """A proxy in front of SeaweedFS that answers the requests `trouble(handler)` picks itself
    (it returns True when it did), and forwards the rest."""
    from fakes import ForwardingProxy

    class Troubled(ForwardingProxy):
        def answer(self, handler, body):
            if not trouble(self, handler, body):
                super().answer(handler, body)
    return Troubled(seaweed.endpoint)


def refuse(handler):
    from fakes import send_head
    data = b"<Error><Code>InvalidRequest</Code><Message>refused</Message></Error>"
    send_head(handler, 400, [("Content-Type", "application/xml")], len(data))
    handler.wfile.write(data)


def test_failures_around_the_parts_leave_nothing_behind(request, seaweed, tmp_path, bucket_name,
                                                        small_threshold, big_data):
    """Each pins a class: a part that never answers while another is refused does not hold the
    failure up (the parts in flight are cut off); a CreateMultipartUpload whose answer was lost
    (so it was sent again) leaves no upload of its own behind; a refused Complete takes the
    metadata back, so that uploading again is not "in progress" for hours."""
    import threading
    import time
    from fakes import relay
    released, seen = threading.Event(), {"creates": 0}

    def trouble(proxy, handler, body):
        path = handler.path
        if handler.command == "PUT" and "partNumber=1&" in path and seen["stall"]:
            released.wait(20)                   # never answered while the test waits
            handler.close_connection = True
            return True
        if handler.command == "PUT" and "partNumber=2&" in path and seen["stall"]:
            refuse(handler)
            return True
        if handler.command == "POST" and "uploads=" in path:
            seen["creates"] += 1
            if seen["creates"] == 1:            # created, but the answer is lost
                relay(_Mute(handler), proxy.target, body, dict(handler.headers.items()))
                handler.close_connection = True
                return True
        if handler.command == "POST" and "uploadId=" in path and seen["refuse_complete"]:
            refuse(handler)
            return True
        return False
    proxy = troubled(seaweed, trouble)
    settings = dict(settings_for(request, "seaweed", tmp_path, bucket_name),
                    endpoint=proxy.endpoint)
    source = tmp_path / "big.bin"
    source.write_bytes(big_data)
    alice = tracecraft.connect(project="proj", agent="alice", config=None, **settings)
    try:
        alice.store.ensure_bucket()
        seen.update(stall=True, refuse_complete=False)
        started = time.monotonic()
        with pytest.raises(tracecraft.StoreError, match="InvalidRequest"):
            alice.artifacts.upload(str(source))
        assert time.monotonic() - started < 6   # not the stalled part's 10 s x attempts
        released.set()
        seen.update(stall=False, refuse_complete=True, creates=0)
        with pytest.raises(tracecraft.StoreError, match="InvalidRequest"):
            alice.artifacts.upload(str(source))
        assert seen["creates"] == 2 and uploads_in_progress(alice.store) == []
        seen.update(refuse_complete=False)
        assert alice.artifacts.upload(str(source))["size"] == len(big_data)
        assert uploads_in_progress(alice.store) == []
        # An overwrite of the same size that fails to complete: the listing still describes
        # the bytes there (by the multipart ETag recorded at the upload, not by the size).
        other = tmp_path / "other.bin"
        other.write_bytes(bytes(reversed(big_data)))
        seen.update(refuse_complete=True)
        with pytest.raises(tracecraft.StoreError, match="InvalidRequest"):
            alice.artifacts.upload(str(other), name="big.bin", overwrite=True)
        assert alice.artifacts.list()[0]["sha256"] == hashlib.sha256(big_data).hexdigest()
    finally:
        released.set()
        alice.close()
        proxy.stop()


class _Mute:
    """A handler that forwards but answers nothing: what the client sees of a lost answer."""

    def __init__(self, handler):
        self.command, self.path, self.wfile = handler.command, handler.path, io.BytesIO()

    def send_response(self, *args):
        pass

    send_header = end_headers = send_response


def test_an_interrupted_upload_is_aborted(client_factory_seaweed, small_threshold, big_data,
                                          tmp_path):
    """Ctrl-C (or SIGTERM, which the command line turns into an exception) while parts are
    sent: the upload is aborted before the exception goes on."""
    alice = client_factory_seaweed("alice")
    source = tmp_path / "big.bin"
    source.write_bytes(big_data)

    def interrupt(done, total):
        if done > 2 * MiB:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        alice.artifacts.upload(str(source), progress=interrupt)
    assert uploads_in_progress(alice.store) == [] and alice.artifacts.list() == []


def test_uploads_a_killed_process_left_are_aborted_by_the_next(client_factory_seaweed,
                                                               small_threshold, big_data,
                                                               tmp_path, monkeypatch):
    """A process killed outright cannot abort: the next multipart upload to the key aborts the
    uploads of it that are old enough (a day; here, any)."""
    alice = client_factory_seaweed("alice")
    key = alice.key("artifacts", "shared", "big.bin")
    alice.store.request("POST", key, query=[("uploads", "")])   # the killed process's
    alice.store.request("POST", key + ".other", query=[("uploads", "")])   # another key's
    assert len(uploads_in_progress(alice.store)) == 2
    monkeypatch.setattr(tracecraft, "STALE_UPLOAD_SECONDS", -1)
    source = tmp_path / "big.bin"
    source.write_bytes(big_data)
    alice.artifacts.upload(str(source))
    assert len(uploads_in_progress(alice.store)) == 1   # the other key's is not ours to end


def test_a_big_file_changed_while_uploading_is_refused(client_factory_seaweed, small_threshold,
                                                       big_data, tmp_path):
    alice = client_factory_seaweed("alice")
    source = tmp_path / "big.bin"
    source.write_bytes(big_data)

    def scribble(done, total):
        with open(source, "r+b") as f:
            f.write(b"Z")   # in place, in bytes already read
    with pytest.raises(tracecraft.UsageError, match="changed while it was being uploaded"):
        alice.artifacts.upload(str(source), progress=scribble)
    assert uploads_in_progress(alice.store) == [] and alice.artifacts.list() == []


def test_racing_creates_of_a_big_artifact_have_one_winner(request, seaweed, tmp_path,
                                                          bucket_name):
    """Two processes create big.bin (11 MiB, in parts) at the same instant: exactly one wins,
    the other is told it exists or is being uploaded, and what downloads is the winner's."""
    settings = settings_for(request, "seaweed", tmp_path, bucket_name)
    store = open_store(request, "seaweed", tmp_path, bucket_name)
    procs = race([("create", settings, f"racer{i}", 11) for i in range(2)],
                 envs=[dict(THRESHOLD, XDG_CACHE_HOME=str(tmp_path / f"cache{i}"))
                       for i in range(2)])
    results = [lines[0] for lines in racer_outputs(procs)]
    assert sorted(r["won"] for r in results) == [False, True], results
    loser = next(r for r in results if not r["won"])
    assert "already exists" in loser["said"] or "being uploaded" in loser["said"], loser
    winner = f"racer{[r['won'] for r in results].index(True)}"
    observer = tracecraft.connect(project="race", agent="observer", config=None, **settings)
    path, meta = observer.artifacts.download("big.bin", dest=str(tmp_path))
    with open(path, "rb") as f:
        assert f.read(64).strip() == winner.encode() and meta["uploader"] == winner
    assert uploads_in_progress(store) == []
    observer.close()
    store.close()


def _on_terminal(cli, *args):
    """Run the command line with stderr on a pseudo-terminal: (exit code, what it drew)."""
    import pty
    leader, follower = pty.openpty()
    proc = subprocess.Popen([*COMMAND, *args], cwd=cli.cwd, env=cli.env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    drawn = b""
    while True:
        try:
            block = os.read(leader, 65536)
        except OSError:   # EIO: the other side closed
            break
        if not block:
            break
        drawn += block
    os.close(leader)
    return proc.wait(timeout=30), drawn.decode("utf-8", "replace")


def test_progress_is_drawn_on_a_terminal_only(local_cli, big_data):
    """bytes done of the total, the rate and the time left, on a terminal; nothing with --json
    or when stderr is not a terminal."""
    (local_cli.cwd / "big.bin").write_bytes(big_data)
    code, drawn = _on_terminal(local_cli, "artifact", "upload", "big.bin")
    assert code == 0, drawn
    assert "\rUploading big.bin: 11.0 MB of 11.0 MB, " in drawn and "MB/s" in drawn, drawn
    code, drawn = _on_terminal(local_cli, "artifact", "download", "big.bin", "-o", "copy.bin")
    assert code == 0 and "Downloading big.bin: 11.0 MB of 11.0 MB, " in drawn, drawn
    code, drawn = _on_terminal(local_cli, "--json", "artifact", "download", "big.bin", "-o",
                               "again.bin")
    assert code == 0 and drawn == "", drawn
    piped = local_cli("artifact", "download", "big.bin", "-o", "third.bin")
    assert piped.returncode == 0 and "Downloading" not in piped.stderr and piped.stderr == ""

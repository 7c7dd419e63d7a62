"""Artifacts through the Python API, on every store."""
import hashlib
import os

import pytest

import tracecraft


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
    with pytest.raises(tracecraft.Refused, match="--overwrite"):
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


def test_a_retried_upload_that_landed_is_not_reported_as_a_clash(client_factory, tmp_path):
    """The first PUT succeeded but its answer was lost: the retry's 412 is our own write."""
    alice = client_factory("alice")
    src = tmp_path / "a.bin"
    src.write_bytes(b"payload")
    real_put = alice.store.put

    def put_twice(key, body, **kwargs):
        if not key.endswith("a.bin"):
            return real_put(key, body, **kwargs)
        real_put(key, body, **kwargs)              # lands ...
        exc = tracecraft.PreconditionFailed("412 on the retry")
        exc.retried = True                         # ... and the retry finds it there
        raise exc
    alice.store.put = put_twice
    meta = alice.artifacts.upload(str(src))
    assert meta["size"] == 7
    alice.store.put = real_put
    src.write_bytes(b"different")
    with pytest.raises(tracecraft.Refused, match="already exists"):
        alice.artifacts.upload(str(src))

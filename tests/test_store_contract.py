"""Section 4: the Store interface, held to one contract on every backend (local, moto, SeaweedFS, and
the Hugging Face gateway's emulator)."""
import hashlib
import io

import pytest

from tracecraft import NoSuchKey, PreconditionFailed

KEYS = ["plain.json", "with space/and+plus.json", "ünïcödé/ключ/日本.json",
        "reserved!'()*~@$&=,;:.json", "pct%41/hash#q?.json", "tilde~/x", "xml<b>&amp;\"'.json"]


@pytest.mark.parametrize("key", KEYS)
def test_keys_round_trip(contract_store, key):
    etag = contract_store.put("p/" + key, b"payload " + key.encode())
    blob = contract_store.get("p/" + key)
    assert blob.body == b"payload " + key.encode()
    assert blob.etag == etag
    assert blob.size == len(blob.body)
    assert [e.key for e in contract_store.list("p/" + key)] == ["p/" + key]
    head = contract_store.head("p/" + key)
    assert head.body is None and head.etag == etag and head.size == blob.size


def test_etag_is_md5_of_content(contract_store):
    import hashlib
    etag = contract_store.put("e.json", b"abc")
    assert etag.strip('"') == hashlib.md5(b"abc").hexdigest()
    assert contract_store.get("e.json").etag == etag


def test_missing_key(contract_store):
    with pytest.raises(NoSuchKey):
        contract_store.get("nope.json")
    with pytest.raises(NoSuchKey):
        contract_store.head("nope.json")
    contract_store.delete("nope.json")   # like S3: deleting nothing is fine


def test_create_only(contract_store):
    contract_store.put("c.json", b"first", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        contract_store.put("c.json", b"second", if_none_match=True)
    assert contract_store.get("c.json").body == b"first"


def test_compare_and_swap(contract_store):
    etag = contract_store.put("cas.json", b"v1")
    new = contract_store.put("cas.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        contract_store.put("cas.json", b"v3", if_match=etag)   # stale version
    assert contract_store.get("cas.json").body == b"v2"
    assert contract_store.get("cas.json").etag == new


def test_compare_and_swap_on_missing_key_loses(contract_store):
    with pytest.raises((PreconditionFailed, NoSuchKey)):
        contract_store.put("never.json", b"x", if_match='"0123456789abcdef0123456789abcdef"')


def test_conditional_delete(contract_store):
    etag = contract_store.put("d.json", b"v1")
    contract_store.put("d.json", b"v2")
    with pytest.raises(PreconditionFailed):
        contract_store.delete("d.json", if_match=etag)
    contract_store.delete("d.json", if_match=contract_store.head("d.json").etag)
    with pytest.raises(NoSuchKey):
        contract_store.get("d.json")


def test_list_order_prefix_and_start_after(contract_store):
    # No sibling sorts below "/" (like "a-" beside "a/"): SeaweedFS lists a "directory" whole
    # before its siblings, which is not S3's order; tracecraft's layout never depends on it.
    keys = ["l/b", "l/a/z", "l/a", "l/é", "l/Z", "l/a0", "l/ab", "lx/no"]
    for key in keys:
        if key == "l/a":
            continue   # a key may not also be a "directory" on the local store
        contract_store.put(key, b"")
    listed = [e.key for e in contract_store.list("l/")]
    expected = sorted(k for k in keys if k.startswith("l/") and k != "l/a")
    assert listed == sorted(expected, key=lambda k: k.encode("utf-8"))
    assert [e.key for e in contract_store.list("l/a")] == ["l/a/z", "l/a0", "l/ab"]
    assert [e.key for e in contract_store.list("l/", start_after="l/a/z")] == \
        ["l/a0", "l/ab", "l/b", "l/é"]


def test_list_pages_past_1000(contract_store):
    n = 1005
    for i in range(n):
        contract_store.put(f"many/{i:05d}", b"")
    listed = [e.key for e in contract_store.list("many/")]
    assert listed == [f"many/{i:05d}" for i in range(n)]
    assert [e.key for e in contract_store.list("many/", start_after="many/01001")] == \
        ["many/01002", "many/01003", "many/01004"]


def test_streaming_file_bodies(contract_store, tmp_path):
    data = bytes(range(256)) * 5000   # 1.28 MB, not valid UTF-8
    seen = []
    contract_store.put("big.bin", io.BytesIO(data),
                       progress=lambda done, total: seen.append((done, total)))
    assert seen and seen[-1] == (len(data), len(data))
    target = tmp_path / "out.bin"
    with open(target, "w+b") as f:
        blob = contract_store.get("big.bin", into=f)
    assert blob.body is None
    assert target.read_bytes() == data
    assert contract_store.get("big.bin").body == data


def test_staged_writes_commit_under_conditions(contract_store):
    """stage() then commit(): nothing is visible before; a lost condition can be tried again."""
    with contract_store.stage("s.bin", io.BytesIO(b"x" * 1000)) as staged:
        assert staged.sha256 == hashlib.sha256(b"x" * 1000).hexdigest() and staged.size == 1000
    assert not contract_store.exists("s.bin")   # left uncommitted: nothing there
    with contract_store.stage("s.bin", io.BytesIO(b"one")) as staged:
        etag = staged.commit(if_none_match=True)
    with contract_store.stage("s.bin", io.BytesIO(b"two")) as staged:
        with pytest.raises(PreconditionFailed):
            staged.commit(if_none_match=True)
        staged.commit(if_match=etag)
    assert contract_store.get("s.bin").body == b"two"


def test_ensure_bucket_is_idempotent(contract_store):
    assert contract_store.ensure_bucket() is False


def test_server_clock_is_reported(contract_store):
    import time
    contract_store.put("clock.json", b"{}")
    blob = contract_store.get("clock.json")
    assert abs(blob.server_time - time.time()) < 60
    assert abs(blob.last_modified - time.time()) < 60


def test_compare_and_swap_is_atomic_across_processes(atomic_settings):
    """4 processes x 25 read-modify-write increments with if-match: no update is lost."""
    from conftest import _open, race, raced, racer_outputs
    store = _open(atomic_settings)
    store.put("race/counter", b"0")
    runs = racer_outputs(race([("incr", atomic_settings, f"w{i}", 25) for i in range(4)]),
                         timeout=120)
    assert store.get("race/counter").body == b"100"
    assert raced(*runs), "the processes did not run at the same time"
    store.close()


@pytest.mark.parametrize("answer", ["301", "400"])
def test_a_bucket_in_another_region_is_found_and_remembered(seaweed, bucket_name, answer):
    """AWS answers a request signed for the wrong region with 301 (x-amz-bucket-region) or 400
    AuthorizationHeaderMalformed (naming it): the store signs for that region, resends, and the
    next store opened on this machine goes there at once."""
    import tracecraft
    from fakes import RegionProxy
    proxy = RegionProxy(seaweed.endpoint, home="eu-west-1", answer=answer)
    settings = dict(backend="s3", bucket=bucket_name, endpoint=proxy.endpoint, region="us-east-1",
                    access_key=seaweed.access_key, secret_key=seaweed.secret_key)
    try:
        with tracecraft.open_store(settings) as store:
            # A HEAD has no body to name the region in; an object's tells nothing at all on a 400.
            assert store.exists("here.json") is False
            store.put("here.json", b"{}")
            assert store.get("here.json").body == b"{}"
            assert store.region == "eu-west-1"
            assert proxy.refused == (1 if answer == "301" else 2)   # the object's, the bucket's
        with tracecraft.open_store(settings) as later:
            assert later.get("here.json").body == b"{}"
            assert later.describe() == store.describe()   # the same store, for what is kept
        assert proxy.refused == (1 if answer == "301" else 2)
    finally:
        proxy.stop()


def test_init_saves_the_region_its_bucket_was_found_in(seaweed, bucket_name, tmp_path):
    import json
    from conftest import CLI, clean_env
    from fakes import RegionProxy
    proxy = RegionProxy(seaweed.endpoint, home="eu-central-1")
    env = dict(clean_env(tmp_path), AWS_EC2_METADATA_DISABLED="true")
    cli = CLI(tmp_path, env)
    try:
        result = cli("init", "--project", "p", "--agent", "a", "--bucket", bucket_name,
                     "--endpoint", proxy.endpoint, "--region", "us-east-1", "--access-key",
                     seaweed.access_key, "--secret-key", seaweed.secret_key)
        assert result.returncode == 0, result.stderr
        assert "is in eu-central-1, not us-east-1" in result.stderr
        assert json.loads((tmp_path / ".tracecraft.json").read_text())["region"] == "eu-central-1"
        detours = proxy.refused
        assert cli("memory", "set", "k", "1").returncode == 0
        assert proxy.refused == detours
    finally:
        proxy.stop()


def test_moving_region_on_aws_changes_the_host_but_not_a_custom_endpoint():
    from tracecraft import S3Store
    aws = S3Store("bkt", region="us-east-1", access_key="k", secret_key="s")
    aws._move("ap-south-1")
    assert (aws.host_header, aws.region) == ("s3.ap-south-1.amazonaws.com", "ap-south-1")
    for endpoint, moved in (("https://s3-fips.us-east-1.amazonaws.com",
                             "s3-fips.eu-west-2.amazonaws.com"),
                            ("https://s3.dualstack.us-east-1.amazonaws.com",
                             "s3.dualstack.eu-west-2.amazonaws.com"),
                            ("https://s3.amazonaws.com", "s3.eu-west-2.amazonaws.com")):
        kind = S3Store("bkt", endpoint=endpoint, access_key="k", secret_key="s")
        kind._move("eu-west-2")
        assert kind.host_header == moved   # FIPS stays FIPS, dual-stack stays dual-stack
    own = S3Store("bkt", endpoint="https://minio.example:9000", access_key="k", secret_key="s")
    own._move("eu-west-1")
    assert (own.host_header, own.region) == ("minio.example:9000", "eu-west-1")
    # A region that is no region's shape (a hostile answer) moves nothing.
    answer = tracecraft_response(301, {"x-amz-bucket-region": "evil\x1b[2J"})
    assert own._moved(answer, "GET", "k") is False and own.region == "eu-west-1"


def tracecraft_response(status, headers, body=b""):
    from tracecraft import Response
    return Response(status, headers, body)


def test_a_head_tells_the_size_of_an_object_larger_than_any_answer_read(contract_store):
    """A HEAD announces the object's length, not a body's: an object beyond the 16 MiB an answer
    may hold is still heads()-able (every upload over a big artifact asks that first)."""
    import tracecraft
    size = tracecraft.MAX_BODY + 1
    contract_store.put("huge.bin", b"\0" * size)
    assert contract_store.head("huge.bin").size == size
    assert contract_store.exists("huge.bin")

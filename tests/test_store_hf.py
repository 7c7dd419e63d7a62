"""The hf backend against an emulator of the documented Hugging Face S3 gateway (tests/hf_gateway.py)
in front of SeaweedFS: the same results as on plain S3."""
import json

import pytest

import tracecraft
from conftest import CLI, clean_env, init_args
from hf_gateway import HFGateway
from scenario import run_seed_scenario


@pytest.fixture(params=[True, False], ids=["302-with-version", "302-bare"])
def gateway(seaweed, request):
    gw = HFGateway(seaweed, namespace="alice", versioned_redirects=request.param)
    yield gw
    gw.stop()


@pytest.fixture
def hf_settings(gateway, bucket_name):
    return {"backend": "hf", "endpoint": gateway.endpoint, "bucket": f"alice/{bucket_name}",
            "access_key": gateway.access_key, "secret_key": gateway.secret_key}


def test_seed_scenario_through_the_gateway(hf_settings, gateway, tmp_path, store_clock):
    run_seed_scenario(hf_settings, tmp_path)
    alice = store_clock.wrap(tracecraft.connect(project="myproject", agent="designer",
                                                **hf_settings))
    alice.claim("short", ttl=1)
    store_clock.advance(2.2)   # a lease read through the redirect expires by the store's clock
    assert alice.step_status("short")["status"] == "expired"
    assert gateway.counts["redirects"] > 0          # GETs went through the CDN redirect ...
    assert gateway.counts["cdn_refused"] == 0       # ... without our Authorization header
    assert gateway.counts["bad_signature"] == 0 and gateway.counts["rejected"] == 0


def test_init_names_the_bucket_on_the_hub(hf_settings, tmp_path):
    out = CLI(tmp_path, clean_env(tmp_path)).ok("init", "--project", "p", "--agent", "a",
                                                *init_args(hf_settings))
    name = hf_settings["bucket"]
    assert f"https://huggingface.co/buckets/{name}" in out


def test_twenty_racers_one_winner(hf_settings):
    tracecraft.connect(project="race", agent="warmup", **hf_settings).store.ensure_bucket()
    from conftest import assert_rounds_raced, race, racer_outputs
    results = racer_outputs(race([("claim", hf_settings, f"racer{i}", 3) for i in range(20)]))
    assert_rounds_raced([[r[n] for r in results] for n in range(3)])
    for n in range(3):
        assert sum(r[n]["won"] for r in results) == 1


def test_store_contract_basics(hf_settings, gateway):
    """The whole store contract runs on the gateway too (test_store_contract.py); here, what is
    the gateway's own: both kinds of redirect, and the keys it refuses."""
    store = tracecraft.open_store(dict(hf_settings))
    store.ensure_bucket()
    key = "p/ünï cödé/+&=.json"
    etag = store.put(key, b"v1", if_none_match=True)
    with pytest.raises(tracecraft.PreconditionFailed):
        store.put(key, b"v2", if_none_match=True)
    blob = store.get(key)
    assert blob.body == b"v1" and blob.etag == etag          # fetched via the redirect
    store.put(key, b"v2", if_match=etag)
    with pytest.raises(tracecraft.PreconditionFailed):
        store.put(key, b"v3", if_match=etag)
    assert [e.key for e in store.list("p/")] == [key]
    for bad in ("p//x.json", "p/x/", "/p/x"):
        with pytest.raises(tracecraft.UsageError, match="//"):
            store.put(bad, b"x")
    assert gateway.counts["rejected"] == 0


def test_credentials_help(tmp_path, gateway):
    runner = CLI(tmp_path, dict(clean_env(tmp_path), HF_TOKEN="hf_xxx"))
    result = runner("init", "--backend", "hf", "--bucket", "alice/b", "--project", "p",
                    "--agent", "a", "--endpoint", gateway.endpoint)
    assert result.returncode == 4
    assert "huggingface.co/settings/tokens" in result.stderr and "HF_TOKEN" in result.stderr
    assert "hf_xxx" not in result.stderr
    needs_bucket = runner("init", "--backend", "hf", "--project", "p", "--agent", "a")
    assert needs_bucket.returncode == 2 and "NAMESPACE/NAME" in needs_bucket.stderr
    wrong = CLI(tmp_path, clean_env(tmp_path))("init", "--backend", "hf", "--bucket", "alice/b",
                                               "--project", "p", "--agent", "a", "--endpoint",
                                               gateway.endpoint, "--access-key",
                                               gateway.access_key, "--secret-key", "wrong")
    assert wrong.returncode == 4 and "refused the credentials" in wrong.stderr


def test_hf_environment_credentials(hf_settings, tmp_path, monkeypatch):
    env = dict(clean_env(tmp_path), HF_S3_ACCESS_KEY_ID=hf_settings["access_key"],
               HF_S3_SECRET_ACCESS_KEY=hf_settings["secret_key"])
    runner = CLI(tmp_path, env)
    runner.ok("init", "--backend", "hf", "--bucket", hf_settings["bucket"], "--project", "p",
              "--agent", "a", "--endpoint", hf_settings["endpoint"])
    assert "secret_key" not in json.loads((tmp_path / ".tracecraft.json").read_text())
    assert runner.ok("claim", "s") == "Claimed step s as a\n"

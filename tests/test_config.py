"""Section 5: where settings and credentials come from."""
import json
import time

import tracecraft

from conftest import CLI, clean_env


def test_credentials_from_aws_profile_are_not_written(seaweed, tmp_path, bucket_name):
    env = clean_env(tmp_path)
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text(f"[default]\naws_access_key_id = wrong\n"
                                     f"aws_secret_access_key = wrong\n\n[team]\n"
                                     f"aws_access_key_id = {seaweed.access_key}\n"
                                     f"aws_secret_access_key = {seaweed.secret_key}\n")
    runner = CLI(tmp_path, dict(env, AWS_PROFILE="team"))
    runner.ok("init", "--project", "p", "--agent", "a", "--endpoint", seaweed.endpoint,
              "--bucket", bucket_name)
    config = json.loads((tmp_path / ".tracecraft.json").read_text())
    assert "secret_key" not in config and "access_key" not in config
    assert runner.ok("memory", "set", "k", "1") == "Set k = 1\n"
    # Without the profile, the (wrong) default profile is the last resort and is refused.
    refused = CLI(tmp_path, env)("memory", "get", "k")
    assert refused.returncode == 4 and "refused the credentials" in refused.stderr


def test_environment_credentials_come_before_the_config_file(seaweed, tmp_path, bucket_name):
    env = clean_env(tmp_path)
    runner = CLI(tmp_path, env)
    runner.ok("init", "--project", "p", "--agent", "a", "--endpoint", seaweed.endpoint,
              "--bucket", bucket_name, "--access-key", seaweed.access_key,
              "--secret-key", seaweed.secret_key)
    assert runner.ok("memory", "set", "k", "1") == "Set k = 1\n"
    bad = runner("memory", "get", "k", env={"AWS_ACCESS_KEY_ID": seaweed.access_key,
                                            "AWS_SECRET_ACCESS_KEY": "not-it"})
    assert bad.returncode == 4 and "not-it" not in bad.stderr


def test_explicit_and_user_config(tmp_path):
    env = clean_env(tmp_path)
    project_dir, elsewhere = tmp_path / "proj", tmp_path / "elsewhere"
    project_dir.mkdir()
    elsewhere.mkdir()
    CLI(project_dir, env).ok("init", "--project", "p", "--agent", "a")
    config = str(project_dir / ".tracecraft.json")
    runner = CLI(elsewhere, env)
    assert runner("inbox").returncode == 4
    runner.ok("memory", "set", "k", "v", env={"TRACECRAFT_CONFIG": config})
    assert runner.ok("memory", "get", "k", "--config", config) == "v\n"
    runner.ok("init", "--project", "p", "--agent", "b", "--user")
    assert (tmp_path / "home" / ".config" / "tracecraft" / "config.json").is_file()
    assert runner.ok("memory", "get", "k") == "v\n"     # the user config applies everywhere
    assert runner("memory", "get", "k", env={"TRACECRAFT_CONFIG": str(tmp_path / "no")}).returncode == 4


def test_project_override_isolates_state(tmp_path):
    runner = CLI(tmp_path, clean_env(tmp_path))
    runner.ok("init", "--project", "one", "--agent", "a")
    runner.ok("memory", "set", "k", "1")
    assert runner("memory", "get", "k", env={"TRACECRAFT_PROJECT": "two"}).returncode == 1
    assert runner("memory", "get", "k", "--project", "two").returncode == 1
    assert runner.ok("memory", "get", "k") == "1\n"


def test_secrets_never_appear_in_output(seaweed, tmp_path, bucket_name):
    secret = seaweed.secret_key
    runner = CLI(tmp_path, clean_env(tmp_path))
    outputs = [runner("init", "--project", "p", "--agent", "a", "--endpoint", seaweed.endpoint,
                      "--bucket", bucket_name, "--access-key", seaweed.access_key,
                      "--secret-key", secret, "--json")]
    for args in (["doctor"], ["doctor", "--json"], ["agents", "--json"], ["claim", "s", "--json"],
                 ["memory", "get", "missing", "--json"], ["heartbeat", "--json"]):
        outputs.append(runner(*args))
    wrong = CLI(tmp_path, dict(clean_env(tmp_path), AWS_ACCESS_KEY_ID=seaweed.access_key,
                               AWS_SECRET_ACCESS_KEY=secret + "x"))
    outputs.append(wrong("doctor"))
    outputs.append(wrong("memory", "get", "k", "--json"))
    assert outputs[0].returncode == 0 and outputs[-1].returncode == 4
    for result in outputs:
        assert secret not in result.stdout + result.stderr


def test_endpoint_urls_are_read_as_urllib_reads_them():
    from urllib.parse import urlsplit
    for url in ("http://127.0.0.1:9000", "https://s3.hf.co/ns", "http://[::1]:8333/",
                "HTTPS://S3.Example.COM", "http://localhost:8333/base/path/"):
        parts = urlsplit(url)
        default = 443 if parts.scheme == "https" else 80
        assert tracecraft._split_url(url) == (parts.scheme, parts.hostname,
                                              parts.port or default, parts.path)
    for bad in ("ftp://x", "http://", "http://h:99999", "http://h:abc", "localhost:9000",
                "http://user@h", "http://h/?q"):
        assert tracecraft._split_url(bad) is None, bad


def test_dates_are_read_as_the_stdlib_reads_them():
    import calendar
    from email.utils import formatdate
    for seconds in (0, 951782400, 1078099199, 1795601286, 4102444800):
        assert tracecraft._http_date(formatdate(seconds, usegmt=True)) == seconds
        iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        assert tracecraft._iso_date(iso + ".250Z") == seconds + 0.25
        assert calendar.timegm(time.gmtime(seconds)) == tracecraft._iso_date(iso + "Z")
    assert tracecraft._http_date("Sunday, 06-Nov-94 08:49:37 GMT") == 784111777   # RFC 850
    assert tracecraft._http_date("nonsense") is None and tracecraft._iso_date("") is None

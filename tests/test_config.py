"""Section 5: where settings and credentials come from."""
import json
import subprocess
import sys
import time

import tracecraft

from conftest import CLI, TRACECRAFT, clean_env


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


def test_keys_given_to_init_come_before_the_environment_then_the_profile(seaweed, tmp_path,
                                                                         bucket_name):
    # The order of botocore and the AWS CLI (issue 16): explicit keys, the environment, the
    # profile.  Before it, the environment came before the keys in the config file.
    env = clean_env(tmp_path)
    aws = tmp_path / "home" / ".aws"
    aws.mkdir(parents=True)
    (aws / "credentials").write_text("[default]\naws_access_key_id = wrong\n"
                                     "aws_secret_access_key = wrong\n")
    runner = CLI(tmp_path, env)
    runner.ok("init", "--project", "p", "--agent", "a", "--endpoint", seaweed.endpoint,
              "--bucket", bucket_name, "--access-key", seaweed.access_key,
              "--secret-key", seaweed.secret_key)
    wrong = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": "not-it"}
    assert runner.ok("memory", "set", "k", "1", env=wrong) == "Set k = 1\n"
    path = tmp_path / ".tracecraft.json"
    config = json.loads(path.read_text())
    del config["access_key"], config["secret_key"]
    path.write_text(json.dumps(config))
    bad = runner("memory", "get", "k", env=wrong)
    assert bad.returncode == 4 and "not-it" not in bad.stderr
    right = {"AWS_ACCESS_KEY_ID": seaweed.access_key, "AWS_SECRET_ACCESS_KEY": seaweed.secret_key}
    assert runner.ok("memory", "get", "k", env=right) == "1\n"   # before the (wrong) profile


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
    elsewhere = tmp_path / "wrong"
    elsewhere.mkdir()
    config = json.loads((tmp_path / ".tracecraft.json").read_text())
    (elsewhere / ".tracecraft.json").write_text(json.dumps(dict(config, secret_key=secret + "x")))
    (elsewhere / ".tracecraft.json").chmod(0o600)
    wrong = CLI(elsewhere, clean_env(tmp_path))
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


# -- issue 11: no file written through a link; no credential ever printed ----------------------------

def test_init_never_writes_through_a_planted_link(tmp_path):
    """A link planted at the config's name, or at the temporary name the old code used, is not
    followed: the victim file keeps its content, and the secret never reaches it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    work = tmp_path / "work"
    work.mkdir()
    (work / ".tracecraft.json.tmp").symlink_to(victim)
    runner = CLI(work, clean_env(tmp_path))
    runner.ok("init", "--project", "p", "--agent", "a", "--root", str(tmp_path / "store"))
    assert victim.read_text() == "precious"
    (work / ".tracecraft.json").unlink()
    (work / ".tracecraft.json").symlink_to(victim)
    runner.ok("init", "--project", "p", "--agent", "a", "--root", str(tmp_path / "store"))
    assert victim.read_text() == "precious"
    config = work / ".tracecraft.json"
    assert not config.is_symlink() and config.stat().st_mode & 0o777 == 0o600
    assert sorted(p.name for p in work.iterdir()) == [".tracecraft.json", ".tracecraft.json.tmp"]


SECRET_NUMBER = 987654321987654321


def test_no_error_shows_a_credentials_value_whatever_its_type(tmp_path):
    runner = CLI(tmp_path, clean_env(tmp_path))
    config = tmp_path / ".tracecraft.json"
    base = {"backend": "s3", "project": "p", "agent": "a", "endpoint": "http://127.0.0.1:9",
            "bucket": "bkt"}
    cases = [dict(base, access_key="k", secret_key=SECRET_NUMBER),
             dict(base, access_key=SECRET_NUMBER, secret_key="s"),
             dict(base, access_key="k", secret_key=["s3cr3t-in-a-list"]),
             dict(base, access_key="k", secret_key="s3cr3t\u20acnon-latin-1"),
             dict(base, access_key="k\u00e9y-\u20ac", secret_key="s3cr3t"),
             dict(base, access_key="k", secret_key="s", session_token="t0ken\u20ac-value"),
             dict(base, access_key="k", secret_key="s", session_token={"t0ken": 1})]
    raw = json.dumps(dict(base, access_key="k", secret_key="PLACEHOLDER"))
    cases.append(raw.replace('"PLACEHOLDER"', f"{SECRET_NUMBER}e400"))   # not even JSON text
    for case in cases:
        config.write_text(case if isinstance(case, str) else json.dumps(case))
        config.chmod(0o600)
        for args in (["memory", "get", "k"], ["doctor"], ["doctor", "--json"], ["status"]):
            result = runner(*args)
            text = result.stdout + result.stderr
            assert result.returncode == 4, (case, args, text)
            for value in (str(SECRET_NUMBER), "s3cr3t", "t0ken", "k\u00e9y"):
                assert value not in text, (case, args, text)
            assert "Traceback" not in text and "internal error" not in text


def test_a_deleted_working_directory_is_a_clear_error(tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    env = clean_env(tmp_path)
    result = subprocess.run(["sh", "-c", f'cd "{gone}" && rmdir "{gone}" && exec "$0" "$1" '
                             'memory get k', sys.executable, TRACECRAFT], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 2 and "current directory no longer exists" in result.stderr


def test_the_python_api_hears_what_is_unsafe_about_its_settings(tmp_path):
    heard = []
    config = tmp_path / "c.json"
    config.write_text("{}")
    tc = tracecraft.connect(project="p", agent="a", backend="s3", endpoint="http://192.0.2.1:9",
                            bucket="bkt", access_key="k", secret_key="s", insecure=True,
                            config=str(config), warn=heard.append)
    tc.close()          # nothing was asked of the store: no request was made
    assert any("plain http" in h for h in heard) and any("TLS certificate" in h for h in heard)
    config.write_text(json.dumps({"backend": "local", "root": str(tmp_path / "store"),
                                  "project": "p", "agent": "a", "unsafe_store": True}))
    heard.clear()
    tracecraft.connect(config=str(config), warn=heard.append).close()
    assert len(heard) == 1 and "ignores conditional writes" in heard[0]


def test_init_names_the_project_after_the_git_repository_in_every_worktree(tmp_path):
    """Issue 16's default: no --project -> the repository's name, the same from a linked
    worktree (agents in worktrees share it), else the directory's."""
    env = clean_env(tmp_path)
    repo = tmp_path / "shop-api"
    (repo / "sub").mkdir(parents=True)
    git = ["git", "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run(git + ["init", "-q", str(repo)], check=True)
    subprocess.run(git + ["-C", str(repo), "commit", "-q", "--allow-empty", "-m", "c"], check=True)
    subprocess.run(git + ["-C", str(repo), "worktree", "add", "-q", str(tmp_path / "wt-b")],
                   check=True)
    plain = tmp_path / "notes dir"
    plain.mkdir()
    store = ["--root", str(tmp_path / "store")]
    for where, expected in ((repo / "sub", "shop-api"), (tmp_path / "wt-b", "shop-api"),
                            (plain, "notes dir")):
        out = CLI(where, env).ok("init", "--agent", "a", *store)
        assert f"Initialized project {expected} " in out and "named after" in out, out
        assert json.loads((where / ".tracecraft.json").read_text())["project"] == expected
    chosen = CLI(plain, env).ok("init", "--agent", "a", "--project", "mine", *store)
    assert "Initialized project mine " in chosen and "named after" not in chosen

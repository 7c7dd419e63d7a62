"""Section 5's credential chain (issue 16), each source against an outside truth: moto's STS,
emulators on 127.0.0.1 of the container endpoint, IMDSv2 and the SSO portal, a real
credential_process script, and botocore's own resolver given the same files and environment."""
import hashlib
import http.server
import json
import os
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

import tracecraft

from conftest import CLI, clean_env
from fakes import LoopbackServer

ACCOUNT = "123456789012"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/dev"
CONTAINER_TOKEN = "container-auth-token"
SSO_TOKEN = "sso-access-token"


def iso(epoch):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


class AwsEmulator(LoopbackServer):
    """The container endpoint, IMDSv2 and the SSO portal on 127.0.0.1, each checking its token
    as AWS does, and a store that records what signed each request.  `counts` per route;
    `lifetimes` (seconds) are the lives of the credentials handed out, in turn."""

    def __init__(self):
        self.counts, self.recorded, self.lifetimes, self.refuse_token = {}, [], [], None
        emulator = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def answer(self, status, body, kind="application/json"):
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                if status == 200 and self.path.startswith("/s3/"):
                    self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
                self.end_headers()
                self.wfile.write(data)

            def keys(self, route):
                n = emulator.counts.get(route, 0)
                emulator.counts[route] = n + 1
                life = emulator.lifetimes.pop(0) if emulator.lifetimes else 3600
                return f"ASIA{route.upper()[:4]}{n:012d}", f"secret-{route}-{n}", \
                    f"token-{route}-{n}", time.time() + life

            def do_PUT(self):
                if self.path == "/latest/api/token":
                    if not self.headers.get("x-aws-ec2-metadata-token-ttl-seconds"):
                        return self.answer(400, b"", "text/plain")
                    emulator.counts["imds-token"] = emulator.counts.get("imds-token", 0) + 1
                    return self.answer(200, b"imds-session-token", "text/plain")
                self.store()

            def do_GET(self):
                url = urlsplit(self.path)
                if url.path.startswith("/latest/meta-data/iam/security-credentials/"):
                    if self.headers.get("x-aws-ec2-metadata-token") != "imds-session-token":
                        return self.answer(401, b"", "text/plain")   # IMDSv1 is refused
                    role = url.path.rsplit("/", 1)[1]
                    if not role:
                        return self.answer(200, b"tc-role\n", "text/plain")
                    key, secret, token, until = self.keys("imds")
                    return self.answer(200, {"Code": "Success", "AccessKeyId": key,
                                             "SecretAccessKey": secret, "Token": token,
                                             "Expiration": iso(until)})
                if url.path == "/container/credentials":
                    if self.headers.get("authorization") != CONTAINER_TOKEN:
                        return self.answer(403, {"message": "bad token"})
                    key, secret, token, until = self.keys("container")
                    return self.answer(200, {"AccessKeyId": key, "SecretAccessKey": secret,
                                             "Token": token, "Expiration": iso(until)})
                if url.path == "/federation/credentials":
                    if self.headers.get("x-amz-sso_bearer_token") != SSO_TOKEN:
                        return self.answer(401, {"message": "Session token not found"})
                    query = parse_qs(url.query)
                    if query != {"account_id": [ACCOUNT], "role_name": ["Dev"]}:
                        return self.answer(400, {"message": "bad query"})
                    key, secret, token, until = self.keys("sso")
                    return self.answer(200, {"roleCredentials": {
                        "accessKeyId": key, "secretAccessKey": secret, "sessionToken": token,
                        "expiration": int(until * 1000)}})
                self.store()

            def store(self):
                """A store that records the credential and token each request was signed with,
                and says ExpiredToken to the token it was told to refuse."""
                self.rfile.read(int(self.headers.get("content-length") or 0))
                auth = self.headers.get("authorization", "")
                token = self.headers.get("x-amz-security-token")
                emulator.recorded.append((auth.partition("Credential=")[2].partition("/")[0],
                                          token))
                if token and token == emulator.refuse_token:
                    return self.answer(400, b"<Error><Code>ExpiredToken</Code><Message>The "
                                       b"provided token has expired.</Message></Error>",
                                       "application/xml")
                self.answer(200, b"")

        self.serve(Handler)

    def reset(self):
        self.counts.clear()
        self.recorded.clear()
        self.lifetimes.clear()
        self.refuse_token = None


@pytest.fixture(scope="module")
def emulator():
    server = AwsEmulator()
    yield server
    server.stop()


@pytest.fixture
def aws(tmp_path, monkeypatch, emulator, moto_server):
    """A private HOME with ~/.aws, this process's environment cleaned of AWS_* settings, STS
    at moto, and the emulator reset; aws.write(name, text) writes ~/.aws/<name>."""
    emulator.reset()
    home = tmp_path / "home"
    (home / ".aws").mkdir(parents=True)
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_STS", moto_server.endpoint)

    class Aws:
        def write(self, name, text):
            path = home / ".aws" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return path
    found = Aws()
    found.home, found.env, found.emulator, found.moto = home, monkeypatch, emulator, moto_server
    return found


def resolve(**settings):
    return tracecraft.resolve_credentials(dict({"backend": "s3"}, **settings))[0]


def moto_roles():
    from moto.sts.models import sts_backends
    return sts_backends[ACCOUNT]["aws"].assumed_roles


def store_for(emulator, credentials):
    return tracecraft.S3Store("bkt", endpoint=emulator.endpoint + "/s3", credentials=credentials)


ROLE_PROFILES = f"""[profile base]
aws_access_key_id = AKIDBASEKEY
aws_secret_access_key = base-secret
[profile dev]
role_arn = {ROLE}
source_profile = base
external_id = ext-42
duration_seconds = 1800
[profile top]
role_arn = arn:aws:iam::{ACCOUNT}:role/top
source_profile = dev
role_session_name = chained
[profile loop-a]
role_arn = {ROLE}
source_profile = loop-b
[profile loop-b]
role_arn = {ROLE}
source_profile = loop-a
[profile mfa]
role_arn = {ROLE}
source_profile = base
mfa_serial = arn:aws:iam::{ACCOUNT}:mfa/me
"""


def test_assume_role_at_moto_signs_the_store_requests(aws):
    aws.write("config", ROLE_PROFILES)
    aws.env.setenv("AWS_PROFILE", "dev")
    before = len(moto_roles())
    credentials = resolve(agent="ag-1")
    role = moto_roles()[-1]
    assert len(moto_roles()) == before + 1
    assert (role.role_arn, role.session_name, role.external_id) == (ROLE, "tracecraft-ag-1",
                                                                    "ext-42")
    assert (credentials.access_key, credentials.token) == (role.access_key_id,
                                                           role.session_token)
    assert credentials.method == "assume-role" and credentials.source == \
        f"profile dev: assume role {ROLE}"
    # Another agent is another role session (CloudTrail tells them apart), kept apart too.
    assert resolve(agent="ag-2").access_key != credentials.access_key
    assert moto_roles()[-1].session_name == "tracecraft-ag-2"
    assert resolve(agent="ag-1").access_key == credentials.access_key   # from the cache
    assert 1790 < credentials.expires - time.time() <= 1800   # duration_seconds reached STS
    with store_for(aws.emulator, credentials) as store:
        store.put("k", b"v")
    assert aws.emulator.recorded == [(role.access_key_id, role.session_token)]
    # A chain of two roles: dev's temporary keys sign top's AssumeRole.
    aws.env.setenv("AWS_PROFILE", "top")
    chained = resolve()
    assert [r.role_arn.rsplit("/")[-1] for r in moto_roles()[-2:]] == ["dev", "top"]
    assert moto_roles()[-1].session_name == "chained"
    assert chained.access_key == moto_roles()[-1].access_key_id != credentials.access_key
    # credential_source: the container's keys sign the AssumeRole.
    aws.write("config", f"[profile ecs]\nrole_arn = {ROLE}\ncredential_source = EcsContainer\n")
    aws.env.setenv("AWS_PROFILE", "ecs")
    aws.env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   aws.emulator.endpoint + "/container/credentials")
    aws.env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)
    assert resolve().access_key == moto_roles()[-1].access_key_id
    assert aws.emulator.counts["container"] == 1


def test_endpoint_and_region_come_from_the_config_then_the_environment_then_the_profile(aws):
    aws.write("config", "[profile dev]\nregion = eu-north-1\naws_access_key_id = A\n"
                        "aws_secret_access_key = s\n")
    aws.env.setenv("AWS_PROFILE", "dev")
    aws.env.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    aws.env.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:2")

    def opened(**settings):
        store = tracecraft.open_store(dict({"backend": "s3", "bucket": "bkt"}, **settings))
        return store.endpoint, store.region
    assert opened() == ("http://127.0.0.1:2", "eu-north-1")
    aws.env.delenv("AWS_ENDPOINT_URL_S3")
    aws.env.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert opened() == ("http://127.0.0.1:1", "ap-south-1")
    assert opened(endpoint="http://127.0.0.1:3", region="us-west-2") == ("http://127.0.0.1:3",
                                                                         "us-west-2")


def test_what_a_profile_cannot_do_is_a_clear_error(aws):
    aws.write("config", ROLE_PROFILES + "[profile broken]\nrole_arn = x\n")
    cases = {"loop-a": "form a loop: loop-a -> loop-b -> loop-a",
             "mfa": "needs an MFA code (mfa_serial)",
             "broken": "needs one of source_profile and credential_source",
             "nowhere": "the AWS profile 'nowhere' (AWS_PROFILE names it) is in neither"}
    for profile, message in cases.items():
        aws.env.setenv("AWS_PROFILE", profile)
        with pytest.raises(tracecraft.NoCredentials, match=message.replace("(", r"\(")
                           .replace(")", r"\)")):
            resolve()
    aws.write("credentials", "[default]\naws_secret_access_key = s3cr3t-value\n  oops\n[x")
    aws.env.delenv("AWS_PROFILE")
    with pytest.raises(tracecraft.NoCredentials) as caught:
        resolve()
    assert "s3cr3t" not in str(caught.value)


def test_web_identity_from_the_environment_is_unsigned_at_moto(aws):
    token = aws.write("token", "eyJ.header.sig\n")
    aws.write("credentials", "[default]\naws_access_key_id = AKIDSTATIC\n"
                             "aws_secret_access_key = s\n")   # botocore, too, prefers the role
    aws.env.setenv("AWS_ROLE_ARN", ROLE)
    aws.env.setenv("AWS_WEB_IDENTITY_TOKEN_FILE", str(token))
    aws.env.setenv("AWS_ROLE_SESSION_NAME", "ci-run-7")
    credentials = resolve()
    role = moto_roles()[-1]
    assert (role.session_name, credentials.token) == ("ci-run-7", role.session_token)
    assert credentials.method == "assume-role-with-web-identity"


def test_container_credentials_need_their_token(aws):
    url = aws.emulator.endpoint + "/container/credentials"
    aws.env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", url)
    aws.env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "wrong")
    with pytest.raises(tracecraft.NoCredentials, match="container endpoint answered 403"):
        resolve()
    token_file = aws.write("container-token", CONTAINER_TOKEN + "\n")
    aws.env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE", str(token_file))   # wins
    credentials = resolve()
    assert credentials.method == "container-role" and credentials.token == "token-container-0"
    # An http endpoint elsewhere than loopback or ECS/EKS is refused before any request.
    aws.env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "http://192.0.2.1/creds")
    with pytest.raises(tracecraft.NoCredentials, match="must be https, a loopback address"):
        resolve()


def test_instance_metadata_v2_session_token_first(aws):
    base = aws.emulator.endpoint
    with pytest.raises(urllib.error.HTTPError) as refused:   # the emulator refuses IMDSv1
        urllib.request.urlopen(base + "/latest/meta-data/iam/security-credentials/")
    assert refused.value.code == 401
    aws.env.setenv("AWS_EC2_METADATA_SERVICE_ENDPOINT", base)
    assert resolve() is None and aws.emulator.counts == {}   # AWS_EC2_METADATA_DISABLED=true
    aws.env.delenv("AWS_EC2_METADATA_DISABLED")
    credentials = resolve()
    assert credentials.method == "iam-role" and credentials.source == \
        "instance metadata (role tc-role)"
    assert aws.emulator.counts == {"imds-token": 1, "imds": 1}
    assert resolve().token == credentials.token and aws.emulator.counts["imds"] == 1   # kept


def sso_login(aws, name, expires):
    path = aws.home / ".aws" / "sso" / "cache" / (hashlib.sha1(name.encode()).hexdigest()
                                                  + ".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"startUrl": "https://example.awsapps.com/start",
                                "region": "eu-west-1", "accessToken": SSO_TOKEN,
                                "expiresAt": iso(expires)}))
    return path


def test_sso_profile_exchanges_the_cached_login_at_the_portal(aws):
    aws.write("config", f"""[profile dev]
sso_session = corp
sso_account_id = {ACCOUNT}
sso_role_name = Dev
[sso-session corp]
sso_start_url = https://example.awsapps.com/start
sso_region = eu-west-1
[profile legacy]
sso_start_url = https://example.awsapps.com/start
sso_region = eu-west-1
sso_account_id = {ACCOUNT}
sso_role_name = Dev
""")
    aws.env.setenv("AWS_ENDPOINT_URL_SSO", aws.emulator.endpoint)
    aws.env.setenv("AWS_PROFILE", "dev")
    with pytest.raises(tracecraft.NoCredentials, match=r"no SSO login is cached .*run `aws sso "
                                                       r"login --profile dev`"):
        resolve()
    login = sso_login(aws, "corp", time.time() - 7200)
    with pytest.raises(tracecraft.NoCredentials, match=r"the SSO login expired 2 h 0 min ago: run "
                                                       r"`aws sso login --profile dev`"):
        resolve()
    sso_login(aws, "corp", time.time() + 3600)
    credentials = resolve()
    assert credentials.method == "sso" and credentials.token == "token-sso-0"
    assert credentials.source == f"profile dev: SSO account {ACCOUNT}, role Dev"
    login.write_text(login.read_text().replace(SSO_TOKEN, "revoked"))
    aws.env.setenv("AWS_PROFILE", "legacy")   # cached under the start URL's hash
    sso_login(aws, "https://example.awsapps.com/start", time.time() + 3600)
    assert resolve().token == "token-sso-1"


PROCESS = """import json, sys, time
if sys.argv[1] == "fail":
    sys.exit("cannot reach the vault\\x1b[31m")
if sys.argv[1] == "garbage":
    print("AccessKeyId=AKID secret=top-secret")
    sys.exit(0)
print(json.dumps({"Version": 1, "AccessKeyId": "ASIAPROCESS", "SecretAccessKey": "p-secret",
                  "SessionToken": "p-token", "Expiration": time.strftime(
                      "%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(time.time() + 900))}))
"""


def test_credential_process_runs_without_a_shell(aws, tmp_path):
    script = tmp_path / "creds.py"
    script.write_text(PROCESS)
    aws.write("config", "".join(f"[profile {kind}]\ncredential_process = {sys.executable} "
                                f"'{script}' {kind}\n" for kind in ("good", "fail", "garbage")))
    aws.env.setenv("AWS_PROFILE", "good")
    credentials = resolve()
    assert (credentials.access_key, credentials.token, credentials.method) == \
        ("ASIAPROCESS", "p-token", "custom-process")
    assert 890 < credentials.expires - time.time() <= 900 and credentials.refresh
    runner = CLI(tmp_path, dict(os.environ, PYTHONPATH=str(tracecraft.__file__.rsplit("/", 1)[0])))
    (tmp_path / ".tracecraft.json").write_text(json.dumps({
        "backend": "s3", "project": "p", "agent": "a", "endpoint": aws.emulator.endpoint}))
    for kind, message in (("fail", "exited with status 1: cannot reach the vault\\x1b[31m"),
                          ("garbage", 'printed no JSON object with "Version": 1')):
        result = runner("memory", "get", "k", env={"AWS_PROFILE": kind})
        assert result.returncode == 4, result.stderr
        assert f"profile {kind}: credential_process: " in result.stderr and message in \
            result.stderr and "top-secret" not in result.stderr and "\x1b" not in result.stderr
    doctor = runner("doctor", "--json", env={"AWS_PROFILE": "garbage"})
    failed = [c for c in json.loads(doctor.stdout)["checks"] if not c["ok"]]
    assert doctor.returncode == 4 and [c["check"] for c in failed] == ["credentials"]


def test_temporary_credentials_are_kept_across_calls(aws, tmp_path, bucket_name):
    aws.write("config", ROLE_PROFILES)
    env = dict(clean_env(tmp_path), AWS_ENDPOINT_URL_STS=aws.moto.endpoint,
               HOME=str(aws.home), XDG_CACHE_HOME=str(aws.home / ".cache"))
    runner = CLI(tmp_path, env)
    before = len(moto_roles())
    runner.ok("init", "--project", "p", "--agent", "ag", "--endpoint", aws.moto.endpoint,
              "--bucket", bucket_name, "--profile", "dev")
    assert len(moto_roles()) == before + 1
    config = json.loads((tmp_path / ".tracecraft.json").read_text())
    assert config["profile"] == "dev" and "secret_key" not in config
    doctor = json.loads(runner.ok("doctor", "--json"))
    check = next(c for c in doctor["checks"] if c["check"] == "credentials")
    role = moto_roles()[-1]
    assert check["ok"] and len(moto_roles()) == before + 1   # the second call asked no STS
    assert check["detail"] == f"profile dev: assume role {ROLE}; access key ASIA…; they " \
        "expire in 29 min"
    text = json.dumps(doctor)
    assert role.secret_access_key not in text and role.session_token not in text
    assert role.access_key_id not in text
    kept = aws.home / ".cache" / "tracecraft" / "credentials"
    files = list(kept.iterdir())
    assert len(files) == 1 and stat.S_IMODE(kept.stat().st_mode) == 0o700
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    files[0].write_text('{"key": 1, "access_key": ["x"]}')   # hostile: ignored and replaced
    runner.ok("memory", "set", "k", "v")
    assert len(moto_roles()) == before + 2
    assert json.loads(files[0].read_text())["access_key"] == moto_roles()[-1].access_key_id


def test_a_long_process_renews_credentials_before_they_expire(aws):
    aws.env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   aws.emulator.endpoint + "/container/credentials")
    aws.env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)
    aws.emulator.lifetimes[:] = [1.0]   # the first keys live one second, the next an hour
    with store_for(aws.emulator, resolve()) as store:
        store.put("a", b"1")
        sessions = tracecraft.Client(store, "p", "a").sessions
        first = sessions.redactor()
        time.sleep(0.6)                 # past half their life: due
        store.put("b", b"2")
        # What a following session mirror hides changes with them (it compares literals).
        assert first.literals != sessions.secrets()
        assert "secret-container-1" in dict(sessions.secrets()).values()
        # The store says the token expired before its time: renewed once, and sent again.
        aws.emulator.refuse_token = "token-container-1"
        store.put("c", b"3")
    assert [token for _, token in aws.emulator.recorded] == [
        "token-container-0", "token-container-1", "token-container-1", "token-container-2"]
    assert aws.emulator.counts["container"] == 3


def test_keys_in_the_config_or_environment_read_nothing_else(tmp_path):
    env = clean_env(tmp_path)
    (tmp_path / "home" / ".aws").mkdir()
    (tmp_path / "home" / ".aws" / "config").write_text("[broken")
    code = ("import sys, threading, tracecraft\n"
            "c = tracecraft.resolve_credentials({'backend': 's3'})[0]\n"
            "print(c.method, 'configparser' in sys.modules, threading.active_count())")
    out = subprocess.run([sys.executable, "-c", code], env=dict(
        env, AWS_ACCESS_KEY_ID="AKIDENV", AWS_SECRET_ACCESS_KEY="s",
        AWS_EC2_METADATA_DISABLED="false"), capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["env", "False", "1"], out.stderr


# -- botocore, given the same files and environment, picks the same source ----------------------

BOTOCORE_CASES = {
    "env": ({"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "s"},
            {"credentials": "[default]\naws_access_key_id = AKIDFILE\n"
                            "aws_secret_access_key = s\n"}),
    "shared-credentials-file": ({}, {"credentials": "[default]\naws_access_key_id = AKIDFILE\n"
                                                    "aws_secret_access_key = s\n",
                                     "config": "[default]\ncredential_process = false\n"}),
    "config-file": ({"AWS_PROFILE": "dev"}, {"config": "[profile dev]\naws_access_key_id = A\n"
                                                       "aws_secret_access_key = s\n"}),
    "custom-process": ({}, {"config": "[default]\naws_access_key_id = AKIDCONFIG\n"
                                      "aws_secret_access_key = s\ncredential_process = "
                                      "{python} {script} good\n"}),
    "assume-role": ({"AWS_PROFILE": "dev"}, {"config": ROLE_PROFILES}),
    "assume-role-with-web-identity": ({"AWS_ROLE_ARN": ROLE, "AWS_WEB_IDENTITY_TOKEN_FILE":
                                       "{home}/.aws/token"}, {"token": "eyJ.x.y",
                                                              "credentials": "[default]\n"
                                                              "aws_access_key_id = A\n"
                                                              "aws_secret_access_key = s\n"}),
    "sso": ({"AWS_ENDPOINT_URL_SSO": "{emulator}"}, {
        "config": f"[default]\nsso_session = corp\nsso_account_id = {ACCOUNT}\n"
                  "sso_role_name = Dev\n[sso-session corp]\nsso_start_url = https://example.awsapps.com/start\n"
                  "sso_region = eu-west-1\n",
        "sso/cache/" + hashlib.sha1(b"corp").hexdigest() + ".json": json.dumps({
            "startUrl": "https://example.awsapps.com/start", "region": "eu-west-1",
            "accessToken": SSO_TOKEN, "expiresAt": iso(time.time() + 3600)})}),
    "container-role": ({"AWS_CONTAINER_CREDENTIALS_FULL_URI": "{emulator}/container/credentials",
                        "AWS_CONTAINER_AUTHORIZATION_TOKEN": CONTAINER_TOKEN}, {}),
    # AWS_DEFAULT_PROFILE before AWS_PROFILE; ~ in AWS_CONFIG_FILE expanded (Docker's ENV).
    "config-file:expanded": ({"AWS_DEFAULT_PROFILE": "dev", "AWS_PROFILE": "nowhere",
                              "AWS_CONFIG_FILE": "~/.aws/elsewhere"},
                             {"elsewhere": "[profile dev]\naws_access_key_id = A\n"
                                           "aws_secret_access_key = s\n"}),
    "iam-role": ({"AWS_EC2_METADATA_DISABLED": "false",
                  "AWS_EC2_METADATA_SERVICE_ENDPOINT": "{emulator}/"}, {}),
}


@pytest.mark.parametrize("method", BOTOCORE_CASES)
def test_botocore_picks_the_same_source(aws, tmp_path, method):
    import botocore.session
    script = tmp_path / "creds.py"
    script.write_text(PROCESS)
    values = dict(python=sys.executable, script=script, home=aws.home,
                  emulator=aws.emulator.endpoint)
    variables, files = BOTOCORE_CASES[method]
    for name, value in variables.items():
        aws.env.setenv(name, value.format(**values))
    for name, text in files.items():
        aws.write(name, text.format(**values) if "{python}" in text else text)
    ours = resolve().method
    theirs = botocore.session.Session().get_credentials().method
    assert ours == theirs == method.partition(":")[0]


def test_hostile_settings_and_answers_are_clear_errors(aws):
    """Each pins a class: text that looks like a number, a chain without end, keys that
    expired before they arrived (fetched once, not at every request), half a pair of keys,
    and a store's message that echoes what it was sent."""
    chain = "".join(f"[profile c{i}]\nrole_arn = {ROLE}\nsource_profile = c{i + 1}\n"
                    for i in range(40))
    aws.write("config", ROLE_PROFILES + chain + f"[profile odd]\nrole_arn = {ROLE}\n"
                        "source_profile = base\nduration_seconds = \u00b2\u00b2\u00b2\u00b2\n")
    for profile, message in (("odd", "duration_seconds must be a number"),
                             ("c0", "a chain of more than 16 roles")):
        aws.env.setenv("AWS_PROFILE", profile)
        with pytest.raises(tracecraft.NoCredentials, match=message):
            resolve()
    aws.env.delenv("AWS_PROFILE")
    aws.write("config", "")
    aws.env.setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI",
                   aws.emulator.endpoint + "/container/credentials")
    aws.env.setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", CONTAINER_TOKEN)
    aws.emulator.lifetimes = [-120]
    with pytest.raises(tracecraft.NoCredentials, match="expired 2 min ago"):
        resolve()
    assert aws.emulator.counts["container"] == 1
    aws.env.setenv("AWS_ACCESS_KEY_ID", "AKIDHALF")
    with pytest.raises(tracecraft.NoCredentials, match="AWS_ACCESS_KEY_ID is set without "
                                                       "AWS_SECRET_ACCESS_KEY"):
        resolve()
    store = tracecraft.S3Store("bkt", endpoint="http://127.0.0.1:1", access_key="AKIDEXAMPLE",
                               secret_key="very-secret-key", session_token="session-token-1")
    echoed = b"<Error><Code>InternalError</Code><Message>you sent very-secret-key and " \
             b"session-token-1</Message></Error>"
    said = str(store._classify(tracecraft.Response(500, {}, echoed), "GET", "k"))
    assert "you sent" in said and "very-secret" not in said and "session-token" not in said

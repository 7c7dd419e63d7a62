"""The SigV4 signer: AWS's official test vectors, and agreement with botocore's S3 signer."""
import datetime
import hashlib
import pathlib
from urllib.parse import unquote

import pytest

import tracecraft

SUITE = pathlib.Path(__file__).resolve().parents[2] / "shared" / "sigv4-testsuite"
ACCESS_KEY, SECRET_KEY = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SESSION_TOKEN = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"


def vectors():
    if not SUITE.is_dir():
        return []
    return sorted(p.parent for p in SUITE.rglob("*.req"))


def parse_request(path):
    """A .req file: request line, headers (continuation lines start with white space), body."""
    text = path.read_bytes().decode("utf-8")
    head, _, body = text.partition("\n\n")
    lines = head.split("\n")
    # The request line is "METHOD TARGET HTTP/1.1", and TARGET itself may contain a space.
    method, rest = lines[0].split(" ", 1)
    target = rest.rsplit(" ", 1)[0]
    headers = []
    for line in filter(None, lines[1:]):
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, value + " " + line.strip())
        else:
            name, _, value = line.partition(":")
            headers.append((name, value))
    raw_path, _, raw_query = target.partition("?")
    query = []
    for pair in filter(None, raw_query.split("&")):
        name, _, value = pair.partition("=")
        query.append((unquote(name), unquote(value)))
    return method, unquote(raw_path), query, headers, body.encode("utf-8")


@pytest.mark.skipif(not SUITE.is_dir(), reason="../shared/sigv4-testsuite is not present")
@pytest.mark.parametrize("case", vectors(), ids=lambda p: p.name)
def test_aws_vector(case):
    method, path, query, headers, body = parse_request(case / f"{case.name}.req")
    if case.name == "post-sts-header-after":
        # This vector adds the token after signing; it is not part of the signature.
        headers = [h for h in headers if h[0].lower() != "x-amz-security-token"]
    if case.name == "get-vanilla-with-session-token":
        # This vector signs with temporary credentials; the token is not in its .req file.
        headers.append(("X-Amz-Security-Token", SESSION_TOKEN))
    amz_date = dict((k.lower(), v) for k, v in headers)["x-amz-date"]
    payload_hash = hashlib.sha256(body).hexdigest()
    creq, signed = tracecraft.canonical_request(method, path, query, headers, payload_hash,
                                                normalize_path=True)
    assert creq == (case / f"{case.name}.creq").read_text(encoding="utf-8")
    scope = f"{amz_date[:8]}/us-east-1/service/aws4_request"
    sts = tracecraft.string_to_sign(amz_date, scope, creq)
    assert sts == (case / f"{case.name}.sts").read_text(encoding="utf-8")
    authz = tracecraft.authorization(ACCESS_KEY, SECRET_KEY, "us-east-1", "service", amz_date,
                                     creq, signed)
    assert authz == (case / f"{case.name}.authz").read_text(encoding="utf-8")


def test_suite_is_found_when_shared_is_present():
    if not SUITE.is_dir():
        pytest.skip(f"AWS's SigV4 test vectors are not at {SUITE}: the signer is checked "
                    "against botocore only")
    assert len(vectors()) >= 25


# -- cross-check with botocore's S3 signer ---------------------------------------------------------

CASES = [
    ("GET", "/bucket/plain.json", []),
    ("PUT", "/bucket/with space/and+plus.json", []),
    ("GET", "/bucket/ünïcödé/ключ/日本.json", []),
    ("DELETE", "/bucket/reserved!'()*~@$&=,;:.json", []),
    ("HEAD", "/bucket/a%b#c?d.json", []),
    ("GET", "/bucket", [("list-type", "2"), ("prefix", "p/memory/ä b/"), ("start-after", "x=y&z")]),
    ("GET", "/bucket", [("list-type", "2"), ("continuation-token", "1/AbC+dEf==")]),
    ("PUT", "/bucket/double//slash/./dot/../x", []),
]


@pytest.mark.parametrize("method,path,query", CASES)
@pytest.mark.parametrize("token", [None, "FQoGZXIvYXdzEXAMPLE//token+/="])
def test_matches_botocore(method, path, query, token, monkeypatch):
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    body = b'{"value": 1}' if method == "PUT" else b""
    payload_hash = hashlib.sha256(body).hexdigest()
    now = datetime.datetime(2026, 3, 24, 14, 0, 0)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    host = "127.0.0.1:8333"
    extra = [("if-none-match", "*")] if method == "PUT" else []

    url = "http://" + host + tracecraft.uri_encode(path, keep_slash=True)
    if query:
        url += "?" + "&".join(f"{tracecraft.uri_encode(k)}={tracecraft.uri_encode(v)}"
                              for k, v in query)
    request = AWSRequest(method=method, url=url, data=body,
                         headers=dict([("x-amz-content-sha256", payload_hash)] + extra))
    signer = S3SigV4Auth(Credentials("AKIDEXAMPLE", SECRET_KEY, token), "s3", "us-east-1")
    monkeypatch.setattr("botocore.auth.get_current_datetime", lambda: now)
    signer.add_auth(request)
    expected = request.headers["Authorization"]

    headers = [("host", host), ("x-amz-date", amz_date), ("x-amz-content-sha256", payload_hash)]
    headers += extra
    if token:
        headers.append(("x-amz-security-token", token))
    creq, signed = tracecraft.canonical_request(method, path, query, headers, payload_hash)
    ours = tracecraft.authorization("AKIDEXAMPLE", SECRET_KEY, "us-east-1", "s3", amz_date,
                                    creq, signed)
    assert request.headers["X-Amz-Date"] == amz_date
    assert ours == expected


# -- the small stand-ins that keep hashlib, hmac and urllib.parse off the start-up path ----------

def test_hashes_and_hmac_agree_with_hashlib():
    import hmac
    import random
    rng = random.Random(7)
    for size in (0, 1, 63, 64, 65, 200, (1 << 20) + 1):
        data = rng.randbytes(size)
        for name in ("md5", "sha1", "sha256"):
            assert tracecraft._hash(name, data).hexdigest() == getattr(hashlib, name)(data).hexdigest()
        key, text = rng.randbytes(size % 150), rng.randbytes(size % 300).hex()
        assert tracecraft._hmac(key, text) == hmac.new(key, text.encode(), hashlib.sha256).digest()


def test_uri_encode_agrees_with_urllib():
    from urllib.parse import quote
    samples = ["plain", "a b/c", "ü~é/ü", "%2F", "*!'()", "\x00\x7f", "日本/語 x", "a+b=c&d"]
    for text in samples:
        assert tracecraft.uri_encode(text) == quote(text, safe="-_.~")
        assert tracecraft.uri_encode(text, keep_slash=True) == quote(text, safe="-_.~/")

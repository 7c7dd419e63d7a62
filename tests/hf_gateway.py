"""An emulator of the Hugging Face Storage Buckets S3 gateway, as documented (see
shared/FACTS.md), on loopback in front of a real SeaweedFS.  No internet here, so the hf backend is
tested against this, not the live Hub.

- Endpoint http://127.0.0.1:PORT/<namespace>: the namespace is the first path segment, and the
  SigV4 signature is checked against that namespaced path (by a signer written here, independent
  of tracecraft's), with the gateway's own HFAK... credentials.
- Keys that start or end with "/" or contain "//" answer 400; so does ListObjectsV1.
- GetObject answers 302 to a "CDN" path of this server, which refuses requests that carry an
  Authorization header.
- Everything else is re-signed for SeaweedFS (the namespace removed) and forwarded.
"""
import hashlib
import hmac
import http.client
import http.server
import os
import time
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from fakes import LoopbackServer

SAFE = "-_.~"


def _canonical(method, raw_path, raw_query, headers, signed, payload_hash):
    # parse_qsl decodes already (and must not read "+" as a space: S3 sends "%2B")
    query = sorted((quote(k, safe=SAFE), quote(v, safe=SAFE))
                   for k, v in parse_qsl(raw_query.replace("+", "%2B"), keep_blank_values=True))
    lines = [method, raw_path, "&".join(f"{k}={v}" for k, v in query),
             "".join(f"{n}:{' '.join(headers.get(n, '').split())}\n" for n in signed),
             ";".join(signed), payload_hash]
    return "\n".join(lines)


def _signature(secret, amz_date, region, creq):
    def mac(key, text):
        return hmac.new(key, text.encode(), hashlib.sha256).digest()
    key = mac(("AWS4" + secret).encode(), amz_date[:8])
    for part in (region, "s3", "aws4_request"):
        key = mac(key, part)
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, f"{amz_date[:8]}/{region}/s3/aws4_request",
                     hashlib.sha256(creq.encode()).hexdigest()])
    return hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()


class HFGateway(LoopbackServer):
    access_key = "HFAK" + "TESTGATEWAY0001"
    secret_key = "hf-emulator-secret"

    def __init__(self, upstream, namespace="alice", versioned_redirects=True):
        self.upstream, self.namespace = upstream, namespace
        # Whether a 302 carries the object's ETag and Last-Modified (undocumented either way).
        self.versioned_redirects = versioned_redirects
        self.counts = {"redirects": 0, "cdn_refused": 0, "bad_signature": 0, "rejected": 0}
        self.cdn = {}
        gateway = self
        target = urlsplit(upstream.endpoint)

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def reply(self, status, body=b"", headers=(), length=None):
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def error(self, status, code):
                self.reply(status, f"<Error><Code>{code}</Code></Error>".encode(),
                           [("Content-Type", "application/xml")])

            def handle_any(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                raw_path, _, raw_query = self.path.partition("?")
                if raw_path.startswith("/cdn/"):
                    return self.serve_cdn(raw_path[5:])
                if not self.signed_correctly(raw_path, raw_query, body):
                    gateway.counts["bad_signature"] += 1
                    return self.error(403, "SignatureDoesNotMatch")
                prefix = f"/{gateway.namespace}/"
                if not raw_path.startswith(prefix):
                    return self.error(404, "NoSuchBucket")
                rest = raw_path[len(prefix):]
                bucket, _, key = rest.partition("/")
                decoded = unquote(key)
                if key and (decoded.startswith("/") or decoded.endswith("/") or "//" in decoded):
                    gateway.counts["rejected"] += 1
                    return self.error(400, "InvalidArgument")
                query = dict(parse_qsl(raw_query, keep_blank_values=True))
                if self.command == "GET" and not key and query.get("list-type") != "2":
                    gateway.counts["rejected"] += 1
                    return self.error(400, "NotImplemented")   # ListObjectsV1
                status, headers, data = self.forward("/" + rest, raw_query, body)
                if self.command == "GET" and key and status == 200:
                    token = os.urandom(8).hex()
                    gateway.cdn[token] = (data, headers.get("content-type", ""))
                    gateway.counts["redirects"] += 1
                    port = self.server.server_address[1]
                    moved = [("Location", f"http://127.0.0.1:{port}/cdn/{token}")]
                    if gateway.versioned_redirects:
                        moved += [("ETag", headers.get("etag", "")),
                                  ("Last-Modified", headers.get("last-modified", ""))]
                    return self.reply(302, b"", moved)
                keep = [(k, v) for k, v in headers.items()
                        if k not in ("content-length", "transfer-encoding", "connection")]
                # A HEAD answer tells the object's length, as the gateway's does.
                self.reply(status, data, keep, headers.get("content-length")
                           if self.command == "HEAD" else None)

            def serve_cdn(self, token):
                if "authorization" in {k.lower() for k in self.headers.keys()}:
                    gateway.counts["cdn_refused"] += 1
                    return self.error(400, "AuthorizationNotAllowed")
                if token not in gateway.cdn:
                    return self.error(404, "NoSuchKey")
                data, ctype = gateway.cdn.pop(token)
                self.reply(200, data, [("Content-Type", ctype)])

            def signed_correctly(self, raw_path, raw_query, body):
                auth = self.headers.get("authorization", "")
                try:
                    fields = dict(part.strip().split("=", 1) for part in auth[17:].split(","))
                    access, date, region, _, _ = fields["Credential"].split("/")
                    signed = fields["SignedHeaders"].split(";")
                except (ValueError, KeyError):
                    return False
                headers = {k.lower(): v for k, v in self.headers.items()}
                payload = headers.get("x-amz-content-sha256", "")
                if access != gateway.access_key or "host" not in signed or \
                        payload != hashlib.sha256(body).hexdigest():
                    return False
                creq = _canonical(self.command, raw_path, raw_query, headers, signed, payload)
                expected = _signature(gateway.secret_key, headers.get("x-amz-date", ""), region, creq)
                return hmac.compare_digest(expected, fields.get("Signature", ""))

            def forward(self, raw_path, raw_query, body):
                # The path re-encoded as S3 encodes it, whatever the client's encoding was.
                raw_path = quote(unquote(raw_path), safe="/" + SAFE)
                amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
                payload = hashlib.sha256(body).hexdigest()
                headers = {"host": target.netloc, "x-amz-date": amz_date,
                           "x-amz-content-sha256": payload}
                for name in ("if-match", "if-none-match", "content-type"):
                    if self.headers.get(name):
                        headers[name] = self.headers[name]
                signed = sorted(headers)
                creq = _canonical(self.command, raw_path, raw_query, headers, signed, payload)
                sig = _signature(gateway.upstream.secret_key, amz_date, "us-east-1", creq)
                headers["authorization"] = (
                    f"AWS4-HMAC-SHA256 Credential={gateway.upstream.access_key}/{amz_date[:8]}/"
                    f"us-east-1/s3/aws4_request, SignedHeaders={';'.join(signed)}, Signature={sig}")
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                url = raw_path + (f"?{raw_query}" if raw_query else "")
                conn.request(self.command, url, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp.status, {k.lower(): v for k, v in resp.getheaders()}, data

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = handle_any

        self.serve(Handler)

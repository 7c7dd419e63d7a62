#!/usr/bin/env python3
"""tracecraft: coordination for teams of AI agents, stored as JSON in any S3 bucket or a local directory.

Agents share key-value memory, send direct and broadcast messages, claim steps so they never collide,
wait for each other's steps, leave handoff notes, share files and see who is online.  There is no
server of our own: every atomic promise rests on S3 conditional writes (If-None-Match / If-Match) or,
in the local store, on link(2) and a lock per key.

    $ tracecraft init --project demo --agent designer      # local store, no server needed
    $ tracecraft claim design
    Claimed step design as designer

    >>> import tracecraft
    >>> tc = tracecraft.connect(project="demo", agent="designer", backend="local")
    >>> tc.memory.set("design.status", "complete")

One file, standard library only, so it can be vendored with `curl -O`.  The sections below are
ordered bottom-up; each may call only the sections above it:

  1. Errors and exit codes   every failure tracecraft reports, and the one table of exit codes
  2. Names and keys          the one set of rules for agent ids, projects, steps, keys, artifact names
  3. SigV4 and transport     the AWS Signature V4 signer; one kept-alive HTTP connection
  4. Stores                  the Store interface and its backends: S3Store, LocalStore, HFStore
  5. Configuration           finding .tracecraft.json, credentials, opening the configured store
  6. Coordination protocol   memory, messages, claims, steps, barriers, artifacts, agents
  7. Python API              connect()
  8. MCP server              `tracecraft mcp`: the API as Model Context Protocol tools, and the
                             instructions an agent follows
  9. Command line            argparse, human and --json output, main()
"""

import json
import os
import sys
import time

__version__ = "0.1.0"
__all__ = ["connect", "Client", "TracecraftError", "LocalStore", "S3Store", "__version__"]


# ==================================================================================================
# 1. Errors and exit codes.  Owns: the exception hierarchy and exit codes.  Calls: nothing.
# ==================================================================================================

EXIT_OK = 0       # success
EXIT_NO = 1       # the answer is no: key missing, step held by another agent, step not complete
EXIT_USAGE = 2    # bad usage or bad input
EXIT_TIMEOUT = 3  # timed out
EXIT_STORE = 4    # the store failed: unreachable, credentials refused, bucket missing, unusable config
EXIT_BUG = 70     # an internal error: a bug in tracecraft (EX_SOFTWARE)


class TracecraftError(Exception):
    """Base of every error tracecraft reports.  `exit_code` is what the command line exits with;
    `retried` is true when the failed request had been sent before (so a conditional write may
    in fact have succeeded then)."""
    exit_code = EXIT_STORE
    retried = False


class UsageError(TracecraftError):
    """Bad arguments or input: an invalid name, an unreadable file, a malformed value."""
    exit_code = EXIT_USAGE


class NotFound(TracecraftError):
    """What was asked for does not exist (a memory key, an artifact, a message)."""
    exit_code = EXIT_NO


class Refused(TracecraftError):
    """The answer is no: the step is held by someone else, already complete, or a race was lost."""
    exit_code = EXIT_NO


class WaitTimeout(TracecraftError):
    exit_code = EXIT_TIMEOUT


class StoreError(TracecraftError):
    """The store failed or cannot be used; also the base of the typed S3 errors below."""
    exit_code = EXIT_STORE


class ConfigError(StoreError):
    """No usable configuration: missing, unreadable or malformed."""


class NoSuchKey(NotFound):
    pass


class PreconditionFailed(Refused):
    """A conditional write lost: the key exists (create-only) or its ETag changed (if-match)."""


class ConditionalConflict(Refused):
    """409: a concurrent conditional write to the same key finished first; re-read and retry."""


class AccessDenied(StoreError):
    pass


class BadCredentials(StoreError):
    """The store rejected the signature or does not know the access key."""


class NoSuchBucket(StoreError):
    pass


class Unreachable(StoreError):
    """No answer from the store after the retry budget: refused, reset, timed out, DNS failure."""


class CorruptObject(StoreError):
    """An object that tracecraft should be able to read is not valid JSON of the right shape."""


# ==================================================================================================
# 2. Names and keys.  Owns: validation of every name that becomes part of an object key.
#    Calls: section 1.  Nothing can address an object outside <bucket>/<project>/ because every key
#    is built from names that passed these checks.
# ==================================================================================================

MAX_NAME = 128        # characters in one name or key segment
MAX_NAME_BYTES = 200  # its UTF-8 bytes, so that it fits a file name on every file system
MAX_KEY = 512         # characters in a whole memory key
MAX_VALUE = 1 << 20   # bytes in one memory value or message, encoded as JSON
BROADCAST = "_broadcast"


def check_name(kind, value, reserved_underscore=False):
    """Return `value` if it is a valid single-segment name, else raise UsageError saying why."""
    if not isinstance(value, str) or not value:
        raise UsageError(f"{kind} must not be empty")
    check_text(kind, value)
    if len(value) > MAX_NAME:
        raise UsageError(f"{kind} is {len(value)} characters long; the limit is {MAX_NAME}")
    if any(ord(c) < 32 or ord(c) == 127 or c in "\ufffe\uffff" for c in value):
        raise UsageError(f"{kind} {value!r} contains a control character")
    if len(value.encode("utf-8")) > MAX_NAME_BYTES:
        raise UsageError(f"{kind} is {len(value.encode('utf-8'))} bytes long in UTF-8; the limit "
                         f"is {MAX_NAME_BYTES}")
    if "/" in value or "\\" in value:
        raise UsageError(f"{kind} {value!r} must not contain '/' or '\\'")
    if value in (".", ".."):
        raise UsageError(f"{kind} must not be '.' or '..'")
    if value != value.strip():
        raise UsageError(f"{kind} {value!r} must not start or end with white space")
    if reserved_underscore and value.startswith("_"):
        raise UsageError(f"{kind} {value!r} must not start with '_' (reserved, as in {BROADCAST})")
    return value


def check_text(kind, value):
    """Text from the command line may hold undecodable bytes (surrogate escapes): refuse them."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{kind} is not valid UTF-8") from None
    return value


def check_agent(agent):
    return check_name("agent id", agent, reserved_underscore=True)


def check_memory_key(key):
    """Memory keys are dotted paths: `design.status` is stored at memory/design/status.json."""
    if not isinstance(key, str) or not key:
        raise UsageError("memory key must not be empty")
    if len(key) > MAX_KEY:
        raise UsageError(f"memory key is {len(key)} characters long; the limit is {MAX_KEY}")
    for segment in key.split("."):
        if not segment:
            raise UsageError(f"memory key {key!r} has an empty segment (two dots, or a leading "
                             "or trailing dot)")
        check_name("memory key segment", segment)
    return key


def check_artifact_name(name):
    check_name("artifact name", name)
    if name.startswith("."):
        raise UsageError(f"artifact name {name!r} must not start with '.' (use --name to rename)")
    return name


def check_bucket(bucket):
    """S3's bucket naming rules (also used for the local store's subdirectory)."""
    ok = (isinstance(bucket, str) and 3 <= len(bucket) <= 63 and bucket[0].isalnum()
          and bucket[-1].isalnum() and all(c.islower() or c.isdigit() or c in "-." for c in bucket)
          and bucket.isascii() and ".." not in bucket)
    if not ok:
        raise UsageError(f"bucket name {bucket!r} is not valid: use 3-63 lowercase letters, digits, "
                         "'-' and '.', starting and ending with a letter or digit")
    return bucket


def _duration(seconds):
    """A short human duration: 45s, 12m, 3h, 2d."""
    seconds = int(max(0, seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# ==================================================================================================
# 3. SigV4 and transport.  Owns: AWS Signature Version 4 and the one HTTP request path with its
#    retry policy.  Calls: section 1.  _socket (socket and ssl too, for https) is imported at the
#    first request.
# ==================================================================================================

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
UNRESERVED = "-_.~"
RETRY_STATUSES = (429, 500, 502, 503, 504)


_ESCAPED = [chr(b) if chr(b).isascii() and (chr(b).isalnum() or chr(b) in UNRESERVED)
            else f"%{b:02X}" for b in range(256)]


def uri_encode(text, keep_slash=False):
    """S3's URI encoding: every byte of the UTF-8 form except A-Z a-z 0-9 - _ . ~ is %XX."""
    encoded = "".join([_ESCAPED[b] for b in text.encode("utf-8")])
    return encoded.replace("%2F", "/") if keep_slash else encoded


def _remove_dot_segments(path):
    """RFC 3986 path normalisation, which SigV4 applies for every service except S3."""
    out = []
    for segment in path.split("/"):
        if segment == "..":
            if out:
                out.pop()
        elif segment not in (".", ""):
            out.append(segment)
    trailing = "/" if path.endswith(("/", "/.", "/..")) and out else ""
    return "/" + "/".join(out) + trailing


def canonical_request(method, path, query, headers, payload_hash, normalize_path=False):
    """Return (canonical request, signed header names).

    `path` and `query` (a list of (name, value) pairs) are decoded text; `headers` is a list of
    (name, value) pairs in which a name may repeat.  S3 signs the path as sent (no normalisation)."""
    if normalize_path:
        path = _remove_dot_segments(path)
    encoded_query = sorted((uri_encode(k), uri_encode(v)) for k, v in query)
    merged = {}
    for name, value in headers:
        merged.setdefault(name.strip().lower(), []).append(" ".join(value.split()))
    names = sorted(merged)
    lines = [method, uri_encode(path, keep_slash=True) or "/",
             "&".join(f"{k}={v}" for k, v in encoded_query),
             "".join(f"{n}:{','.join(merged[n])}\n" for n in names),
             ";".join(names), payload_hash]
    return "\n".join(lines), ";".join(names)


_HASHES = {}
_BUILTIN_HASHES = {"md5": ("_md5",), "sha1": ("_sha1",), "sha256": ("_sha2", "_sha256")}


def _hash(name, data):
    """hashlib.<name>(data) for md5, sha1 or sha256 of a small `data`.  hashlib loads OpenSSL's
    libcrypto, which costs a command more than all of its signing; CPython's own implementations
    load at once, so they are used when this build has them (OpenSSL is faster on big data)."""
    if len(data) > 1 << 20:
        import hashlib
        return getattr(hashlib, name)(data)
    new = _HASHES.get(name)
    if new is None:
        for module in _BUILTIN_HASHES[name]:
            try:
                new = getattr(__import__(module), name)
                break
            except (ImportError, AttributeError):
                pass
        else:
            import hashlib
            new = getattr(hashlib, name)
        _HASHES[name] = new
    return new(data)


_OUTER_PAD = bytes(b ^ 0x5C for b in range(256))
_INNER_PAD = bytes(b ^ 0x36 for b in range(256))


def _hmac(key, text):
    """HMAC-SHA256 (RFC 2104) over _hash: the hmac module would load OpenSSL."""
    if len(key) > 64:
        key = _hash("sha256", key).digest()
    key = key.ljust(64, b"\0")
    inner = _hash("sha256", key.translate(_INNER_PAD) + text.encode("utf-8")).digest()
    return _hash("sha256", key.translate(_OUTER_PAD) + inner).digest()


_signing_keys = {}


def signing_key(secret_key, date, region, service):
    """The derived key for one day, region and service; cached because it changes once a day."""
    cache_key = (secret_key, date, region, service)
    key = _signing_keys.get(cache_key)
    if key is None:
        key = _hmac(("AWS4" + secret_key).encode("utf-8"), date)
        for part in (region, service, "aws4_request"):
            key = _hmac(key, part)
        _signing_keys.clear()
        _signing_keys[cache_key] = key
    return key


def string_to_sign(amz_date, scope, creq):
    return "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                      _hash("sha256", creq.encode("utf-8")).hexdigest()])


def authorization(access_key, secret_key, region, service, amz_date, creq, signed_headers):
    """The Authorization header value for a canonical request signed at `amz_date`."""
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    key = signing_key(secret_key, amz_date[:8], region, service)
    signature = _hmac(key, string_to_sign(amz_date, scope, creq)).hex()
    return (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
            f"SignedHeaders={signed_headers}, Signature={signature}")


class Response:
    __slots__ = ("status", "headers", "body", "attempts")

    def __init__(self, status, headers, body, attempts=1):
        self.status, self.headers, self.body, self.attempts = status, headers, body, attempts


def _retry_settings():
    def number(name, default, kind):
        raw = os.environ.get(name)
        try:
            value = kind(raw) if raw else default
        except ValueError:
            value = 0
        if value <= 0:
            raise ConfigError(f"{name}={raw!r} is not a positive number")
        return value
    return number("TRACECRAFT_MAX_ATTEMPTS", 5, int), number("TRACECRAFT_TIMEOUT", 30.0, float)


ATTEMPT_TIMEOUT = 10.0   # seconds one socket operation may block, within the request's deadline


class _ProtocolError(OSError):
    """The server broke HTTP/1.1 framing: a bad status line or header, a body cut short.  An
    OSError, so it is retried like any other failed connection."""


_CHUNK = 64 * 1024    # bytes per write of a file body, and at most per read of an answer's body
_MAX_LINE = 65536     # the longest status, header or chunk-size line accepted


class _Reader:
    """Buffered reading of an answer from a socket (or an ssl one): the part of makefile("rb")
    the client uses, without socket.py.  `_buf[_pos:]` is what was received and not yet read."""

    def __init__(self, sock):
        self._sock, self._buf, self._pos = sock, b"", 0

    def _receive(self):
        """Receive once more, after what is left unread: False at the end of the stream."""
        more = self._sock.recv(_CHUNK)
        self._buf, self._pos = self._buf[self._pos:] + more, 0
        return bool(more)

    def wait(self):
        """Block until a byte can be read: False if the stream ended first."""
        return self._pos < len(self._buf) or self._receive()

    def readline(self, limit):
        """The next line with its b"\\n", cut short after `limit` bytes or by the stream's end."""
        while True:
            newline = self._buf.find(b"\n", self._pos, self._pos + limit)
            if newline >= 0 or len(self._buf) - self._pos >= limit or not self._receive():
                end = newline + 1 if newline >= 0 else min(len(self._buf), self._pos + limit)
                line, self._pos = self._buf[self._pos:end], end
                return line

    def read1(self, size):
        """At most `size` bytes (at least one, unless the stream ended) with at most one recv."""
        if self._pos == len(self._buf):
            return self._sock.recv(size)
        block = self._buf[self._pos:self._pos + size]
        self._pos += len(block)
        return block


class Transport:
    """One kept-alive HTTP(S) connection to one host, and the one retry policy.

    Connection errors, timeouts and 429/5xx answers are retried with exponential backoff and full
    jitter, at most `max_attempts` times and within `timeout` seconds in all (defaults from
    TRACECRAFT_MAX_ATTEMPTS and TRACECRAFT_TIMEOUT); every other answer, 4xx errors included,
    is returned to the caller at once.

    The HTTP/1.1 client is our own, on a socket: importing http.client would take longer than
    the rest of a command, and S3 needs only Content-Length, chunked and close-delimited bodies."""

    def __init__(self, scheme, host, port, timeout=None, max_attempts=None, verify=True):
        default_attempts, default_timeout = _retry_settings()
        self.scheme, self.host, self.port = scheme, host, port
        self.timeout = timeout or default_timeout
        self.max_attempts = max(1, max_attempts or default_attempts)
        self.verify = verify
        self._sock = self._reader = None

    def _connect(self, timeout):
        # socket.create_connection() on _socket, which socket.py wraps: importing socket.py (every
        # constant made an enum, selectors imported) would cost an http command 5% of its time.
        import _socket
        # getaddrinfo() would load the idna codec to encode a str host name; ASCII needs none.
        host = self.host.encode() if self.host.isascii() else self.host
        error = OSError(f"no address found for {self.host}")
        for family, kind, proto, _, address in _socket.getaddrinfo(host, self.port, 0,
                                                                   _socket.SOCK_STREAM):
            sock = None
            try:
                sock = _socket.socket(family, kind, proto)
                sock.settimeout(timeout)
                sock.connect(address)
                break
            except OSError as exc:
                error = exc
                if sock is not None:
                    sock.close()
        else:
            raise error
        # Each request is a small write on a kept-alive connection: Nagle's algorithm would hold
        # it back until the server's delayed ACK of the previous answer.
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        if self.scheme == "https":
            import socket
            import ssl
            context = ssl.create_default_context()
            if not self.verify:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            # ssl wraps only a socket.socket; one made from a descriptor starts without a timeout.
            sock = socket.socket(sock.family, sock.type, sock.proto, sock.detach())
            try:
                sock.settimeout(timeout)
                sock = context.wrap_socket(sock, server_hostname=self.host)
            except OSError:
                sock.close()
                raise
        self._sock, self._reader = sock, _Reader(sock)

    def close(self):
        if self._sock is not None:
            self._sock.close()
            self._sock = self._reader = None

    def request(self, method, target, make_headers, body=b"", into=None, progress=None):
        """Send a request, retrying per the policy; `make_headers()` signs each attempt afresh.

        A seekable file `body` is rewound before each attempt.  With `into`, a 200 answer's body is
        streamed into that file instead of memory.  Returns a Response whose `attempts` counts
        the sends, which tells the caller whether a conditional write may have reached the
        store before.  A kept-alive connection the server closed while idle is reopened
        without using up an attempt: before sending if its close has arrived, else (once:
        `reused` is false on the fresh connection) when the request goes unanswered."""
        started = time.monotonic()
        deadline = started + self.timeout
        last_error, attempt, sent = None, 0, 0
        while attempt < self.max_attempts:
            attempt += 1
            if attempt > 1:
                import random
                pause = random.uniform(0, min(2.0, 0.1 * 2 ** (attempt - 1)))
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            if hasattr(body, "seek"):
                body.seek(0)
            if self._sock is not None and _readable(self._sock):
                self.close()   # the server closed the idle connection; nothing was sent on it
            reused = self._sock is not None
            try:
                timeout = max(0.05, min(ATTEMPT_TIMEOUT, deadline - time.monotonic()))
                if reused:
                    self._sock.settimeout(timeout)
                else:
                    self._connect(timeout)
                sent += 1
                if not self._ask(method, target, make_headers(), body):
                    self.close()
                    last_error = "the server closed the connection without answering"
                    if reused:
                        attempt -= 1   # it closed while idle, as our request was on its way
                    continue
                status, headers, keep = self._read_head()
                parts = self._body(method, status, headers, keep)
                if status in RETRY_STATUSES and attempt < self.max_attempts:
                    for _ in parts:   # read to its end, so that the connection can be reused
                        pass
                    last_error = f"HTTP {status}"
                    continue
                if into is not None and status == 200:
                    into.seek(0)
                    into.truncate()
                    _copy_stream(parts, into, int(headers.get("content-length") or 0), progress)
                    return Response(status, headers, b"", sent)
                return Response(status, headers, b"".join(parts), sent)
            except OSError as exc:
                self.close()
                last_error = _describe_network_error(exc)
            except BaseException:
                self.close()   # a half-read answer must not be taken for the next one
                raise
        raise Unreachable(f"cannot reach the store at {self.scheme}://{self.host}:{self.port} "
                          f"({last_error}; {attempt} attempts in {time.monotonic() - started:.1f} s):"
                          " check the endpoint, the network and that the server is running")

    def _ask(self, method, target, headers, body):
        """Send the request and wait for the answer to begin.  False if the connection closed
        first (a broken pipe or reset while sending, EOF or a reset before the answer)."""
        size = body.seek(0, os.SEEK_END) if hasattr(body, "read") else len(body)
        lines = [f"{method} {target} HTTP/1.1", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() != "content-length"]   # the framing is ours to state
        if size or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {size}")
        if any("\r" in line or "\n" in line for line in lines):
            raise ValueError("a line break in the request target or a header value")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        try:
            if hasattr(body, "read"):
                body.seek(0)
                self._sock.sendall(head)
                for block in iter(lambda: body.read(_CHUNK), b""):
                    self._sock.sendall(block)
            else:
                self._sock.sendall(head + body)   # one write, so a small request is one packet
            return self._reader.wait()
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _read_head(self):
        """(status, headers, keep) of the final answer, skipping 1xx interim ones.  Repeated
        headers are joined with ", "; `keep` says whether the connection stays open after it."""
        while True:
            line = self._readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
                    or not parts[1].isdigit():
                raise _ProtocolError(f"not an HTTP/1.x status line: {line[:100]!r}")
            headers = {}
            while True:
                line = self._readline()
                if not line.strip():
                    break
                name, colon, value = line.decode("latin-1").partition(":")
                if not colon:
                    raise _ProtocolError(f"not an HTTP header line: {line[:100]!r}")
                name, value = name.strip().lower(), value.strip()
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
            status = int(parts[1])
            if status >= 200:
                break
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit()):
            raise _ProtocolError(f"not a Content-Length: {length[:100]!r}")
        connection = headers.get("connection", "").lower()
        keep = "keep-alive" in connection if parts[0] == b"HTTP/1.0" else "close" not in connection
        return status, headers, keep

    def _body(self, method, status, headers, keep):
        """The answer's body, in pieces as they arrive.  Once all is read, closes the connection
        if the answer was its last (Connection: close, or a body that ends with the connection)."""
        if method == "HEAD" or status in (204, 304):
            pass
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            while True:
                line = self._readline()
                try:
                    size = int(line.split(b";")[0], 16)
                except ValueError:
                    size = -1
                if size < 0:
                    raise _ProtocolError(f"not a chunk size: {line[:100]!r}")
                if size == 0:
                    break
                yield from self._exactly(size)
                if self._readline().strip():
                    raise _ProtocolError("a chunk is longer than its size says")
            while self._readline().strip():   # trailer headers: none is of use to us
                pass
        elif "content-length" in headers:
            yield from self._exactly(int(headers["content-length"]))
        else:
            yield from iter(lambda: self._reader.read1(_CHUNK), b"")
            keep = False
        if not keep:
            self.close()

    def _exactly(self, size):
        while size:
            block = self._reader.read1(min(size, _CHUNK))
            if not block:
                raise _ProtocolError(f"the answer was cut short, {size} bytes before its end")
            size -= len(block)
            yield block

    def _readline(self):
        line = self._reader.readline(_MAX_LINE + 1)
        if len(line) > _MAX_LINE:
            raise _ProtocolError(f"a line of the answer is longer than {_MAX_LINE} bytes")
        if not line.endswith(b"\n"):
            raise _ProtocolError("the connection closed in the middle of the answer")
        return line


def _readable(sock):
    """Whether an idle kept-alive connection has anything to read: only the server closing it (or
    garbage) can be there, and a request sent on it would be lost."""
    import select
    if hasattr(select, "poll"):   # select() cannot take descriptors above 1023
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return bool(poller.poll(0))
    return bool(select.select([sock], [], [], 0)[0])


def _describe_network_error(exc):
    import _socket
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (_socket.timeout, TimeoutError)):   # one class from 3.10 on
        return "timed out"
    if isinstance(exc, _socket.gaierror):
        return f"cannot resolve host name: {exc.strerror}"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text != type(exc).__name__ else text


def _copy_stream(blocks, target, total, progress):
    done = 0
    for block in blocks:
        target.write(block)
        done += len(block)
        if progress:
            progress(done, total)


# ==================================================================================================
# 4. Stores.  Owns: the Store interface and its backends.  Calls: sections 1-3.  All coordination
#    code goes through these five operations and nothing bypasses them; keys are relative to the
#    bucket and already validated (section 2), so a store only has to keep its own promises.
# ==================================================================================================

class Blob:
    """An object read from a store: its bytes (None for head, or when streamed to a file), its
    ETag, its Last-Modified time and the store's own clock at the time of the answer (epoch s)."""
    __slots__ = ("key", "body", "etag", "size", "last_modified", "server_time", "chain")

    def __init__(self, key, body, etag, size, last_modified=None, server_time=None):
        self.key, self.body, self.etag, self.size = key, body, etag, size
        self.last_modified, self.server_time = last_modified, server_time
        self.chain = None   # [writer, nonce] of the last conditional writes (Client.write)


class Entry:
    """One key of a listing; `etag` when the store lists it (S3 does, the local store does not),
    and the store's own clock when it answered (`server_time`, epoch seconds)."""
    __slots__ = ("key", "size", "last_modified", "etag", "server_time")

    def __init__(self, key, size, last_modified, etag=None, server_time=None):
        self.key, self.size, self.last_modified, self.etag = key, size, last_modified, etag
        self.server_time = server_time

    def __repr__(self):
        return f"Entry({self.key!r}, {self.size})"


class Store:
    """The interface every backend implements.

    get(key, into=None) -> Blob        raises NoSuchKey; streams the bytes into a file if given
    head(key) -> Blob                  the same without the bytes (exists(key) asks just that)
    put(key, body, if_none_match=False, if_match=None, content_type=None, progress=None) -> etag
                                       create-only or compare-and-swap when asked; a lost condition
                                       raises PreconditionFailed; `body` is bytes or a binary file
    delete(key, if_match=None)         deleting a missing key is not an error (as on S3)
    list(prefix, start_after=None, limit=None)
                                       Entry objects in S3's order (by UTF-8 bytes), every page
                                       (or the first `limit` entries)
    ensure_bucket(prefix="") -> bool   create the bucket if missing; True when it was created
                                       (credentials scoped to `prefix` are checked there)
    """
    name = "store"

    def close(self):
        pass

    def exists(self, key):
        try:
            self.head(key)
            return True
        except NoSuchKey:
            return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def describe(self):
        return self.name


def _version(etag):
    """Versions are ETags without their quotes; If-Match wants them quoted."""
    return (etag or "").strip('"')


def _split_url(url):
    """(scheme, host, port, path) of an http(s) URL, or None if it is not one: what
    urllib.parse.urlsplit says of an endpoint, without its import on every command."""
    scheme, sep, rest = url.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("http", "https") or any(c in rest for c in "?#@ \\"):
        return None
    netloc, slash, path = rest.partition("/")
    if netloc.startswith("["):              # an IPv6 address: [::1]:9000
        host, _, port = netloc[1:].partition("]")
        if port and not port.startswith(":"):
            return None
        port = port[1:]
    else:
        host, _, port = netloc.partition(":")
    if not host or (port and not (port.isdigit() and 0 < int(port) < 65536)):
        return None
    return scheme, host.lower(), int(port) if port else (443 if scheme == "https" else 80), \
        slash + path


def _is_loopback(host):
    host = host.lower().strip("[]")
    if host in ("localhost", "::1") or host.endswith(".localhost"):
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


def write_config(path, config):
    """Write the config with mode 0600: it may hold a secret key."""
    tmp = path + ".tmp"
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write config {path}: {exc.strerror or exc}") from None


def _aws_profile(name):
    """Keys of one profile from ~/.aws/credentials, then ~/.aws/config ("profile NAME")."""
    import configparser
    home = os.path.expanduser("~")
    files = [(os.environ.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"), name),
             (os.environ.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config"),
              name if name == "default" else f"profile {name}")]
    for path, section in files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (OSError, UnicodeDecodeError, configparser.Error):
            continue
        if parser.has_option(section, "aws_access_key_id"):
            get = lambda option: parser.get(section, option, fallback=None)  # noqa: E731
            return get("aws_access_key_id"), get("aws_secret_access_key"), get("aws_session_token")
    return None


def resolve_credentials(settings):
    """(access key, secret key, session token): flags, then AWS_* variables, then AWS_PROFILE,
    then the config file, then the `default` profile (last, so that a user's everyday AWS
    profile never overrides keys that were given to `tracecraft init` for this project)."""
    if settings.get("access_key") and settings.get("secret_key") and settings.get("_from_flags"):
        return settings["access_key"], settings["secret_key"], settings.get("session_token")
    env = os.environ
    if settings.get("backend") == "hf" and env.get("HF_S3_ACCESS_KEY_ID"):
        return env["HF_S3_ACCESS_KEY_ID"], env.get("HF_S3_SECRET_ACCESS_KEY"), None
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"], env.get("AWS_SESSION_TOKEN")
    found = _aws_profile(env["AWS_PROFILE"]) if env.get("AWS_PROFILE") else None
    if found:
        return found
    if settings.get("access_key") and settings.get("secret_key"):
        return settings["access_key"], settings["secret_key"], settings.get("session_token")
    if env.get("AWS_PROFILE"):
        raise ConfigError(f"AWS_PROFILE={env['AWS_PROFILE']} has no static keys in "
                          "~/.aws/credentials or ~/.aws/config (SSO and role profiles are not "
                          "supported: export AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY instead)")
    return _aws_profile("default") or (None, None, None)


def open_store(settings):
    """The Store that `settings` (a config dict, possibly with overrides) describe."""
    for field in ("backend", "bucket", "root", "endpoint", "region", "addressing", "project",
                  "agent", "access_key", "secret_key"):
        if settings.get(field) is not None and not isinstance(settings[field], str):
            where = settings.get("_path") or "the settings"
            raise ConfigError(f"{field!r} in {where} must be a string, not {settings[field]!r:.40}")
    backend = settings.get("backend") or "local"
    bucket = settings.get("bucket") or "tracecraft"
    if backend == "local":
        return LocalStore(settings.get("root"), bucket)
    if backend not in ("s3", "hf"):
        raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    access_key, secret_key, token = resolve_credentials(settings)
    cls = HFStore if backend == "hf" else S3Store
    return cls(bucket, endpoint=settings.get("endpoint"), region=settings.get("region"),
               access_key=access_key, secret_key=secret_key, session_token=token,
               addressing=settings.get("addressing") or "path",
               verify=not settings.get("insecure"))


def resolve_settings(config_path=None, **overrides):
    """Merge the discovered (or named) config file, the environment and explicit overrides."""
    path = config_path or find_config()
    settings = load_config(path) if path else {}
    settings["_path"] = path
    for key, value in overrides.items():
        if value is not None:
            settings[key] = value
    for key, var in (("agent", "TRACECRAFT_AGENT"), ("project", "TRACECRAFT_PROJECT")):
        if os.environ.get(var) and overrides.get(key) is None:
            settings[key] = os.environ[var]
    return settings


def _md5_etag(data):
    return '"' + _hash("md5", data).hexdigest() + '"'


class LocalStore(Store):
    """A directory: <root>/<bucket>/<key>.  No server; safe for many processes on one machine.

    Writes go to a temporary file that is renamed into place, so a reader never sees half an
    object.  Create-only is link(2), which fails atomically when the name exists.  Compare-and-swap
    and conditional delete hold an exclusive lock (flock on one of 256 lock files chosen by the
    key's hash) around read-compare-write.  ETags are MD5 hex digests of the content, as on S3."""
    name = "local"

    def __init__(self, root=None, bucket="tracecraft"):
        self.root = os.path.abspath(os.path.expanduser(root or default_local_root()))
        self.bucket = check_bucket(bucket)
        self.dir = os.path.join(self.root, self.bucket)

    def describe(self):
        return f"local directory {self.dir}"

    def _path(self, key):
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise UsageError(f"invalid object key {key!r}")
        return os.path.join(self.dir, *parts)

    def _fail(self, exc, key):
        if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
            return UsageError(f"object key {key!r} conflicts with another key in {self.dir} "
                              "(one is a prefix of the other)")
        reason = exc.strerror or str(exc)
        return StoreError(f"local store: cannot access {exc.filename or self.dir}: {reason}")

    def get(self, key, into=None):
        path = self._path(key)
        try:
            with open(path, "rb") as f:
                stat = os.fstat(f.fileno())
                if into is None:
                    data = f.read()
                    etag = _md5_etag(data)
                else:
                    import hashlib
                    digest = hashlib.md5()
                    into.seek(0)
                    into.truncate()
                    for block in iter(lambda: f.read(1 << 20), b""):
                        digest.update(block)
                        into.write(block)
                    data, etag = None, '"' + digest.hexdigest() + '"'
        except FileNotFoundError:
            raise NoSuchKey(f"no object {key}") from None
        except OSError as exc:
            raise self._fail(exc, key) from None
        return Blob(key, data, etag, stat.st_size, stat.st_mtime, time.time())

    def head(self, key):
        blob = self.get(key)
        blob.body = None
        return blob

    def _current_etag(self, key):
        try:
            return self.head(key).etag
        except NoSuchKey:
            return None

    def put(self, key, body, if_none_match=False, if_match=None, content_type=None, progress=None):
        if if_none_match and if_match:
            raise UsageError("a write cannot be both create-only and compare-and-swap")
        path = self._path(key)
        try:
            tmp, etag = self._write_temp(body, progress)
            try:
                # Every replacement holds the key's lock, so a compare-and-swap between its
                # check and its rename can never be overtaken by a plain write or a delete.
                with self._lock(key):
                    if if_match and self._current_etag(key) != if_match:
                        raise PreconditionFailed(f"{key} changed (version is not {if_match})")
                    self._place(tmp, path, os.link if if_none_match else os.replace)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        except FileExistsError:
            raise PreconditionFailed(f"{key} already exists") from None
        except OSError as exc:
            raise self._fail(exc, key) from None
        return etag

    def _place(self, tmp, path, how):
        # A concurrent delete may remove the parent directory between makedirs and link/rename.
        for _ in range(5):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                return how(tmp, path)
            except FileNotFoundError:
                continue
        return how(tmp, path)

    def _write_temp(self, body, progress):
        import hashlib
        import tempfile
        tmpdir = os.path.join(self.root, ".tmp")
        os.makedirs(tmpdir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=tmpdir, prefix="put-")
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as f:
            if isinstance(body, (bytes, bytearray)):
                f.write(body)
                digest.update(body)
            else:
                body.seek(0)
                total, done = _file_size(body), 0
                for block in iter(lambda: body.read(1 << 20), b""):
                    f.write(block)
                    digest.update(block)
                    done += len(block)
                    if progress:
                        progress(done, total)
        return tmp, '"' + digest.hexdigest() + '"'

    def delete(self, key, if_match=None):
        path = self._path(key)
        try:
            with self._lock(key):
                if if_match and self._current_etag(key) != if_match:
                    raise PreconditionFailed(f"{key} changed (version is not {if_match})")
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    return
        except OSError as exc:
            raise self._fail(exc, key) from None
        parent = os.path.dirname(path)
        while parent != self.dir and parent.startswith(self.dir):
            try:
                os.rmdir(parent)   # only succeeds when empty, which is what S3's model implies
            except OSError:
                break
            parent = os.path.dirname(parent)

    def list(self, prefix="", start_after=None, limit=None):
        base = prefix.rpartition("/")[0]
        found = []

        def walk(directory, rel):
            try:
                entries = list(os.scandir(directory))
            except (FileNotFoundError, NotADirectoryError):
                return
            for entry in entries:
                key = rel + entry.name
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        walk(entry.path, key + "/")
                elif key.startswith(prefix) and (start_after is None or key > start_after):
                    found.append((key, entry.path))

        walk(self._path(base) if base else self.dir, base + "/" if base else "")
        # Python orders str by code point, which is exactly the UTF-8 byte order S3 lists in.
        found.sort()
        return self._entries(found[:limit])

    @staticmethod
    def _entries(found):
        """Stat lazily: a caller that stops early (at a cursor, say) pays only for what it read."""
        for key, path in found:
            try:
                stat = os.stat(path)
            except FileNotFoundError:
                continue
            yield Entry(key, stat.st_size, stat.st_mtime, server_time=time.time())

    def ensure_bucket(self, prefix=""):
        created = not os.path.isdir(self.dir)
        try:
            os.makedirs(self.dir, exist_ok=True)
            probe = os.path.join(self.root, ".tmp")
            os.makedirs(probe, exist_ok=True)
            if not os.access(self.dir, os.W_OK):
                raise PermissionError(13, "permission denied", self.dir)
        except OSError as exc:
            raise self._fail(exc, "") from None
        return created

    def _lock(self, key):
        stripe = _hash("md5", key.encode("utf-8")).hexdigest()[:2]
        lockdir = os.path.join(self.root, ".locks", self.bucket)
        os.makedirs(lockdir, exist_ok=True)
        return _FileLock(os.path.join(lockdir, stripe + ".lock"))


class _FileLock:
    """An exclusive inter-process lock on a file: flock on POSIX, msvcrt.locking on Windows."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            import fcntl
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        except ImportError:
            import msvcrt
            while True:
                try:
                    msvcrt.locking(self.fd, msvcrt.LK_LOCK, 1)
                    break
                except OSError:
                    continue
        return self

    def __exit__(self, *exc):
        os.close(self.fd)   # closing the descriptor releases the lock


def _file_size(f):
    here = f.tell()
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(here)
    return size


def default_local_root():
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(base, "tracecraft")


_MONTHS = {m: i for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split(), 1)}


def _utc_seconds(year, month, day, hour, minute, second):
    """Seconds since 1970 of a UTC time: calendar.timegm, without importing calendar."""
    y = year - (month <= 2)
    day_of_year = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = 365 * y + y // 4 - y // 100 + y // 400 + day_of_year - 719468
    return days * 86400 + hour * 3600 + minute * 60 + second


def _http_date(value):
    """Epoch seconds from an HTTP date header (Date, Last-Modified), or None."""
    if not value:
        return None
    parts = value.split()   # every S3 server sends the IMF-fixdate: Wed, 25 Nov 2026 10:08:06 GMT
    try:
        if len(parts) == 6 and parts[2] in _MONTHS and parts[5] == "GMT":
            hour, minute, second = parts[4].split(":")
            return _utc_seconds(int(parts[3]), _MONTHS[parts[2]], int(parts[1]), int(hour),
                                int(minute), int(second))
    except ValueError:
        pass
    from email.utils import parsedate_tz, mktime_tz   # the obsolete forms HTTP also allows
    parsed = parsedate_tz(value)
    return mktime_tz(parsed) if parsed else None


def _iso_date(value):
    """Epoch seconds from the ISO 8601 LastModified of a listing (2026-11-25T10:08:06.123Z)."""
    try:
        seconds = _utc_seconds(int(value[0:4]), int(value[5:7]), int(value[8:10]),
                               int(value[11:13]), int(value[14:16]), int(value[17:19]))
    except (TypeError, ValueError):
        return None
    fraction = value[19:].rstrip("Z")
    return seconds + (float(fraction) if fraction[:1] == "." and fraction[1:].isdigit() else 0)


_XML_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _xml_values(text, tag, raw=False):
    """The contents of every <tag> element of one of S3's small, flat XML answers (a listing,
    an error), as text with entities resolved (unless `raw`): loading an XML parser would cost
    a command more than reading its answer."""
    import re
    found = re.findall(rf"<(?:\w+:)?{tag}(?:\s[^>]*)?>(.*?)</(?:\w+:)?{tag}>", text, re.S)
    if raw:
        return found

    def resolve(match):
        name = match.group(1)
        try:
            return chr(int(name[2:], 16) if name[1:2] in "xX" else int(name[1:])) \
                if name[0] == "#" else _XML_ENTITIES[name]
        except (KeyError, ValueError, OverflowError):
            return match.group(0)
    return [re.sub(r"&(#[0-9]+|#[xX][0-9a-fA-F]+|\w+);", resolve, value) if "&" in value
            else value for value in found]


def _xml_field(body, tag):
    """The first <tag> of an XML answer (bytes or text), or ""."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", "replace")
    values = _xml_values(body or "", tag)
    return values[0] if values else ""


class S3Store(Store):
    """Any S3-compatible store, signed with SigV4 over one kept-alive connection."""
    name = "s3"
    follows_redirects = False   # a gateway that answers GET with a CDN redirect sets this

    def __init__(self, bucket, endpoint=None, region="us-east-1", access_key=None, secret_key=None,
                 session_token=None, addressing="path", verify=True, timeout=None,
                 max_attempts=None):
        self.bucket = self.check_bucket(bucket)
        self.region = region or "us-east-1"
        self.endpoint = (endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        url = _split_url(self.endpoint)
        if url is None:
            raise ConfigError(f"endpoint {self.endpoint!r} is not an http(s) URL")
        scheme, hostname, port, base_path = url
        if addressing not in ("path", "virtual"):
            raise ConfigError(f"addressing must be 'path' or 'virtual', not {addressing!r}")
        if not access_key or not secret_key:
            raise ConfigError("no S3 credentials: pass --access-key/--secret-key to init, or set "
                              "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE")
        self.access_key, self.secret_key, self.session_token = access_key, secret_key, session_token
        self.addressing = addressing
        host = hostname if addressing == "path" else f"{self.bucket}.{hostname}"
        default_port = port == (443 if scheme == "https" else 80)
        bracketed = f"[{host}]" if ":" in host else host
        self.host_header = bracketed if default_port else f"{bracketed}:{port}"
        # A path on the endpoint (a gateway's namespace, say) is part of every signed path.
        self.base_path = base_path.rstrip("/")
        self.transport = Transport(scheme, host, port, timeout, max_attempts, verify)

    check_bucket = staticmethod(check_bucket)

    def describe(self):
        return f"s3 bucket {self.bucket} at {self.endpoint}"

    def close(self):
        self.transport.close()

    def _path(self, key=None):
        bucket_part = f"/{self.bucket}" if self.addressing == "path" else ""
        return self.base_path + bucket_part + ("/" + key if key else "/" if not bucket_part else "")

    def request(self, method, key=None, query=(), headers=(), body=b"", payload_hash=None,
                into=None, progress=None):
        """Sign and send one request; S3 error answers become typed exceptions."""
        path = self._path(key)
        query = list(query)
        payload_hash = payload_hash or (EMPTY_SHA256 if not body else _sha256_hex(body))
        target = uri_encode(path, keep_slash=True)
        if query:
            target += "?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query))
        extra = list(headers)

        def make_headers():
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            signed = [("host", self.host_header), ("x-amz-date", amz_date),
                      ("x-amz-content-sha256", payload_hash)] + extra
            if self.session_token:
                signed.append(("x-amz-security-token", self.session_token))
            creq, names = canonical_request(method, path, query, signed, payload_hash)
            out = dict(signed)
            out["Authorization"] = authorization(self.access_key, self.secret_key, self.region,
                                                 "s3", amz_date, creq, names)
            if body and not isinstance(body, (bytes, bytearray)):
                out["Content-Length"] = str(_file_size(body))
            return out

        resp = self.transport.request(method, target, make_headers, body, into, progress)
        if resp.status in (302, 307) and self.follows_redirects and method in ("GET", "HEAD"):
            return self._follow(resp, method, key, into, progress)
        if resp.status >= 300:
            raise self._error(resp, method, key)
        return resp

    def _follow(self, redirect, method, key, into, progress):
        """Fetch a redirect's target without our credentials: the Authorization header must
        never leave for another host.  The gateway's ETag stays the version, and a body whose
        MD5 does not match it (a stale CDN copy) is refused, since compare-and-swap relies on
        body and version belonging together."""
        from urllib.parse import urljoin, urlsplit
        location = urljoin(self.endpoint + "/", redirect.headers.get("location", ""))
        url = urlsplit(location)
        if url.scheme != "https" and not (url.scheme == "http" and _is_loopback(url.hostname or "")):
            raise StoreError(f"the store redirected {key} to {url.scheme}://{url.hostname}, which "
                             "is not https: refused")
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        port = url.port or (443 if url.scheme == "https" else 80)
        cdn = Transport(url.scheme, url.hostname, port, verify=self.transport.verify)
        try:
            resp = cdn.request(method, target, lambda: {"Host": url.netloc}, b"", into, progress)
        finally:
            cdn.close()
        if resp.status != 200:
            raise StoreError(f"fetching {key} from {url.hostname} (where the store redirected) "
                             f"answered {resp.status}")
        # The version and the store's clock come from the gateway, not the CDN; if its redirect
        # does not carry them, ask the gateway itself.
        gateway = redirect.headers
        if not (gateway.get("etag") and gateway.get("last-modified")):
            gateway = dict(self.request("HEAD", key).headers, date=gateway.get("date"))
        for name in ("etag", "last-modified", "date"):
            resp.headers[name] = gateway.get(name) or resp.headers.get(name)
        etag = resp.headers["etag"]
        bare = _version(etag)
        if into is None and method == "GET" and len(bare) == 32 and \
                all(c in "0123456789abcdef" for c in bare) and _md5_etag(resp.body) != f'"{bare}"':
            raise StoreError(f"{url.hostname} served a copy of {key} that does not match its "
                             "version (a stale cache?); try again")
        return resp

    def _error(self, resp, method, key):
        error = self._classify(resp, method, key)
        error.retried = resp.attempts > 1
        return error

    def _classify(self, resp, method, key):
        code = _xml_field(resp.body, "Code")
        message = _xml_field(resp.body, "Message")
        what = f"{key}" if key else f"bucket {self.bucket}"
        status = resp.status
        if code == "NoSuchBucket" or (status == 404 and not key):
            return NoSuchBucket(f"bucket {self.bucket!r} does not exist at {self.endpoint} "
                                "(run `tracecraft init` to create it)")
        if code == "NoSuchKey" or status == 404:
            return NoSuchKey(f"no object {what}")
        if status == 412 or code == "PreconditionFailed":
            return PreconditionFailed(f"{what}: precondition failed")
        if status == 409 and code in ("ConditionalRequestConflict", "OperationAborted", ""):
            return ConditionalConflict(f"{what}: a concurrent conditional write finished first")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthorizationHeaderMalformed"):
            hint = ("the secret key is probably wrong" if code == "SignatureDoesNotMatch"
                    else "the store does not know this access key")
            return BadCredentials(f"the store at {self.endpoint} refused the credentials ({code}): "
                                  f"{hint}; check --access-key/--secret-key or AWS_* variables")
        if code == "RequestTimeTooSkewed":
            return StoreError(f"the store at {self.endpoint} rejected the request time: this "
                              "machine's clock is off by more than 15 minutes; fix it (NTP)")
        if status == 403 or code == "AccessDenied":
            return AccessDenied(f"access denied by the store for {method} {what} ({code or 403}): "
                                "check that the credentials may read and write this bucket")
        return StoreError(f"the store answered {status} {code or ''} for {method} {what}"
                          + (f": {message}" if message else ""))

    def get(self, key, into=None, progress=None):
        resp = self.request("GET", key, into=into, progress=progress)
        return self._blob(key, resp, None if into is not None else resp.body)

    def head(self, key):
        return self._blob(key, self.request("HEAD", key), None)

    def _blob(self, key, resp, body):
        h = resp.headers
        size = int(h.get("content-length") or 0)
        return Blob(key, body, h.get("etag"), size, _http_date(h.get("last-modified")),
                    _http_date(h.get("date")))

    def put(self, key, body, if_none_match=False, if_match=None, content_type=None, progress=None):
        if if_none_match and if_match:
            raise UsageError("a write cannot be both create-only and compare-and-swap")
        headers = [("content-type", content_type or "application/octet-stream")]
        if if_none_match:
            headers.append(("if-none-match", "*"))
        elif if_match:
            headers.append(("if-match", if_match))
        payload_hash = None
        if not isinstance(body, (bytes, bytearray)):
            payload_hash = _sha256_hex(body)
            if progress:
                body = _ProgressReader(body, progress)
        resp = self.request("PUT", key, headers=headers, body=body, payload_hash=payload_hash)
        return resp.headers.get("etag")

    def delete(self, key, if_match=None):
        headers = [("if-match", if_match)] if if_match else []
        try:
            self.request("DELETE", key, headers=headers)
        except NoSuchKey as exc:
            if if_match and not exc.retried:
                raise PreconditionFailed(f"{key} is gone") from None
        except PreconditionFailed as exc:
            # A retried conditional delete whose first attempt went through finds nothing to
            # match; the object is gone either way, which is what was asked.
            if not (exc.retried and not self.exists(key)):
                raise

    def list(self, prefix="", start_after=None, limit=None):
        token, left = None, limit
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if left is not None:
                query.append(("max-keys", str(min(left, 1000))))
            if token:
                query.append(("continuation-token", token))
            elif start_after:
                query.append(("start-after", start_after))
            resp = self.request("GET", query=query)
            text, server_time = resp.body.decode("utf-8", "replace"), _http_date(resp.headers.get("date"))
            if "ListBucketResult" not in text:
                raise StoreError(f"{self.endpoint} answered a listing that is not S3's XML "
                                 "(is the endpoint an S3 server?)")
            for block in _xml_values(text, "Contents", raw=True):
                size = _xml_field(block, "Size")
                yield Entry(_xml_field(block, "Key"), int(size) if size.isdigit() else 0,
                            _iso_date(_xml_field(block, "LastModified")),
                            _xml_field(block, "ETag") or None, server_time)
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            token = _xml_field(text, "NextContinuationToken")
            if not token:
                return

    def ensure_bucket(self, prefix=""):
        try:
            self.request("HEAD")
            return False
        except NoSuchBucket:
            pass
        except AccessDenied:
            # HEAD answers 403 without a body: tell wrong credentials from a missing permission,
            # and let credentials scoped to the project's prefix through.
            self.request("GET", query=[("list-type", "2"), ("max-keys", "1"), ("prefix", prefix)])
            return False
        body = b""
        if self.region != "us-east-1":
            body = (f'<CreateBucketConfiguration xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
                    f"<LocationConstraint>{self.region}</LocationConstraint>"
                    f"</CreateBucketConfiguration>").encode()
        try:
            self.request("PUT", body=body)
        except StoreError as exc:
            if "BucketAlreadyOwnedByYou" not in str(exc):
                raise
            return False
        return True


def _sha256_hex(body):
    if isinstance(body, (bytes, bytearray)):
        return _hash("sha256", body).hexdigest()
    import hashlib
    digest = hashlib.sha256()
    body.seek(0)
    for block in iter(lambda: body.read(1 << 20), b""):
        digest.update(block)
    body.seek(0)
    return digest.hexdigest()


class _ProgressReader:
    """Wraps an upload file so the transport's reads report progress."""

    def __init__(self, f, progress):
        self.f, self.progress, self.total, self.done = f, progress, _file_size(f), 0

    def seek(self, *args):
        self.done = 0
        return self.f.seek(*args)

    def tell(self):
        return self.f.tell()

    def read(self, n=-1):
        block = self.f.read(n)
        self.done += len(block)
        self.progress(self.done, self.total)
        return block


HF_GATEWAY = "https://s3.hf.co"


class HFStore(S3Store):
    """Hugging Face Storage Buckets through the Hub's S3-compatible gateway.

    The bucket is NAMESPACE/NAME; requests go to <gateway>/NAMESPACE/NAME/<key>, path-style, so
    the namespace is part of every signed path.  The gateway lists with ListObjectsV2 only (all
    tracecraft uses), keeps no user metadata (tracecraft keeps everything in its JSON bodies),
    and may answer GET with a redirect to a CDN, followed without credentials."""
    name = "hf"
    follows_redirects = True

    def __init__(self, bucket, endpoint=None, region=None, access_key=None, secret_key=None,
                 **settings):
        namespace, _, name = (bucket or "").partition("/")
        self.namespace = self.check_bucket(namespace)
        if not access_key or not secret_key:
            hint = (" HF_TOKEN is set, but the gateway signs with S3 keys: generate them from "
                    "your token at https://huggingface.co/settings/tokens (\"Generate S3 "
                    "credentials\") and set HF_S3_ACCESS_KEY_ID/HF_S3_SECRET_ACCESS_KEY"
                    if os.environ.get("HF_TOKEN") else
                    " Generate them at https://huggingface.co/settings/tokens (\"Generate S3 "
                    "credentials\" on a token with write access)")
            raise ConfigError("no S3 credentials for Hugging Face: pass --access-key/--secret-key "
                              "(HFAK...) to init, or set HF_S3_ACCESS_KEY_ID and "
                              "HF_S3_SECRET_ACCESS_KEY." + hint)
        gateway = (endpoint or HF_GATEWAY).rstrip("/")
        super().__init__(self.check_bucket(name), endpoint=f"{gateway}/{self.namespace}",
                         region="us-east-1", access_key=access_key, secret_key=secret_key,
                         addressing="path", **{k: v for k, v in settings.items()
                                               if k != "addressing"})

    @staticmethod
    def check_bucket(name):
        ok = (isinstance(name, str) and 1 <= len(name) <= 96 and name[0].isalnum() and name.isascii()
              and all(c.isalnum() or c in "-_." for c in name) and ".." not in name)
        if not ok:
            raise UsageError(f"Hugging Face bucket {name!r} is not valid: use NAMESPACE/NAME, each "
                             "made of letters, digits, '-', '_' and '.'")
        return name

    @property
    def hub_url(self):
        return f"https://huggingface.co/buckets/{self.namespace}/{self.bucket}"

    def describe(self):
        return f"Hugging Face bucket {self.namespace}/{self.bucket} ({self.hub_url})"

    def request(self, method, key=None, *args, **kwargs):
        if key is not None and (key.startswith("/") or key.endswith("/") or "//" in key):
            raise UsageError(f"the Hugging Face gateway refuses keys that start or end with '/' "
                             f"or contain '//': {key!r}")
        return super().request(method, key, *args, **kwargs)


# ==================================================================================================
# 5. Configuration.  Owns: where settings come from and how a store is opened from them.
#    Calls: sections 1-4.  Order: explicit arguments, then environment, then the config file found
#    by walking up from the current directory, then ~/.config/tracecraft/config.json.
# ==================================================================================================

CONFIG_NAME = ".tracecraft.json"
BACKENDS = ("local", "s3", "hf")


def user_config_path():
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "tracecraft", "config.json")


def find_config(start=None):
    """The config file that applies here: $TRACECRAFT_CONFIG, else the nearest .tracecraft.json
    in this directory or a parent, else the user's config; None when there is none."""
    explicit = os.environ.get("TRACECRAFT_CONFIG")
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"TRACECRAFT_CONFIG names {explicit}, which is not a file")
        return explicit
    directory = os.path.abspath(start or os.getcwd())
    while True:
        candidate = os.path.join(directory, CONFIG_NAME)
        if os.path.isfile(candidate) and _trusted(candidate):
            return candidate
        parent = os.path.dirname(directory)
        if parent == directory:
            break
        directory = parent
    candidate = user_config_path()
    return candidate if os.path.isfile(candidate) else None


def _trusted(path):
    """A config found by walking up must be the user's own and not writable by others: one
    planted in a shared parent (/tmp) could redirect an agent to someone else's store."""
    if os.name != "posix":
        return True
    stat = os.stat(path)
    if stat.st_uid != os.getuid() or stat.st_mode & 0o022:
        print(f"tracecraft: warning: ignoring {path}: it is not owned by you or is writable by "
              "others", file=sys.stderr)
        return False
    return True


def load_config(path):
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"config {path} is not valid JSON ({exc}); fix it or run "
                          "`tracecraft init` again") from None
    if not isinstance(config, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return config


def config_warnings(settings):
    """What a user should hear about the settings in force: secrets readable by others,
    unencrypted or unverified connections."""
    warnings = []
    path = settings.get("_path")
    if path and settings.get("secret_key") and os.name == "posix":
        mode = os.stat(path).st_mode & 0o777
        if mode & 0o077:
            warnings.append(f"{path} holds a secret key and is readable by others (mode "
                            f"{mode:o}): run `chmod 600 {path}`")
    endpoint = settings.get("endpoint") or ""
    if settings.get("backend") in ("s3", "hf") and endpoint.startswith("http://"):
        if not _is_loopback((_split_url(endpoint) or ("", ""))[1]):
            warnings.append(f"{endpoint} is plain http: requests, signatures and data cross the "
                            "network unencrypted; use https")
    if settings.get("insecure"):
        warnings.append("TLS certificate verification is off (--insecure): anyone on the path "
                        "can impersonate the store")
    return warnings




# ==================================================================================================
# 6. Coordination protocol.  Owns: the object layout under <project>/ and what each record means.
#    Calls: sections 1-5 (only through the Store interface).
#
#    agents/<id>.json                  heartbeat: last seen, host (what it holds: see the leases)
#    memory/<dots as slashes>.json     a JSON value, its revision and a few previous values
#    messages/<agent>/<n>.json         inbox log; messages/_broadcast/<n>.json is everyone's
#    cursors/<agent>.json              how far the agent has read each log
#    steps/<id>/claim.json             the lease: holder, generation, ttl, state
#    steps/<id>/status.json            written when the step ends: complete, failed or blocked
#    steps/<id>/handoff.json           the note for the next agent
#    artifacts/<step|shared>/<name>    shared files; artifacts/<step>/.meta/<name>.json describes one
#
#    Every atomic promise is a conditional write: a claim is create-only, a takeover or a renewal
#    is a compare-and-swap on the lease's ETag, a memory update is a compare-and-swap, and a
#    message takes the next number of its log with a create-only write.
# ==================================================================================================

JSON_TYPE = "application/json"
ONLINE_SECONDS, IDLE_SECONDS = 120, 900
HEARTBEAT_EVERY = 60
WAIT_POLL_FAST = 0.35   # seconds between a waiter's polls at first and right after progress
WAIT_POLL_MAX = 0.7     # ... growing to this while idle: detection ~0.35 s, ~1.4 requests/s
DEFAULT_TTL = 1800.0
ENDED = ("complete", "failed", "blocked")
HISTORY_LIMIT, HISTORY_BYTES = 10, 64 * 1024
LOG_WIDTH = 12          # message numbers are stored inverted, so a listing starts at the newest
LOG_TOP = 10 ** LOG_WIDTH
LOG_PAGE = 50           # keys in the first listing page of an inbox read
LOG_HOLE_SECONDS = 30   # a gap in a log this old is a hole (see Client._behind_hole)
RECENT_WRITERS = 32       # writers a record remembers, to recognise a retried write that won
CONTENTION_SECONDS = 30.0  # how long a compare-and-swap loop keeps trying before it gives up
_KEEP = object()


class LostLease(Refused):
    """This agent's lease on a step was taken over (or has ended): it may not act on the step."""


class StepEnded(Refused):
    """A step that wait-for waits on ended failed or blocked."""


def _quoted(version):
    version = str(version).strip()
    bare = version.strip('"')
    if not bare or len(bare) > 128 or not all(c.isascii() and (c.isalnum() or c in "-_.")
                                              for c in bare):
        raise UsageError(f"{version!r:.60} is not a version (use the one `memory get --json` "
                         "prints)")
    return f'"{bare}"'


def _retries(what):
    """Attempt numbers for a compare-and-swap loop, which returns from inside on success.
    Between attempts it sleeps a random, growing pause (so that racers spread out and none
    starves); after CONTENTION_SECONDS it gives up with a StoreError naming `what`."""
    deadline = time.monotonic() + CONTENTION_SECONDS
    attempt = 0
    while True:
        yield attempt
        attempt += 1
        if time.monotonic() > deadline:
            raise StoreError(f"{what} is contended: gave up after {attempt} attempts in "
                             f"{CONTENTION_SECONDS:g} s")
        import random
        time.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))


def _field(record, name, kind, default, where):
    """A field of a record read from the store, checked: objects written by hand or by another
    tool must be reported as corrupt, never crash a command."""
    value = record.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise CorruptObject(f"{where} is not a tracecraft record: its {name!r} is {value!r:.40}")
    return value


class Client:
    """One agent's handle on one project.  Every method is a few requests to the store."""

    def __init__(self, store, project, agent=None, clock=time.time):
        self.store = store
        self.project = check_name("project", project)
        self.agent = check_agent(agent) if agent else None
        self.clock = clock              # stamps records; coordination itself never trusts it
        self.memory = Memory(self)
        self.artifacts = Artifacts(self)
        self.warn = lambda message: None   # the CLI prints these; a library user may set it
        self.unsafe_store = False          # set when init accepted a store failing the probe
        self.notes = []                    # warnings about the settings, from connect()
        self._state_dir, self._memo, self._unsaved = None, {}, set()
        self._writer = os.urandom(6).hex()   # this client, in records' "writers" (see write)

    def __repr__(self):
        return f"<tracecraft.Client project={self.project!r} agent={self.agent!r} on {self.store.describe()}>"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self._save()
        self.store.close()

    # -- records -----------------------------------------------------------------------------------

    def key(self, *parts):
        return "/".join((self.project,) + parts)

    def me(self):
        if not self.agent:
            raise UsageError("no agent id: pass --agent to `tracecraft init`, or set TRACECRAFT_AGENT")
        return self.agent

    def now(self):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))

    def record(self, **fields):
        """A JSON record that says who wrote it and when."""
        fields.setdefault("by", self.agent)
        fields.setdefault("at", self.now())
        return fields

    def write(self, key, record, create_only=False, replacing=None):
        """Store a record: plainly, create-only, or replacing the version `replacing` (a Blob
        from read()) by compare-and-swap.

        A conditional write whose response is lost may have succeeded, and its retry then loses
        to itself.  So every conditional write carries a nonce, and a record keeps the last nonce
        of each of its recent writers ("writers", one entry per client, newest first): a retried
        write that answers "precondition failed" is read back, and it won if its nonce is there.
        Others may have written since, however many times, as long as fewer than RECENT_WRITERS
        other clients did.  Returns the Blob written (with its ETag and writers; the ETag is None
        when the write is known to have won but has been overwritten since)."""
        if replacing is not None and not replacing.etag:
            raise StoreError(f"the store returned no ETag for {key}, so it cannot be updated "
                             "safely (compare-and-swap needs one)")
        if create_only or replacing is not None:
            nonce = os.urandom(8).hex()
            others = [w for w in (replacing.chain or []) if w[0] != self._writer] \
                if replacing is not None else []
            record = dict(record, writers=([[self._writer, nonce]] + others)[:RECENT_WRITERS])
        body = json.dumps(record, ensure_ascii=False, indent=1).encode("utf-8")
        # last_modified: this machine's clock when the write was sent; it landed no earlier
        written = Blob(key, body, None, len(body), last_modified=time.time())
        written.chain = record.get("writers", [])
        try:
            written.etag = self.store.put(key, body, if_none_match=create_only,
                                          if_match=replacing.etag if replacing else None,
                                          content_type=JSON_TYPE)
            return written
        except (PreconditionFailed, NoSuchKey) as exc:
            if exc.retried:
                current = self.read(key, missing_ok=True)
                if current and [self._writer, nonce] in (current[1].chain or []):
                    if current[1].chain[0] == [self._writer, nonce]:
                        written.etag = current[1].etag   # ours is still the current version
                    return written   # else ours won, but others wrote since: its version is
                                     # gone, and must not be taken for theirs
            if isinstance(exc, NoSuchKey):
                raise PreconditionFailed(f"{key} is gone") from None
            raise

    def read(self, key, missing_ok=False):
        """(record, blob) for a JSON object, or None when missing and `missing_ok`.  The
        bookkeeping of conditional writes ("writers") moves from the record to `blob.chain`."""
        try:
            blob = self.store.get(key)
        except NoSuchKey:
            if missing_ok:
                return None
            raise
        return self._parse(blob), blob

    @staticmethod
    def _parse(blob):
        """The record in a Blob's body; its "writers" move to `blob.chain`."""
        try:
            record = json.loads(blob.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise CorruptObject(f"object {blob.key} is not valid JSON (written by another "
                                "tool?)") from None
        if not isinstance(record, dict):
            raise CorruptObject(f"object {blob.key} is not a JSON object")
        writers = record.pop("writers", None)
        blob.chain = [w for w in writers if isinstance(w, list) and len(w) == 2
                      and all(isinstance(part, str) for part in w)] \
            if isinstance(writers, list) else []
        return record

    def update(self, key, change, create=True):
        """Read-modify-write with compare-and-swap until it sticks: `change(record or None)`
        returns the new record (or raises).  Returns (new record, the Blob written).

        The first attempt starts from the version this agent last wrote, if it remembers one
        (see _recall): one request instead of two while nobody else writes the key."""
        hint = self._recall_version(key)
        for _ in _retries(key):
            got = hint or self.read(key, missing_ok=True)
            if got is None and not create:
                raise NotFound(f"no object {key}")
            try:
                new = change(got[0] if got else None)
            except TracecraftError:
                if hint is None:
                    raise
                hint = None   # judged on a hint: judge again on what the store holds
                continue
            try:
                written = self.write(key, new, create_only=got is None,
                                     replacing=got[1] if got else None)
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                hint = None
                continue
            self.remember_version(key, written)
            return new, written

    # -- what this agent remembers between calls ---------------------------------------------------
    #
    # A command-line call is a fresh process, so what one call learned (the lease it won, the
    # version of a key it wrote, the tail of a log it sent to) would cost the next call a read to
    # learn again.  Kept in the user's cache directory it saves that read.  It is only ever a
    # hint: every write made with it is conditional, and a stale hint costs the read it saved.
    # A client keeps what it learns in memory and saves it when closed (a write per change
    # would cost more than the request it saves); a client that is never closed only forgets.

    def _state_path(self, kind, name=""):
        if self._state_dir is None:
            ident = f"{self.store.describe()}\0{self.project}\0{self.agent}".encode("utf-8")
            base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"),
                                                                    ".cache")
            self._state_dir = os.path.join(base, "tracecraft", _hash("sha1", ident).hexdigest())
        if not name:
            return os.path.join(self._state_dir, kind)
        return os.path.join(self._state_dir, kind,
                            _hash("sha1", name.encode("utf-8")).hexdigest() + ".json")

    def _recall(self, kind, name):
        if (kind, name) not in self._memo:
            try:
                with open(self._state_path(kind, name), "rb") as f:
                    found = json.loads(f.read())
            except (OSError, ValueError):
                found = None
            self._memo[kind, name] = found if isinstance(found, dict) and \
                found.get("name") == name else None
        return self._memo[kind, name]

    def _remember(self, kind, name, data):
        """Keep `data` (a dict) under kind/name, or forget it when `data` is None."""
        self._memo[kind, name] = None if data is None else dict(data, name=name)
        self._unsaved.add((kind, name))

    def _save(self):
        for kind, name in self._unsaved:
            path, data = self._state_path(kind, name), self._memo[kind, name]
            try:
                if data is None:
                    os.unlink(path)
                    continue
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                temp = f"{path}.{os.getpid()}.tmp"
                with open(temp, "w", encoding="utf-8") as f:
                    f.write(json.dumps(data, ensure_ascii=False))
                os.replace(temp, path)
            except OSError:
                pass   # no cache directory (or nothing to forget): only a read is lost
        self._unsaved.clear()

    def remember_version(self, key, written):
        """Remember a Blob this agent wrote (from write()) as the version of `key` it knows."""
        if written.etag:
            self._remember("versions", key, {"body": written.body.decode("utf-8"),
                                             "etag": written.etag, "sent": written.last_modified})

    def _recall_version(self, key):
        """(record, Blob) of the version of `key` this agent last wrote, or None: the very bytes
        the store holds if the ETag still matches, parsed afresh for every caller.  The Blob's
        last_modified is this machine's clock when that write was sent."""
        found = self._recall("versions", key)
        if not found or not isinstance(found.get("body"), str) or \
                not isinstance(found.get("etag"), str) or \
                not isinstance(found.get("sent"), (int, float)):
            return None
        blob = Blob(key, found["body"].encode("utf-8"), found["etag"], 0,
                    last_modified=found["sent"])
        try:
            return self._parse(blob), blob
        except CorruptObject:
            return None

    # -- messages: one numbered log per inbox ---------------------------------------------------------
    #
    # Message n of a log is messages/<log>/<LOG_TOP - n>-<n>.json: inverted, so that a listing
    # (always ascending) starts at the newest.  The tail is one listing of one key, and reading
    # k new messages lists only as far back as the reader's cursor: O(k), whatever the history.
    # Numbers are taken with create-only writes, so each is used once; nothing depends on clocks.

    def _log_key(self, log, n):
        return self.key("messages", log, f"{LOG_TOP - n:0{LOG_WIDTH}d}-{n}.json")

    @staticmethod
    def _log_number(key):
        name = key.rpartition("/")[2]
        head = name.partition("-")[0]
        return LOG_TOP - int(head) if head.isdigit() and len(head) == LOG_WIDTH else None

    def _log_tail(self, log):
        # The newest message lists first, after anything that is not a message at all (a
        # folder marker, a stray file), which a short look usually gets past.
        for limit in (8, None):
            entries = list(self.store.list(self.key("messages", log) + "/", limit=limit))
            for entry in entries:
                n = self._log_number(entry.key)
                if n is not None:
                    return n
            if limit is None or len(entries) < limit:
                return 0

    def _log_since(self, log, after, contiguous=True):
        """Entries of a log numbered above `after`, oldest first: [(n, entry)].

        Numbers are taken in order, so a gap means a message not yet visible in the listing
        (a directory read while files are being added, an eventually consistent store): with
        `contiguous`, stop before the first gap so the cursor can never pass a message."""
        found, prefix, last = [], self.key("messages", log) + "/", None
        for limit in (LOG_PAGE, None):   # most reads find a few new messages: list few first
            entries = list(self.store.list(prefix, start_after=last, limit=limit))
            for entry in entries:
                n = self._log_number(entry.key)
                if n is not None and n <= after:
                    break
                if n is not None:
                    found.append((n, entry))
            else:
                if limit is not None and len(entries) == limit:
                    last = entries[-1].key
                    continue
            break
        found.reverse()
        if contiguous:
            expected = after + 1
            for i, (n, entry) in enumerate(found):
                if n != expected and not self._behind_hole(entry):
                    return found[:i]
                expected = n + 1
        return found

    @staticmethod
    def _behind_hole(entry):
        """Whether the gap before this listed message is a hole that will never fill.  A sender
        takes number n+1 only once n exists (it listed the tail, or wrote n itself), so a gap is
        normally a message written but not yet listed, for milliseconds.  But a sender's
        remembered tail can outlive its store (wiped and made again under the same name): the
        gap behind a message older than LOG_HOLE_SECONDS, by the store's clock, is such a hole."""
        return entry.server_time is not None and entry.last_modified is not None and \
            entry.server_time - entry.last_modified > LOG_HOLE_SECONDS

    def send(self, to, text):
        """Send `text` to agent `to`, or to everyone with to="_broadcast".  Returns the message."""
        sender = self.me()
        if to != BROADCAST:
            check_agent(to)
        check_text("message", text)
        if len(text.encode("utf-8")) > MAX_VALUE:
            raise UsageError(f"message is larger than the {MAX_VALUE // 1024} KiB limit")
        n = (self._recall("tails", to) or {}).get("n")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            n = self._log_tail(to)
            if n == 0 and to != BROADCAST and not self.store.exists(self.key("agents", to + ".json")):
                self.warn(f"no agent {to} has been seen in project {self.project} yet; the "
                          "message waits in its inbox")
        for _ in _retries(f"the inbox of {to}"):
            message = self.record(**{"from": sender}, to=to, seq=n + 1,
                                  kind="broadcast" if to == BROADCAST else "direct", text=text)
            try:
                self.write(self._log_key(to, n + 1), message, create_only=True)
            except (PreconditionFailed, ConditionalConflict):
                n = max(n + 1, self._log_tail(to))
                continue
            self._remember("tails", to, {"n": n + 1})
            return message

    def inbox(self, peek=False, everything=False, delete=False, wait=None):
        """This agent's unread messages, direct and broadcast, in one order all readers agree on
        (the store's clock, then the log's own order), marked read unless `peek`.

        The read position lives in the bucket (cursors/<agent>.json) and moves by compare-and-swap
        before anything is returned, so two readers of one inbox never get the same message.
        `everything` returns all messages without moving it; `delete` also removes the direct
        messages read (the newest one stays, as the log's tail); `wait` (seconds, or True for
        no limit) blocks until at least one unread message arrives."""
        me = self.me()
        if delete and (peek or everything):
            raise UsageError("--delete removes messages as it reads them: it cannot be combined "
                             "with --peek or --all")
        deadline = None if wait in (None, True, False) else time.monotonic() + wait
        interval = 0.1
        while True:
            messages = self._read_inbox(me, peek, everything, delete)
            if messages or not wait or everything:
                return messages
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"no new message within {_seconds(wait)}")
            time.sleep(interval if deadline is None
                       else max(0, min(interval, deadline - time.monotonic())))
            interval = min(interval * 1.5, 2.0)

    def _read_inbox(self, me, peek, everything, delete):
        cursor_key = self.key("cursors", me + ".json")
        for _ in _retries(f"the inbox of {me}"):
            got = self.read(cursor_key, missing_ok=True)
            cursor = {kind: _field(got[0], kind, int, 0, f"cursor {cursor_key}") if got else 0
                      for kind in ("direct", "broadcast")}
            start = {"direct": 0, "broadcast": 0} if everything else cursor
            logs = {kind: self._log_since(me if kind == "direct" else BROADCAST, start[kind],
                                          contiguous=not everything)
                    for kind in ("direct", "broadcast")}
            if not any(logs.values()):
                return []
            if not (peek or everything):
                moved = self.record(**{kind: max([cursor[kind]] + [n for n, _ in logs[kind]])
                                       for kind in logs})
                try:
                    self.write(cursor_key, moved, create_only=got is None,
                               replacing=got[1] if got else None)
                except (PreconditionFailed, ConditionalConflict):
                    continue   # another reader took these; start again from its position
            messages = self._merge(logs, me)
            if delete and logs["direct"]:
                newest = max(n for n, _ in logs["direct"])
                for n, entry in logs["direct"]:
                    if n != newest:
                        self.store.delete(entry.key)
            return messages

    def _merge(self, logs, me):
        """Fetch and merge the two logs: by the store's Last-Modified, then kind, then number."""
        tagged = []
        for kind, entries in logs.items():
            for n, entry in entries:
                tagged.append(((entry.last_modified or 0, kind, n), kind, n, entry))
        # Within one log the order is the log's own; across logs the store's clock decides.
        result = []
        queues = {kind: [t for t in tagged if t[1] == kind] for kind in logs}
        while any(queues.values()):
            kind = min((q[0][0], k) for k, q in queues.items() if q)[1]
            _, _, n, entry = queues[kind].pop(0)
            try:
                got = self.read(entry.key, missing_ok=True)
            except CorruptObject as exc:
                self.warn(f"skipped {exc}")
                continue
            if got is None:
                continue
            message = got[0]
            if not isinstance(message.get("text"), str) or not message.get("from"):
                self.warn(f"skipped {entry.key}: not a tracecraft message")
                continue
            if kind == "broadcast" and message.get("from") == me:
                continue
            message.update(kind=kind, seq=n)
            result.append(message)
        return result

    # -- steps: leases ---------------------------------------------------------------------------------

    def _step_key(self, step, name):
        return self.key("steps", check_name("step id", step), name + ".json")

    @staticmethod
    def _lease_left(lease, blob, since=0.0):
        """Seconds until the lease expires, by the store's clock (its Last-Modified and Date),
        so that a client with a skewed clock can neither steal a live lease nor keep a dead one.
        `since`: local seconds elapsed since `blob` was read (for a reused read)."""
        now = (blob.server_time if blob.server_time is not None else time.time()) + since
        written = blob.last_modified if blob.last_modified is not None else now
        return written + _field(lease, "ttl", float, DEFAULT_TTL, f"lease {blob.key}") - now

    def claim(self, step, ttl=None):
        """Claim a step as a lease of `ttl` seconds (default 30 minutes).

        Of any number of concurrent claimants exactly one wins: the first claim is create-only,
        and taking over an expired or released lease is a compare-and-swap on its ETag.  Each new
        holder gets the next generation number (a fencing token).  Raises Refused naming the
        holder when the lease is live, or when the step has ended.  A free step costs one
        request."""
        me = self.me()
        ttl = float(DEFAULT_TTL if ttl is None else ttl)
        if ttl <= 0:
            raise UsageError("the lease ttl must be positive")
        key = self._step_key(step, "claim")
        lease = self.record(step=step, agent=me, generation=1, ttl=ttl, state="held")
        try:
            return self._claimed(key, lease, self.write(key, lease, create_only=True))
        except (PreconditionFailed, ConditionalConflict):
            pass
        for _ in _retries(f"step {step}"):
            got = self.read(key, missing_ok=True)
            if got is None:
                try:
                    return self._claimed(key, lease, self.write(key, lease, create_only=True))
                except (PreconditionFailed, ConditionalConflict):
                    continue
            current, blob = got
            state, holder = current.get("state", "held"), current.get("agent")
            if state in ENDED:
                raise Refused(f"step {step} is already {state} (by {current.get('ended_by', holder)})")
            left = self._lease_left(current, blob)
            if state == "held" and left > 0:
                if holder == me:
                    return dict(current, already_held=True, expires_in=left)
                raise Refused(f"step {step} is held by {holder} (generation "
                              f"{current.get('generation', 1)}, lease ends in {_duration(left)})")
            generation = _field(current, "generation", int, 1, f"lease {key}") + 1
            taken = self.record(step=step, agent=me, generation=generation, ttl=ttl,
                                state="held", previous=holder)
            try:
                return self._claimed(key, taken, self.write(key, taken, replacing=blob))
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                continue

    def _claimed(self, key, lease, written):
        self.remember_version(key, written)
        return dict(lease, expires_in=lease["ttl"])

    def _own_lease(self, step, verb):
        """(lease, blob) if this agent holds the step (even if expired but not taken over)."""
        me = self.me()
        key = self._step_key(step, "claim")
        got = self.read(key, missing_ok=True)
        if got is None:
            raise Refused(f"step {step} is not claimed; claim it first")
        lease, blob = got
        state, holder = lease.get("state", "held"), lease.get("agent")
        if state in ENDED:
            self._remember("versions", key, None)
            raise Refused(f"step {step} is already {state}")
        if holder != me or state != "held":
            self._remember("versions", key, None)
            who = f"{holder} holds it now (generation {lease.get('generation', 1)})" \
                if state == "held" else "the lease was released"
            raise LostLease(f"cannot {verb} step {step}: this agent lost it; {who}")
        return lease, blob

    def _remembered_lease(self, key):
        """The lease on `key` as this agent last wrote it, if it was then held by this agent."""
        got = self._recall_version(key)
        if got and got[0].get("agent") == self.agent and got[0].get("state") == "held":
            return got
        return None

    def _change_own_lease(self, step, verb, change):
        """Replace this agent's lease with `change(lease)` by compare-and-swap: first on the
        version this agent remembers writing (one request), and if that is stale, on a fresh
        read.  Raises LostLease when the lease is no longer this agent's."""
        key = self._step_key(step, "claim")
        remembered = self._remembered_lease(key)
        if remembered:
            new = change(remembered[0])
            try:
                self.remember_version(key, self.write(key, new, replacing=remembered[1]))
                return new
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                pass   # changed since: decide on what the store holds now
        lease, blob = self._own_lease(step, verb)
        new = change(lease)
        try:
            self.remember_version(key, self.write(key, new, replacing=blob))
        except (PreconditionFailed, ConditionalConflict, NoSuchKey):
            raise LostLease(f"cannot {verb} step {step}: the lease changed meanwhile "
                            "(taken over?)") from None
        return new

    def renew(self, step, ttl=None):
        """Extend this agent's lease on a step by its ttl (or a new one) from now."""
        if ttl is not None and ttl <= 0:
            raise UsageError("the lease ttl must be positive")

        def renewed(lease):
            length = ttl if ttl is not None else _field(lease, "ttl", float, DEFAULT_TTL,
                                                        f"lease of step {step}")
            return dict(lease, ttl=float(length), renewed_at=self.now())
        lease = self._change_own_lease(step, "renew", renewed)
        return dict(lease, expires_in=lease["ttl"])

    def release(self, step):
        """Give a lease up so that the step can be claimed again at once."""
        released = self._change_own_lease(
            step, "release", lambda lease: dict(lease, state="released", released_at=self.now()))
        self._remember("versions", self._step_key(step, "claim"), None)
        return released

    def complete(self, step, note=None, force=False, status="complete"):
        """End a step: `complete` (default), `failed` or `blocked`, with a handoff note.

        Only the holder of a live lease may end a step; `force` lets anyone, and is recorded.
        The lease is ended by a compare-and-swap, so a holder whose lease was taken over in the
        meantime is told it lost the step and writes nothing.  An unclaimed step is claimed
        first.  Ending is final: it happens once.  After this agent's own claim it costs two
        requests (three with a note): the lease, status.json and handoff.json."""
        me = self.me()
        if status not in ENDED:
            raise UsageError(f"status must be one of {', '.join(ENDED)}, not {status!r}")
        if note is not None:
            check_text("note", note)
        key = self._step_key(step, "claim")

        def ended(lease, forced):
            # The lease itself records the end, note included: it is the one object changed by
            # compare-and-swap, so it is the authority; status.json and handoff.json follow it.
            return dict(lease, state=status, ended_by=me, ended_at=self.now(), forced=forced,
                        note=note)
        remembered = None if force else self._remembered_lease(key)
        if remembered and self._lease_left(*remembered) > 0:
            end = ended(remembered[0], False)
            try:
                self.write(key, end, replacing=remembered[1])
                return self._publish_end(step, end)
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                pass   # changed since this agent wrote it: decide on what the store holds now
        got = self.read(key, missing_ok=True)
        if got is None and not force:
            self.claim(step)
            return self.complete(step, note, force, status)   # on the lease just written
        lease, blob = got or ({"step": step, "agent": me, "generation": 1, "ttl": DEFAULT_TTL,
                               "state": "held"}, None)
        state, holder = lease.get("state", "held"), lease.get("agent")
        if state in ENDED:
            if lease.get("ended_by") == me and state == status and \
                    not self.store.exists(self._step_key(step, "status")):
                return self._publish_end(step, lease)   # finish what a failed call began
            raise Refused(f"step {step} is already {state} (by {lease.get('ended_by', holder)})")
        live = blob is None or (state == "held" and self._lease_left(lease, blob) > 0)
        if not force and (holder != me or state != "held"):
            generation = lease.get("generation", 1)
            if state != "held":
                reason = "its lease was released; claim it first"
            elif lease.get("previous") == me:
                reason = f"this agent lost it: {holder} took it over (generation {generation})"
            else:
                reason = (f"it is held by {holder} (generation {generation}); only the holder "
                          "can end it (--force overrides)")
            raise LostLease(f"cannot end step {step}: {reason}")
        if not force and not live:
            raise LostLease(f"cannot end step {step}: this agent's lease expired "
                            f"{_duration(-self._lease_left(lease, blob))} ago; claim it again")
        end = ended(lease, force and (holder != me or not live))
        try:
            if blob is None:
                self.write(key, end, create_only=True)
            else:
                self.write(key, end, replacing=blob)
        except (PreconditionFailed, ConditionalConflict):
            raise LostLease(f"cannot end step {step}: the lease changed meanwhile "
                            "(taken over or ended by another agent)") from None
        return self._publish_end(step, end)

    @staticmethod
    def _end_record(step, lease):
        """How a step ended, from its ended lease."""
        return {"step": step, "status": lease.get("state"), "holder": lease.get("agent"),
                "generation": lease.get("generation", 1), "note": lease.get("note"),
                "forced": bool(lease.get("forced")), "by": lease.get("ended_by"),
                "at": lease.get("ended_at")}

    def _publish_end(self, step, lease):
        record = self._end_record(step, lease)
        if record["note"] is not None:
            self.write(self._step_key(step, "handoff"),
                       {"step": step, "note": record["note"], "status": record["status"],
                        "by": record["by"], "at": record["at"]})
        self.write(self._step_key(step, "status"), record)
        self._remember("versions", self._step_key(step, "claim"), None)
        return record

    def step_status(self, step):
        """A dict: step, status (pending / in_progress / expired / complete / failed /
        blocked), holder, generation, lease_left (seconds, by the store's clock), note, handoff."""
        check_name("step id", step)
        got = self.read(self._step_key(step, "claim"), missing_ok=True)
        lease = got[0] if got else {}
        info = self._lease_status(step, got)
        status = (self.read(self._step_key(step, "status"), missing_ok=True) or ({}, None))[0]
        handoff = (self.read(self._step_key(step, "handoff"), missing_ok=True) or ({}, None))[0]
        info.update(claimed_at=lease.get("at"), forced=lease.get("forced", False),
                    note=handoff.get("note", lease.get("note", status.get("note"))),
                    handoff=handoff or None)
        return info

    def wait_for(self, steps, timeout=300.0, on_complete=None):
        """Block until every step is complete; return {step: how it ended}.  Raises StepEnded
        at once when one ends failed or blocked, and WaitTimeout naming what is left.  Watches
        each step's lease (one read per step and round), every WAIT_POLL_FAST seconds right
        after progress, backing off to every WAIT_POLL_MAX seconds while nothing happens."""
        pending = list(dict.fromkeys(check_name("step id", s) for s in steps))
        if not pending:
            raise UsageError("wait-for needs at least one step id")
        deadline = None if timeout is None else time.monotonic() + timeout
        done, interval = {}, WAIT_POLL_FAST
        while True:
            for step in list(pending):
                got = self.read(self._step_key(step, "claim"), missing_ok=True)
                if not got or got[0].get("state") not in ENDED:
                    continue
                record = self._end_record(step, got[0])
                if record["status"] != "complete":
                    note = f": {record['note']}" if record.get("note") else ""
                    raise StepEnded(f"step {step} ended {record['status']} "
                                    f"(by {record['by']}){note}")
                done[step] = record
                pending.remove(step)
                interval = WAIT_POLL_FAST
                if on_complete:
                    on_complete(step, record)
            if not pending:
                return done
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise WaitTimeout(f"timed out after {_seconds(timeout)} waiting for: "
                                  + ", ".join(pending))
            time.sleep(interval if remaining is None else min(interval, remaining))
            interval = min(interval * 1.5, WAIT_POLL_MAX)

    # -- agents ------------------------------------------------------------------------------------

    def _publish_agent(self):
        """Write this agent's record: who and where it is, and when it was last seen.  Only the
        agent itself writes it, so a plain write does; what it holds is read from the leases."""
        host = os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME")
        record = self.record(agent=self.agent, project=self.project, host=host,
                             pid=os.getpid(), last_seen=self.now())
        self.write(self.key("agents", self.agent + ".json"), record)
        stamp = self._state_path("heartbeat")
        try:
            os.makedirs(os.path.dirname(stamp), mode=0o700, exist_ok=True)
            with open(stamp, "w"):
                pass
        except OSError:
            pass   # no cache directory: heartbeats are merely refreshed more often
        return record

    def heartbeat(self, renew=True):
        """Record that this agent is alive and, with `renew`, renew every lease it holds.
        Returns the agent record, with `holding`: the steps renewed.  Leases this agent
        remembers holding that another agent took over are reported through warn()."""
        self.me()
        record = self._publish_agent()
        renewed = []
        for lease in self._leases(ended=False) if renew else ():
            step = lease["step"]
            if lease["holder"] == self.agent and lease["status"] in ("in_progress", "expired"):
                try:
                    self.renew(step)
                    renewed.append(step)
                except Refused as exc:
                    self.warn(str(exc))
            elif self._remembered_lease(self._step_key(step, "claim")):
                self.warn(f"this agent lost step {step}: {lease['holder']} holds it now "
                          f"(generation {lease['generation']})")
                self._remember("versions", self._step_key(step, "claim"), None)
        return dict(record, holding=renewed)

    def _leases(self, cache=None, ended=True):
        """_lease_status() of every step with a lease, in listing order; with ended=False only
        of those not yet ended, whose leases need no read (status.json marks them in the same
        listing).  One listing of steps/ and one read per lease; `cache`: see status()."""
        prefix = self.key("steps") + "/"
        claims, finished = {}, set()
        for entry in self.store.list(prefix):
            step, _, name = entry.key[len(prefix):].partition("/")
            if name == "claim.json":
                claims[step] = entry
            elif name == "status.json":
                finished.add(step)
        cache = {} if cache is None else cache
        leases = []
        for step, entry in claims.items():
            if ended or step not in finished:
                try:
                    got, since = self._read_listed(entry, cache)
                    leases.append(self._lease_status(step, got, since))
                except (CorruptObject, UsageError) as exc:
                    self.warn(f"skipped {exc}")
        return leases

    def agents(self, cache=None, steps=None):
        """Every agent with a record: id, state (online / idle / offline by heartbeat age, on
        the store's clock), the steps it holds (from the leases; `steps`: _lease_status()
        results already read), when it was last seen.  `cache`: see status()."""
        result = []
        cache = {} if cache is None else cache
        holding = {}
        for info in self._leases(cache, ended=False) if steps is None else steps:
            if info["status"] == "in_progress":
                holding.setdefault(info["holder"], []).append(info["step"])
        for entry in self.store.list(self.key("agents") + "/"):
            if not entry.key.endswith(".json"):
                continue
            try:
                got, since = self._read_listed(entry, cache)
            except CorruptObject as exc:
                self.warn(f"skipped {exc}")
                continue
            if not got:
                continue
            record, blob = got
            now = (blob.server_time or time.time()) + since
            age = max(0.0, now - blob.last_modified) if blob.last_modified else None
            state = ("offline" if age is None or age >= IDLE_SECONDS
                     else "idle" if age >= ONLINE_SECONDS else "online")
            agent = entry.key.rpartition("/")[2][:-5]
            result.append({"agent": agent, "state": state, "holding": holding.get(agent, []),
                           "last_seen": record.get("last_seen"), "age_seconds": age,
                           "host": record.get("host")})
        return result

    def status(self, cache=None):
        """One picture of the project: agents, steps by state (with holder and lease left),
        unread message counts per agent, the latest handoff notes and the number of memory keys.

        Costs a few listings, one read per step and per agent, and two requests per agent for
        unread counts.  Pass the same dict as `cache` to later calls (status --watch does): an
        object whose listing shows it unchanged is not read again."""
        cache = {} if cache is None else cache
        steps = self._leases(cache)
        agents = self.agents(cache, steps)
        broadcast_tail = self._log_tail(BROADCAST)
        for agent in agents:
            got = self.read(self.key("cursors", agent["agent"] + ".json"), missing_ok=True)
            cursor = got[0] if got else {}
            read_direct = cursor.get("direct", 0) if isinstance(cursor.get("direct"), int) else 0
            read_all = cursor.get("broadcast", 0) if isinstance(cursor.get("broadcast"), int) else 0
            agent["unread"] = max(0, self._log_tail(agent["agent"]) - read_direct) + \
                max(0, broadcast_tail - read_all)
        handoffs = sorted((s for s in steps if s.get("note")), key=lambda s: s.get("ended_at") or "",
                          reverse=True)[:5]
        return {"project": self.project, "agents": agents, "steps": steps,
                "handoffs": [{"step": s["step"], "by": s["ended_by"], "at": s["ended_at"],
                              "note": s["note"]} for s in handoffs],
                "memory_keys": len(self.memory.list())}

    def _read_listed(self, entry, cache):
        """read() an object seen in a listing, reusing the cached read while the listing shows
        it unchanged.  Returns (record and blob, or None; seconds since that read)."""
        signature = (entry.etag, entry.size, entry.last_modified)
        hit = cache.get(entry.key)
        if hit and hit[0] == signature:
            return hit[1], time.monotonic() - hit[2]
        got = self.read(entry.key, missing_ok=True)
        cache[entry.key] = (signature, got, time.monotonic())
        return got, 0.0

    def _lease_status(self, step, got, since=0.0):
        """What status() shows for one step, from its claim.json alone."""
        check_name("step id", step)
        lease, blob = got if got else ({}, None)
        state = lease.get("state", "held") if lease else None
        left = self._lease_left(lease, blob, since) if blob and state == "held" else None
        shown = state if state in ENDED else ("in_progress" if left and left > 0 else "expired") \
            if state == "held" else "pending"
        return {"step": step, "status": shown, "holder": lease.get("agent") if shown != "pending"
                else None, "generation": lease.get("generation"), "lease_left": left,
                "ended_by": lease.get("ended_by"), "ended_at": lease.get("ended_at"),
                "note": lease.get("note")}

    def touch(self):
        """Refresh the heartbeat at most once a minute.  The last refresh is remembered in a
        stamp file in the user's cache directory, so that separate command-line processes of
        one agent share the limit and most calls cost no request for it."""
        if not self.agent:
            return
        try:
            if time.time() - os.stat(self._state_path("heartbeat")).st_mtime < HEARTBEAT_EVERY:
                return
        except OSError:
            pass
        self._publish_agent()

    def probe(self):
        """Check that the store honours conditional writes, on a scratch key under the project.
        Returns [(check, ok, detail)]; a store that ignores them cannot keep any atomic promise."""
        key = self.key("_probe", os.urandom(8).hex() + ".json")
        checks = []
        try:
            try:
                self.store.put(key, b'{"probe": 1}', if_none_match=True, content_type=JSON_TYPE)
            except PreconditionFailed as exc:
                if not exc.retried:   # a fresh random key: only our own lost answer can exist
                    raise
            try:
                self.store.put(key, b'{"probe": 2}', if_none_match=True, content_type=JSON_TYPE)
                checks.append(("create-only writes (If-None-Match)", False,
                               "a second create-only write of the same key succeeded"))
            except PreconditionFailed:
                checks.append(("create-only writes (If-None-Match)", True,
                               "a second create of the same key is refused"))
            try:
                self.store.put(key, b'{"probe": 3}', if_match='"0123456789abcdef0123456789abcdef"',
                               content_type=JSON_TYPE)
                checks.append(("compare-and-swap (If-Match)", False,
                               "a write with a stale ETag succeeded"))
            except (PreconditionFailed, ConditionalConflict):
                checks.append(("compare-and-swap (If-Match)", True,
                               "a write with a stale ETag is refused"))
        finally:
            self.store.delete(key)
        return checks


class Memory:
    """Shared key-value memory (`tc.memory`): JSON values under dotted keys, each write a
    compare-and-swap that keeps the revision number and the last few values."""

    def __init__(self, client):
        self.client = client

    def _key(self, key):
        check_memory_key(key)
        return self.client.key("memory", *key.split(".")) + ".json"

    @staticmethod
    def _check_value(value):
        try:
            encoded = json.dumps(value, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"memory value is not JSON-serialisable: {exc}") from None
        check_text("memory value", encoded)
        if len(encoded.encode("utf-8")) > MAX_VALUE:
            raise UsageError(f"memory value is larger than the {MAX_VALUE // 1024} KiB limit")

    def _next(self, key, old, value):
        record = self.client.record(key=key, value=value, revision=1, history=[])
        if old is not None:
            previous = {k: old.get(k) for k in ("value", "by", "at", "revision")}
            history = [previous] + _field(old, "history", list, [], f"memory key {key}")
            while len(history) > HISTORY_LIMIT or (
                    len(history) > 1 and len(json.dumps(history, ensure_ascii=False)) > HISTORY_BYTES):
                history.pop()
            record.update(revision=_field(old, "revision", int, 0, f"memory key {key}") + 1,
                          history=history)
        return record

    def set(self, key, value, if_version=None, if_absent=False):
        """Store any JSON value under `key`; returns the record with its new `version`.

        `if_absent` writes only if the key is unset; `if_version` only if the key is still at
        that version.  A lost condition raises Refused saying what the current version is."""
        self._check_value(value)
        path = self._key(key)
        if if_absent:
            try:
                record = self.client.record(key=key, value=value, revision=1, history=[])
                written = self.client.write(path, record, create_only=True)
            except PreconditionFailed:
                raise Refused(f"memory key {key} is already set (version "
                              f"{self._current_version(key)})") from None
            return self._written(path, record, written)
        if if_version is not None:
            got = self.client.read(path, missing_ok=True)
            current = _version(got[1].etag) if got else None
            if current != _version(_quoted(if_version)):
                raise Refused(f"memory key {key} is at version {current or '(unset)'}, "
                              f"not {_version(_quoted(if_version))}")
            record = self._next(key, got[0], value)
            try:
                written = self.client.write(path, record, replacing=got[1])
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                raise Refused(f"memory key {key} changed meanwhile (version is now "
                              f"{self._current_version(key)})") from None
            return self._written(path, record, written)
        record, written = self.client.update(path, lambda old: self._next(key, old, value))
        return dict(record, version=_version(written.etag) or None)

    def _written(self, path, record, written):
        """What set() returns for a conditional write of its own (update() remembers its own)."""
        self.client.remember_version(path, written)
        return dict(record, version=_version(written.etag) or None)

    def _current_version(self, key):
        got = self.client.read(self._key(key), missing_ok=True)
        return _version(got[1].etag) if got else "(unset)"

    def incr(self, key, by=1):
        """Add `by` to a number atomically (an unset key counts as 0); returns the new value."""
        if not isinstance(by, (int, float)) or isinstance(by, bool):
            raise UsageError(f"increment must be a number, not {by!r}")

        def change(old):
            value = (old or {}).get("value", 0)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UsageError(f"memory key {key} holds {type(value).__name__}, not a number")
            return self._next(key, old, value + by)
        record, written = self.client.update(self._key(key), change)
        return dict(record, version=_version(written.etag) or None)

    def record(self, key):
        """The whole record: key, value, by, at, revision and version.  Raises NotFound."""
        try:
            record, blob = self.client.read(self._key(key))
        except NoSuchKey:
            raise NotFound(f"memory key {key} is not set") from None
        if "value" not in record:
            raise CorruptObject(f"memory key {key} has no value (written by another tool?)")
        record["version"] = _version(blob.etag)
        return record

    def get(self, key, default=_KEEP):
        """The value stored under `key`; `default` if given and the key is missing."""
        try:
            return self.record(key)["value"]
        except NotFound:
            if default is _KEEP:
                raise
            return default

    def history(self, key):
        """The current and previous values, newest first: [{value, by, at, revision}]."""
        record = self.record(key)
        current = {k: record.get(k) for k in ("value", "by", "at", "revision")}
        return [current] + list(record.get("history") or [])

    def list(self, prefix=""):
        """Keys under `prefix`, matched by whole segments: `phase1` never returns `phase10.x`."""
        root = self.client.key("memory")
        base = root + "/" + check_memory_key(prefix).replace(".", "/") if prefix else root + "/"
        keys = []
        for entry in self.client.store.list(base):
            rest = entry.key[len(base):]
            if entry.key.endswith(".json") and (not prefix or rest == ".json" or rest[:1] == "/"):
                keys.append(entry.key[len(root) + 1:-5].replace("/", "."))
        return keys

    def delete(self, key, if_version=None):
        """Delete a key (only if still at `if_version`, when given).  Raises NotFound if unset."""
        path = self._key(key)
        self.client._remember("versions", path, None)
        if if_version is None:
            self.record(key)
            self.client.store.delete(path)
            return
        try:
            self.client.store.delete(path, if_match=_quoted(if_version))
        except (PreconditionFailed, NoSuchKey):
            raise Refused(f"memory key {key} is at version {self._current_version(key)}, "
                          f"not {_version(_quoted(if_version))}") from None


class Artifacts:
    """Shared files (`tc.artifacts`): bytes kept exactly, with size, SHA-256 and content type."""
    DEFAULT_STEP = "shared"

    def __init__(self, client):
        self.client = client

    def _keys(self, name, step):
        step = check_name("step id", step or self.DEFAULT_STEP)
        check_artifact_name(name)
        return (self.client.key("artifacts", step, name),
                self.client.key("artifacts", step, ".meta", name + ".json"), step)

    def upload(self, path, step=None, name=None, overwrite=False, progress=None):
        """Upload a local file ("-" reads standard input, which needs a `name`); refuses to
        replace an existing artifact unless `overwrite`."""
        import hashlib
        import mimetypes
        import shutil
        import tempfile
        if path == "-" and not name:
            raise UsageError("uploading standard input needs a name (--name)")
        name = name or os.path.basename(os.path.abspath(path))
        data_key, meta_key, step = self._keys(name, step)
        try:
            f = sys.stdin.buffer if path == "-" else open(path, "rb")
            if not f.seekable():   # a pipe: keep a copy, since a retry must send it again
                spool = tempfile.TemporaryFile()
                shutil.copyfileobj(f, spool)
                f = spool
        except OSError as exc:
            raise UsageError(f"cannot read {path}: {exc.strerror or exc}") from None
        with f:
            digest, md5 = hashlib.sha256(), hashlib.md5()
            f.seek(0)
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                md5.update(block)
            size = f.tell()
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            try:
                self.client.store.put(data_key, f, if_none_match=not overwrite, content_type=ctype,
                                      progress=progress)
            except PreconditionFailed as exc:
                # A retried upload whose first attempt landed finds its own bytes there: the
                # ETag of a single PUT is the MD5 of the content.
                if not (exc.retried and self.client.store.head(data_key).etag ==
                        f'"{md5.hexdigest()}"'):
                    raise Refused(f"artifact {name} already exists in step {step} "
                                  "(use --overwrite to replace it)") from None
        meta = self.client.record(name=name, step=step, size=size, sha256=digest.hexdigest(),
                                  content_type=ctype, uploader=self.client.agent)
        self.client.write(meta_key, meta)
        return meta

    def list(self, step=None):
        """Metadata of every artifact (of one step, or all), sorted by step and name."""
        prefix = self.client.key("artifacts") + "/"
        if step:
            prefix += check_name("step id", step) + "/"
        result = []
        for entry in self.client.store.list(prefix):
            parts = entry.key[len(self.client.key("artifacts")) + 1:].split("/")
            if len(parts) != 2:
                continue   # .meta records, or objects tracecraft did not write
            meta = self._meta(parts[1], parts[0], entry)
            result.append(meta)
        return result

    def _meta(self, name, step, entry=None):
        got = None
        try:
            got = self.client.read(self._keys(name, step)[1], missing_ok=True)
            if got:
                _field(got[0], "size", int, 0, f"metadata of artifact {step}/{name}")
        except CorruptObject as exc:
            self.client.warn(str(exc))
            got = None
        if got:
            return got[0]
        if entry is None:
            return None
        return {"name": name, "step": step, "size": entry.size, "sha256": None,
                "content_type": None, "uploader": None, "at": None}

    def download(self, name, step=None, dest=None, progress=None):
        """Download into the current directory (or `dest`: a file or directory path).  The name
        is validated, so it can never place a file outside the destination directory."""
        import hashlib
        import tempfile
        data_key, _, step = self._keys(name, step)
        if dest is None:
            dest = os.path.join(os.getcwd(), name)
        elif os.path.isdir(dest):
            dest = os.path.join(dest, name)
        directory = os.path.dirname(os.path.abspath(dest))
        try:
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tracecraft-")
        except OSError as exc:
            raise UsageError(f"cannot write to {directory}: {exc.strerror or exc}") from None
        try:
            with os.fdopen(fd, "w+b") as f:
                try:
                    self.client.store.get(data_key, into=f, **({"progress": progress}
                                                               if progress else {}))
                except NoSuchKey:
                    raise NotFound(f"no artifact {name} in step {step}") from None
                f.seek(0)
                digest = hashlib.sha256()
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            meta = self._meta(name, step) or {}
            if meta.get("sha256") and meta["sha256"] != digest.hexdigest():
                raise CorruptObject(f"artifact {name} does not match its recorded SHA-256 "
                                    "(changed while downloading? try again)")
            os.replace(tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return dest, meta


def _seconds(value):
    return f"{value:g}s"


# ==================================================================================================
# 7. Python API.  Owns: connect().  Calls: sections 1-6.
# ==================================================================================================

def connect(project=None, agent=None, *, config=None, **settings):
    """Open a project as one agent and return a Client.

    Whatever is not given comes from the config file that applies here (TRACECRAFT_CONFIG, the
    nearest .tracecraft.json, ~/.config/tracecraft/config.json) and the environment
    (TRACECRAFT_AGENT, TRACECRAFT_PROJECT, AWS_*).  With no config at all the local store is used.
    `settings`: backend ("local", "s3", "hf"), bucket, root, endpoint, region, access_key,
    secret_key, addressing ("path" or "virtual"), insecure.

        tc = tracecraft.connect(project="demo", agent="designer", backend="local")
        tc.claim("design"); tc.memory.set("design.status", "complete")
        tc.complete("design", note="mockups in artifacts"); tc.send("developer", "ready")
    """
    unknown = set(settings) - {"backend", "bucket", "root", "endpoint", "region", "access_key",
                               "secret_key", "session_token", "addressing", "insecure"}
    if unknown:
        raise TypeError(f"connect() got unknown settings: {', '.join(sorted(unknown))}")
    resolved = resolve_settings(config, project=project, agent=agent, **settings)
    resolved["_from_flags"] = bool(settings.get("access_key"))
    if not resolved.get("project"):
        raise ConfigError("no project: pass project=..., set TRACECRAFT_PROJECT, or run "
                          "`tracecraft init`")
    client = Client(open_store(resolved), resolved["project"], resolved.get("agent"))
    client.unsafe_store = bool(resolved.get("unsafe_store"))
    client.notes = config_warnings(resolved)
    return client


# ==================================================================================================
# 8. MCP server.  Owns: `tracecraft mcp`, a Model Context Protocol server on stdin/stdout (JSON-RPC
#    2.0, one message per line) whose tools map onto the Python API.  Calls: sections 1-7.
# ==================================================================================================

MCP_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")   # newest first


def _schema(required=(), **properties):
    """A JSON Schema object from keyword arguments: name=(type, description)."""
    return {"type": "object", "required": list(required),
            "properties": {name: {"type": kind, "description": text}
                           for name, (kind, text) in properties.items()}}


STEP = ("string", "Step id, e.g. 'design' or 'build-api'")
NOTE = ("string", "Context for the next agent: what was done, where things are, what is left")

MCP_TOOLS = [
    ("memory_get", "Read a shared memory value (any JSON) with its version, author and time.",
     _schema(["key"], key=("string", "Dotted key, e.g. 'design.status'")),
     lambda c, a: c.memory.record(a["key"])),
    ("memory_set", "Write a shared memory value. Strings, numbers, objects and lists are kept as "
                   "JSON. Give if_version (from memory_get) or if_absent for compare-and-swap.",
     _schema(["key", "value"], key=("string", "Dotted key"), value=({}, "Any JSON value"),
             if_version=("string", "Write only if the key is still at this version"),
             if_absent=("boolean", "Write only if the key is unset")),
     lambda c, a: c.memory.set(a["key"], a["value"], if_version=a.get("if_version"),
                               if_absent=bool(a.get("if_absent")))),
    ("memory_list", "List shared memory keys, optionally under a prefix (whole segments).",
     _schema(prefix=("string", "Key prefix, e.g. 'design'")),
     lambda c, a: {"keys": c.memory.list(a.get("prefix") or "")}),
    ("memory_incr", "Atomically add a number to a memory value (unset counts as 0).",
     _schema(["key"], key=("string", "Dotted key"), by=("number", "Amount to add (default 1)")),
     lambda c, a: c.memory.incr(a["key"], a.get("by", 1))),
    ("send", "Send a message to another agent, or to '_broadcast' for every agent.",
     _schema(["to", "text"], to=("string", "Agent id, or _broadcast"), text=("string", "Message")),
     lambda c, a: c.send(a["to"], a["text"])),
    ("inbox", "Read this agent's unread messages (direct and broadcast) and mark them read.",
     _schema(peek=("boolean", "Do not mark them read"),
             wait=("number", "Seconds to wait for a message if there is none yet")),
     lambda c, a: {"messages": c.inbox(peek=bool(a.get("peek")), wait=a.get("wait") or None)}),
    ("claim", "Claim a step as a lease before working on it; fails if another agent holds it.",
     _schema(["step"], step=STEP, ttl=("number", "Lease length in seconds (default 1800)")),
     lambda c, a: c.claim(a["step"], ttl=a.get("ttl"))),
    ("renew", "Extend this agent's lease on a step during long work.",
     _schema(["step"], step=STEP, ttl=("number", "New lease length in seconds")),
     lambda c, a: c.renew(a["step"], ttl=a.get("ttl"))),
    ("release", "Give a step's lease up so another agent can claim it.",
     _schema(["step"], step=STEP), lambda c, a: c.release(a["step"])),
    ("complete", "End a step this agent holds: complete (default), failed or blocked, with a "
                 "handoff note.",
     _schema(["step"], step=STEP, note=NOTE,
             status=("string", "complete, failed or blocked (default complete)")),
     lambda c, a: c.complete(a["step"], note=a.get("note"), status=a.get("status") or "complete")),
    ("step_status", "Show a step's status, holder, lease time left and handoff note.",
     _schema(["step"], step=STEP), lambda c, a: c.step_status(a["step"])),
    ("wait_for", "Block until the given steps are complete (fails at once if one fails).",
     _schema(["steps"], steps=("array", "Step ids"), timeout=("number", "Seconds (default 300)")),
     lambda c, a: {"complete": c.wait_for(a["steps"], timeout=a.get("timeout", 300))}),
    ("artifact_list", "List shared files, optionally of one step.",
     _schema(step=STEP), lambda c, a: {"artifacts": c.artifacts.list(step=a.get("step"))}),
    ("artifact_upload", "Share a local file with the other agents.",
     _schema(["path"], path=("string", "Local file path"), step=STEP,
             name=("string", "Name to store it under"),
             overwrite=("boolean", "Replace an existing artifact")),
     lambda c, a: c.artifacts.upload(a["path"], step=a.get("step"), name=a.get("name"),
                                     overwrite=bool(a.get("overwrite")))),
    ("artifact_download", "Download a shared file into the current directory (or dest).",
     _schema(["name"], name=("string", "Artifact name"), step=STEP,
             dest=("string", "File or directory to write to")),
     lambda c, a: dict(zip(("path", "meta"), c.artifacts.download(a["name"], step=a.get("step"),
                                                                   dest=a.get("dest"))))),
    ("agents", "List agents: online / idle / offline, the steps they hold, when last seen.",
     _schema(), lambda c, a: {"agents": c.agents()}),
    ("status", "One picture of the project: agents, steps, unread messages, recent handoffs.",
     _schema(), lambda c, a: c.status()),
]
for _name, _text, _schema_, _run in MCP_TOOLS:
    _schema_["additionalProperties"] = False
    if "value" in _schema_["properties"]:
        _schema_["properties"]["value"].pop("type")   # any JSON value


def serve_mcp(client, stdin=None, stdout=None):
    """Answer MCP requests on stdin until it closes.  Tool errors are results with isError and
    the command line's message; protocol errors are JSON-RPC errors."""
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    tools = {name: (text, schema, run) for name, text, schema, run in MCP_TOOLS}

    def reply(message):
        stdout.write(json.dumps(dict(message, jsonrpc="2.0"), ensure_ascii=False).encode() + b"\n")
        stdout.flush()

    for line in stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
        except ValueError:
            reply({"id": None, "error": {"code": -32700, "message": "parse error"}})
            continue
        if not isinstance(request, dict) or "method" not in request:
            if isinstance(request, dict) and ("result" in request or "error" in request):
                continue   # a response to nothing we asked
            reply({"id": None, "error": {"code": -32600, "message": "invalid request"}})
            continue
        if "id" not in request:
            continue       # notifications (initialized, cancelled) need no answer
        method, params = request["method"], request.get("params") or {}
        try:
            result = _mcp_answer(client, tools, method, params)
        except LookupError as exc:
            reply({"id": request["id"], "error": {"code": -32601, "message": str(exc)}})
            continue
        except (TypeError, KeyError, ValueError) as exc:
            reply({"id": request["id"], "error": {"code": -32602, "message": f"invalid params: {exc}"}})
            continue
        reply({"id": request["id"], "result": result})


def _mcp_answer(client, tools, method, params):
    if method == "initialize":
        asked = params.get("protocolVersion")
        return {"protocolVersion": asked if asked in MCP_VERSIONS else MCP_VERSIONS[0],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "tracecraft", "version": __version__},
                "instructions": agent_prompt(client.project, client.agent)}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [{"name": name, "description": text, "inputSchema": schema}
                          for name, (text, schema, _) in tools.items()]}
    if method == "tools/call":
        name, arguments = params["name"], params.get("arguments") or {}
        if name not in tools:
            raise LookupError(f"unknown tool {name!r}")
        if not isinstance(arguments, dict):
            raise TypeError("arguments must be an object")
        try:
            data = tools[name][2](client, arguments)
            data = data if isinstance(data, dict) else {"result": data}
            client.touch()
            text = json.dumps(data, ensure_ascii=False, default=str)
            return {"content": [{"type": "text", "text": text}], "structuredContent": data,
                    "isError": False}
        except TracecraftError as exc:
            return {"content": [{"type": "text", "text": str(exc)}], "isError": True}
        except (KeyError, TypeError, ValueError) as exc:
            return {"content": [{"type": "text", "text": f"bad arguments for {name}: {exc}"}],
                    "isError": True}
    raise LookupError(f"method not found: {method}")


def agent_prompt(project, agent):
    """The block an agent pastes into CLAUDE.md / AGENTS.md: who it is and how to behave."""
    me = agent or "<your-agent-id>"
    return f"""\
## Coordination (tracecraft)

You are agent `{me}` in project `{project}`. Other agents work on this project at the same time;
coordinate through `tracecraft` (run it in a shell; add `--json` to parse its output).

- Before working on a step, claim it: `tracecraft claim STEP` (exit 1 = someone else holds it:
  pick another step). Claims are leases (30 min by default, `--ttl 2h` for longer work).
- During long work, keep your leases alive: `tracecraft heartbeat` (or `tracecraft renew STEP`)
  every few minutes.
- When done, end the step with a useful note for the next agent:
  `tracecraft complete STEP --note "what you did, where it is, what is left"`.
  If you cannot finish: `tracecraft complete STEP --status failed --note "why"` (or
  `--status blocked`), or `tracecraft release STEP` to hand it back.
- Check messages between steps: `tracecraft inbox`. Tell others what they need:
  `tracecraft send AGENT "message"` or `tracecraft send _broadcast "message"`.
- Wait for dependencies instead of polling by hand: `tracecraft wait-for STEP [STEP...]`.
- Share state and files: `tracecraft memory set KEY VALUE`, `tracecraft memory get KEY`,
  `tracecraft artifact upload PATH --step STEP`, `tracecraft artifact download NAME --step STEP`.
- See the whole picture: `tracecraft status`; who is online: `tracecraft agents`.
"""


# ==================================================================================================
# 9. Command line.  Owns: argument parsing, human and --json output, and main(), the one place that
#    turns errors into exit codes.  Calls: sections 1-8.
# ==================================================================================================

DESCRIPTION = """\
Coordination for teams of AI agents: shared memory, messages, step claims, barriers, handoffs,
artifacts and an agent registry, stored as JSON in any S3 bucket or in a local directory."""

EPILOG = """\
start here:
  tracecraft init --project demo --agent designer     # local store, no server needed
  tracecraft claim design && tracecraft memory set design.status complete
  tracecraft complete design --note "mockups are in artifacts"
  TRACECRAFT_AGENT=developer tracecraft wait-for design

several agents in one directory: set TRACECRAFT_AGENT (and TRACECRAFT_PROJECT) per call.
--json makes every command print one JSON document; `tracecraft COMMAND --help` for details.

exit codes:
  0 success      1 the answer is no (missing key, step held or not complete)
  2 bad input    3 timed out      4 the store failed (unreachable, credentials, config)
"""


class Output:
    """Human lines on stdout, notes on stderr; with --json, one JSON document on stdout."""

    def __init__(self, as_json):
        self.as_json = as_json

    def result(self, data, *lines):
        if self.as_json:
            print(json.dumps(data, ensure_ascii=False, indent=2))
        else:
            for line in lines:
                print(line)

    def note(self, text):
        print(text, file=sys.stderr)

    def progress(self, verb, name):
        """A progress callback for long transfers, shown only on a terminal."""
        if self.as_json or not sys.stderr.isatty():
            return None
        state = {"shown": 0.0}

        def report(done, total):
            now = time.monotonic()
            if total < (4 << 20) or (now - state["shown"] < 0.2 and done < total):
                return
            state["shown"] = now
            percent = 100 * done // total if total else 100
            end = "\n" if done >= total else ""
            print(f"\r{verb} {name}: {percent}% of {_size(total)}", end=end, file=sys.stderr,
                  flush=True)
        return report


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _ago(seconds):
    return "never" if seconds is None else _duration(seconds) + " ago"


def parse_duration(text):
    """Seconds from `90`, `90s`, `10m`, `2h`, `1d`; UsageError otherwise."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = str(text).strip().lower()
    scale = units.get(raw[-1:], None)
    number = raw[:-1] if scale else raw
    try:
        value = float(number) * (scale or 1)
    except ValueError:
        value = -1
    if not (0 <= value < float("inf")):
        raise UsageError(f"{text!r} is not a duration (use e.g. 30, 90s, 10m or 2h)")
    return value


def _client(args):
    """The Client a command works with (opened once per process and kept on `args`)."""
    if getattr(args, "client", None) is None:
        path = getattr(args, "config", None)
        if path is None and not find_config():
            raise ConfigError("no tracecraft config found here, in any parent directory or in "
                              f"{user_config_path()}: run `tracecraft init` first (or set "
                              "TRACECRAFT_CONFIG)")
        client = connect(project=args.project, agent=args.agent, config=path)
        client.warn = lambda message: print(f"tracecraft: warning: {message}", file=sys.stderr)
        for note in client.notes:
            client.warn(note)
        if client.unsafe_store:
            client.warn("this store ignores conditional writes (accepted at init with "
                        "--accept-unsafe-store): claims, memory updates and inboxes are not safe")
        args.client = client
    return args.client


def _default_agent():
    import getpass
    try:
        name = getpass.getuser()
    except Exception:
        name = "agent"
    name = "".join(c for c in name if c.isalnum() or c in "-_.").lstrip("_.") or "agent"
    return name[:MAX_NAME]


def _git_work_tree(directory):
    while True:
        if os.path.exists(os.path.join(directory, ".git")):
            return True
        parent = os.path.dirname(directory)
        if parent == directory:
            return False
        directory = parent


def _ignore_in_git(directory):
    """Add .tracecraft.json to the directory's .gitignore (it may hold a secret key)."""
    path = os.path.join(directory, ".gitignore")
    try:
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        if CONFIG_NAME in text.splitlines() or "/" + CONFIG_NAME in text.splitlines():
            return False
        with open(path, "a", encoding="utf-8") as f:
            f.write(("" if not text or text.endswith("\n") else "\n") + CONFIG_NAME + "\n")
        return True
    except OSError as exc:
        print(f"tracecraft: warning: could not add {CONFIG_NAME} to {path}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return False


def cmd_init(args, out):
    s3_options = ("endpoint", "access_key", "secret_key", "region", "addressing")
    backend = args.backend or ("s3" if any(getattr(args, o) for o in s3_options) else "local")
    project = args.project or os.environ.get("TRACECRAFT_PROJECT") or "default"
    agent = args.agent or os.environ.get("TRACECRAFT_AGENT") or _default_agent()
    check_name("project", project)
    check_agent(agent)
    if bool(args.access_key) != bool(args.secret_key):
        raise UsageError("give both --access-key and --secret-key, or neither")
    if backend == "hf" and not args.bucket:
        raise UsageError("--backend hf needs --bucket NAMESPACE/NAME (a bucket on the Hub)")
    config = {"version": 1, "backend": backend, "project": project, "agent": agent,
              "bucket": args.bucket or "tracecraft"}
    if backend == "local":
        if args.root:
            config["root"] = os.path.abspath(os.path.expanduser(args.root))
    else:
        env = os.environ
        endpoint = args.endpoint or (None if backend == "hf" else
                                     env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))
        config.update(endpoint=endpoint, addressing=args.addressing or "path",
                      region=args.region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
                      or "us-east-1")
        if args.access_key:
            config.update(access_key=args.access_key, secret_key=args.secret_key)
        if args.insecure:
            config["insecure"] = True
    for warning in config_warnings(config):
        out.note(f"tracecraft: warning: {warning}")
    store = open_store(dict(config, _from_flags=bool(args.access_key)))
    with store:
        created = store.ensure_bucket(project + "/")
        client = Client(store, project, agent)
        failed = [f"{name}: {detail}" for name, ok, detail in client.probe() if not ok]
        if failed and not args.accept_unsafe_store:
            raise StoreError(f"{store.describe()} ignores conditional writes ({'; '.join(failed)})"
                             ": claims, leases, memory updates and inboxes would not be safe on "
                             "it. Use a store that honours If-None-Match/If-Match (AWS S3, "
                             "MinIO, R2, SeaweedFS, Ceph), or pass --accept-unsafe-store to "
                             "accept the risk")
        config["unsafe_store"] = bool(failed)
        client.heartbeat(renew=False)
    path = user_config_path() if args.user else os.path.join(os.getcwd(), CONFIG_NAME)
    write_config(path, config)
    lines = []
    if created:
        lines.append(f"Created bucket {config['bucket']}")
    lines.append(f"Initialized project {project} as agent {agent} on {store.describe()}")
    if isinstance(store, HFStore):
        lines.append(f"Watch the agents coordinate at {store.hub_url}")
    if failed:
        lines.append("WARNING: this store ignores conditional writes; atomic operations are unsafe")
    lines.append(f"Wrote {path}")
    if not args.user and _git_work_tree(os.getcwd()) and _ignore_in_git(os.getcwd()):
        lines.append(f"Added {CONFIG_NAME} to .gitignore")
    safe = {k: v for k, v in config.items() if k != "secret_key"}
    out.result(dict(safe, config_path=path, bucket_created=created), *lines)


def _show_value(value):
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def _parse_value(text, force_string):
    check_text("memory value", text)
    if force_string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def cmd_memory_set(args, out):
    if args.value == "-":
        args.value = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    record = _client(args).memory.set(args.key, _parse_value(args.value, args.string),
                                      if_version=args.if_version, if_absent=args.if_absent)
    out.result(record, f"Set {args.key} = {_show_value(record['value'])}")


def cmd_memory_get(args, out):
    record = _client(args).memory.record(args.key)
    record.pop("history", None)
    out.result(record, _show_value(record["value"]))


def cmd_memory_incr(args, out):
    by = _parse_value(args.by, False)
    record = _client(args).memory.incr(args.key, by)
    record.pop("history", None)
    out.result(record, _show_value(record["value"]))


def cmd_memory_history(args, out):
    entries = _client(args).memory.history(args.key)
    out.result({"key": args.key, "history": entries},
               *[f"{e.get('revision')}  {e.get('at')}  {e.get('by')}  {_show_value(e.get('value'))}"
                 for e in entries])


def cmd_memory_list(args, out):
    keys = _client(args).memory.list(args.prefix or "")
    out.result({"keys": keys}, *keys)


def cmd_memory_delete(args, out):
    _client(args).memory.delete(args.key, if_version=args.if_version)
    out.result({"key": args.key, "deleted": True}, f"Deleted {args.key}")


def cmd_send(args, out):
    text = " ".join(args.message)
    if text == "-":
        text = sys.stdin.buffer.read().decode("utf-8", "surrogateescape")
    message = _client(args).send(args.to, text)
    out.result(message, f"Sent to {args.to}: {text}")


def cmd_inbox(args, out):
    wait = None if args.wait is None else (True if args.wait == "forever"
                                          else parse_duration(args.wait))
    messages = _client(args).inbox(peek=args.peek, everything=args.all, delete=args.delete,
                                   wait=wait)
    lines = [f"[{m.get('at')}] ({m.get('kind', 'direct')}) {m.get('from')}: {m.get('text')}"
             for m in messages]
    if not messages and not out.as_json:
        out.note("No new messages" if not args.all else "No messages")
    out.result({"messages": messages}, *lines)


def cmd_claim(args, out):
    client = _client(args)
    lease = client.claim(args.step, ttl=parse_duration(args.ttl) if args.ttl else None)
    verb = "Already holding" if lease.get("already_held") else "Claimed"
    out.result(lease, f"{verb} step {args.step} as {client.agent}")


def cmd_renew(args, out):
    lease = _client(args).renew(args.step, ttl=parse_duration(args.ttl) if args.ttl else None)
    out.result(lease, f"Renewed step {args.step} for {_duration(lease['expires_in'])}")


def cmd_release(args, out):
    lease = _client(args).release(args.step)
    out.result(lease, f"Released step {args.step}")


def cmd_complete(args, out):
    record = _client(args).complete(args.step, note=args.note, force=args.force,
                                    status=args.status)
    verb = {"complete": "Completed", "failed": "Marked failed:", "blocked": "Marked blocked:"}
    extra = " (forced)" if record.get("forced") else ""
    out.result(record, f"{verb[args.status]} step {args.step}{extra}"
               + (" with a handoff note" if args.note is not None else ""))


def cmd_step_status(args, out):
    info = _client(args).step_status(args.step)
    lines = [info["status"]]
    if info["holder"]:
        lease = ""
        if info["lease_left"] is not None:
            left = info["lease_left"]
            lease = f", lease {_duration(left)} left" if left > 0 else \
                f", lease expired {_duration(-left)} ago"
        lines.append(f"  holder:  {info['holder']} (generation {info['generation']}, since "
                     f"{info['claimed_at']}{lease})")
    if info["ended_by"]:
        lines.append(f"  {info['status']} by {info['ended_by']} at {info['ended_at']}"
                     + (" (forced)" if info["forced"] else ""))
    if info["note"] is not None:
        lines.append(f"  handoff: {info['note']}")
    out.result(info, *lines)
    return EXIT_OK if info["status"] == "complete" else EXIT_NO


def cmd_wait_for(args, out):
    client = _client(args)
    timeout = parse_duration(args.timeout)
    if not out.as_json:
        out.note(f"Waiting for: {', '.join(args.steps)} (timeout {_seconds(timeout)})")
    shown = (lambda step, record: print(f"\u2713 {step} complete", flush=True)) \
        if not out.as_json else None
    done = client.wait_for(args.steps, timeout=timeout, on_complete=shown)
    out.result({"complete": done})


def cmd_artifact_upload(args, out):
    client = _client(args)
    name = args.name or os.path.basename(os.path.abspath(args.path))
    meta = client.artifacts.upload(args.path, step=args.step, name=args.name,
                                   overwrite=args.overwrite,
                                   progress=out.progress("Uploading", name))
    out.result(meta, f"Uploaded {meta['name']} ({_size(meta['size'])}) to step {meta['step']}")


def cmd_artifact_download(args, out):
    client = _client(args)
    path, meta = client.artifacts.download(args.name, step=args.step, dest=args.output,
                                           progress=out.progress("Downloading", args.name))
    size = os.path.getsize(path)
    out.result(dict(meta, path=path), f"Downloaded {args.name} ({_size(size)}) to {path}")


def cmd_artifact_list(args, out):
    items = _client(args).artifacts.list(step=args.step)
    lines = [f"{m['step']}/{m['name']}  {_size(m.get('size') or 0)}  "
             f"{m.get('content_type') or '?'}  by {m.get('uploader') or '?'}  {m.get('at') or ''}"
             for m in items]
    if not items and not out.as_json:
        out.note("No artifacts")
    out.result({"artifacts": items}, *lines)


def cmd_agents(args, out):
    agents = _client(args).agents()
    width = max([len(a["agent"]) for a in agents] + [5])
    lines = [f"{'AGENT':<{width}}  {'STATE':<7}  {'LAST SEEN':<9}  HOLDING"] if agents else []
    for a in agents:
        lines.append(f"{a['agent']:<{width}}  {a['state']:<7}  {_ago(a['age_seconds']):<9}  "
                     + (", ".join(a["holding"]) or "-"))
    if not agents and not out.as_json:
        out.note("No agents yet")
    out.result({"agents": agents}, *lines)


def cmd_heartbeat(args, out):
    record = _client(args).heartbeat(renew=True)
    held = ", ".join(record.get("holding") or []) or "no steps"
    out.result(record, f"Heartbeat recorded for {record['agent']} (renewed: {held})")


def cmd_doctor(args, out):
    """Configuration, identity, reachability, credentials, conditional writes, latency, skew."""
    import statistics
    checks = []
    path = getattr(args, "config", None) or find_config()
    checks.append(("config", bool(path), path or "none found: run `tracecraft init`"))
    client = None
    if path:
        try:
            client = _client(args)
            checks.append(("identity", bool(client.agent),
                           f"agent {client.agent or '(none)'} in project {client.project}"))
            timings, skews = [], []
            probe_key = client.key("_probe", "latency.json")
            client.store.put(probe_key, b"{}", content_type=JSON_TYPE)
            for _ in range(5):
                started = time.monotonic()
                blob = client.store.get(probe_key)
                timings.append(time.monotonic() - started)
                if blob.server_time:
                    skews.append(time.time() - blob.server_time)
            client.store.delete(probe_key)
            checks.append(("store", True, f"{client.store.describe()}: reachable, credentials "
                           f"accepted, read/write ok; median latency "
                           f"{statistics.median(timings) * 1000:.1f} ms"))
            if skews:
                skew = statistics.median(skews)
                checks.append(("clock", abs(skew) < 30, f"this machine is {abs(skew):.1f} s "
                               f"{'ahead of' if skew > 0 else 'behind'} the store (leases use "
                               "the store's clock)"))
            checks += client.probe()
        except TracecraftError as exc:
            checks.append(("store", False, str(exc)))
    ok = all(passed for _, passed, _ in checks)
    out.result({"ok": ok, "checks": [{"check": c, "ok": p, "detail": d} for c, p, d in checks]},
               *[f"{'ok  ' if p else 'FAIL'}  {c}: {d}" for c, p, d in checks])
    return EXIT_OK if ok else EXIT_STORE


def cmd_status(args, out):
    client = _client(args)
    interval = None if args.watch is None else parse_duration(args.watch)
    cache = {}
    while True:
        info = client.status(cache)
        if interval is None or out.as_json:
            out.result(info, *_status_lines(info))
            return EXIT_OK
        print("\033[H\033[2J" + "\n".join(_status_lines(info)), flush=True)
        try:
            time.sleep(interval)
        except KeyboardInterrupt:
            return EXIT_OK


def _status_lines(info):
    lines = [f"Project {info['project']}", "", "AGENTS"]
    for a in info["agents"]:
        lines.append(f"  {a['agent']:<16} {a['state']:<8} unread {a['unread']:<4} "
                     f"seen {_ago(a['age_seconds']):<9} holding {', '.join(a['holding']) or '-'}")
    order = {"in_progress": 0, "expired": 1, "failed": 2, "blocked": 3, "complete": 4, "pending": 5}
    lines += ["", "STEPS"]
    for st in sorted(info["steps"], key=lambda s: (order.get(s["status"], 9), s["step"])):
        detail = ""
        if st["status"] in ("in_progress", "expired"):
            left = st["lease_left"] or 0
            detail = f"{st['holder']} (generation {st['generation']}, " + \
                (f"lease {_duration(left)} left)" if left > 0 else f"expired {_duration(-left)} ago)")
        elif st["status"] in ENDED:
            detail = f"by {st['ended_by']}"
        lines.append(f"  {st['status']:<12} {st['step']:<24} {detail}")
    if info["handoffs"]:
        lines += ["", "RECENT HANDOFFS"]
        lines += [f"  {h['step']} ({h['by']}, {h['at']}): {h['note']}" for h in info["handoffs"]]
    lines += ["", f"MEMORY  {info['memory_keys']} keys"]
    return lines


def cmd_prompt(args, out):
    project, agent = args.project or os.environ.get("TRACECRAFT_PROJECT"), args.agent
    if find_config() or getattr(args, "config", None):
        client = _client(args)
        project, agent = client.project, agent or client.agent
    text = agent_prompt(project or "<project>", agent)
    out.result({"prompt": text}, text.rstrip("\n"))


def cmd_mcp(args, out):
    serve_mcp(_client(args))


class _Unbuilt:
    """Stands in for the parser of a command this call does not run: it is never built
    (building all of them would cost more than the rest of a command's start-up)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: self


GLOBAL_VALUE_OPTIONS = ("--agent", "--project", "--config")


def build_parser(argv=None):
    """The argument parser; given `argv`, only for the command it names (its help and errors
    read the same: one that names no command gets the whole parser)."""
    import argparse
    words = []
    for i, word in enumerate(argv if argv is not None else ()):
        if word == "--":
            break
        if not word.startswith("-") and not (i and argv[i - 1] in GLOBAL_VALUE_OPTIONS):
            words.append(word)
    wanted = words[:2] if argv is not None else None
    S = argparse.SUPPRESS

    class Formatter(argparse.RawDescriptionHelpFormatter):
        # argparse makes a formatter for every option it defines, and by default each one
        # imports shutil to ask for the terminal's width; ask the way shutil would, cheaply.
        def __init__(self, prog):
            columns = os.environ.get("COLUMNS", "")
            try:
                width = int(columns) if columns.isdigit() else os.get_terminal_size().columns
            except OSError:
                width = 80
            super().__init__(prog, width=max(width, 40) - 2)
    raw = Formatter
    common = argparse.ArgumentParser(add_help=False, formatter_class=raw)
    common.add_argument("--json", action="store_true", default=S,
                        help="print one JSON document instead of human-readable lines")
    common.add_argument("--agent", default=S, metavar="ID",
                        help="act as this agent (default: $TRACECRAFT_AGENT, then the config)")
    common.add_argument("--project", default=S, metavar="NAME",
                        help="use this project (default: $TRACECRAFT_PROJECT, then the config)")
    common.add_argument("--config", default=S, metavar="PATH",
                        help="config file to use (default: $TRACECRAFT_CONFIG, the nearest "
                             ".tracecraft.json, then ~/.config/tracecraft/config.json)")
    parser = argparse.ArgumentParser(prog="tracecraft", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"tracecraft {__version__}")
    parser.add_argument("--json", action="store_true", help=S)
    parser.add_argument("--agent", help=S)
    parser.add_argument("--project", help=S)
    parser.add_argument("--config", help=S)
    # prog given, so that no help formatter (and its terminal-size probe) is built needlessly
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                     prog="tracecraft")
    commands.required = True

    def command(name, func, summary, *, parent=commands, epilog=None):
        depth = 0 if parent is commands else 1
        if isinstance(parent, _Unbuilt) or (wanted and len(wanted) > depth
                                             and wanted[depth] != name):
            return _Unbuilt()
        sub = parent.add_parser(name, parents=[common], help=summary, description=summary,
                                epilog=epilog, formatter_class=raw)
        sub.set_defaults(func=func)
        return sub

    p = command("init", cmd_init, "Configure the store, project and agent for this directory.",
                epilog="with no store options, uses the local store (no server) under "
                       "$XDG_DATA_HOME/tracecraft.\n\nexamples:\n"
                       "  tracecraft init --project demo --agent designer\n"
                       "  tracecraft init --project demo --agent designer \\\n"
                       "      --endpoint http://localhost:9000 --bucket tracecraft \\\n"
                       "      --access-key admin --secret-key admin123456")
    p.add_argument("--backend", choices=BACKENDS,
                   help="where state lives (default: s3 when an S3 option is given, else local)")
    p.add_argument("--bucket", help="bucket name (default: tracecraft)")
    p.add_argument("--endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, "
                                      "$AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--region", help="S3 region (default: $AWS_REGION, else us-east-1)")
    p.add_argument("--access-key", help="S3 access key (default: AWS_* variables or profile)")
    p.add_argument("--secret-key", help="S3 secret key; saved in .tracecraft.json (mode 0600) "
                                        "only when given here")
    p.add_argument("--addressing", choices=("path", "virtual"),
                   help="S3 bucket addressing style (default: path)")
    p.add_argument("--root", help="local store directory (default: $XDG_DATA_HOME/tracecraft)")
    p.add_argument("--insecure", action="store_true",
                   help="do not verify the store's TLS certificate (DANGEROUS: anyone on the "
                        "network path can impersonate the store)")
    p.add_argument("--accept-unsafe-store", action="store_true",
                   help="use a store that ignores conditional writes (DANGEROUS: claims, "
                        "leases, memory updates and inboxes can then collide)")
    p.add_argument("--user", action="store_true",
                   help=f"write the user config ({user_config_path()}) instead of "
                        f"./{CONFIG_NAME}")

    command("agents", cmd_agents, "List agents: online / idle / offline, the steps they hold.",
            epilog=f"online: seen in the last {ONLINE_SECONDS // 60} minutes; idle: in the last "
                   f"{IDLE_SECONDS // 60}; every command refreshes the heartbeat (at most once "
                   "a minute).")
    command("heartbeat", cmd_heartbeat, "Record that this agent is alive and renew its leases.",
            epilog="run it every few minutes during long work so leases do not expire.")
    command("doctor", cmd_doctor, "Check config, store, credentials, conditional writes, "
                                  "latency and clock skew.")
    p = command("status", cmd_status, "One screen: agents, steps, unread messages, handoffs.")
    p.add_argument("--watch", nargs="?", const="2", metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until interrupted")
    command("prompt", cmd_prompt, "Print instructions for CLAUDE.md / AGENTS.md.",
            epilog="use --agent NAME to write them for another agent.")
    command("mcp", cmd_mcp, "Serve the tools over the Model Context Protocol (stdio).",
            epilog="register it with Claude Code: claude mcp add tracecraft -- tracecraft mcp\n"
                   "(set TRACECRAFT_AGENT in the client's environment for each agent)")

    memory = command("memory", None, "Shared key-value memory (values are JSON).")
    memory_commands = memory.add_subparsers(dest="memory_command", metavar="ACTION",
                                            prog="tracecraft memory")
    memory_commands.required = True
    p = command("set", cmd_memory_set, "Set KEY to VALUE (JSON if it parses, else a string).",
                parent=memory_commands, epilog="examples:\n  tracecraft memory set design.status "
                "complete\n  tracecraft memory set build.attempts 3\n"
                "  tracecraft memory set cfg '{\"a\": 1}'")
    p.add_argument("key", help="dotted key, e.g. design.status")
    p.add_argument("value", help="the value; '-' reads it from standard input")
    p.add_argument("--string", action="store_true", help="store VALUE as a string, never JSON")
    p.add_argument("--if-version", metavar="V", help="write only if KEY is still at version V "
                                                     "(from `memory get --json`)")
    p.add_argument("--if-absent", action="store_true", help="write only if KEY is unset")
    p = command("get", cmd_memory_get, "Print the value of KEY (exit 1 when unset).",
                parent=memory_commands)
    p.add_argument("key")
    p = command("incr", cmd_memory_incr, "Add N (default 1) to a number atomically; prints it.",
                parent=memory_commands)
    p.add_argument("key")
    p.add_argument("by", nargs="?", default="1", metavar="N")
    p = command("history", cmd_memory_history, "Show KEY's current and previous values.",
                parent=memory_commands)
    p.add_argument("key")
    p = command("list", cmd_memory_list, "List keys, optionally under PREFIX (whole segments).",
                parent=memory_commands)
    p.add_argument("prefix", nargs="?")
    p = command("delete", cmd_memory_delete, "Delete KEY (exit 1 when unset).",
                parent=memory_commands)
    p.add_argument("key")
    p.add_argument("--if-version", metavar="V", help="delete only if KEY is still at version V")

    p = command("send", cmd_send, "Send a message to an agent, or to _broadcast for everyone.",
                epilog="MESSAGE may be several words; '-' reads it from standard input.")
    p.add_argument("to", metavar="AGENT")
    p.add_argument("message", nargs="+")
    p = command("inbox", cmd_inbox, "Show this agent's unread messages, direct and broadcast, "
                                    "and mark them read.",
                epilog="the read position is kept in the store: another machine running the same "
                       "agent continues where this one left off.")
    p.add_argument("--all", action="store_true", help="show every message, read or not")
    p.add_argument("--peek", action="store_true", help="do not mark the messages read")
    p.add_argument("--delete", action="store_true", help="also delete the direct messages read")
    p.add_argument("--wait", nargs="?", const="forever", metavar="SECONDS",
                   help="block until a message arrives (exit 3 after SECONDS)")

    p = command("claim", cmd_claim, "Claim a step as a lease; exactly one of many racing agents "
                                    "wins.",
                epilog="exit 1 (naming the holder) when another agent holds a live lease or the "
                       "step has ended. An expired or released lease is taken over, with the "
                       "next generation number. Renew long work with `renew` or `heartbeat`.")
    p.add_argument("step")
    p.add_argument("--ttl", help="lease length, e.g. 90s, 10m, 2h (default: 30m)")
    p = command("renew", cmd_renew, "Extend this agent's lease on a step.")
    p.add_argument("step")
    p.add_argument("--ttl", help="new lease length (default: the one it was claimed with)")
    p = command("release", cmd_release, "Give a lease up so another agent can claim the step.")
    p.add_argument("step")
    p = command("complete", cmd_complete, "End a step (complete, failed or blocked), with a "
                                          "handoff note.",
                epilog="only the holder of a live lease can end a step; a holder whose lease was "
                       "taken over is told it lost the step (exit 1).")
    p.add_argument("step")
    p.add_argument("--status", choices=ENDED, default="complete",
                   help="how the step ended (default: complete); wait-for stops on failed or "
                        "blocked")
    p.add_argument("--note", help="context for the next agent (saved as the step's handoff)")
    p.add_argument("--force", action="store_true",
                   help="complete a step another agent holds (recorded as forced)")
    p = command("step-status", cmd_step_status, "Show a step's status, lease and handoff note.",
                epilog="prints pending, in_progress, expired, complete, failed or blocked first; "
                       "exits 0 only when complete.")
    p.add_argument("step")
    p = command("wait-for", cmd_wait_for, "Block until every step is complete.",
                epilog="exit 1 at once if a step ends failed or blocked; exit 3 when the timeout "
                       "passes, naming the steps still pending.")
    p.add_argument("steps", nargs="+", metavar="STEP")
    p.add_argument("--timeout", default="300", help="e.g. 30, 90s, 10m (default: 300s)")

    artifact = command("artifact", None, "Share files between agents.")
    artifact_commands = artifact.add_subparsers(dest="artifact_command", metavar="ACTION",
                                                prog="tracecraft artifact")
    artifact_commands.required = True
    p = command("upload", cmd_artifact_upload, "Upload a file (refuses to replace one).",
                parent=artifact_commands)
    p.add_argument("path")
    p.add_argument("--step", help="attach to this step (default: shared)")
    p.add_argument("--name", help="name to store it under (default: the file's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    p = command("download", cmd_artifact_download, "Download an artifact to the current "
                "directory.", parent=artifact_commands)
    p.add_argument("name")
    p.add_argument("--step", help="the step it belongs to (default: shared)")
    p.add_argument("-o", "--output", metavar="PATH", help="file or directory to write to")
    p = command("list", cmd_artifact_list, "List artifacts with size, type and uploader.",
                parent=artifact_commands)
    p.add_argument("--step", help="only this step's artifacts")
    if wanted and any(not isinstance(group, _Unbuilt) and not group.choices
                      for group in (commands, memory_commands, artifact_commands)):
        return build_parser()   # a misspelt command: argparse lists the right ones
    return parser


def main(argv=None):
    """Run the command line; returns the exit code (see the table in section 1)."""
    argv = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    args = build_parser(argv).parse_args(argv)
    out = Output(args.json)
    try:
        code = args.func(args, out)
        client = getattr(args, "client", None)
        if client is not None:
            try:
                client.touch()   # every command keeps its agent visible, at most once a minute
            except TracecraftError as exc:
                client.warn(f"could not refresh the heartbeat: {exc}")
        sys.stdout.flush()
        return code or EXIT_OK
    except TracecraftError as exc:
        if out.as_json:
            print(json.dumps({"error": str(exc), "exit_code": exc.exit_code}, ensure_ascii=False))
        print(f"tracecraft: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("tracecraft: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("TRACECRAFT_DEBUG"):
            raise
        print(f"tracecraft: internal error: {type(exc).__name__}: {exc} (a bug; set "
              "TRACECRAFT_DEBUG=1 to see the traceback, and please report it)", file=sys.stderr)
        return EXIT_BUG
    finally:
        if getattr(args, "client", None) is not None:
            args.client.close()   # saves what the client learned for the next call


if __name__ == "__main__":
    sys.exit(main())

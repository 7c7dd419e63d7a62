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
ordered bottom-up; each may call only the sections above it (tests/test_map.py keeps it so):

  1. Errors and exit codes   every failure tracecraft reports, and the one table of exit codes
  2. Names, keys and values  the rules for every name in a key and every value: agent ids,
                             steps, memory keys, numbers, JSON, what a terminal is shown
  3. SigV4 and transport     the AWS Signature V4 signer and the keys it signs with (renewed
                             when due); one kept-alive HTTP connection with one retry policy
                             and one deadline
  4. Stores                  the Store interface and its backends: LocalStore, S3Store, HFStore;
                             the files tracecraft makes on this machine; the store probe
  5. Configuration           finding .tracecraft.json, credentials (the AWS CLI's chain, kept
                             across calls), opening the configured store
  6. Coordination protocol   the object layout under a project, and a peer per kind of object:
       6a. Records           conditional writes, checked reads, what an agent remembers
       6b. Memory            shared key-value memory
       6c. Inbox             numbered message logs and read cursors
       6d. Steps             leases, the end of a step, barriers
       6e. Plans             steps with dependencies: what is ready, next, reopen
       6f. Reservations      paths an agent is editing, as leases that exclude overlaps
       6g. Agents            heartbeats, who is online, the picture of the whole project
       6h. Artifacts         shared files, their bytes and metadata agreeing
       6i. Sessions          agents' transcripts mirrored exactly once, redacted; each
                             harness's transcripts on this machine
       6j. Timeline          a project's history, told from every peer's records
       6k. The client        one agent in one project: a façade over the peers
  7. Python API              connect(), open_client()
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
    in fact have succeeded then).

    The message speaks Python (it names parameters); main() shows for_cli() instead, in the
    words of the command line: `fix` names the boolean option that would change the answer
    (the parameter, and what it would do), `cli` is the whole message when it differs more."""
    exit_code = EXIT_STORE
    retried = False

    def __init__(self, message="", fix=None, cli=None):
        super().__init__(message)
        self.fix, self.cli = fix, cli

    def __str__(self):
        text = super().__str__()
        return f"{text} (pass {self.fix[0]}=True {self.fix[1]})" if self.fix else text

    def for_cli(self):
        if self.cli:
            return self.cli
        text = super().__str__()
        flag = self.fix and "--" + self.fix[0].replace("_", "-")
        return f"{text} (use {flag} {self.fix[1]})" if self.fix else text


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


class NoCredentials(ConfigError):
    """No credentials to sign with, or a source of them (a profile, STS, the SSO portal, the
    container or instance endpoint, a credential_process) failed: the message names the source."""


class NoSuchBucket(StoreError):
    pass


class Unreachable(StoreError):
    """No answer from the store after the retry budget: refused, reset, timed out, DNS failure."""


class CorruptObject(StoreError):
    """An object that tracecraft should be able to read is not valid JSON of the right shape."""


class BadDigest(StoreError):
    """The bytes a store received do not match the digest sent with them: the file being sent
    changed while it was read."""


class LocalFileError(UsageError):
    """A file on this machine could not be written or read (a full disk, no permission): never
    the store's fault, and never retried as if it were."""


def os_reason(exc):
    """What an OSError means, in words: a full disk is said to be full."""
    import errno
    return {errno.ENOSPC: "the disk is full", getattr(errno, "EDQUOT", -1): "the disk quota is "
            "used up", errno.EROFS: "the file system is read-only", errno.EACCES:
            "permission denied", errno.EPERM: "permission denied", errno.ELOOP:
            "a symbolic link is in the way"}.get(exc.errno, exc.strerror or str(exc))


class Cancelled(TracecraftError):
    """A long call (a wait) was cancelled by its caller: an MCP client's notifications/cancelled."""


# ==================================================================================================
# 2. Names, keys and values.  Owns: the one set of rules for every name that becomes part of an
#    object key, and for every number and JSON value tracecraft accepts, stores or prints.
#    Calls: section 1.  Nothing can address an object outside <bucket>/<project>/ because every
#    key is built from names that passed these checks.
# ==================================================================================================

MAX_NAME = 128        # characters in one name or key segment
MAX_NAME_BYTES = 200  # its UTF-8 bytes, so that it fits a file name on every file system
MAX_KEY = 512         # characters in a whole memory key
MAX_VALUE = 1 << 20   # bytes in one memory value or message, encoded as JSON
MAX_RECORD = 8 << 20  # bytes of one record read from the store (a value, its history, a message)
MAX_DEPTH = 64        # levels of nesting in a JSON value
MAX_INT = 2 ** 63 - 1  # integers are int64, as in most languages that read the records
MAX_SECONDS = 366 * 86400.0   # the longest lease, wait or timeout
BROADCAST = "_broadcast"

# Characters that draw nothing but are letters or marks to Unicode (fillers, variation selectors,
# the combining grapheme joiner, the blank braille pattern): names could hide them.
_INVISIBLE = ((0x034F, 0x034F), (0x115F, 0x1160), (0x17B4, 0x17B5), (0x180B, 0x180F),
              (0x2800, 0x2800), (0x3164, 0x3164), (0xFE00, 0xFE0F), (0xFFA0, 0xFFA0),
              (0xE0100, 0xE01EF))


def check_name(kind, value, reserved_underscore=False):
    """Return `value` if it is a valid single-segment name, else raise UsageError saying why."""
    if not isinstance(value, str) or not value:
        raise UsageError(f"{kind} must not be empty" if value in ("", None)
                         else f"{kind} must be text, not {type(value).__name__}")
    check_text(kind, value)
    if len(value) > MAX_NAME:
        raise UsageError(f"{kind} is {len(value)} characters long; the limit is {MAX_NAME}")
    if not value.isascii():
        _check_unicode_name(kind, value)
    elif not value.isprintable():
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


def _check_unicode_name(kind, value):
    """A name is read by people, so it may hold only characters that show as themselves: no
    control, format (zero-width, direction overrides), surrogate, private-use or unassigned
    character, no space but U+0020, nothing invisible, and composed (NFC) so that two names
    that look alike are alike.  (unicodedata is imported only for names that are not ASCII.)"""
    import unicodedata
    for c in value:
        category, code = unicodedata.category(c), ord(c)
        if category[0] == "C" or category in ("Zl", "Zp") or (category == "Zs" and c != " ") \
                or any(low <= code <= high for low, high in _INVISIBLE):
            raise UsageError(f"{kind} {value!a} contains U+{code:04X}, a control character or "
                             "one that is invisible or changes the text's direction")
    if not unicodedata.is_normalized("NFC", value):
        raise UsageError(f"{kind} {value!a} is not in Unicode normal form NFC (write accented "
                         "letters as one character)")


def check_text(kind, value):
    """Text from the command line may hold undecodable bytes (surrogate escapes): refuse them."""
    if not isinstance(value, str):
        raise UsageError(f"{kind} must be text, not {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{kind} is not valid UTF-8") from None
    return value


def check_number(kind, value, low=0.0, high=MAX_SECONDS, low_inclusive=False):
    """`value` as a float if it is a finite number in range, else UsageError (bool is no number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{kind} must be a number, not {type(value).__name__}")
    if not (low <= value if low_inclusive else low < value) or not value <= high:
        bound = f"at least {low:g}" if low_inclusive else "positive" if low == 0 \
            else f"more than {low:g}"
        raise UsageError(f"{kind} must be {bound} and at most {high:g}, not {value!r:.30}")
    return float(value)


def check_json(kind, value):
    """Refuse what no JSON reader can take back: NaN, infinities, integers beyond int64, nesting
    deeper than MAX_DEPTH (a record wraps a value, so reading it back must not hit a limit)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > MAX_DEPTH:
                raise UsageError(f"{kind} is nested more than {MAX_DEPTH} levels deep")
            if isinstance(item, dict):
                if not all(isinstance(k, str) for k in item):
                    raise UsageError(f"{kind} has an object key that is not text")
                item = item.values()
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, float) and not item - item == 0:   # NaN or an infinity
            raise UsageError(f"{kind} holds {item!r}, which is not a JSON number")
        elif isinstance(item, int) and not isinstance(item, bool) and not -MAX_INT <= item <= MAX_INT:
            raise UsageError(f"{kind} holds an integer beyond the 64-bit range")
        elif isinstance(item, str):
            check_text(kind, item)
        elif not (item is None or isinstance(item, (bool, int, float))):
            raise UsageError(f"{kind} is not JSON: it holds a {type(item).__name__}")
    return value


def _finite(text):
    number = float(text)
    if not number - number == 0:   # its text is not shown: it may be a secret
        raise ValueError("a number is out of range")
    return number


def _int64(text):
    if len(text) > 20:
        raise ValueError("integer beyond the 64-bit range")
    number = int(text)
    if not -MAX_INT <= number <= MAX_INT:
        raise ValueError("integer beyond the 64-bit range")
    return number


def _not_json(name):
    raise ValueError(f"{name} is not JSON")


def loads(data, numbers=True):
    """Standard JSON only: json.loads also takes NaN and Infinity, reads 1e400 as infinity and
    recurses without bound; each of those is a ValueError here.  numbers=False lets numbers
    out of range through, for a caller that checks them and says which one was wrong."""
    try:
        if not numbers:
            return json.loads(data, parse_constant=_not_json)
        return json.loads(data, parse_float=_finite, parse_int=_int64, parse_constant=_not_json)
    except RecursionError:
        raise ValueError("nested too deep") from None


def dumps(value, indent=None):
    """JSON as tracecraft writes and prints it: UTF-8 text kept as it is, never NaN."""
    return json.dumps(value, ensure_ascii=False, allow_nan=False, indent=indent)


_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def shown(text):
    """`text` made safe for a terminal: control characters (ESC and CSI start escape sequences,
    CR and BS overwrite what was printed) and direction overrides become visible escapes like
    \\x1b; other text is kept, a tab included.  For human output only: --json stays exact."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() or c == "\t" or (ord(c) > 0x9F and c not in _BIDI)
                   else ascii(c)[1:-1] for c in text)


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
        wrong = f"artifact name {shown(name)!r} must not start with '.'"
        raise UsageError(f"{wrong} (pass name= to rename it)", cli=f"{wrong} (use --name to "
                         "rename it)")
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
# 3. SigV4 and transport.  Owns: AWS Signature Version 4 and the keys it signs with (Credentials,
#    renewed when due), the one HTTP request path with its retry policy and deadline, and files
#    read and written while hashed (FileReader, HashingFile).  Calls: sections 1-2.  _socket
#    (and ssl, for https) is imported at the first request.
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


REFRESH_BEFORE = 600   # seconds: temporary credentials are fetched anew this long before expiry
REFRESH_PAUSE = 30     # seconds between tries when a refresh failed and the old keys still work


class Credentials:
    """The keys a store signs with, asked for by keys() at every request.  `source` says in
    words where they came from, `method` in botocore's word ("env", "assume-role", ...).

    Temporary keys (`expires`, epoch seconds) are fetched anew by `refresh` (a callable that
    returns new Credentials; refresh(True) never takes them from a cache) once they are due:
    REFRESH_BEFORE before they expire, or at half their lifetime for short-lived ones (STS
    gives 15 minutes at least, which a fixed 15-minute window would renew at every request).
    One threshold, not botocore's advisory and mandatory two: a refresh that fails while the
    old keys have more than a minute left is tried again REFRESH_PAUSE later, else it fails
    the request."""

    def __init__(self, access_key, secret_key, token=None, expires=None, source="", method="",
                 refresh=None, fetched=None):
        for what, value in (("access key", access_key), ("secret key", secret_key),
                            ("session token", token)):
            # Never shown, whatever it is: a credential's value must not reach an error message.
            if value is not None and not (isinstance(value, str) and value and value.isascii()
                                          and value.isprintable() and " " not in value):
                raise ConfigError(f"the S3 {what} from {source or 'the settings'} is not "
                                  "printable ASCII text without spaces: check where it comes from "
                                  "(init's flags, AWS_* variables, the AWS profile or the config "
                                  "file)")
        if expires is not None and not (isinstance(expires, (int, float))
                                        and 0 < expires < 1e11):
            raise ConfigError(f"the credentials from {source} have no valid expiry time")
        self._keys = (access_key, secret_key, token)   # replaced whole: threads see one set
        self.expires, self.source, self.method, self.refresh = expires, source, method, refresh
        self.fetched = time.time() if fetched is None else fetched
        import _thread   # built in: no import cost
        self._pause_until, self._lock = 0.0, _thread.allocate_lock()

    access_key = property(lambda self: self._keys[0])
    secret_key = property(lambda self: self._keys[1])
    token = property(lambda self: self._keys[2])

    def due(self, now=None):
        """Whether these keys should be fetched anew."""
        if self.expires is None:
            return False
        left = self.expires - (time.time() if now is None else now)
        return left < min(REFRESH_BEFORE, (self.expires - self.fetched) / 2)

    def hide(self, text, *more):
        """`text` (a server's or a program's words) without these keys or `more` secrets in it:
        a hostile or careless answer may echo what it was sent."""
        for secret in self._keys[1:] + more:
            if secret and len(secret) >= 8:
                text = text.replace(secret, "***")
        return text

    def keys(self):
        """(access key, secret key, session token or None), fetched anew first when due."""
        if self.refresh is not None and self.due() and time.time() >= self._pause_until:
            self.renew()
        return self._keys

    def renew(self, force=False):
        """Fetch new keys now (force: even if these look good, as when the store said the
        token expired).  One thread fetches; the others wait for its keys."""
        if self.refresh is None:
            return
        with self._lock:
            if not force and not self.due():
                return   # another thread renewed them while this one waited
            try:
                fresh = self.refresh(force)
            except TracecraftError:
                if force or self.expires is None or self.expires - time.time() < 60:
                    raise
                self._pause_until = time.time() + REFRESH_PAUSE
                return
            self.expires, self.source, self.fetched = fresh.expires, fresh.source, fresh.fetched
            self._keys = fresh._keys
            self.refresh = fresh.refresh or self.refresh


class Response:
    __slots__ = ("status", "headers", "body", "attempts")

    def __init__(self, status, headers, body, attempts=1):
        self.status, self.headers, self.body, self.attempts = status, headers, body, attempts


def _retry_settings():
    def number(name, default, kind, high):
        raw = os.environ.get(name)
        try:
            value = kind(raw) if raw else default
        except ValueError:
            value = 0
        if not 0 < value <= high:
            raise ConfigError(f"{name}={shown(raw)!r:.40} is not a number from 1 to {high:g}")
        return value
    return (number("TRACECRAFT_MAX_ATTEMPTS", 5, int, 100),
            number("TRACECRAFT_TIMEOUT", 30.0, float, 3600.0))


ATTEMPT_TIMEOUT = 10.0   # seconds one socket operation may block, within the request's deadline
TRANSFER_RATE = 64 * 1024   # bytes/s: a file transfer's deadline grows by a second per this many
MAX_BODY = 16 << 20      # bytes of an answer held in memory (a listing page, an error)
MAX_OBJECT = 5 << 30     # bytes of one object (S3's limit for a single PUT)
MAX_MULTIPART = 5 << 40  # bytes of one object made by a multipart upload (S3's limit)
MAX_LISTED = 1_000_000   # keys in one listing
MAX_HEADERS = 256        # header lines in one answer, interim answers included
MAX_INTERIM = 8          # 1xx answers before the final one


class _ProtocolError(OSError):
    """The server broke HTTP/1.1 framing: a bad status line or header, a body cut short.  An
    OSError, so it is retried like any other failed connection."""


_CHUNK = 64 * 1024    # bytes per write of a file body, and at most per read of an answer's body
_MAX_LINE = 65536     # the longest status, header or chunk-size line accepted


class _Reader:
    """Buffered reading of an answer from a socket (or an ssl one): the part of makefile("rb")
    the client uses, without socket.py.  `_buf[_pos:]` is what was received and not yet read.

    Every receive is bounded by `deadline` (time.monotonic()), so a server that trickles a byte
    at a time cannot hold a request past it; `grace` seconds per byte received extend it (set
    for file transfers, which may be long but must keep moving)."""

    def __init__(self, sock):
        self._sock, self._buf, self._pos = sock, b"", 0
        self.deadline, self.grace = None, 0.0

    def recv(self, size):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("timed out")
            self._sock.settimeout(min(ATTEMPT_TIMEOUT, left))
        data = self._sock.recv(size)
        if self.grace and self.deadline is not None:
            self.deadline += len(data) * self.grace
        return data

    def _receive(self):
        """Receive once more, after what is left unread: False at the end of the stream."""
        more = self.recv(_CHUNK)
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
            return self.recv(size)
        block = self._buf[self._pos:self._pos + size]
        self._pos += len(block)
        return block


class Transport:
    """One kept-alive HTTP(S) connection to one host, and the one retry policy.

    Connection errors, timeouts and 429/5xx answers are retried with exponential backoff and full
    jitter, at most `max_attempts` times and within `timeout` seconds in all (defaults from
    TRACECRAFT_MAX_ATTEMPTS and TRACECRAFT_TIMEOUT): the deadline bounds the whole request,
    whatever the server does (trickling bytes, endless interim answers), except that a file
    transfer gets a second more per TRANSFER_RATE bytes moved.  Every other answer, 4xx errors
    included, is returned to the caller at once.

    The HTTP/1.1 client is our own, on a socket: importing http.client would take longer than
    the rest of a command, and S3 needs only Content-Length, chunked and close-delimited bodies."""

    peer = "the store"   # what an Unreachable error says could not be reached

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

    def cancel(self):
        """From another thread: the request in progress fails at once, and is not retried."""
        self.max_attempts = 0
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(2)   # SHUT_RDWR: wakes a blocked send or receive
            except OSError:
                pass

    def request(self, method, target, make_headers, body=b"", into=None, progress=None,
                limit=MAX_BODY, deadline=None):
        """Send a request, retrying per the policy; `make_headers()` signs each attempt afresh.

        `body` is bytes (a file is staged by the store first: Store.stage).  With `into`, a 200
        answer's body is streamed into that file instead of memory; any other body larger than `limit` bytes
        raises CorruptObject.  `deadline` (time.monotonic()) replaces the transport's own, for a
        request that continues another.  Returns a Response whose `attempts` counts the sends,
        which tells the caller whether a conditional write may have reached the store before.
        A kept-alive connection the server closed while idle is reopened without using up an
        attempt: before sending if its close has arrived, else (once: `reused` is false on the
        fresh connection) when the request goes unanswered."""
        started = time.monotonic()
        deadline = deadline or started + self.timeout
        streamed = into is not None or len(body) > _CHUNK
        last_error, attempt, sent = None, 0, 0
        while attempt < self.max_attempts:
            attempt += 1
            if attempt > 1:
                import random
                pause = random.uniform(0, min(2.0, 0.1 * 2 ** (attempt - 1)))
                if time.monotonic() + pause >= deadline:
                    break
                time.sleep(pause)
            if self._sock is not None and _readable(self._sock):
                self.close()   # the server closed the idle connection; nothing was sent on it
            reused = self._sock is not None
            try:
                timeout = min(ATTEMPT_TIMEOUT, deadline - time.monotonic())
                if timeout <= 0:
                    raise TimeoutError("timed out")
                if reused:
                    self._sock.settimeout(timeout)
                else:
                    self._connect(timeout)
                self._reader.deadline = deadline
                self._reader.grace = 1.0 / TRANSFER_RATE if streamed else 0.0
                sent += 1
                if not self._ask(method, target, make_headers(), body,
                                 progress if into is None else None):
                    self.close()
                    last_error = "the server closed the connection without answering"
                    if reused:
                        attempt -= 1   # it closed while idle, as our request was on its way
                    continue
                status, headers, keep = self._read_head()
                parts = self._body(method, status, headers, keep)
                if into is not None and status == 200:
                    # The grace for a download is earned only by the bytes it announced: a body
                    # of unknown length has none, and stops at the S3 limit of one object.
                    total = int(headers["content-length"]) if "content-length" in headers \
                        else None
                    if total is None:
                        self._reader.grace = 0.0
                    into.seek(0)
                    into.truncate()
                    copy_stream(parts, into, total or 0, progress, limit=total or MAX_MULTIPART)
                    return Response(status, headers, b"", sent)
                bodiless = method == "HEAD" or status in (204, 304)   # the length is the object's
                data = _collect(parts, 0 if bodiless else int(headers.get("content-length") or 0),
                                limit)
                if status in RETRY_STATUSES and attempt < self.max_attempts:
                    last_error = f"HTTP {status}"
                    continue
                return Response(status, headers, data, sent)
            except OSError as exc:
                if streamed and self._reader is not None:
                    # A file transfer earned its grace by moving bytes: its retry keeps it.
                    deadline = max(deadline, self._reader.deadline)
                self.close()
                last_error = _describe_network_error(exc)
            except BaseException:
                self.close()   # a half-read answer must not be taken for the next one
                raise
        raise Unreachable(f"cannot reach {self.peer} at {self.scheme}://{self.host}:{self.port} "
                          f"({last_error}; {attempt} attempts in {time.monotonic() - started:.1f} s):"
                          " check the endpoint, the network and that the server is running")

    def _ask(self, method, target, headers, body, progress=None):
        """Send the request and wait for the answer to begin.  False if the connection closed
        first (a broken pipe or reset while sending, EOF or a reset before the answer).  A body
        larger than a write is sent in pieces, each extending the deadline by its grace and
        reported to `progress(done, total)`."""
        size = len(body)
        lines = [f"{method} {target} HTTP/1.1", "Accept-Encoding: identity"]
        lines += [f"{name}: {value}" for name, value in headers.items()
                  if name.lower() != "content-length"]   # the framing is ours to state
        if size or method in ("PUT", "POST"):
            lines.append(f"Content-Length: {size}")
        if any("\r" in line or "\n" in line for line in lines):
            raise StoreError("a line break in the request target or a header value (from a "
                             "store's answer?): refused")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        reader = self._reader
        try:
            if size > _CHUNK:
                view = memoryview(body)
                self._send(head)
                done = 0
                while done < size:
                    block = view[done:done + _CHUNK]
                    done += len(block)
                    self._send(block)
                    reader.deadline += len(block) * reader.grace
                    if progress:
                        progress(done, size)
            else:
                self._send(head + body)   # one write, so a small request is one packet
            return reader.wait()
        except (BrokenPipeError, ConnectionResetError):
            return False

    def _send(self, data):
        left = self._reader.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        self._sock.settimeout(min(ATTEMPT_TIMEOUT, left))
        self._sock.sendall(data)   # the timeout bounds the whole sendall (Python 3.5+)

    def _read_head(self):
        """(status, headers, keep) of the final answer, skipping 1xx interim ones (at most
        MAX_INTERIM).  Repeated headers are joined with ", "; `keep` says whether the
        connection stays open after it."""
        lines = 0
        for _ in range(MAX_INTERIM + 1):
            line = self._readline()
            parts = line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3 \
                    or not parts[1].isdigit():
                raise _ProtocolError(f"not an HTTP/1.x status line: {line[:100]!r}")
            found = {}
            while True:
                line = self._readline()
                if not line.strip():
                    break
                lines += 1
                if lines > MAX_HEADERS:
                    raise _ProtocolError(f"more than {MAX_HEADERS} header lines in the answer")
                name, colon, value = line.decode("latin-1").rstrip("\r\n").partition(":")
                text = name + value
                if not colon or not text.isprintable() and any(
                        c < " " and c != "\t" or c == "\x7f" for c in text):
                    raise _ProtocolError(f"not an HTTP header line: {line[:100]!r}")
                found.setdefault(name.strip().lower(), []).append(value.strip())
            status = int(parts[1])
            if status >= 200:
                break
        else:
            raise _ProtocolError(f"more than {MAX_INTERIM} interim (1xx) answers")
        headers = {name: ", ".join(values) for name, values in found.items()}
        length = headers.get("content-length", "0")
        if not (length.isascii() and length.isdigit() and len(length) <= 19):
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
            for _ in range(MAX_HEADERS):   # trailer headers: none is of use to us
                if not self._readline().strip():
                    break
            else:
                raise _ProtocolError(f"more than {MAX_HEADERS} trailer lines in the answer")
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


def _collect(parts, announced, limit):
    """The pieces of a body joined, refusing (before reading it, when its length is announced)
    a body larger than `limit`: a hostile or broken store must not exhaust memory."""
    if announced > limit:
        raise CorruptObject(f"the store's answer is {announced} bytes long, more than the "
                            f"{limit} tracecraft accepts")
    data, size = [], 0
    for block in parts:
        size += len(block)
        if size > limit:
            raise CorruptObject(f"the store's answer is longer than the {limit} bytes tracecraft "
                                "accepts")
        data.append(block)
    return b"".join(data)


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


def copy_stream(blocks, target, total, progress, limit=None):
    """Write `blocks` into the file `target`, reporting progress; a failure to write is the
    destination's (a full disk), never the source's, so it is not retried.  More than `limit`
    bytes is an error."""
    done = 0
    for block in blocks:
        if limit is not None and done + len(block) > limit:
            raise CorruptObject(f"the store's answer is longer than the {limit} bytes it may be")
        try:
            target.write(block)
        except OSError as exc:   # the destination failed, not the connection: no retry
            raise LocalFileError(f"cannot write the download: {os_reason(exc)}") from None
        done += len(block)
        if progress:
            progress(done, total)


def _file_size(f):
    here = f.tell()
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(here)
    return size


class FileReader:
    """The first `size` bytes (all, by default) of a binary file, read once from its start and
    hashed as they are read (SHA-256 and MD5 of the whole), so that what is sent is what was
    hashed: a file that grows meanwhile is read as it was when measured.  `check()` at the end
    tells a file changed in place while it was read (its size or mtime moved: then, and only
    then, what was read is read again and compared) and raises BadDigest."""

    def __init__(self, f, size=None, progress=None):
        import hashlib
        self.f, self.progress = f, progress
        self.size = _file_size(f) if size is None else size
        self.done, self.sha256, self.md5 = 0, hashlib.sha256(), hashlib.md5()
        try:
            self._stat = os.fstat(f.fileno())
        except (AttributeError, OSError, ValueError):   # io.BytesIO: nothing else writes it
            self._stat = None
        f.seek(0)

    def read(self, n):
        """The next `n` bytes (fewer at the end), hashed; LocalFileError if the file is shorter
        than it was."""
        n = min(n, self.size - self.done)
        block = self.f.read(n) if n > 0 else b""
        if len(block) < n:
            raise LocalFileError("the file became shorter while it was read")
        self.done += len(block)
        self.sha256.update(block)
        self.md5.update(block)
        if self.progress:
            self.progress(self.done, self.size)
        return block

    def digests(self):
        return self.sha256.hexdigest(), self.md5.hexdigest()

    def check(self):
        if self._stat is None:
            return
        now = os.fstat(self.f.fileno())
        if (now.st_size, now.st_mtime_ns) == (self._stat.st_size, self._stat.st_mtime_ns):
            return
        import hashlib
        again, left = hashlib.sha256(), self.done
        self.f.seek(0)
        while left > 0:
            block = self.f.read(min(1 << 20, left))
            if not block:
                break
            again.update(block)
            left -= len(block)
        if left or again.hexdigest() != self.sha256.hexdigest():
            raise BadDigest("the file changed while it was read")


class HashingFile:
    """A file being written that keeps the SHA-256 of what was written since it was last
    truncated (a retried download starts again)."""

    def __init__(self, f):
        import hashlib
        self.f, self._sha256 = f, hashlib.sha256
        self.sha256 = self._sha256()

    def seek(self, *args):
        return self.f.seek(*args)

    def truncate(self, *args):
        self.sha256 = self._sha256()
        return self.f.truncate(*args)

    def write(self, block):
        self.sha256.update(block)
        return self.f.write(block)


# ==================================================================================================
# 4. Stores.  Owns: the Store interface and its backends.  Calls: sections 1-3.  All coordination
#    code goes through its operations and nothing bypasses them; keys are relative to the
#    bucket and already validated (section 2), so a store only has to keep its own promises.
# ==================================================================================================

class Blob:
    """An object read from a store: its bytes (None for head, or when streamed to a file), its
    ETag, its Last-Modified time and the store's own clock at the time of the answer (epoch s)."""
    __slots__ = ("key", "body", "etag", "size", "last_modified", "server_time", "chain", "sent")

    def __init__(self, key, body, etag, size, last_modified=None, server_time=None):
        self.key, self.body, self.etag, self.size = key, body, etag, size
        self.last_modified, self.server_time = last_modified, server_time
        self.chain = None   # [writer, nonce] of the last conditional writes (Records.write)
        self.sent = None    # (time.time(), time.monotonic()) when this was written (Records.write)


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
    put(key, body, if_none_match=False, if_match=None, content_type=None, progress=None,
        digests=None) -> etag          create-only or compare-and-swap when asked; a lost condition
                                       raises PreconditionFailed; `body` is bytes or a binary file
                                       (staged, then committed); `digests` (SHA-256, MD5 hex) of
                                       bytes are checked by the store: bytes that changed on the
                                       way raise BadDigest
    stage(key, body, content_type=None, progress=None) -> Staged
                                       read the binary file `body` once, hashing it, into a write
                                       nobody sees yet (a temporary file, the bytes in memory, a
                                       multipart upload above multipart_threshold()); then
                                       staged.commit(if_none_match, if_match) makes it the object,
                                       under put's conditions, and may be tried again after a lost
                                       condition; leaving its `with` uncommitted aborts it, leaving
                                       nothing behind.  A file changed in place meanwhile raises
                                       BadDigest
    delete(key, if_match=None)         deleting a missing key is not an error (as on S3)
    list(prefix, start_after=None, limit=None)
                                       Entry objects in S3's order (by UTF-8 bytes), every page
                                       (or the first `limit` entries)
    ensure_bucket(prefix="", create=True) -> bool
                                       create the bucket if missing (with create=False: raise
                                       NoSuchBucket); True when it was created (credentials
                                       scoped to `prefix` are checked there)
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

    def _put_file(self, key, body, if_none_match, if_match, content_type, progress):
        with self.stage(key, body, content_type, progress) as staged:
            return staged.commit(if_none_match, if_match)


class Staged:
    """A write that stage() prepared: `size`, `sha256` and `md5` (hex) of the bytes read, the
    `etag` the object will have (the MD5's, or a multipart upload's), and
    `commit(if_none_match=False, if_match=None) -> etag`, which makes them the object.  A
    `with` block aborts it unless it was committed."""

    def __init__(self, size, digests, commit, abort, etag=None):
        self.size, (self.sha256, self.md5) = size, digests
        self.etag = etag or f'"{self.md5}"'
        self._commit, self._abort, self.committed = commit, abort, False

    def commit(self, if_none_match=False, if_match=None):
        if if_none_match and if_match:
            raise UsageError("a write cannot be both create-only and compare-and-swap")
        etag = self._commit(if_none_match, if_match)
        self.committed = True
        return etag

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if not self.committed:
            self._abort()


MIN_PART = 5 << 20            # S3's smallest part of a multipart upload, but for the last
PART_MOST = 16 << 20          # a larger threshold grows parts to this (memory: ~10 parts)
STALE_ABORTS = 10             # stale uploads one upload aborts (each is a request)
MAX_UPLOAD_PARTS = 10_000     # S3's most parts in one upload
PARTS_IN_FLIGHT = 8           # parts sent at once, each on its own connection
STALE_UPLOAD_SECONDS = 86400  # a multipart upload this old was left by a killed process


def multipart_threshold():
    """Bytes above which a file goes to S3 in parts (TRACECRAFT_MULTIPART_THRESHOLD; 64 MiB).
    Below it, a file is read into memory once and sent with one PUT."""
    raw = os.environ.get("TRACECRAFT_MULTIPART_THRESHOLD")
    if not raw:
        return 64 << 20
    if not (raw.isascii() and raw.isdigit() and 0 < int(raw) <= MAX_OBJECT):
        raise ConfigError(f"TRACECRAFT_MULTIPART_THRESHOLD={shown(raw)!r:.40} is not a number "
                          f"of bytes from 1 to {MAX_OBJECT} (5 GiB, S3's largest single PUT)")
    return int(raw)


def part_size(size, threshold):
    """The size of every part but the last of a multipart upload of `size` bytes: an eighth of
    the threshold (8 MiB by default) up to PART_MOST, at least S3's 5 MiB, in whole MiB, and
    larger only when needed to stay within 10,000 parts.  Memory used is about
    PARTS_IN_FLIGHT + 2 parts."""
    if size > MAX_MULTIPART:
        raise UsageError(f"the file is {size} bytes: more than S3's largest object (5 TiB)")
    part = max(MIN_PART, min(threshold // 8, PART_MOST), -(-size // MAX_UPLOAD_PARTS))
    return -(-part // (1 << 20)) << 20


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
    if not host or (port and not (port.isascii() and port.isdigit() and len(port) <= 5
                                  and 0 < int(port) < 65536)):
        return None
    return scheme, host.lower(), int(port) if port else (443 if scheme == "https" else 80), \
        slash + path


def _host_header(scheme, host, port):
    """The Host header for `host` and `port`: an IPv6 address bracketed, the port only when it
    is not the scheme's own."""
    bracketed = f"[{host}]" if ":" in host else host
    return bracketed if port == (443 if scheme == "https" else 80) else f"{bracketed}:{port}"


def _is_loopback(host):
    host = host.lower().strip("[]")
    if host in ("localhost", "::1") or host.endswith(".localhost"):
        return True
    parts = host.split(".")
    return len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)


def _md5_etag(data):
    return '"' + _hash("md5", data).hexdigest() + '"'


# -- local files: every file tracecraft makes on this machine is made here ---------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
STALE_TEMP_SECONDS = 3600   # a temporary file this old was left by a write that was killed


def create_exclusive(directory, prefix, mode=0o600):
    """(fd, path) of a new empty file in `directory` with a random name, opened for reading and
    writing.  O_EXCL and O_NOFOLLOW: a name planted in advance, a symbolic link above all, makes
    the creation fail instead of writing through it."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0)
    while True:
        path = os.path.join(directory, f"{prefix}{os.urandom(8).hex()}.tmp")
        try:
            return os.open(path, flags, mode), path
        except FileExistsError:
            continue


def replace_file(path, data, mode=0o600):
    """Write `data` (bytes) to `path` atomically: a new exclusive file beside it, renamed over
    it.  A reader sees the old file or the new one, never a part; a link at `path` is replaced,
    not followed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = create_exclusive(directory, "." + os.path.basename(path) + ".", mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        unlink_quietly(tmp)


def unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def sweep(directory, prefix, older_than=STALE_TEMP_SECONDS):
    """Remove the temporary files (`prefix`*.tmp) that killed writes left in `directory`: only
    this user's regular files, and only once they are `older_than` seconds old, so that a
    write in progress keeps its file."""
    now = time.time()
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    stat = entry.stat(follow_symlinks=False)
                    if entry.is_file(follow_symlinks=False) and now - stat.st_mtime > older_than \
                            and getattr(os, "getuid", lambda: stat.st_uid)() == stat.st_uid:
                        unlink_quietly(entry.path)
    except OSError:
        pass   # cleaning up is a courtesy: never a reason to fail


def xdg_dir(kind):
    """The XDG base directory of `kind` ("config", "data" or "cache")."""
    default = {"config": ".config", "data": os.path.join(".local", "share"), "cache": ".cache"}
    return os.environ.get(f"XDG_{kind.upper()}_HOME") or \
        os.path.join(os.path.expanduser("~"), default[kind])


def current_directory():
    try:
        return os.getcwd()
    except FileNotFoundError:
        raise UsageError("the current directory no longer exists (deleted?): cd to another "
                         "one") from None


def _hostname():
    return os.uname().nodename if hasattr(os, "uname") else os.environ.get("COMPUTERNAME", "")


class LocalStore(Store):
    """A directory: <root>/<bucket>/<key>.  No server; safe for many processes on one machine.

    Writes go to a temporary file that is renamed into place, so a reader never sees half an
    object.  Create-only is link(2), which fails atomically when the name exists.  Compare-and-swap
    and conditional delete hold an exclusive lock (flock on one of 256 lock files chosen by the
    key's hash) around read-compare-write, waited for at most the request deadline.  ETags are
    MD5 hex digests of the content, as on S3.  The store's clock is the file system's: the time
    the kernel stamps on a file made in the store.  Objects are plain files inside the store's
    own directory: a symbolic link in the store is never followed."""
    name = "local"

    def __init__(self, root=None, bucket="tracecraft", timeout=None):
        self.root = os.path.abspath(os.path.expanduser(root or default_local_root()))
        self.bucket = check_bucket(bucket)
        self.dir = os.path.join(self.root, self.bucket)
        self.timeout = timeout or _retry_settings()[1]
        self._safe = set()                         # see _own_dir
        self._offset, self._offset_at = None, 0.0  # see now
        self.writable = True                       # an observer's store writes not even a clock

    def describe(self):
        return f"local directory {self.dir}"

    def _path(self, key):
        parts = key.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\\" in key or "\0" in key:
            raise UsageError(f"invalid object key {key!r}")
        return os.path.join(self.dir, *parts)

    def _within(self, key):
        """Refuse a key that a symbolic link in the store would lead out of it: every directory
        between the store's own and the object must be a real one.  Checked at every use, as a
        long-lived client must not trust a directory that someone swapped for a link since."""
        import stat
        parts, current = key.split("/")[:-1], self.dir
        for part in parts:
            current = os.path.join(current, part)
            try:
                mode = os.lstat(current).st_mode
            except (FileNotFoundError, NotADirectoryError):
                return   # made by this very write, as a directory (or the write fails)
            if stat.S_ISLNK(mode):
                raise StoreError(f"local store: {current} is a symbolic link: refused (objects "
                                 "are plain files in the store's own directories)")

    def _own_dir(self, *parts):
        """A directory of the store's own (.tmp, .locks), made if missing, never a link."""
        path = os.path.join(self.root, *parts)
        if path not in self._safe:
            os.makedirs(path, exist_ok=True)
            for depth in range(1, len(parts) + 1):
                if os.path.islink(os.path.join(self.root, *parts[:depth])):
                    raise StoreError(f"local store: {os.path.join(self.root, *parts[:depth])} is "
                                     "a symbolic link: refused")
            self._safe.add(path)
        return path

    def _fail(self, exc, key):
        if isinstance(exc, (IsADirectoryError, NotADirectoryError)):
            return UsageError(f"object key {key!r} conflicts with another key in {self.dir} "
                              "(one is a prefix of the other)")
        return StoreError(f"local store: {os_reason(exc)} ({exc.filename or self.dir})")

    def now(self):
        """The store's clock: the kernel's stamp on a file made in the store (the file server's,
        for a store on a network file system), never this process's idea of the time, which a
        wrong clock or a faked one may shift.  Kept as an offset from time.time(), measured
        again every 10 s; a store this process cannot write to leaves it its own clock."""
        if self._offset is None or time.monotonic() - self._offset_at > 10:
            offset = 0.0
            try:
                if not self.writable:
                    raise PermissionError("an observer writes nothing")
                fd, path = create_exclusive(self._tmpdir(), "clock-")
                try:
                    offset = os.fstat(fd).st_mtime - time.time()
                finally:
                    os.close(fd)
                    unlink_quietly(path)
            except OSError:
                pass
            self._offset, self._offset_at = offset, time.monotonic()
        return time.time() + self._offset

    def _tmpdir(self):
        return self._own_dir(".tmp")

    def get(self, key, into=None, progress=None):
        path = self._path(key)
        try:
            self._within(key)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW | _CLOEXEC
                         | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise NoSuchKey(f"no object {key}") from None
        except OSError as exc:
            raise self._fail(exc, key) from None
        try:
            with os.fdopen(fd, "rb") as f:
                stat = os.fstat(fd)
                if not _is_regular(stat):
                    raise CorruptObject(f"{key} in the local store is not a regular file")
                if into is None:
                    data = f.read(MAX_RECORD + 1)
                    if len(data) > MAX_RECORD:
                        raise CorruptObject(f"object {key} is larger than {MAX_RECORD} bytes: "
                                            "not a tracecraft record")
                    etag = _md5_etag(data)
                else:
                    data, etag = None, self._copy(f, into, stat.st_size, progress)
        except OSError as exc:
            raise self._fail(exc, key) from None
        return Blob(key, data, etag, stat.st_size, stat.st_mtime, self.now())

    @staticmethod
    def _copy(f, into, size, progress):
        """Copy an object's file into `into`; returns its ETag."""
        import hashlib
        digest = hashlib.md5()
        into.seek(0)
        into.truncate()

        def blocks():
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
                yield block
        copy_stream(blocks(), into, size, progress)
        return '"' + digest.hexdigest() + '"'

    def head(self, key):
        return self.get(key, into=_Discard())

    def _current_etag(self, key):
        try:
            return self.head(key).etag
        except NoSuchKey:
            return None

    def put(self, key, body, if_none_match=False, if_match=None, content_type=None, progress=None,
            digests=None):
        if if_none_match and if_match:
            raise UsageError("a write cannot be both create-only and compare-and-swap")
        if not isinstance(body, (bytes, bytearray)):
            return self._put_file(key, body, if_none_match, if_match, content_type, progress)
        path = self._path(key)
        try:
            self._within(key)
            tmp = self._write_temp(lambda f: f.write(body))
        except OSError as exc:
            raise self._fail(exc, key) from None
        try:
            etag = _md5_etag(body)
            if digests and etag != f'"{digests[1]}"':
                raise BadDigest(f"{key}: the bytes received do not match their MD5 (the file "
                                "changed while it was read)")
            return self._commit(key, path, tmp, etag, if_none_match, if_match)
        finally:
            unlink_quietly(tmp)

    def stage(self, key, body, content_type=None, progress=None):
        """Copy the file into a temporary file of the store's, hashing it on the way."""
        path = self._path(key)
        reader = FileReader(body, None, progress)

        def copy(f):
            for block in iter(lambda: reader.read(1 << 20), b""):
                f.write(block)
        try:
            self._within(key)
            for prefix in ("put-", "clock-"):   # a file body: a good time to tidy up
                sweep(self._tmpdir(), prefix)
            tmp = self._write_temp(copy)
        except OSError as exc:
            raise self._fail(exc, key) from None
        try:
            reader.check()
        except BaseException:
            unlink_quietly(tmp)
            raise
        etag = f'"{reader.md5.hexdigest()}"'
        return Staged(reader.size, reader.digests(),
                      lambda *conditions: self._commit(key, path, tmp, etag, *conditions),
                      lambda: unlink_quietly(tmp))

    def _commit(self, key, path, tmp, etag, if_none_match, if_match):
        """Give the temporary file `tmp` its key, under the write's conditions."""
        try:
            # Every replacement holds the key's lock, so a compare-and-swap between its
            # check and its rename can never be overtaken by a plain write or a delete.
            with self._lock(key):
                if if_match and self._current_etag(key) != if_match:
                    raise PreconditionFailed(f"{key} changed (version is not {if_match})")
                self._place(tmp, path, os.link if if_none_match else os.replace, key)
        except FileExistsError:
            raise PreconditionFailed(f"{key} already exists") from None
        except OSError as exc:
            raise self._fail(exc, key) from None
        unlink_quietly(tmp)
        return etag

    def _place(self, tmp, path, how, key):
        # A concurrent delete may remove the parent directory between makedirs and link/rename.
        for _ in range(5):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._within(key)   # again, now that the directories exist: none is a link
            try:
                return how(tmp, path)
            except FileNotFoundError:
                continue
        return how(tmp, path)

    def _write_temp(self, write):
        """The path of a new temporary file that `write(f)` filled; removed if writing fails."""
        fd, tmp = create_exclusive(self._tmpdir(), "put-", 0o666)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
        except BaseException:
            unlink_quietly(tmp)
            raise
        return tmp

    def delete(self, key, if_match=None):
        path = self._path(key)
        try:
            self._within(key)
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
            except OSError as exc:
                raise self._fail(exc, rel) from None
            for entry in entries:
                key = rel + entry.name
                if entry.is_symlink():
                    continue   # never an object: a link is not followed
                if entry.is_dir(follow_symlinks=False):
                    if (key + "/").startswith(prefix) or prefix.startswith(key + "/"):
                        walk(entry.path, key + "/")
                elif key.startswith(prefix) and (start_after is None or key > start_after):
                    found.append((key, entry.path))

        top = self._path(base + "/x")[:-2] if base else self.dir
        self._within(base + "/x")
        walk(top, base + "/" if base else "")
        # Python orders str by code point, which is exactly the UTF-8 byte order S3 lists in.
        found.sort()
        return self._entries(found[:limit], self.now())

    def _entries(self, found, now):
        """Stat lazily: a caller that stops early (at a cursor, say) pays only for what it read."""
        for key, path in found:
            try:
                stat = os.lstat(path)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise self._fail(exc, key) from None
            yield Entry(key, stat.st_size, stat.st_mtime, server_time=now)

    def ensure_bucket(self, prefix="", create=True):
        created = not os.path.isdir(self.dir)
        if created and not create:
            raise NoSuchBucket(f"the local store {self.dir} does not exist (run `tracecraft init` "
                               "where agents write to it first)")
        try:
            if create:
                os.makedirs(self.dir, exist_ok=True)
                sweep(self._tmpdir(), "put-")
            if not os.access(self.dir, os.W_OK if create else os.R_OK | os.X_OK):
                raise PermissionError(13, "permission denied", self.dir)
        except OSError as exc:
            raise self._fail(exc, "") from None
        return created

    def _lock(self, key):
        stripe = _hash("md5", key.encode("utf-8")).hexdigest()[:2]
        lockdir = self._own_dir(".locks", self.bucket)
        return _FileLock(os.path.join(lockdir, stripe + ".lock"), self.timeout, key)


class _Discard:
    """A file that keeps nothing: LocalStore.head() reads an object only for its MD5 ETag."""

    def seek(self, *args):
        return 0

    truncate = write = seek


def _is_regular(stat):
    import stat as modes
    return modes.S_ISREG(stat.st_mode)


class _FileLock:
    """An exclusive inter-process lock on a file (flock on POSIX, msvcrt.locking on Windows),
    waited for at most `timeout` seconds: a process stopped while it holds the lock must not
    hang every writer behind it.  The holder writes its pid and host into the file, so that a
    writer that gives up can say who holds it."""

    def __init__(self, path, timeout, key):
        self.path, self.timeout, self.key = path, timeout, key

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o666)
        try:
            try:
                import fcntl
                take = lambda: fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # noqa: E731
            except ImportError:
                import msvcrt
                take = lambda: msvcrt.locking(self.fd, msvcrt.LK_NBLCK, 1)  # noqa: E731
            deadline, pause = time.monotonic() + self.timeout, 0.0005
            while True:
                try:
                    take()
                    break
                except OSError:   # BlockingIOError from flock, PermissionError from msvcrt
                    if time.monotonic() >= deadline:
                        raise StoreError(f"local store: {self.key} stayed locked for "
                                         f"{self.timeout:g} s by {self._holder()} (stopped or "
                                         f"hung?); the lock is {self.path}") from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.02)
            os.lseek(self.fd, 0, os.SEEK_SET)
            os.write(self.fd, f"{os.getpid()} {_hostname()}\n".encode().ljust(72))
        except BaseException:
            os.close(self.fd)
            raise
        return self

    def _holder(self):
        try:
            os.lseek(self.fd, 0, os.SEEK_SET)
            words = os.read(self.fd, 72).decode("utf-8", "replace").split() + [""]
        except OSError:
            words = [""]
        pid, host = words[0], words[1] if len(words) > 2 else ""
        if not pid.isdigit():
            return "another process"
        state = ""
        if host == _hostname():
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    code = f.read().rpartition(b")")[2].split()[0]
                state = {b"T": " (stopped)", b"t": " (stopped)", b"Z": " (a zombie)"}.get(code, "")
            except (OSError, IndexError):
                pass
        return f"process {pid} on {shown(host) or 'an unknown host'}{state}"

    def __exit__(self, *exc):
        os.close(self.fd)   # closing the descriptor releases the lock


JSON_TYPE = "application/json"


def probe_store(store, prefix):
    """Check that the store honours conditional writes, on a scratch key under `prefix`.
    Returns [(check, ok, detail)]; a store that ignores them cannot keep any atomic promise."""
    key = f"{prefix}/{os.urandom(8).hex()}.json"
    checks = []
    try:
        try:
            store.put(key, b'{"probe": 1}', if_none_match=True, content_type=JSON_TYPE)
        except PreconditionFailed as exc:
            if not exc.retried:   # a fresh random key: only our own lost answer can exist
                raise
        try:
            store.put(key, b'{"probe": 2}', if_none_match=True, content_type=JSON_TYPE)
            checks.append(("create-only writes (If-None-Match)", False,
                           "a second create-only write of the same key succeeded"))
        except PreconditionFailed:
            checks.append(("create-only writes (If-None-Match)", True,
                           "a second create of the same key is refused"))
        try:
            store.put(key, b'{"probe": 3}', if_match='"0123456789abcdef0123456789abcdef"',
                      content_type=JSON_TYPE)
            checks.append(("compare-and-swap (If-Match)", False,
                           "a write with a stale ETag succeeded"))
        except (PreconditionFailed, ConditionalConflict):
            checks.append(("compare-and-swap (If-Match)", True,
                           "a write with a stale ETag is refused"))
    finally:
        store.delete(key)
    return checks


class ReadOnlyStore(Store):
    """A store seen by a read-only observer (`init --read-only`): reads pass through, and every
    write is refused here, before it is sent, whatever asked for it."""

    def __init__(self, store):
        self.store, self.name = store, store.name
        store.writable = False

    def __getattr__(self, name):   # now(), bucket, endpoint, ...: the store's own
        return getattr(self.store, name)

    def get(self, *args, **kwargs):
        return self.store.get(*args, **kwargs)

    def head(self, key):
        return self.store.head(key)

    def list(self, *args, **kwargs):
        return self.store.list(*args, **kwargs)

    def describe(self):
        return self.store.describe()

    def close(self):
        self.store.close()

    def put(self, key, *args, **kwargs):
        raise UsageError(f"this is a read-only observer (init --read-only): it writes nothing "
                         f"(refused: a write to {key})")

    delete = stage = put

    def ensure_bucket(self, prefix="", create=False):
        return self.store.ensure_bucket(prefix, create=False)


def default_local_root():
    return os.path.join(xdg_dir("data"), "tracecraft")


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
        if len(parts) == 6 and parts[2] in _MONTHS and parts[5] == "GMT" and value.isascii():
            hour, minute, second = parts[4].split(":")
            if len(parts[3]) == 4:
                return _utc_seconds(int(parts[3]), _MONTHS[parts[2]], int(parts[1]), int(hour),
                                    int(minute), int(second))
        from email.utils import parsedate_tz, mktime_tz   # the obsolete forms HTTP also allows
        parsed = parsedate_tz(value[:100])
        if parsed and 1970 <= parsed[0] <= 9999:
            return mktime_tz(parsed)
    except (ValueError, OverflowError, TypeError):
        pass   # a date no server sends: as if there were none
    return None


def _iso_date(value):
    """Epoch seconds from the ISO 8601 LastModified of a listing (2026-11-25T10:08:06.123Z)."""
    try:
        if not value.isascii():
            return None
        seconds = _utc_seconds(int(value[0:4]), int(value[5:7]), int(value[8:10]),
                               int(value[11:13]), int(value[14:16]), int(value[17:19]))
    except (TypeError, ValueError):
        return None
    fraction = value[19:].rstrip("Z")
    digits = fraction[1:10]
    return seconds + (float("." + digits) if fraction[:1] == "." and digits.isascii()
                      and digits.isdigit() else 0)


_XML_ENTITIES = {"amp": "&", "lt": "<", "gt": ">", "quot": '"', "apos": "'"}


def _xml_values(text, tag, raw=False, complete=False):
    """The contents of every <tag> element of one of S3's small, flat XML answers (a listing,
    an error), as text with entities resolved (unless `raw`): loading an XML parser would cost
    a command more than reading its answer.  Each element is found by one search for its start
    and one for its end, never backtracking over the text: a hostile answer (unclosed tags, a
    tag without its '>') costs time in proportion to its length."""
    import re
    opening = re.compile(rf"<(?:\w{{1,64}}:)?{tag}(?:\s[^>]{{0,200}})?>")
    closing = re.compile(rf"</(?:\w{{1,64}}:)?{tag}\s*>")
    found, pos = [], 0
    while True:
        start = opening.search(text, pos)
        end = start and closing.search(text, start.end())
        if not end:
            if start and complete:
                raise StoreError(f"the store answered XML that is not S3's: a <{tag}> is left "
                                 "open (cut short?)")
            break   # no more, or an element left open: the answer was cut short or is not S3's
        found.append(text[start.end():end.start()])
        pos = end.end()
    if raw:
        return found

    def resolve(match):
        name = match.group(1)
        try:
            char = chr(int(name[2:], 16) if name[1:2] in "xX" else int(name[1:])) \
                if name[0] == "#" else _XML_ENTITIES[name]
        except (KeyError, ValueError, OverflowError):
            return match.group(0)
        return match.group(0) if "\ud800" <= char <= "\udfff" else char   # no lone surrogates
    return [re.sub(r"&(#[0-9]{1,8}|#[xX][0-9a-fA-F]{1,8}|\w{1,16});", resolve, value)
            if "&" in value else value for value in found]


def _xml_field(body, tag):
    """The first <tag> of an XML answer (bytes or text), or ""."""
    if isinstance(body, (bytes, bytearray)):
        body = bytes(body).decode("utf-8", "replace")
    values = _xml_values(body or "", tag)
    return values[0] if values else ""


EXPIRED_TOKEN = ("ExpiredToken", "TokenRefreshRequired")   # S3's codes for keys past their time


class S3Store(Store):
    """Any S3-compatible store, signed with SigV4 over one kept-alive connection."""
    name = "s3"
    follows_redirects = False   # a gateway that answers GET with a CDN redirect sets this

    def __init__(self, bucket, endpoint=None, region="us-east-1", access_key=None, secret_key=None,
                 session_token=None, addressing="path", verify=True, timeout=None,
                 max_attempts=None, credentials=None):
        self.bucket = self.check_bucket(bucket)
        self.region = region or "us-east-1"
        self.endpoint = (endpoint or f"https://s3.{self.region}.amazonaws.com").rstrip("/")
        url = _split_url(self.endpoint)
        if url is None:
            raise ConfigError(f"endpoint {self.endpoint!r} is not an http(s) URL")
        scheme, hostname, port, base_path = url
        if addressing not in ("path", "virtual"):
            raise ConfigError(f"addressing must be 'path' or 'virtual', not {addressing!r}")
        if credentials is None:
            if not access_key or not secret_key:
                env = ("set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (a profile "
                       "with keys, SSO, a role or a credential_process)")
                raise NoCredentials(f"no S3 credentials: pass access_key= and secret_key=, or "
                                    f"{env}", cli="no S3 credentials: pass --access-key/"
                                    "--secret-key to init, or " + env)
            credentials = Credentials(access_key, secret_key, session_token,
                                      source="keys given to the store", method="explicit")
        self.credentials = credentials
        self.addressing = addressing
        self.transport = None
        self._aim(url, timeout, max_attempts, verify)
        # Where this bucket was found to live when it was not where configured (_moved).
        self._regions_path = os.path.join(xdg_dir("cache"), "tracecraft", "regions.json")
        self._region_key = f"{self.endpoint} {self.bucket} {self.region}"
        found = _read_json_file(self._regions_path).get(self._region_key)
        if isinstance(found, str) and _is_region(found) and found != self.region:
            self._move(found)

    def _aim(self, url, timeout=None, max_attempts=None, verify=True):
        """Send every request to `url` (_split_url's parts), on a new connection."""
        scheme, hostname, port, base_path = url
        host = hostname if self.addressing == "path" else f"{self.bucket}.{hostname}"
        self.host_header = _host_header(scheme, host, port)
        # A path on the endpoint (a gateway's namespace, say) is part of every signed path.
        self.base_path = base_path.rstrip("/")
        if self.transport is not None:
            timeout, max_attempts = self.transport.timeout, self.transport.max_attempts
            verify = self.transport.verify
            self.transport.close()
        self.transport = Transport(scheme, host, port, timeout, max_attempts, verify)

    def _move(self, region):
        """Sign for `region` from now on, and on AWS's own endpoint (s3.REGION.amazonaws.com) send
        there too; other endpoints (MinIO, R2...) keep their address.  `endpoint` stays the
        configured one: it names the store (describe(), what agents remember)."""
        self.region = region
        scheme, hostname, port, _ = url = _split_url(self.endpoint)
        # s3[-fips][.dualstack].REGION.amazonaws.com keeps its kind (FIPS stays FIPS).
        names = ["s3", region, "amazonaws", "com"] if hostname == "s3.amazonaws.com" else \
            hostname.split(".")
        if scheme == "https" and len(names) in (4, 5) and names[0] in ("s3", "s3-fips") and \
                names[1:-3] in ([], ["dualstack"]) and names[-2:] == ["amazonaws", "com"] and \
                _is_region(names[-3]):
            names[-3] = region
            url = (scheme, ".".join(names), port, url[3])
        self._aim(url)

    def _moved(self, resp, method, key):
        """Whether the answer says the bucket lives in another region than the one signed for
        (AWS: 301 PermanentRedirect with x-amz-bucket-region, or 400 AuthorizationHeaderMalformed
        naming the region), in which case the store now aims there, remembered on this machine
        so that later calls need no detour."""
        if resp.status == 400 and method == "HEAD" and key is not None and not resp.body \
                and "x-amz-bucket-region" not in resp.headers:
            # A HEAD of an object answers 400 with nothing to tell; the bucket's own HEAD does
            # (this very check, one level down, moves the store if so).
            before = self.region
            try:
                self.request("HEAD")
            except StoreError:
                pass
            return self.region != before
        if resp.status != 301 and (resp.status != 400 or "x-amz-bucket-region" not in resp.headers
                                   and _xml_field(resp.body, "Code") !=
                                   "AuthorizationHeaderMalformed"):
            return False
        region = resp.headers.get("x-amz-bucket-region") or _xml_field(resp.body, "Region")
        if not _is_region(region) or region == self.region:
            return False
        self._move(region)
        regions = _read_json_file(self._regions_path)
        regions[self._region_key] = region
        try:
            os.makedirs(os.path.dirname(self._regions_path), mode=0o700, exist_ok=True)
            replace_file(self._regions_path, json.dumps(dict(list(regions.items())[-64:]))
                         .encode("utf-8"))
        except OSError:
            pass   # remembering saves a request next time; it is never a reason to fail
        return True

    check_bucket = staticmethod(check_bucket)

    # The keys of the moment (a long-running process renews temporary ones): what a redactor hides.
    access_key = property(lambda self: self.credentials.access_key)
    secret_key = property(lambda self: self.credentials.secret_key)
    session_token = property(lambda self: self.credentials.token)

    def describe(self):
        return f"s3 bucket {self.bucket} at {self.endpoint}"

    def close(self):
        self.transport.close()

    def _path(self, key=None):
        bucket_part = f"/{self.bucket}" if self.addressing == "path" else ""
        return self.base_path + bucket_part + ("/" + key if key else "/" if not bucket_part else "")

    def request(self, method, key=None, query=(), headers=(), body=b"", payload_hash=None,
                into=None, progress=None, limit=MAX_BODY):
        """Sign and send one request; S3 error answers become typed exceptions."""
        path = self._path(key)
        query = list(query)
        payload_hash = payload_hash or (EMPTY_SHA256 if not body else _sha256_hex(body))
        target = uri_encode(path, keep_slash=True)
        if query:
            target += "?" + "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in sorted(query))
        extra = list(headers)

        def make_headers():
            access_key, secret_key, token = self.credentials.keys()
            amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            signed = [("host", self.host_header), ("x-amz-date", amz_date),
                      ("x-amz-content-sha256", payload_hash)] + extra
            if token:
                signed.append(("x-amz-security-token", token))
            creq, names = canonical_request(method, path, query, signed, payload_hash)
            out = dict(signed)
            out["Authorization"] = authorization(access_key, secret_key, self.region, "s3",
                                                 amz_date, creq, names)
            return out

        deadline = time.monotonic() + self.transport.timeout
        for _ in range(2):   # once more only in the region the bucket was found in, or with new keys
            try:
                resp = self.transport.request(method, target, make_headers, body, into, progress,
                                              limit)
            except CorruptObject as exc:
                raise CorruptObject(f"{key or 'a listing'}: {exc}") from None
            if not (self._moved(resp, method, key) or self._renewed(resp)):
                break
        if resp.status in (302, 307) and self.follows_redirects and method in ("GET", "HEAD"):
            return self._follow(resp, method, key, into, progress, deadline)
        if resp.status >= 300:
            raise self._error(resp, method, key)
        return resp

    def _renewed(self, resp):
        """Whether the store said the session token expired, and new keys were fetched: they
        expired sooner than they said (a clock off, a session revoked)."""
        if resp.status not in (400, 403) or self.credentials.refresh is None \
                or _xml_field(resp.body, "Code") not in EXPIRED_TOKEN:
            return False
        self.credentials.renew(force=True)
        return True

    def _follow(self, redirect, method, key, into, progress, deadline):
        """Fetch a redirect's target without our credentials: the Authorization header must
        never leave for another host.  The gateway's ETag stays the version, and a body whose
        MD5 does not match it (a stale CDN copy) is refused, since compare-and-swap relies on
        body and version belonging together."""
        from urllib.parse import urljoin
        location = urljoin(self.endpoint + "/", redirect.headers.get("location", ""))
        where, _, query = location.partition("?")
        url = _split_url(where)
        if url is None or (url[0] != "https" and not (url[0] == "http" and _is_loopback(url[1]))):
            raise StoreError(f"the store redirected {key} to {shown(location)[:100]!r}, which is "
                             "not an https URL: refused")
        scheme, host, port, path = url
        target = uri_encode(path or "/", keep_slash=True) if not path.isascii() else (path or "/")
        target += f"?{query}" if query else ""
        netloc = _host_header(scheme, host, port)
        cdn = Transport(scheme, host, port, verify=self.transport.verify)
        try:
            resp = cdn.request(method, target, lambda: {"Host": netloc}, b"", into, progress,
                               MAX_RECORD, deadline)
        finally:
            cdn.close()
        if resp.status != 200:
            raise StoreError(f"fetching {key} from {shown(host)} (where the store redirected) "
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
            raise StoreError(f"{shown(host)} served a copy of {key} that does not match its "
                             "version (a stale cache?); try again")
        return resp

    def _error(self, resp, method, key):
        error = self._classify(resp, method, key)
        error.retried = resp.attempts > 1
        return error

    def _classify(self, resp, method, key):
        # What the server says is shown cleaned and cut short: it may be anything at all.
        code = shown(_xml_field(resp.body, "Code")[:64])
        message = shown(self.credentials.hide(_xml_field(resp.body, "Message"))[:300])
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
        if code in EXPIRED_TOKEN:
            return BadCredentials(f"the store at {self.endpoint} says the session token has "
                                  f"expired ({code}): {self.credentials.source} gave it")
        if code in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AuthorizationHeaderMalformed"):
            hint = ("the secret key is probably wrong" if code == "SignatureDoesNotMatch"
                    else "the store does not know this access key")
            return BadCredentials(f"the store at {self.endpoint} refused the credentials ({code}): "
                                  f"{hint}; check the access key and secret key (or the AWS_* "
                                  "variables)")
        if code in ("BadDigest", "InvalidDigest", "XAmzContentSHA256Mismatch"):
            return BadDigest(f"the store refused {what}: the bytes it received do not match "
                             "their digest (the file changed while it was sent)")
        if status == 301 or code == "PermanentRedirect":
            return StoreError(f"the store at {self.endpoint} says bucket {self.bucket} must be "
                              "reached elsewhere (PermanentRedirect): check --endpoint, "
                              "--region and --addressing")
        if code == "RequestTimeTooSkewed":
            return StoreError(f"the store at {self.endpoint} rejected the request time: this "
                              "machine's clock is off by more than 15 minutes; fix it (NTP)")
        if status == 403 or code == "AccessDenied":
            return AccessDenied(f"access denied by the store for {method} {what} ({code or 403}): "
                                "check that the credentials may read and write this bucket")
        return StoreError(f"the store answered {status} {code or ''} for {method} {what}"
                          + (f": {message}" if message else ""))

    def get(self, key, into=None, progress=None):
        resp = self.request("GET", key, into=into, progress=progress, limit=MAX_RECORD)
        return self._blob(key, resp, None if into is not None else resp.body)

    def head(self, key):
        return self._blob(key, self.request("HEAD", key), None)

    def _blob(self, key, resp, body):
        h = resp.headers
        size = int(h.get("content-length") or 0)
        return Blob(key, body, h.get("etag"), size, _http_date(h.get("last-modified")),
                    _http_date(h.get("date")))

    def put(self, key, body, if_none_match=False, if_match=None, content_type=None, progress=None,
            digests=None):
        if if_none_match and if_match:
            raise UsageError("a write cannot be both create-only and compare-and-swap")
        if not isinstance(body, (bytes, bytearray)):
            return self._put_file(key, body, if_none_match, if_match, content_type, progress)
        headers = [("content-type", content_type or "application/octet-stream")]
        if if_none_match:
            headers.append(("if-none-match", "*"))
        elif if_match:
            headers.append(("if-match", if_match))
        if digests:   # the store checks both, so bytes that changed on the way never land
            headers.append(("content-md5", _base64(digests[1])))
        resp = self.request("PUT", key, headers=headers, body=body, progress=progress,
                            payload_hash=digests[0] if digests else None)
        return resp.headers.get("etag")

    def stage(self, key, body, content_type=None, progress=None):
        """Up to multipart_threshold() bytes: read into memory, committed with one PUT.  Above
        it: a multipart upload whose parts are sent as the file is read, committed by
        CompleteMultipartUpload (only then is the object there)."""
        reader = FileReader(body)
        threshold = multipart_threshold()
        if reader.size > threshold:
            return self._stage_parts(key, reader, part_size(reader.size, threshold),
                                     content_type, progress)
        data = reader.read(reader.size)
        reader.check()

        def put(if_none_match, if_match):
            return self.put(key, data, if_none_match=if_none_match, if_match=if_match,
                            content_type=content_type, progress=progress,
                            digests=reader.digests())
        return Staged(reader.size, reader.digests(), put, lambda: None)

    def _stage_parts(self, key, reader, size, content_type, progress):
        """Create a multipart upload and send the file's parts, PARTS_IN_FLIGHT at a time on
        connections of their own, each part signed with its SHA-256 and sent with its MD5 (the
        store refuses a part that changed on the way).  Any failure or interruption aborts the
        upload, so that no part is left to be paid for; the parts of a process killed outright
        are aborted by the next multipart upload to the key, once a day old."""
        self._abort_uploads(key, lambda began, now: now - began > STALE_UPLOAD_SECONDS)
        asked = time.monotonic()
        created = self.request("POST", key, query=[("uploads", "")],
                               headers=[("content-type", content_type or
                                         "application/octet-stream")])
        upload_id = _xml_field(created.body, "UploadId")
        if not upload_id:
            raise StoreError(f"the store answered CreateMultipartUpload for {key} without an "
                             "UploadId (does it support multipart uploads?)")
        if created.attempts > 1:
            # An attempt whose answer was lost may have begun an upload never heard of: those
            # of this key begun while this request lasted are aborted (the store's clock).
            took = time.monotonic() - asked + 5
            self._abort_uploads(key, lambda began, now: now - began <= took, keep=upload_id)
        try:
            parts = self._send_parts(key, upload_id, reader, size, progress)
            reader.check()
        except BaseException:
            self._abort_upload(key, upload_id)
            raise
        # The ETag S3 gives the whole: the MD5 of the parts' MD5s, and their count.
        expected = '"%s-%d"' % (_hash("md5", b"".join(bytes.fromhex(md5) for _, md5 in parts))
                                .hexdigest(), len(parts))
        listing = "".join(f"<Part><PartNumber>{number}</PartNumber><ETag>{_xml_text(etag)}</ETag>"
                          "</Part>" for number, (etag, _) in enumerate(parts, 1))
        document = f"<CompleteMultipartUpload>{listing}</CompleteMultipartUpload>".encode()

        def complete(if_none_match, if_match):
            headers = [("content-type", "application/xml")]
            if if_none_match:
                headers.append(("if-none-match", "*"))
            elif if_match:
                headers.append(("if-match", if_match))
            try:
                resp = self.request("POST", key, query=[("uploadId", upload_id)],
                                    headers=headers, body=document)
            except (PreconditionFailed, NoSuchKey) as exc:
                # A retried Complete whose first attempt went through finds the upload gone
                # (or the object there): the object is ours if it has the ETag ours would.
                if exc.retried and self._etag_or_none(key) == expected:
                    return expected
                exc.retried = False   # told apart already: the object there is not ours
                raise
            text = resp.body.decode("utf-8", "replace")
            if "CompleteMultipartUploadResult" not in text:   # S3 may fail after its 200
                raise StoreError(f"the store could not complete the upload of {key} "
                                 f"({shown(_xml_field(text, 'Code')[:64]) or 'no result'}): "
                                 "try again")
            return _xml_field(text, "ETag") or expected
        return Staged(reader.size, reader.digests(), complete,
                      lambda: self._abort_upload(key, upload_id), expected)

    def _send_parts(self, key, upload_id, reader, size, progress):
        """[(ETag, MD5 hex)] of the parts of `reader`, read in order by this thread (which
        hashes the whole) and sent by PARTS_IN_FLIGHT threads (which hash each part)."""
        import queue
        import threading
        count = max(1, -(-reader.size // size))
        jobs, parts, failed, workers = queue.Queue(maxsize=1), [None] * count, [], []
        sent, lock = [0] * count, threading.Lock()

        def report(number, done):
            with lock:
                sent[number] = done
                progress(sum(sent), reader.size)

        def send():
            worker = self._worker()
            workers.append(worker)
            try:
                for number, data in iter(jobs.get, None):
                    if failed:
                        continue
                    md5 = _hash("md5", data).hexdigest()
                    resp = worker.request(
                        "PUT", key, query=[("partNumber", str(number + 1)),
                                           ("uploadId", upload_id)],
                        headers=[("content-md5", _base64(md5))], body=data,
                        payload_hash=_hash("sha256", data).hexdigest(),
                        progress=progress and (lambda done, _, n=number: report(n, done)))
                    parts[number] = (resp.headers.get("etag") or "", md5)
            except BaseException as exc:   # the main thread raises it
                failed.append(exc)
            finally:
                worker.close()
        threads = [threading.Thread(target=send, daemon=True)
                   for _ in range(min(PARTS_IN_FLIGHT, count))]
        for thread in threads:
            thread.start()
        try:
            for number in range(count):
                data = reader.read(size)
                while not failed:
                    try:
                        jobs.put((number, data), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if failed:
                    break
        except BaseException as exc:   # an interruption: the senders take no further part
            failed.append(exc)
            raise
        finally:
            # Every sender stops (told by a None each), after its part, before an abort; once
            # anything failed, the parts in flight fail at once too, their connections shut.
            told, cut = 0, False
            while any(thread.is_alive() for thread in threads):
                if failed and not cut:
                    for worker in list(workers):
                        worker.transport.cancel()
                    cut = True
                try:
                    if told < len(threads):
                        jobs.put(None, timeout=0.05)
                        told += 1
                    else:
                        next((t for t in threads if t.is_alive()), threads[0]).join(0.05)
                except queue.Full:
                    pass
        if failed:
            raise failed[0]
        return parts

    def _worker(self):
        """This store on a connection of its own, for a thread."""
        import copy
        worker, t = copy.copy(self), self.transport
        worker.transport = Transport(t.scheme, t.host, t.port, t.timeout, t.max_attempts, t.verify)
        return worker

    def _etag_or_none(self, key):
        try:
            return self.head(key).etag
        except NoSuchKey:
            return None

    def _abort_upload(self, key, upload_id):
        """Abort a multipart upload, so that its parts are deleted; failing to is not an error
        of its own (the next upload to the key aborts it once it is a day old)."""
        try:
            self.request("DELETE", key, query=[("uploadId", upload_id)])
        except (TracecraftError, OSError):
            pass

    def _abort_uploads(self, key, chosen, keep=None):
        """Abort the unfinished multipart uploads of `key` that `chosen(began, now)` picks (the
        store's clock), but `keep`, at most STALE_ABORTS of them: before an upload, those a day
        old or more (a process killed outright, SIGKILL or a lost machine, could not abort its
        own; a day, as an upload of a huge file may well last hours).  Stores that cannot list
        them are left."""
        try:
            resp = self.request("GET", query=[("uploads", ""), ("prefix", key)])
        except TracecraftError:
            return
        now = _http_date(resp.headers.get("date")) or time.time()
        stale = [_xml_field(upload, "UploadId") for upload in _xml_values(
            resp.body.decode("utf-8", "replace"), "Upload", raw=True)
            if _xml_field(upload, "Key") == key and _xml_field(upload, "UploadId") != keep and
            _iso_date(_xml_field(upload, "Initiated")) is not None and
            chosen(_iso_date(_xml_field(upload, "Initiated")), now)]
        for upload_id in stale[:STALE_ABORTS]:   # the rest by the uploads after this one
            self._abort_upload(key, upload_id)

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
        token, left, seen, tokens = None, limit, 0, set()
        while True:
            query = [("list-type", "2"), ("prefix", prefix)]
            if left is not None:
                query.append(("max-keys", str(min(left, 1000))))
            if token:
                query.append(("continuation-token", token))
            elif start_after:
                query.append(("start-after", start_after))
            resp = self.request("GET", query=query)
            text = resp.body.decode("utf-8", "replace")
            server_time = _http_date(resp.headers.get("date"))
            if "ListBucketResult" not in text:
                raise StoreError(f"{self.endpoint} answered a listing that is not S3's XML "
                                 "(is the endpoint an S3 server?)")
            for block in _xml_values(text, "Contents", raw=True, complete=True):
                size = _xml_field(block, "Size")
                yield Entry(_xml_field(block, "Key"),
                            int(size) if size.isascii() and size.isdigit() and len(size) < 20 else 0,
                            _iso_date(_xml_field(block, "LastModified")),
                            _xml_field(block, "ETag") or None, server_time)
                seen += 1
                if left is not None:
                    left -= 1
                    if left <= 0:
                        return
            token = _xml_field(text, "NextContinuationToken")
            if not token:
                return
            if token in tokens or seen > MAX_LISTED:   # a listing must end
                raise StoreError(f"the store's listing of {prefix or 'the bucket'} does not end "
                                 f"({'a page repeats' if token in tokens else f'over {seen} keys'})")
            tokens.add(token)

    def ensure_bucket(self, prefix="", create=True):
        try:
            self.request("HEAD")
            return False
        except NoSuchBucket:
            if not create:
                raise
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


def _is_region(text):
    """An AWS region's shape (eu-west-1, us-gov-east-1): what a store's answer may name."""
    return isinstance(text, str) and 0 < len(text) <= 32 and text.isascii() and \
        text[0].isalpha() and all(c.islower() or c.isdigit() or c == "-" for c in text)


def _read_json_file(path):
    """The JSON object in a small file tracecraft keeps on this machine, or {} when it is
    missing, unreadable or not one (a later write replaces it)."""
    try:
        with open(path, "rb") as f:
            found = loads(f.read(1 << 20))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return found if isinstance(found, dict) else {}


def _sha256_hex(body):
    return _hash("sha256", body).hexdigest()


def _base64(hex_digest):
    """A digest as S3's Content-MD5 header wants it."""
    import binascii
    return binascii.b2a_base64(bytes.fromhex(hex_digest), newline=False).decode()


def _xml_text(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


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
        if settings.get("credentials") is None and (not access_key or not secret_key):
            hint = (" HF_TOKEN is set, but the gateway signs with S3 keys: generate them from "
                    "your token at https://huggingface.co/settings/tokens (\"Generate S3 "
                    "credentials\") and set HF_S3_ACCESS_KEY_ID/HF_S3_SECRET_ACCESS_KEY"
                    if os.environ.get("HF_TOKEN") else
                    " Generate them at https://huggingface.co/settings/tokens (\"Generate S3 "
                    "credentials\" on a token with write access)")
            env = "set HF_S3_ACCESS_KEY_ID and HF_S3_SECRET_ACCESS_KEY." + hint
            raise NoCredentials("no S3 credentials for Hugging Face: pass access_key= and "
                              f"secret_key= (HFAK...), or {env}", cli="no S3 credentials for "
                              f"Hugging Face: pass --access-key/--secret-key (HFAK...) to init, "
                              f"or {env}")
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
SECRET_FIELDS = ("secret_key", "session_token", "access_key")   # values never shown


def user_config_path():
    return os.path.join(xdg_dir("config"), "tracecraft", "config.json")


def parents(directory):
    """`directory` and each directory above it, up to the root."""
    while True:
        yield directory
        parent = os.path.dirname(directory)
        if parent == directory:
            return
        directory = parent


def find_config(start=None):
    """The config file that applies here: $TRACECRAFT_CONFIG, else the nearest .tracecraft.json
    in this directory or a parent, else the user's config; None when there is none."""
    explicit = os.environ.get("TRACECRAFT_CONFIG")
    if explicit:
        if not os.path.isfile(explicit):
            raise ConfigError(f"TRACECRAFT_CONFIG names {explicit}, which is not a file")
        return explicit
    for directory in parents(os.path.abspath(start or current_directory())):
        candidate = os.path.join(directory, CONFIG_NAME)
        if os.path.isfile(candidate) and _trusted(candidate):
            return candidate
    candidate = user_config_path()
    return candidate if os.path.isfile(candidate) else None


def _trusted(path):
    """A config found by walking up must be the user's own and not writable by others: one
    planted in a shared parent (/tmp) could redirect an agent to someone else's store."""
    if os.name != "posix":
        return True
    try:
        stat = os.stat(path)
    except OSError:
        return False
    if stat.st_uid != os.getuid() or stat.st_mode & 0o022:
        print(f"tracecraft: warning: ignoring {shown(path)}: it is not owned by you or is "
              "writable by others", file=sys.stderr)
        return False
    return True


def load_config(path):
    try:
        with open(path, "rb") as f:
            config = loads(f.read().decode("utf-8"))
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
        try:
            mode = os.stat(path).st_mode & 0o777
        except OSError:
            mode = 0
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
    if settings.get("unsafe_store"):
        warnings.append("this store ignores conditional writes (accepted at init with "
                        "--accept-unsafe-store): claims, memory updates and inboxes are not safe")
    return warnings


def write_config(path, config):
    """Write the config with mode 0600 (it may hold a secret key), atomically and never through
    a link planted at its name or at a temporary one."""
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        replace_file(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot write config {path}: {exc.strerror or exc}") from None


# -- credentials: the chain botocore and the AWS CLI follow, in their order ------------------------

def resolve_credentials(settings):
    """(Credentials or None, the AWS profile's region or None) for an S3 or HF store.  First the
    keys given to init (the config) or to connect(), then the environment; then, for S3 only,
    the AWS profile, container credentials and instance metadata (_AwsChain).  The common case,
    keys in the config or the environment, reads no other file and sends no request."""
    env = os.environ
    if settings.get("access_key") and settings.get("secret_key"):
        where = settings.get("_path")
        return Credentials(settings["access_key"], settings["secret_key"],
                           settings.get("session_token"), method="explicit",
                           source=f"the keys in {where}" if where else
                           "the keys given to tracecraft"), None
    names = (HF_ENV_KEYS,) if settings.get("backend") == "hf" else ()
    for variables in names + (AWS_ENV_KEYS,):
        found = _environment_keys(env, variables)
        if found:
            return found, None
    if settings.get("backend") == "hf":
        return None, None   # an AWS profile or role cannot sign for the Hub's gateway
    chain = _AwsChain(settings)
    return chain.resolve(), chain.profile_region()


AWS_ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
HF_ENV_KEYS = ("HF_S3_ACCESS_KEY_ID", "HF_S3_SECRET_ACCESS_KEY", None)


def _environment_keys(env, variables):
    """Credentials from the environment variables `variables` (key, secret, token or None),
    None when they are not set; half a pair is a mistake, not "no keys"."""
    key, secret, token = variables
    if env.get(key) and env.get(secret):
        return Credentials(env[key], env[secret], token and env.get(token) or None,
                           source=f"the environment ({key})", method="env")
    if env.get(key) or env.get(secret):
        has, lacks = (key, secret) if env.get(key) else (secret, key)
        raise NoCredentials(f"{has} is set without {lacks}: set both, or neither")
    return None


CONTAINER_HOSTS = ("169.254.170.2", "169.254.170.23", "fd00:ec2::23")   # ECS and EKS Pod Identity
CREDENTIAL_SOURCES = ("Environment", "Ec2InstanceMetadata", "EcsContainer")
PROCESS_TIMEOUT = 60   # seconds a credential_process may take
MAX_ROLE_CHAIN = 16    # roles assumed one from another (source_profile) before a profile's keys


class _AwsChain:
    """What botocore tries after the environment, in its order: the profile (AWS_PROFILE, else
    the config's `profile`, else default) in the shared files (AWS_SHARED_CREDENTIALS_FILE,
    AWS_CONFIG_FILE), where a role to assume (role_arn with source_profile or
    credential_source) comes first, then a web identity, SSO, keys in the credentials file, a
    credential_process and keys in the config file; then container credentials, then the
    instance metadata service (IMDSv2).  Temporary credentials are kept across calls in the
    private cache directory until they are due (Credentials.due)."""

    def __init__(self, settings):
        env, home = os.environ, os.path.expanduser("~")
        self.env, self.settings, self._files = env, settings, None
        # botocore reads AWS_DEFAULT_PROFILE before AWS_PROFILE.
        variable = next((v for v in ("AWS_DEFAULT_PROFILE", "AWS_PROFILE") if env.get(v)), None)
        self.name = variable and env[variable] or settings.get("profile") or "default"
        self.named_by = variable or (settings.get("_path") or "the settings"
                                     if settings.get("profile") else None)
        # botocore expands ~ and $VARS in them: a Dockerfile's ENV or a CI file sets them raw.
        self.paths = tuple(os.path.expanduser(os.path.expandvars(path)) for path in (
            env.get("AWS_SHARED_CREDENTIALS_FILE") or os.path.join(home, ".aws", "credentials"),
            env.get("AWS_CONFIG_FILE") or os.path.join(home, ".aws", "config")))

    def files(self):
        """(profiles in the credentials file, profiles in the config file, sso-sessions)."""
        if self._files is None:
            profiles, sessions = {}, {}
            for section, values in _ini_sections(self.paths[1]).items():
                kind, _, name = section.partition(" ")
                if section == "default" or kind == "profile" and name.strip():
                    profiles[name.strip() or section] = values
                elif kind == "sso-session" and name.strip():
                    sessions[name.strip()] = values
            self._files = _ini_sections(self.paths[0]), profiles, sessions
        return self._files

    def profile_region(self):
        return self.files()[1].get(self.name, {}).get("region") or None

    @property
    def region(self):
        """The region STS is asked in: the config's, the environment's, the profile's."""
        region = (self.settings.get("region") or self.env.get("AWS_REGION")
                  or self.env.get("AWS_DEFAULT_REGION") or self.profile_region() or "us-east-1")
        if not _is_region(region):
            raise ConfigError(f"region {shown(region)[:40]!r} is not an AWS region name")
        return region

    def resolve(self):
        found = self.from_profile(self.name, [self.name], top=True)
        if found is None and self.named_by:
            in_credentials, in_config, _ = self.files()
            if self.name not in in_credentials and self.name not in in_config:
                raise NoCredentials(f"the AWS profile {self.name!r} ({self.named_by} names it) is "
                                    f"in neither {self.paths[0]} nor {self.paths[1]}")
        return found or self.container() or self.instance()

    def from_profile(self, name, visited, top):
        """The credentials profile `name` gives (None if it gives none).  A source profile
        (not `top`) never reads the environment, and its own keys win over its role."""
        in_credentials, in_config, _ = self.files()
        own, configured = in_credentials.get(name, {}), in_config.get(name, {})
        profile = dict(configured, **own)
        has_keys = "aws_access_key_id" in profile or "aws_secret_access_key" in profile
        if "role_arn" in profile and "web_identity_token_file" not in profile and \
                (top or not has_keys):
            return self.assume_role(name, profile, visited)
        env = self.env if top else {}
        if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or profile.get("web_identity_token_file"):
            return self.web_identity(name, profile, env)
        if any(profile.get(k) for k in ("sso_session", "sso_start_url", "sso_account_id",
                                        "sso_role_name")):
            return self.sso(name, profile)
        if "aws_access_key_id" in own or "aws_secret_access_key" in own:
            return self.static(name, own, self.paths[0], "shared-credentials-file")
        if profile.get("credential_process"):
            return self.process(name, profile["credential_process"])
        if "aws_access_key_id" in configured or "aws_secret_access_key" in configured:
            return self.static(name, configured, self.paths[1], "config-file")
        return None

    def static(self, name, section, path, method):
        key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
        if not key or not secret:
            has, lacks = ("aws_access_key_id", "aws_secret_access_key")[::1 if key else -1]
            raise NoCredentials(f"profile {name} in {path} has {has} without {lacks}")
        return Credentials(key, secret, section.get("aws_session_token") or None,
                           source=f"profile {name}: keys in {path}", method=method)

    def session_name(self, given):
        """The role session's name, part of what the keys are kept under: the profile's, else
        the agent's (botocore says botocore-session-<epoch>; an agent's id says more, is steady,
        and keeps agents apart in CloudTrail), else None (then _session_name() at the fetch)."""
        agent = self.settings.get("agent")
        if given or not isinstance(agent, str) or not agent:
            return given or None
        return "tracecraft-" + "".join(c if c.isascii() and (c.isalnum() or c in "+=,.@_-")
                                       else "-" for c in agent)[:53]

    def assume_role(self, name, profile, visited):
        role, where = profile["role_arn"], f"profile {name}"
        if profile.get("mfa_serial"):
            raise NoCredentials(f"{where} needs an MFA code (mfa_serial) to assume {role}, and "
                                "tracecraft runs where no one can type it (an agent's run has no "
                                "terminal): use a profile without mfa_serial, or run `aws "
                                f"configure export-credentials --profile {name} --format env` in "
                                "a terminal and export what it prints")
        source, sourced = profile.get("source_profile"), profile.get("credential_source")
        if bool(source) == bool(sourced):
            raise NoCredentials(f"{where} has role_arn and needs one of source_profile and "
                                f"credential_source{', not both' if source else ''}")
        if sourced and sourced not in CREDENTIAL_SOURCES:
            raise NoCredentials(f"{where}: credential_source {shown(sourced)[:40]!r} is not one "
                                f"of {', '.join(CREDENTIAL_SOURCES)}")
        if source:
            in_credentials, in_config, _ = self.files()
            keys = "aws_access_key_id" in profile or "aws_secret_access_key" in profile
            if source in visited and (source != name or not keys):
                raise NoCredentials("the profiles' source_profile settings form a loop: "
                                    + " -> ".join(visited + [source]))
            if len(visited) > MAX_ROLE_CHAIN:
                raise NoCredentials(f"{where}: a chain of more than {MAX_ROLE_CHAIN} roles (by "
                                    f"source_profile, from {visited[0]}): refused")
            if source not in in_credentials and source not in in_config:
                raise NoCredentials(f"{where}: its source_profile {source} is in neither "
                                    f"{self.paths[0]} nor {self.paths[1]}")
        session = self.session_name(profile.get("role_session_name"))
        params = {"RoleArn": role}
        if profile.get("external_id"):
            params["ExternalId"] = profile["external_id"]
        if profile.get("duration_seconds"):
            duration = profile["duration_seconds"]
            if not (duration.isascii() and duration.isdigit() and 900 <= int(duration) <= 43200):
                raise NoCredentials(f"{where}: duration_seconds must be a number of seconds from "
                                    "900 to 43200")
            params["DurationSeconds"] = duration

        def fetch():
            if sourced:
                base = self.credential_source(where, sourced)
            else:
                base = self.from_profile(source, visited + [source], top=False)
                if base is None:
                    raise NoCredentials(f"{where}: its source_profile {source} gives no "
                                        "credentials")
            return self.sts("AssumeRole", dict(params, RoleSessionName=_session_name(session)),
                            base, f"{where}: assume role {role}", "assume-role")
        return self.temporary(["assume-role", name, role, source or sourced, self.paths,
                               session, params.get("ExternalId"),
                               params.get("DurationSeconds")], fetch)

    def credential_source(self, where, sourced):
        found = _environment_keys(self.env, AWS_ENV_KEYS) if sourced == "Environment" else \
            self.container() if sourced == "EcsContainer" else \
            self.instance() if sourced == "Ec2InstanceMetadata" else None
        if found is None:
            raise NoCredentials(f"{where}: credential_source {sourced} gives no credentials here")
        return found

    def web_identity(self, name, profile, env):
        via = "the environment" if env.get("AWS_WEB_IDENTITY_TOKEN_FILE") else f"profile {name}"
        token_file = env.get("AWS_WEB_IDENTITY_TOKEN_FILE") or profile["web_identity_token_file"]
        role = env.get("AWS_ROLE_ARN") or profile.get("role_arn")
        if not role:
            raise NoCredentials(f"{via} names a web identity token file but no role: set "
                                "AWS_ROLE_ARN or role_arn in the profile")
        session = self.session_name(env.get("AWS_ROLE_SESSION_NAME")
                                    or profile.get("role_session_name"))
        source = f"{via}: web identity, role {role}"

        def fetch():
            return self.sts("AssumeRoleWithWebIdentity", {
                "RoleArn": role, "RoleSessionName": _session_name(session),
                "WebIdentityToken": _read_token(token_file, source, "the token file")},
                None, source, "assume-role-with-web-identity")
        return self.temporary(["web-identity", role, token_file, session], fetch)

    def sts(self, action, params, signer, source, method):
        """Temporary credentials from STS's `action`, signed with `signer` (None: unsigned)."""
        env = self.env
        endpoint = env.get("AWS_ENDPOINT_URL_STS") or env.get("AWS_ENDPOINT_URL") or \
            f"https://sts.{self.region}.amazonaws.com"
        form = dict(Action=action, Version="2011-06-15", **params)
        body = "&".join(f"{uri_encode(k)}={uri_encode(v)}" for k, v in form.items()).encode()
        resp = _ask(endpoint, source, "POST", [("content-type", "application/x-www-form-urlencoded;"
                                                " charset=utf-8")], body, signer, self.region)
        if resp.status != 200:
            code = shown(_xml_field(resp.body, "Code"))[:64]
            message = _xml_field(resp.body, "Message")
            message = (signer.hide(message) if signer else message).replace(
                params.get("WebIdentityToken") or "\0", "***")
            message = shown(message)[:300]
            raise NoCredentials(f"{source}: STS refused {action} ({resp.status} {code})"
                                + (f": {message}" if message else ""))
        fields = [_xml_field(resp.body, name) for name in ("AccessKeyId", "SecretAccessKey",
                                                           "SessionToken", "Expiration")]
        return _temporary_credentials(source, method, *fields)

    def sso(self, name, profile):
        where, login = f"profile {name}", f"run `aws sso login --profile {name}`"
        session = profile.get("sso_session")
        if session:
            found = self.files()[2].get(session)
            if found is None:
                raise NoCredentials(f"{where} names sso_session {session}, which has no "
                                    f"[sso-session {session}] section in {self.paths[1]}")
            start, region, cached_as = found.get("sso_start_url"), found.get("sso_region"), session
        else:
            start, region = profile.get("sso_start_url"), profile.get("sso_region")
            cached_as = start
        account, role = profile.get("sso_account_id"), profile.get("sso_role_name")
        missing = [option for option, value in (("sso_start_url", start), ("sso_region", region),
                                                ("sso_account_id", account),
                                                ("sso_role_name", role)) if not value]
        if missing:
            raise NoCredentials(f"{where} is an SSO profile without {', '.join(missing)}")
        if not _is_region(region):
            raise NoCredentials(f"{where}: sso_region {shown(region)[:40]!r} is not a region name")
        source = f"{where}: SSO account {account}, role {role}"

        def fetch():
            path = os.path.join(os.path.expanduser("~"), ".aws", "sso", "cache",
                                _hash("sha1", cached_as.encode("utf-8")).hexdigest() + ".json")
            try:
                with open(path, "rb") as f:
                    login_record = loads(f.read(1 << 20))
            except FileNotFoundError:
                raise NoCredentials(f"{where}: no SSO login is cached ({path}): {login}") from None
            except (OSError, ValueError, UnicodeDecodeError):
                login_record = None
            token = login_record.get("accessToken") if isinstance(login_record, dict) else None
            until = _aws_time(login_record.get("expiresAt")) if token else None
            if not isinstance(token, str) or not token.isprintable() or until is None:
                raise NoCredentials(f"{where}: the SSO login cached in {path} cannot be read: "
                                    f"{login}")
            if until <= time.time():
                raise NoCredentials(f"{where}: the SSO login expired "
                                    f"{_duration_words(time.time() - until)} ago: {login}")
            portal = self.env.get("AWS_ENDPOINT_URL_SSO") or self.env.get("AWS_ENDPOINT_URL") \
                or f"https://portal.sso.{region}.amazonaws.com"
            query = f"account_id={uri_encode(account)}&role_name={uri_encode(role)}"
            resp = _ask(portal.rstrip("/") + "/federation/credentials?" + query, source,
                        headers=[("x-amz-sso_bearer_token", token)])
            if resp.status in (401, 403):
                raise NoCredentials(f"{source}: the SSO portal refused the login "
                                    f"({resp.status}): {login}")
            answer = _json_answer(resp, source, "the SSO portal").get("roleCredentials")
            answer = answer if isinstance(answer, dict) else {}
            expiration = answer.get("expiration")
            return _temporary_credentials(
                source, "sso", answer.get("accessKeyId"), answer.get("secretAccessKey"),
                answer.get("sessionToken"), expiration / 1000 if type(expiration) is int else None)
        return self.temporary(["sso", name, start, region, account, role, self.paths], fetch)

    def process(self, name, command):
        source = f"profile {name}: credential_process"

        def fetch():
            import shlex
            import subprocess
            try:
                argv = shlex.split(command)
            except ValueError as exc:
                raise NoCredentials(f"{source} is not a command line ({exc})") from None
            program = shown(argv[0])[:100] if argv else ""
            import tempfile
            try:
                # No shell, as botocore; no stdin: an MCP server's stdin is its protocol.  Its
                # output goes to files, of which 1 MiB is read: it may print without end.
                with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
                    done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                          timeout=PROCESS_TIMEOUT)
                    out.seek(0)
                    err.seek(0)
                    done.stdout, done.stderr = out.read(1 << 20), err.read(4096)
            except subprocess.TimeoutExpired:
                raise NoCredentials(f"{source}: {program} did not finish in {PROCESS_TIMEOUT} s")\
                    from None
            except (OSError, ValueError, IndexError) as exc:
                reason = os_reason(exc) if isinstance(exc, OSError) else "the command is empty"
                raise NoCredentials(f"{source}: cannot run {program!r}: {reason}") from None
            if done.returncode != 0:
                said = shown(done.stderr.decode("utf-8", "replace").strip())[:300]
                raise NoCredentials(f"{source}: {program} exited with status {done.returncode}"
                                    + (f": {said}" if said else ""))
            try:
                answer = loads(done.stdout.decode("utf-8"))
            except (ValueError, UnicodeDecodeError):
                answer = None
            if not isinstance(answer, dict) or answer.get("Version") != 1:
                raise NoCredentials(f"{source}: {program} printed no JSON object with "
                                    '"Version": 1 (and AccessKeyId, SecretAccessKey, optionally '
                                    "SessionToken and Expiration)")
            found = _temporary_credentials(source, "custom-process", answer.get("AccessKeyId"),
                                           answer.get("SecretAccessKey"),
                                           answer.get("SessionToken"), answer.get("Expiration"),
                                           temporary=False)
            found.refresh = (lambda force=False: fetch()) if found.expires else None
            return found
        return fetch()

    def container(self):
        env = self.env
        relative = env.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        url = "http://169.254.170.2" + relative if relative else \
            env.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
        if not url:
            return None
        parts = _split_url(url.partition("?")[0])
        if parts is None or not relative and not (
                parts[0] == "https" or _is_loopback(parts[1]) or parts[1] in CONTAINER_HOSTS):
            raise NoCredentials(f"AWS_CONTAINER_CREDENTIALS_FULL_URI={shown(url)[:100]!r} is "
                                "refused: it must be https, a loopback address or one of "
                                + ", ".join(CONTAINER_HOSTS))
        source = f"container credentials ({shown(url)[:100]})"

        def fetch():
            headers = []
            token_file = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
            token = env.get("AWS_CONTAINER_AUTHORIZATION_TOKEN")
            if token_file:
                token = _read_token(token_file, source, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE")
            if token:
                headers.append(("Authorization", token))
            answer = _json_answer(_ask(url, source, headers=headers, timeout=5, attempts=3),
                                  source, "the container endpoint")
            return _temporary_credentials(source, "container-role", answer.get("AccessKeyId"),
                                          answer.get("SecretAccessKey"), answer.get("Token"),
                                          answer.get("Expiration"))
        return self.temporary(["container", url], fetch)

    def instance(self):
        """Credentials of the EC2 instance's role through IMDSv2: a session token first (a GET
        without one is what IMDSv1 allowed and new instances refuse), short timeouts and one
        attempt each, as botocore; None when there is no metadata service or no role."""
        env = self.env
        if env.get("AWS_EC2_METADATA_DISABLED", "").lower() == "true":
            return None
        base = (env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT") or (
            "http://[fd00:ec2::254]" if env.get("AWS_EC2_METADATA_SERVICE_ENDPOINT_MODE", "")
            .lower() == "ipv6" else "http://169.254.169.254")).rstrip("/")
        source = "instance metadata"

        def ask(path, method="GET", headers=()):
            return _ask(base + path, source, method, headers, timeout=1.0, attempts=1)

        def fetch():
            try:
                session = ask("/latest/api/token", "PUT",
                              [("x-aws-ec2-metadata-token-ttl-seconds", "21600")])
                if session.status != 200:
                    return None
                token = [("x-aws-ec2-metadata-token", session.body.decode("latin-1").strip())]
                listed = ask("/latest/meta-data/iam/security-credentials/", headers=token)
                if listed.status != 200:
                    return None   # an instance without a role
                role = listed.body.decode("latin-1").strip().split("\n")[0].strip()
                if not (0 < len(role) <= 64 and all(c.isascii() and (c.isalnum() or c in
                                                                     "+=,.@_-") for c in role)):
                    return None   # not an IAM role name
                answer = ask("/latest/meta-data/iam/security-credentials/" + role, headers=token)
            except Unreachable:
                return None
            found = _json_answer(answer, f"{source} (role {shown(role)})", "the instance "
                                 "metadata service")
            return _temporary_credentials(f"{source} (role {shown(role)})", "iam-role",
                                          found.get("AccessKeyId"), found.get("SecretAccessKey"),
                                          found.get("Token"), found.get("Expiration"))
        return self.temporary(["instance", base], fetch)

    def temporary(self, made_by, fetch, force=False):
        """What `fetch` gives, kept in the cache under `key` (what made it) until it is due,
        and renewed by the same when it is (`force`: fetched, whatever the cache holds)."""
        env = self.env
        # Where STS and SSO are (a test's emulator, a private cloud) is part of what made them.
        key = made_by + [env.get(name) for name in ("AWS_ENDPOINT_URL_STS", "AWS_ENDPOINT_URL_SSO",
                                                    "AWS_ENDPOINT_URL")]
        path = _credentials_cache(key)
        found = _read_cached(path, key) if path and not force else None
        if found is None or found.due():
            found = fetch()
            if found is None:
                return None
            if path and found.expires:
                _write_cached(path, key, found)
        found.refresh = lambda force=False: self.temporary(made_by, fetch, force) or \
            _gone(found.source)
        return found


def _read_token(path, source, what):
    """The token in a file that a platform keeps fresh (EKS, GitHub Actions, ECS): read anew at
    each use, never kept."""
    try:
        with open(path, "rb") as f:
            return f.read(1 << 16).decode("utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise NoCredentials(f"{source}: cannot read {what} {path}: {reason}") from None


def _session_name(name):
    return name or f"tracecraft-{int(time.time())}"


def _gone(source):
    raise NoCredentials(f"{source} no longer gives credentials")


def _ask(url, source, method="GET", headers=(), body=b"", signer=None, region=None,
         timeout=None, attempts=None):
    """One request to an endpoint of credentials (STS, the SSO portal, the container or the
    instance metadata service), signed for STS with `signer` (Credentials) when given."""
    where, _, query = url.partition("?")
    parts = _split_url(where)
    if parts is None:
        raise ConfigError(f"{source}: {shown(url)[:100]!r} is not an http(s) URL")
    scheme, host, port, path = parts
    netloc = _host_header(scheme, host, port)
    target = (uri_encode(path or "/", keep_slash=True) if path else "/") + (
        "?" + query if query else "")

    def make_headers():
        out = [("host", netloc)] + list(headers)
        if signer is None:
            return dict(out)
        access_key, secret_key, token = signer.keys()
        amz_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        out.append(("x-amz-date", amz_date))
        if token:
            out.append(("x-amz-security-token", token))
        digest = _hash("sha256", body).hexdigest()
        creq, names = canonical_request(method, path or "/", [], out, digest, normalize_path=True)
        return dict(out, Authorization=authorization(access_key, secret_key, region, "sts",
                                                     amz_date, creq, names))
    transport = Transport(scheme, host, port, timeout, attempts)
    transport.peer = f"the endpoint of {source}"
    try:
        return transport.request(method, target, make_headers, body, limit=1 << 20)
    except CorruptObject:   # an answer too long to be credentials
        raise NoCredentials(f"{source}: {shown(where)[:100]} answered more than 1 MiB") from None
    finally:
        transport.close()


def _json_answer(resp, source, service):
    """The JSON object of a 200 answer, else an error that says what answered what."""
    answer = None
    if resp.status == 200:
        try:
            answer = loads(resp.body)
        except (ValueError, UnicodeDecodeError):
            pass
    if not isinstance(answer, dict):
        said = f"answered {resp.status}" if resp.status != 200 else "answered no JSON object"
        raise NoCredentials(f"{source}: {service} {said}")
    return answer


def _temporary_credentials(source, method, access_key, secret_key, token, expiration,
                           temporary=True):
    """Credentials from an answer: every field must be text (a hostile answer says anything),
    and temporary ones must say when they expire."""
    expires = expiration if isinstance(expiration, float) else _aws_time(expiration)
    wrong = [name for name, value in (("an access key", access_key), ("a secret key", secret_key),
                                      ("a session token", token if temporary else "-"))
             if not isinstance(value, str) or not value]
    if token is not None and not isinstance(token, str) and "a session token" not in wrong:
        wrong.append("a session token that is text")
    if expiration is not None and expires is None or temporary and expires is None:
        wrong.append("an expiry time tracecraft can read")
    if wrong:
        raise NoCredentials(f"{source}: the answer lacks {', '.join(wrong)}")
    if expires is not None and expires <= time.time():
        # Fetching them again would give the same: every request would ask anew.
        raise NoCredentials(f"{source} gave credentials that expired "
                            f"{_duration_words(time.time() - expires)} ago (is this machine's "
                            "clock ahead?)")
    return Credentials(access_key, secret_key, token or None, expires, source, method)


def _aws_time(value):
    """Epoch seconds of an ISO 8601 time as AWS writes an expiry (Z or an offset), or None."""
    if not isinstance(value, str) or len(value) < 19 or not value.isascii():
        return None
    offset, tail = 0, value[19:]
    if len(tail) >= 6 and tail[-6] in "+-" and tail[-3] == ":" and tail[-5:-3].isdigit() \
            and tail[-2:].isdigit():
        offset = (int(tail[-5:-3]) * 3600 + int(tail[-2:]) * 60) * (1 if tail[-6] == "+" else -1)
        value = value[:-6]
    seconds = _iso_date(value)
    return None if seconds is None else seconds - offset


def _duration_words(seconds):
    minutes = int(seconds // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 120 else \
        f"{minutes} min" if minutes else "under a minute"


def _ini_sections(path):
    """{section: {option: value}} of an AWS shared file ({} when there is none)."""
    import configparser
    try:
        with open(path, "rb") as f:
            text = f.read(1 << 20).decode("utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        reason = os_reason(exc) if isinstance(exc, OSError) else "it is not UTF-8 text"
        raise NoCredentials(f"cannot read {path}: {reason}") from None
    parser = configparser.RawConfigParser(strict=False)
    try:
        parser.read_string(text, path)
    except configparser.Error as exc:
        # Its message would quote the line, which may hold a secret: only its number is said.
        line = getattr(exc, "lineno", None) or (exc.errors[0][0] if getattr(exc, "errors", None)
                                                else "?")
        raise NoCredentials(f"{path} is not an INI file tracecraft can read (line {line})") \
            from None
    return {section: dict(parser.items(section)) for section in parser.sections()}


def _credentials_cache(key):
    """Where temporary credentials made from `key` are kept across calls: a file in a directory
    only this user may enter, else None (nothing is kept)."""
    directory = os.path.join(xdg_dir("cache"), "tracecraft", "credentials")
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        found = os.lstat(directory)
        if os.name == "posix" and found.st_uid == os.getuid() and found.st_mode & 0o077:
            os.chmod(directory, 0o700)
            found = os.lstat(directory)
    except OSError:
        return None
    if found.st_mode & 0o170000 != 0o040000 or os.name == "posix" and (
            found.st_uid != os.getuid() or found.st_mode & 0o077):
        return None   # a link, or a directory others may read: keep nothing there
    return os.path.join(directory, _hash("sha256", dumps(key).encode()).hexdigest() + ".json")


def _read_cached(path, key):
    """The credentials kept at `path` for `key`, or None: a file that is not what we wrote
    (garbage, wrong types, another key) is ignored, and replaced when new ones are fetched."""
    kept = _read_json_file(path)
    try:
        if not (kept.get("key") == dumps(key)
                and isinstance(kept.get("source"), str) and isinstance(kept.get("method"), str)
                and type(kept.get("fetched")) in (int, float)
                and type(kept.get("expires")) in (int, float)
                and kept["fetched"] < min(kept["expires"], time.time() + 60)):
            return None
        return Credentials(kept["access_key"], kept["secret_key"], kept.get("token"),
                           kept["expires"], kept["source"], kept["method"],
                           fetched=kept["fetched"])
    except (KeyError, TracecraftError):
        return None


def _write_cached(path, key, found):
    try:
        replace_file(path, dumps({
            "key": dumps(key), "access_key": found.access_key, "secret_key": found.secret_key,
            "token": found.token, "expires": found.expires, "fetched": found.fetched,
            "source": found.source, "method": found.method}).encode("utf-8"))
    except OSError:
        pass   # keeping them is a saving, never a reason to fail


def open_store(settings):
    """The Store that `settings` (a config dict, possibly with overrides) describe."""
    for field in ("backend", "bucket", "root", "endpoint", "region", "addressing", "project",
                  "agent", "access_key", "secret_key", "session_token", "profile"):
        value = settings.get(field)
        if value is not None and not isinstance(value, str):
            where = settings.get("_path") or "the settings"
            what = "" if field in SECRET_FIELDS else f" {shown(repr(value)):.40}"
            raise ConfigError(f"{field!r} in {where} must be a string, not a "
                              f"{type(value).__name__}{what}")
    store = _open_backend(settings)
    return ReadOnlyStore(store) if settings.get("read_only") else store


def _open_backend(settings):
    backend = settings.get("backend") or "local"
    bucket = settings.get("bucket") or "tracecraft"
    if backend == "local":
        return LocalStore(settings.get("root"), bucket)
    if backend not in ("s3", "hf"):
        raise ConfigError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)}")
    credentials, profile_region = resolve_credentials(settings)
    env = os.environ
    if backend == "hf":
        return HFStore(bucket, endpoint=settings.get("endpoint"), credentials=credentials,
                       verify=not settings.get("insecure"))
    return S3Store(bucket, endpoint=settings.get("endpoint") or env.get("AWS_ENDPOINT_URL_S3")
                   or env.get("AWS_ENDPOINT_URL"), region=settings.get("region")
                   or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or profile_region,
                   credentials=credentials, addressing=settings.get("addressing") or "path",
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


# ==================================================================================================
# 6. Coordination protocol.  Owns: the object layout under <project>/ and what each record means.
#    Calls: sections 1-5 (only through the Store interface).
#
#    agents/<id>.json                  heartbeat: last seen, host (what it holds: see the leases)
#    memory/<dots as slashes>.json     a JSON value, its revision and a few previous values
#    messages/<agent>/<n>.json         inbox log; messages/_broadcast/<n>.json is everyone's
#    cursors/<agent>.json              how far the agent has read each log
#    steps/<id>/claim.json             the lease: holder, generation, ttl, state, and how it ended
#    steps/<id>/status.json            written when the step ends: complete, failed or blocked
#    steps/<id>/handoff.json           the handoff for the next agent (note, next agent, ...)
#    steps/<id>/messages/<log>-<n>.json  empty: message n of that log was sent tagged with
#                                      the step (send --step), for step-status to find
#    plan/steps/<id>.json              a planned step; plan/ready/<rank>.json a step ready to
#                                      take; plan/blocked/<id>.json; plan/pulse.json (see 6e)
#    reservations/table.json           every path reservation: glob, agent, shared, step and
#                                      generation (tied to a lease) or ttl and expires (store clock)
#    artifacts/<step|shared>/<name>    shared files; artifacts/<step>/.meta/<name>.json describes one
#    sessions/<harness>/<session>/     a mirrored transcript: part-NNNNNN.jsonl, and meta.json,
#                                      whose list of parts, in order, is the transcript
#
#    Every atomic promise is a conditional write: a claim is create-only, a takeover or a renewal
#    is a compare-and-swap on the lease's ETag, a memory update is a compare-and-swap, a
#    reservation is a compare-and-swap on the one table that holds them all (overlapping globs
#    have different names), and a message takes the next number of its log with a create-only
#    write.  Everything read from the store is checked against the shape of its record: an
#    object written by hand or by another tool is reported (CorruptObject: exit 4 when asked
#    for by name, a warning and skipped in a listing), never crashed on.
# ==================================================================================================

ONLINE_SECONDS, IDLE_SECONDS = 120, 900
HEARTBEAT_EVERY = 60
# A waiter's schedule (poll()).  Waiting is billed: at AWS list prices ($0.0004 per 1,000 GET or
# HEAD, $0.005 per 1,000 LIST or PUT) $0.001 an agent-hour buys 2,500 GETs or 200 LISTs.  So a
# wait polls every WAIT_POLL_FAST seconds for WAIT_FAST_SECONDS after it starts and after each
# progress (new work is seen in ~0.15 s, when it is most likely), then backs off to one request
# every WAIT_POLL_MAX seconds: 2,400 an hour, $0.00096, and a key watched every other round
# (the inbox's two logs) is still looked at every 3 s.
WAIT_POLL_FAST = 0.3
WAIT_FAST_SECONDS = 8.0
WAIT_POLL_MAX = 1.5
DEFAULT_TTL = 1800.0
ENDED = ("complete", "failed", "blocked")
STEP_STATES = ("in_progress", "expired", "failed", "blocked", "complete", "pending")
HANDOFF_FIELDS = ("next_agent", "next_action", "changed_files", "needs_review")
CHANGED_FILES_LIMIT = 1000   # files a handoff names
HISTORY_LIMIT, HISTORY_BYTES = 10, 64 * 1024
LOG_WIDTH = 12          # message numbers are stored inverted, so a listing starts at the newest
LOG_TOP = 10 ** LOG_WIDTH
LOG_PAGE = 50           # keys in the first listing page of an inbox read
LOG_HOLE_SECONDS = 30   # a gap in a log this old is a hole (see Inbox._behind_hole)
INBOX_RESYNC_SECONDS = 1200   # an idle inbox wait lists its logs this often (Inbox._wait)
RECENT_WRITERS = 32       # writers a record remembers, to recognise a retried write that won
CONTENTION_SECONDS = 30.0  # how long a compare-and-swap loop keeps trying before it gives up
CLOCK_MARGIN = 1.0      # S3 stamps whole seconds: a lease judged on this machine's clock is
                        # taken to end this much earlier than its ttl says
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
        wrong = f"{shown(version)!r:.60} is not a version"
        raise UsageError(f"{wrong} (use the one memory.record() returns)",
                         cli=f"{wrong} (use the one `memory get --json` prints)")
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


_TYPE_NAMES = {str: "text", int: "an integer", float: "a number", list: "a list", dict: "an object",
               bool: "true or false", type(None): "null"}


def _field(record, name, kinds, where, default=None, low=None, high=None):
    """A field of a record read from the store, checked: objects written by hand or by another
    tool must be reported as corrupt, never crash a command.  `kinds`: a type or a tuple of
    them (float takes an int too; a bool passes only for bool); `low`/`high` bound a number."""
    value = record.get(name, default)
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if float in kinds and type(value) is int:
        value = float(value)
    ok = isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))
    if ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        ok = (low is None or value >= low) and (high is None or value <= high)
    if not ok:
        wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
        bounds = f" from {low:g} to {high:g}" if low is not None and high is not None else ""
        raise CorruptObject(f"{where} is not a tracecraft record: its {name!r} is "
                            f"{shown(repr(value)):.40} (wanted {wanted}{bounds})")
    return value


def _seconds(value):
    return f"{value:g}s"


def _rounded(seconds):
    """A duration as --json shows it: whole seconds, or to the millisecond when not whole."""
    if seconds is None:
        return None
    whole = round(seconds)
    return whole if abs(seconds - whole) < 0.0005 or abs(seconds) >= 60 else round(seconds, 3)


def poll(attempt, timeout, timed_out, fast=WAIT_POLL_FAST, slow=WAIT_POLL_MAX, cancel=None,
         tick=None, brisk=WAIT_FAST_SECONDS):
    """The one wait loop (inbox --wait, wait-for, status --watch, session mirror -f, ...): call
    attempt() -> (result, progressed) until its result is not None, pausing `fast` seconds for
    the first `brisk` seconds and for `brisk` seconds after each progress, then growing by half
    each round to `slow` while nothing happens.  After `timeout` seconds (None: no limit)
    raises WaitTimeout(timed_out()).  `tick()` runs between attempts (a waiting agent keeps its
    heartbeat fresh); `cancel` (a threading.Event) ends the wait with Cancelled."""
    deadline = None if timeout is None else time.monotonic() + timeout
    interval, lively = fast, time.monotonic()
    while True:
        if cancel is not None and cancel.is_set():
            raise Cancelled("cancelled")
        result, progressed = attempt()
        if result is not None:
            return result
        if progressed:
            interval, lively = fast, time.monotonic()
        try:
            if tick:
                tick()
        except StoreError:
            pass   # the next attempt says what is wrong with the store
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise WaitTimeout(timed_out())
        pause = interval if left is None else min(interval, left)
        if cancel is not None:
            if cancel.wait(pause):
                raise Cancelled("cancelled")
        else:
            time.sleep(pause)
        if time.monotonic() - lively >= brisk:
            interval = min(interval * 1.5, slow)


class _Peer:
    """What every peer of a Client shares: the client (identity, clock, warnings), its store
    and its records."""

    def __init__(self, client):
        self.client = client

    @property
    def store(self):
        return self.client.store

    @property
    def records(self):
        return self.client.records


# ==================================================================================================
# 6a. Records.  Owns: how a record is written (plainly, create-only, compare-and-swap with
#    nonces), read and checked, updated until it sticks, and what this agent remembers between
#    calls (the cache directory).  Calls: sections 1-5.  Every record a peer below writes goes
#    through it; deletes, emptied messages and artifact bytes go to the store directly.
# ==================================================================================================

class Records(_Peer):
    """How records are written and read (`tc.records`), and what this agent remembers.

    A command-line call is a fresh process, so what one call learned (the lease it won, the
    version of a key it wrote, the tail of a log it sent to) would cost the next call a read to
    learn again.  Kept in the user's cache directory it saves that read.  It is only ever a
    hint: every write made with it is conditional, and a stale hint costs the read it saved.
    A client keeps what it learns in memory and saves it when closed (a write per change
    would cost more than the request it saves); a client that is never closed only forgets."""

    def __init__(self, client):
        super().__init__(client)
        self.writer = os.urandom(6).hex()   # this client, in records' "writers" (see write)
        self._state_dir, self._memo, self._unsaved = None, {}, set()

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
            others = [w for w in (replacing.chain or []) if w[0] != self.writer] \
                if replacing is not None else []
            record = dict(record, writers=([[self.writer, nonce]] + others)[:RECENT_WRITERS])
        try:
            body = dumps(record, indent=1).encode("utf-8")
        except (ValueError, RecursionError):
            raise UsageError(f"{key}: the record holds a number that is not finite, or is nested "
                             "too deep") from None
        # last_modified: this machine's clock when the write was sent; it landed no earlier
        written = Blob(key, body, None, len(body), last_modified=time.time())
        written.sent, written.chain = (written.last_modified, time.monotonic()), \
            record.get("writers", [])
        try:
            written.etag = self.store.put(key, body, if_none_match=create_only,
                                          if_match=replacing.etag if replacing else None,
                                          content_type=JSON_TYPE)
            return written
        except (PreconditionFailed, NoSuchKey) as exc:
            if exc.retried:
                current = self.read(key, missing_ok=True)
                if current and [self.writer, nonce] in (current[1].chain or []):
                    if current[1].chain[0] == [self.writer, nonce]:
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
        return self.parse(blob), blob

    @staticmethod
    def parse(blob):
        """The record in a Blob's body; its "writers" move to `blob.chain`."""
        try:
            record = loads(blob.body.decode("utf-8"))
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

    def update(self, key, change, remembered=True, start=_KEEP):
        """The one read-modify-write: compare-and-swap until it sticks.  `change(got)`, given
        (record, Blob) or None, returns the new record or raises.  Returns (new record, the
        Blob written).

        The first attempt starts from the version this agent last wrote, if it remembers one
        (remembered()): one request instead of two while nobody else writes the key.  What
        change() refuses on that version is judged again on what the store holds.
        `remembered=False`: judge on what the store holds from the first attempt; `start`:
        what the caller has just read ((record, Blob), or None for missing), to begin with."""
        hint = self.remembered(key) if remembered and start is _KEEP else None
        for _ in _retries(key):
            if start is not _KEEP:
                got, start = start, _KEEP
            else:
                got = hint or self.read(key, missing_ok=True)
            try:
                new = change(got)
            except TracecraftError:
                if hint is None or got is not hint:
                    raise
                hint = None   # judged on a hint: judge again on what the store holds
                continue
            try:
                written = self.write(key, new, create_only=got is None,
                                     replacing=got[1] if got else None)
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                hint = None
                continue
            self.remember(key, written)
            return new, written

    def read_listed(self, entry, cache):
        """read() an object seen in a listing, reusing the cached read while the listing shows
        it unchanged.  Returns (record and blob, or None; seconds since that read)."""
        signature = (entry.etag, entry.size, entry.last_modified)
        hit = cache.get(entry.key)
        if hit and hit[0] == signature:
            return hit[1], time.monotonic() - hit[2]
        got = self.read(entry.key, missing_ok=True)
        cache[entry.key] = (signature, got, time.monotonic())
        return got, 0.0

    def state_path(self, kind, name=""):
        if self._state_dir is None:
            ident = "\0".join((self.store.describe(), self.client.project, str(self.client.agent)))
            self._state_dir = os.path.join(xdg_dir("cache"), "tracecraft",
                                           _hash("sha1", ident.encode("utf-8")).hexdigest())
        if not name:
            return os.path.join(self._state_dir, kind)
        return os.path.join(self._state_dir, kind,
                            _hash("sha1", name.encode("utf-8")).hexdigest() + ".json")

    def kept(self, kind, name):
        if (kind, name) not in self._memo:
            try:
                with open(self.state_path(kind, name), "rb") as f:
                    found = loads(f.read(MAX_RECORD))
            except (OSError, ValueError, UnicodeDecodeError):
                found = None
            self._memo[kind, name] = found if isinstance(found, dict) and \
                found.get("name") == name else None
        return self._memo[kind, name]

    def keep(self, kind, name, data):
        """Keep `data` (a dict) under kind/name, or forget it when `data` is None."""
        self._memo[kind, name] = None if data is None else dict(data, name=name)
        self._unsaved.add((kind, name))

    def forget(self, key):
        self.keep("versions", key, None)

    def save(self):
        for kind, name in self._unsaved:
            path, data = self.state_path(kind, name), self._memo[kind, name]
            try:
                if data is None:
                    os.unlink(path)
                    continue
                os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
                replace_file(path, dumps(data).encode("utf-8"))
            except (OSError, ValueError):
                pass   # no cache directory (or nothing to forget): only a read is lost
        self._unsaved.clear()

    def remember(self, key, written):
        """Remember a Blob this agent wrote (from write()) as the version of `key` it knows."""
        if written.etag:
            self.keep("versions", key, {"body": written.body.decode("utf-8"),
                                        "etag": written.etag, "sent": written.sent[0],
                                        "mono": written.sent[1]})

    def remembered(self, key):
        """(record, Blob) of the version of `key` this agent last wrote, or None: the very bytes
        the store holds if the ETag still matches, parsed afresh for every caller.

        The Blob is dated for judging a lease on this machine's clock, safely: the write landed
        no earlier than it was sent, and the time since then is the larger of what the wall
        clock and the monotonic clock say (a wall clock stepped back cannot make a lease look
        younger; after a reboot, when the monotonic clock restarts, the lease looks expired)."""
        found = self.kept("versions", key)
        if not found or not isinstance(found.get("body"), str) or \
                not isinstance(found.get("etag"), str) or \
                not all(isinstance(found.get(f), (int, float)) and not isinstance(found[f], bool)
                        for f in ("sent", "mono")):
            return None
        now, mono = time.time(), time.monotonic()
        elapsed = max(now - found["sent"], mono - found["mono"]) if mono >= found["mono"] \
            else MAX_SECONDS
        blob = Blob(key, found["body"].encode("utf-8"), found["etag"], 0,
                    last_modified=now - elapsed - CLOCK_MARGIN, server_time=now)
        try:
            return self.parse(blob), blob
        except CorruptObject:
            return None


# ==================================================================================================
# 6b. Memory.  Owns: memory/<dotted key as a path>.json.  Calls: sections 1-5, 6a.
# ==================================================================================================

class Memory(_Peer):
    """Shared key-value memory (`tc.memory`): JSON values under dotted keys, each write a
    compare-and-swap that keeps the revision number and the last few values."""

    def _key(self, key):
        check_memory_key(key)
        return self.client.key("memory", *key.split(".")) + ".json"

    @staticmethod
    def _check_value(value):
        check_json("memory value", value)
        if len(dumps(value).encode("utf-8")) > MAX_VALUE:
            raise UsageError(f"memory value is larger than the {MAX_VALUE // 1024} KiB limit")

    @staticmethod
    def _checked(record, key):
        """A memory record read from the store, checked against its shape."""
        where = f"memory key {key}"
        if "value" not in record:
            raise CorruptObject(f"{where} has no value (written by another tool?)")
        _field(record, "revision", int, where, 1, 1, MAX_INT)
        for entry in _field(record, "history", list, where, []):
            if not isinstance(entry, dict) or "value" not in entry:
                raise CorruptObject(f"{where} is not a tracecraft record: its history holds "
                                    f"{shown(repr(entry)):.40}")
        for name in ("by", "at"):
            _field(record, name, (str, type(None)), where)
        return record

    def _next(self, key, old, value):
        record = self.client.record(key=key, value=value, revision=1, history=[])
        if old is not None:
            old = self._checked(old, key)
            previous = {k: old.get(k) for k in ("value", "by", "at", "revision")}
            history = [previous] + old.get("history", [])
            while len(history) > HISTORY_LIMIT or (
                    len(history) > 1 and len(dumps(history)) > HISTORY_BYTES):
                history.pop()
            record.update(revision=old.get("revision", 0) + 1, history=history)
        return record

    @staticmethod
    def _shape(record, written):
        """A key as shown everywhere: key, value, version, revision, by, at."""
        return {"key": record.get("key"), "value": record["value"],
                "version": _version(written.etag) or None, "revision": record.get("revision", 1),
                "by": record.get("by"), "at": record.get("at")}

    def set(self, key, value, if_version=None, if_absent=False):
        """Store any JSON value under `key`; returns the key (key, value, version, revision, by,
        at).  `if_absent` writes only if the key is unset; `if_version` only if the key is still
        at that version.  A lost condition raises Refused saying what the current version is."""
        self._check_value(value)
        path = self._key(key)
        if if_absent:
            try:
                record = self.client.record(key=key, value=value, revision=1, history=[])
                written = self.records.write(path, record, create_only=True)
            except PreconditionFailed:
                raise Refused(f"memory key {key} is already set (version "
                              f"{self._current_version(key)})") from None
            return self._written(path, record, written)
        if if_version is not None:
            got = self.records.read(path, missing_ok=True)
            current = _version(got[1].etag) if got else None
            if current != _version(_quoted(if_version)):
                raise Refused(f"memory key {key} is at version {current or '(unset)'}, "
                              f"not {_version(_quoted(if_version))}")
            record = self._next(key, got[0], value)
            try:
                written = self.records.write(path, record, replacing=got[1])
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                raise Refused(f"memory key {key} changed meanwhile (version is now "
                              f"{self._current_version(key)})") from None
            return self._written(path, record, written)
        record, written = self.records.update(
            path, lambda got: self._next(key, got and got[0], value))
        return self._shape(record, written)

    def _written(self, path, record, written):
        """What set() returns for a conditional write of its own (update() remembers its own)."""
        self.records.remember(path, written)
        return self._shape(record, written)

    def _current_version(self, key):
        got = self.records.read(self._key(key), missing_ok=True)
        return _version(got[1].etag) if got else "(unset)"

    def incr(self, key, by=1):
        """Add `by` to a number atomically (an unset key counts as 0); returns the key.  The sum
        stays a JSON number: finite, and an integer within 64 bits."""
        if isinstance(by, bool) or not isinstance(by, (int, float)):
            raise UsageError(f"increment must be a number, not {shown(repr(by)):.40}")
        check_json("increment", by)

        def change(got):
            old = got and got[0]
            value = (old or {}).get("value", 0)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise UsageError(f"memory key {key} holds {type(value).__name__}, not a number")
            total = value + by
            if not (total - total == 0 and (isinstance(total, float) or abs(total) <= MAX_INT)):
                raise UsageError(f"memory key {key} would overflow: {value!r:.30} + {by!r:.30} "
                                 "is beyond the range of a JSON number")
            return self._next(key, old, total)
        record, written = self.records.update(self._key(key), change)
        return self._shape(record, written)

    def record(self, key):
        """The key: key, value, version, revision, by, at.  Raises NotFound when unset."""
        try:
            record, blob = self.records.read(self._key(key))
        except NoSuchKey:
            raise NotFound(f"memory key {key} is not set") from None
        return self._shape(self._checked(record, key), blob)

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
        try:
            record, _ = self.records.read(self._key(key))
        except NoSuchKey:
            raise NotFound(f"memory key {key} is not set") from None
        record = self._checked(record, key)
        return [{k: entry.get(k) for k in ("value", "by", "at", "revision")}
                for entry in [record] + record.get("history", [])]

    def entries(self, cache=None):
        """(key, record) of every memory key, its history included, read once and then again
        only when the listing shows it changed (`cache`: see Agents.status())."""
        root = self.client.key("memory") + "/"
        cache = {} if cache is None else cache
        for entry in self.store.list(root):
            key = entry.key[len(root):-5].replace("/", ".")
            try:
                check_memory_key(key)
                got, _ = self.records.read_listed(entry, cache)
                if got and entry.key.endswith(".json"):
                    yield key, self._checked(got[0], key)
            except (CorruptObject, UsageError) as exc:
                self.client.warn_once(f"skipped {entry.key}: {exc}")

    def list(self, prefix=""):
        """Keys under `prefix`, matched by whole segments: `phase1` never returns `phase10.x`.
        Objects whose names are not memory keys are skipped with a warning."""
        root = self.client.key("memory")
        base = root + "/" + check_memory_key(prefix).replace(".", "/") if prefix else root + "/"
        keys = []
        for entry in self.store.list(base):
            rest = entry.key[len(base):]
            if not prefix or rest == ".json" or rest[:1] == "/":
                try:
                    if not entry.key.endswith(".json"):
                        raise UsageError("not a memory key's record")
                    keys.append(check_memory_key(entry.key[len(root) + 1:-5].replace("/", ".")))
                except UsageError as exc:
                    self.client.warn_once(f"skipped {entry.key}: {exc}")
        return keys

    def delete(self, key, if_version=None):
        """Delete a key (only if still at `if_version`, when given).  Raises NotFound if unset."""
        path = self._key(key)
        self.records.forget(path)
        if if_version is None:
            if not self.store.exists(path):   # a corrupt record can be deleted too
                raise NotFound(f"memory key {key} is not set")
            self.store.delete(path)
            return
        try:
            self.store.delete(path, if_match=_quoted(if_version))
        except (PreconditionFailed, NoSuchKey):
            raise Refused(f"memory key {key} is at version {self._current_version(key)}, "
                          f"not {_version(_quoted(if_version))}") from None


# ==================================================================================================
# 6c. Inbox.  Owns: messages/<log>/ (the numbered logs), cursors/<agent>.json and the tags
#    steps/<id>/messages/ (which message was sent about which step).
#    Calls: sections 1-5, 6a, and 6g's touch() (an agent waiting for mail stays online).
# ==================================================================================================

def _log_name(n):
    return f"{LOG_TOP - n:0{LOG_WIDTH}d}-{n}.json"


def _message_shape(record, key=None):
    """A message as shown everywhere: seq, kind, from, to, text, at, step (null when not
    tagged).  With `key` (a record read from the store) its fields are checked first."""
    if key is not None:
        where = f"message {key}"
        for name, kinds in (("from", str), ("text", str), ("to", (str, type(None))),
                            ("at", (str, type(None))), ("step", (str, type(None)))):
            _field(record, name, kinds, where)
    return {"seq": record.get("seq"), "kind": record.get("kind"), "from": record["from"],
            "to": record.get("to"), "text": record["text"], "at": record.get("at"),
            "step": record.get("step")}


class Inbox(_Peer):
    """Messages (`tc.inbox`): tc.inbox() reads this agent's unread ones, tc.inbox.send() sends.

    Message n of a log is messages/<log>/<LOG_TOP - n>-<n>.json: inverted, so that a listing
    (always ascending) starts at the newest.  The tail is one listing of one key, and reading
    k new messages lists only as far back as the reader's cursor: O(k), whatever the history.
    Numbers are taken with create-only writes, so each is used once; nothing depends on clocks.
    A number stays taken for good: `inbox --delete` empties a message (an object of 0 bytes,
    which readers skip without reading it) instead of removing it, so a sender that remembers
    an older tail can never write below a reader's cursor.  An object whose name is not
    exactly that of a message is not one: it is skipped, and moves no cursor and no tail."""

    def _key(self, log, n):
        return self.client.key("messages", log, _log_name(n))

    def _number(self, key):
        """The number of the message at `key`, or None (with a warning) for anything else."""
        name = key.rpartition("/")[2]
        number = name.partition("-")[2][:-5]
        # Exactly the name this number is written under, ASCII digits and all: int() would
        # read "٩" as 9, and a stray name taken for a number could move a cursor past every
        # message to come.
        if number.isascii() and number.isdigit() and len(number) <= LOG_WIDTH and \
                0 < int(number) < LOG_TOP and name == _log_name(int(number)):
            return int(number)
        self.client.warn_once(f"skipped {key}: not a message of tracecraft's (a stray object in "
                              "the log)")
        return None

    def tail(self, log):
        # The newest message lists first, after anything that is not a message at all (a
        # folder marker, a stray file), which a short look usually gets past.
        for limit in (8, None):
            entries = list(self.store.list(self.client.key("messages", log) + "/", limit=limit))
            for entry in entries:
                n = self._number(entry.key)
                if n is not None:
                    return n
            if limit is None or len(entries) < limit:
                return 0

    def _since(self, log, after, contiguous=True, gaps=None):
        """Entries of a log numbered above `after`, oldest first: [(n, entry)].

        Numbers are taken in order, so a gap means a message not yet visible in the listing
        (a directory read while files are being added, an eventually consistent store): with
        `contiguous`, stop before the first gap so the cursor can never pass a message (and
        append the log to `gaps`, a list, when given)."""
        found, prefix, last = [], self.client.key("messages", log) + "/", None
        for limit in (LOG_PAGE, None):   # most reads find a few new messages: list few first
            entries = list(self.store.list(prefix, start_after=last, limit=limit))
            for entry in entries:
                n = self._number(entry.key)
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
        if not contiguous:
            return found
        kept, expected = [], after + 1
        for n, entry in found:
            if n != expected:
                if not entry.size:   # emptied messages are all below the reader's cursor
                    self.client.warn_once(f"skipped {entry.key}: an empty object ahead of the "
                                          "messages read (not tracecraft's)")
                    continue
                if not (self._behind_hole(entry) and self._is_message(entry, log, n)):
                    if gaps is not None:
                        gaps.append(log)
                    break
            kept.append((n, entry))
            expected = n + 1
        return kept

    def _is_message(self, entry, log, n):
        """Whether the object behind a hole is message n of this log, read to be sure: a stray
        object must not carry a cursor past every message to come."""
        try:
            record = self.records.parse(self.store.get(entry.key))
            return record.get("seq") == n and record.get("to") == log and \
                isinstance(record.get("text"), str)
        except (NoSuchKey, CorruptObject):
            return False

    @staticmethod
    def _behind_hole(entry):
        """Whether the gap before this listed message is a hole that will never fill.  A sender
        takes number n+1 only once n exists (it listed the tail, or wrote n itself), so a gap is
        normally a message written but not yet listed, for milliseconds.  But a sender's
        remembered tail can outlive its store (wiped and made again under the same name): the
        gap behind a message older than LOG_HOLE_SECONDS, by the store's clock, is such a hole."""
        return entry.server_time is not None and entry.last_modified is not None and \
            entry.server_time - entry.last_modified > LOG_HOLE_SECONDS

    def send(self, to, text, step=None):
        """Send `text` to agent `to`, or to everyone with to="_broadcast", tagged with `step`
        if given (step-status then lists it: one more request).  Returns the message."""
        sender = self.client.me()
        if to != BROADCAST:
            check_agent(to)
        if step is not None:
            check_name("step id", step)
        check_text("message", text)
        if len(text.encode("utf-8")) > MAX_VALUE:
            raise UsageError(f"message is larger than the {MAX_VALUE // 1024} KiB limit")
        n = (self.records.kept("tails", to) or {}).get("n")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < LOG_TOP - 1:
            n = self.tail(to)
            if n == 0 and to != BROADCAST and \
                    not self.store.exists(self.client.key("agents", to + ".json")):
                self.client.warn(f"no agent {to} has been seen in project {self.client.project} "
                                 "yet; the message waits in its inbox")
        for _ in _retries(f"the inbox of {to}"):
            if n + 1 >= LOG_TOP:
                raise StoreError(f"the inbox of {to} is full: it holds {LOG_TOP - 1} numbers")
            message = self.client.record(**{"from": sender}, to=to, seq=n + 1,
                                         kind="broadcast" if to == BROADCAST else "direct",
                                         text=text, step=step)
            try:
                self.records.write(self._key(to, n + 1), message, create_only=True)
            except (PreconditionFailed, ConditionalConflict):
                n = max(n + 1, self.tail(to))
                continue
            self.records.keep("tails", to, {"n": n + 1})
            if step is not None:
                self.store.put(self.client.key("steps", step, "messages", f"{to}-{n + 1}.json"),
                               b"", content_type=JSON_TYPE)
            return _message_shape(message)

    def __call__(self, peek=False, everything=False, delete=False, wait=None, step=None):
        """This agent's unread messages, direct and broadcast, in one order all readers agree on
        (the store's clock, then the log's own order), marked read unless `peek`.

        The read position lives in the bucket (cursors/<agent>.json) and moves by compare-and-swap
        before anything is returned, so two readers of one inbox never get the same message.
        `everything` returns all messages without moving it; `delete` also empties the direct
        messages read (their numbers stay taken); `wait` (seconds, or True for no limit) blocks
        until at least one unread message arrives, raising WaitTimeout when the time is up.
        `step` keeps only the messages tagged with that step and marks nothing read (as
        `peek`): a cursor is one number per log, and the others must stay unread."""
        me = self.client.me()
        if delete and (peek or everything or step is not None):
            raise UsageError("delete=True cannot be combined with peek, everything or step",
                             cli="--delete removes messages as it reads them: it cannot be "
                             "combined with --peek, --all or --step")
        if step is not None:
            check_name("step id", step)
        peek = peek or step is not None
        if wait is None or wait is False or everything:
            return self._read(me, peek, everything, delete, step=step)[0]
        timeout = None if wait is True else check_number("the wait", wait, 0, MAX_SECONDS, True)
        return self._wait(me, peek, delete, timeout, step)

    def arrived(self, log, after):
        """Whether message after+1 of a log exists: one HEAD, the idle look of a waiter (a
        listing costs as much as 12.5 of them)."""
        return self.store.exists(self._key(log, after + 1))

    def _wait(self, me, peek, delete, timeout, step=None):
        """Read until a message comes.  While idle it lists nothing: each round asks for the
        key that must appear next (arrived()) of the direct log and of the broadcast log (of
        both while poll() is brisk, then of one in turn), and only when one is there reads as
        usual.  A number a sender skipped (see
        _behind_hole) never appears, so a full read also comes every INBOX_RESYNC_SECONDS, and
        LOG_HOLE_SECONDS after a read that stopped at a gap (a hole is one once that old).
        Idle, per hour: 2,400 HEADs at WAIT_POLL_MAX, $0.00096; 3 full reads, each a cursor GET
        and 2 LISTs, $0.00003; $0.00099 in all (and the heartbeat's 60 PUTs, as any agent)."""
        logs = {"direct": me, "broadcast": BROADCAST}
        seen = {"position": None, "full_at": 0.0, "turn": 0, "lively": time.monotonic()}

        def attempt():
            position, now = seen["position"], time.monotonic()
            if position is not None and now < seen["full_at"]:
                # Both logs a round while poll() is brisk, one in turn once it slows down.
                kinds = ("direct", "broadcast") if now - seen["lively"] < WAIT_FAST_SECONDS \
                    else [("direct", "broadcast")[seen["turn"] % 2]]
                seen["turn"] += 1
                if not any(self.arrived(logs[kind], position[kind]) for kind in kinds):
                    return None, False
            gaps = []
            messages, seen["position"] = self._read(me, peek, False, delete, gaps, step)
            seen["full_at"] = time.monotonic() + (LOG_HOLE_SECONDS + 1 if gaps
                                                  else INBOX_RESYNC_SECONDS)
            progressed = position is not None and seen["position"] != position
            if progressed:
                seen["lively"] = time.monotonic()
            return messages or None, progressed
        return poll(attempt, timeout, lambda: f"no new message within {_seconds(timeout)}",
                    cancel=self.client.cancel, tick=self.client.agents.touch)

    START = {"direct": 0, "broadcast": 0}   # the read position of an agent that read nothing

    def _position(self, got, where):
        """The read position in a cursor record (`got`: (record, blob) or None), checked."""
        if not got:
            return self.START
        return {kind: _field(got[0], kind, int, where, 0, 0, LOG_TOP - 1)
                for kind in ("direct", "broadcast")}

    def _read(self, me, peek, everything, delete, gaps=None, step=None):
        """(messages, position): the messages, and the numbers of each log read through (the
        cursor's, or beyond it: what this read saw, even if it returned nothing of it)."""
        cursor_key = self.client.key("cursors", me + ".json")
        for _ in _retries(f"the inbox of {me}"):
            got = self.records.read(cursor_key, missing_ok=True)
            cursor = self._position(got, f"cursor {cursor_key}")
            start = self.START if everything else cursor
            logs = {kind: self._since(me if kind == "direct" else BROADCAST, start[kind],
                                      not everything, gaps)
                    for kind in ("direct", "broadcast")}
            position = {kind: max([start[kind]] + [n for n, _ in found])
                        for kind, found in logs.items()}
            if not any(logs.values()):
                return [], position
            if not (peek or everything):
                moved = self.client.record(**position)
                try:
                    self.records.write(cursor_key, moved, create_only=got is None,
                                       replacing=got[1] if got else None)
                except (PreconditionFailed, ConditionalConflict):
                    continue   # another reader took these; start again from its position
            messages = [m for m in self._merge(logs, me) if step is None or m["step"] == step]
            for n, entry in logs["direct"] if delete else ():
                if entry.size:
                    self.store.put(entry.key, b"", content_type=JSON_TYPE)
            return messages, position

    def _merge(self, logs, me):
        """Fetch and merge the two logs: by the store's Last-Modified, then kind, then number.
        Emptied messages (0 bytes) are skipped without a read."""
        tagged = []
        for kind, entries in logs.items():
            for n, entry in entries:
                if entry.size:
                    tagged.append(((entry.last_modified or 0, kind, n), kind, n, entry))
        # Within one log the order is the log's own; across logs the store's clock decides.
        result = []
        queues = {kind: [t for t in tagged if t[1] == kind] for kind in logs}
        while any(queues.values()):
            kind = min((q[0][0], k) for k, q in queues.items() if q)[1]
            _, _, n, entry = queues[kind].pop(0)
            message = self._fetch(entry)
            if message is None or (kind == "broadcast" and message["from"] == me):
                continue
            message.update(kind=kind, seq=n)
            result.append(message)
        return result

    def log(self, log, after=0):
        """Every message of one log (an agent's inbox, or _broadcast) numbered above `after`,
        oldest first, moving no cursor: what a replay shows.  Emptied messages are gone."""
        kind = "broadcast" if log == BROADCAST else "direct"
        return [dict(message, kind=kind, seq=n)
                for n, entry in self._since(log, after, contiguous=False) if entry.size
                for message in [self._fetch(entry)] if message is not None]

    def _fetch(self, entry):
        """The message a listed entry names, or None: gone, emptied by `inbox --delete` since
        it was listed, or not a message (with a warning)."""
        try:
            blob = self.store.get(entry.key)
            return _message_shape(self.records.parse(blob), entry.key) if blob.body else None
        except NoSuchKey:
            return None
        except CorruptObject as exc:
            self.client.warn_once(f"skipped {exc}")
            return None

    def unread(self, agent, broadcast_tail):
        """How many messages `agent` has not read yet (direct and broadcast): two requests."""
        where = f"cursor of {agent}"
        try:
            cursor = self._position(self.records.read(
                self.client.key("cursors", agent + ".json"), missing_ok=True), where)
        except CorruptObject as exc:
            self.client.warn_once(f"skipped {exc}")
            cursor = self.START
        return max(0, self.tail(agent) - cursor["direct"]) + \
            max(0, broadcast_tail - cursor["broadcast"])


# ==================================================================================================
# 6d. Steps.  Owns: steps/<id>/claim.json (the lease), status.json and handoff.json.
#    Calls: sections 1-5, 6a, 6c (a handoff sent to an agent, the messages tagged with a step),
#    6e's definition, unmet, ended and reopened (the plan's part of a step's end), and 6g's
#    touch() (an agent waiting for steps stays online).
# ==================================================================================================

class Lease:
    """One step's lease, read from steps/<id>/claim.json and judged by the store's clock.

    A step's lease goes through these states (what status() shows is in parentheses):

        (no claim.json)  --claim-->  held  --complete | --status failed | blocked-->  ended
          (pending)                   |  ^  (in_progress)                      (complete, failed,
                                      |  |                                      blocked): final
                        release       |  |  claim (generation + 1)
                                      v  |
                                    released (pending)

        held, once its ttl has passed on the store's clock (expired): its holder may still
        renew it but not end it; another agent's claim takes it over (generation + 1), and
        then the old holder has lost it: its renew, release and complete are refused.

    `got` is (record, blob) from Records.read(), or None; `since`: local seconds since the read
    (a read reused by status --watch).  A record that is not shaped like a lease raises
    CorruptObject."""
    __slots__ = ("step", "record", "blob", "since")

    def __init__(self, step, got, since=0.0):
        self.step, self.since = step, since
        self.record, self.blob = got if got else ({}, None)
        if got:
            self._check()

    def _check(self):
        record, where = self.record, f"lease {self.blob.key}"
        if record.get("state", "held") not in ("held", "released") + ENDED:
            raise CorruptObject(f"{where} is not a tracecraft record: its state is "
                                f"{shown(repr(record.get('state'))):.40}")
        check = [("agent", str), ("generation", int, 1, 1, MAX_INT),
                 ("ttl", float, DEFAULT_TTL, 0.001, MAX_SECONDS), ("forced", bool, False)]
        check += [(name, (str, type(None)))
                  for name in ("note", "ended_by", "ended_at", "at", "previous", "renewed_at")]
        for name, kinds, *bounds in check:
            record[name] = _field(record, name, kinds, where, *bounds)
        record["holders"] = [h for h in _field(record, "holders", list, where, [])
                             if isinstance(h, dict) and all(isinstance(h.get(k), str) for k in
                                                            ("agent", "from", "to", "how"))]
        handoff = _field(record, "handoff", (dict, type(None)), where)
        if handoff is not None:
            files = handoff.get("changed_files")
            record["handoff"] = {
                "next_agent": _field(handoff, "next_agent", (str, type(None)), where),
                "next_action": _field(handoff, "next_action", (str, type(None)), where),
                "changed_files": [f for f in files if isinstance(f, str)]
                if isinstance(files, list) else [],
                "needs_review": _field(handoff, "needs_review", bool, where, False)}

    @property
    def state(self):
        return self.record.get("state", "held") if self.blob else None

    @property
    def holder(self):
        return self.record.get("agent")

    @property
    def ended_by(self):
        return self.record.get("ended_by")

    def held_by(self, agent):
        return self.state == "held" and self.holder == agent

    def left(self):
        """Seconds until the lease expires, by the store's clock (its Last-Modified and Date),
        so that a client with a skewed clock can neither steal a live lease nor keep a dead one;
        None for a lease that is not held."""
        if self.state != "held":
            return None
        blob = self.blob
        now = (blob.server_time if blob.server_time is not None else time.time()) + self.since
        written = blob.last_modified if blob.last_modified is not None else now
        return written + self.record["ttl"] - now

    def status(self):
        state = self.state
        if state in ENDED:
            return state
        return ("in_progress" if self.left() > 0 else "expired") if state == "held" else "pending"

    def shape(self):
        """The step as --json, MCP and the API show it, everywhere the same."""
        status, record = self.status(), self.record
        return {"step": self.step, "status": status,
                "holder": self.holder if status != "pending" else None,
                "generation": record.get("generation"), "ttl": _rounded(record.get("ttl")),
                "lease_left": _rounded(self.left()), "claimed_at": record.get("at"),
                "ended_by": record.get("ended_by"), "ended_at": record.get("ended_at"),
                "forced": bool(record.get("forced")), "note": record.get("note"),
                "handoff": record.get("handoff")}


class Steps(_Peer):
    """Leases on steps (`tc.steps`): claim, renew, release, complete, step_status, wait_for.
    The states a lease goes through are drawn in Lease's docstring."""

    def key(self, step, name):
        return self.client.key("steps", check_name("step id", step), name + ".json")

    def lease(self, step):
        return Lease(step, self.records.read(self.key(step, "claim"), missing_ok=True))

    def claim(self, step, ttl=None):
        """Claim a step as a lease of `ttl` seconds (default 30 minutes).

        Of any number of concurrent claimants exactly one wins: the first claim is create-only,
        and taking over an expired or released lease is a compare-and-swap on its ETag.  Each new
        holder gets the next generation number (a fencing token).  Raises Refused naming the
        holder when the lease is live, or when the step has ended.  A free step costs one
        request.  Returns the step (Lease.shape()) with `already_held`."""
        me = self.client.me()
        ttl = DEFAULT_TTL if ttl is None else check_number("the lease ttl", ttl)
        key = self.key(step, "claim")
        lease = self.client.record(step=step, agent=me, generation=1, ttl=ttl, state="held")
        try:
            return self._claimed(step, key, lease, self.records.write(key, lease, create_only=True))
        except (PreconditionFailed, ConditionalConflict):
            pass
        for _ in _retries(f"step {step}"):
            got = self.records.read(key, missing_ok=True)
            if got is None:
                try:
                    written = self.records.write(key, lease, create_only=True)
                    return self._claimed(step, key, lease, written)
                except (PreconditionFailed, ConditionalConflict):
                    continue
            current = Lease(step, got)
            refused = None
            if current.state in ENDED:
                refused = Refused(f"step {step} is already {current.state} "
                                  f"(by {current.ended_by or current.holder})")
            left = current.left()
            if current.state == "held" and left > 0:
                if current.holder == me:
                    return dict(current.shape(), already_held=True)
                refused = Refused(f"step {step} is held by {current.holder} (generation "
                                  f"{current.record['generation']}, lease ends in "
                                  f"{_duration(left)})")
            if refused:
                refused.lease = current   # what was judged, for a caller that wants more
                raise refused
            earlier = {"agent": current.holder, "generation": current.record["generation"],
                       "from": current.record.get("at"),
                       "to": current.record.get("released_at") or self.client.now(),
                       "how": "expired" if current.state != "released" else
                       "reopened" if current.record.get("reopened_by") else "released"}
            taken = self.client.record(step=step, agent=me, ttl=ttl, state="held",
                                       generation=current.record["generation"] + 1,
                                       previous=current.holder,
                                       holders=([earlier] + current.record["holders"])[:20])
            try:
                written = self.records.write(key, taken, replacing=got[1])
                return self._claimed(step, key, taken, written)
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                continue

    def _claimed(self, step, key, lease, written):
        self.records.remember(key, written)
        return dict(Lease(step, (lease, written)).shape(), already_held=False)

    def _own(self, step, got, verb):
        """The Lease `got` if this agent holds it (even expired, while not taken over); else
        Refused or LostLease saying why."""
        lease = Lease(step, got)
        if lease.blob is None:
            raise Refused(f"step {step} is not claimed; claim it first")
        if lease.held_by(self.client.me()):
            return lease
        self.records.forget(lease.blob.key)
        if lease.state in ENDED:
            raise Refused(f"step {step} is already {lease.state}")
        who = f"{lease.holder} holds it now (generation {lease.record['generation']})" \
            if lease.state == "held" else "the lease was released"
        raise LostLease(f"cannot {verb} step {step}: this agent lost it; {who}")

    def _change_own_lease(self, step, verb, change):
        """Replace this agent's lease with `change(lease record)` (Records.update: on the version
        this agent remembers writing, one request, while it is current).  Raises LostLease when
        the lease is no longer this agent's."""
        self.client.me()
        got = self.records.update(self.key(step, "claim"),
                                  lambda got: change(self._own(step, got, verb).record))
        return Lease(step, got)

    def renew(self, step, ttl=None):
        """Extend this agent's lease on a step by its ttl (or a new one) from now."""
        if ttl is not None:
            ttl = check_number("the lease ttl", ttl)
        lease = self._change_own_lease(step, "renew", lambda lease: dict(
            lease, ttl=lease["ttl"] if ttl is None else ttl, renewed_at=self.client.now()))
        return lease.shape()

    def release(self, step):
        """Give a lease up so that the step can be claimed again at once."""
        released = self._change_own_lease(step, "release", lambda lease: dict(
            lease, state="released", released_at=self.client.now()))
        self.records.forget(self.key(step, "claim"))
        self.client.plans.reopened(step, released)
        return released.shape()

    def reopen(self, step):
        """Put a failed or blocked step back to pending, by compare-and-swap on its lease: the
        next claim takes the next generation, and the failure stays in the step's history
        (`holders`).  A planned step may be ready again at once."""
        me = self.client.me()
        key = self.key(step, "claim")
        start = self.records.read(key, missing_ok=True)

        def change(got):
            lease = Lease(step, got)
            if lease.state not in ("failed", "blocked"):
                raise Refused(f"step {step} is {lease.status()}: only a failed or blocked step "
                              "can be reopened")
            for name in ("status", "handoff") if got is start else ():
                try:   # first: killed after the swap, a stale status.json would hide the step
                    self.store.delete(self.key(step, name))   # from leases() (and a holder's
                except NoSuchKey:                             # heartbeat); killed before it,
                    pass                                      # complete writes it again
            record = lease.record
            earlier = {"agent": lease.ended_by or lease.holder, "generation":
                       record["generation"], "from": record.get("at") or "",
                       "to": record.get("ended_at") or "", "how": lease.state,
                       "note": record.get("note")}
            return dict(record, state="released", released_at=self.client.now(),
                        reopened_by=me, note=None, ended_by=None, ended_at=None, handoff=None,
                        holders=([earlier] + record["holders"])[:20])
        reopened = Lease(step, self.records.update(key, change, start=start))
        self.records.forget(key)
        self.client.plans.reopened(step, reopened)
        return reopened.shape()

    def complete(self, step, note=None, force=False, status="complete", *, to=None,
                 next_action=None, needs_review=False, changed_files=None):
        """End a step: `complete` (default), `failed` or `blocked`, with a handoff: a `note`,
        and for the next agent `to` (also sent to its inbox), `next_action`, `needs_review`,
        `changed_files` (paths).

        Only the holder of a live lease may end a step, and only once: of two calls ending it
        at the same time (even by the same agent) one succeeds and the other is refused.  A
        planned step is complete only once its dependencies are.  `force` lets anyone end any
        step, claimed or not, and is recorded.  The lease is ended by a compare-and-swap, so a
        holder whose lease was taken over in the meantime is told it lost the step and writes
        nothing.  After this agent's own claim it costs three requests (four with a handoff):
        the plan's definition, the lease, status.json (and handoff.json); a planned step's end
        then marks ready the dependents it was the last to wait for."""
        self.client.me()
        if status not in ENDED:
            raise UsageError(f"status must be one of {', '.join(ENDED)}, not {shown(status)!r:.40}")
        for name, text in (("note", note), ("next action", next_action)):
            if text is not None:
                check_text(name, text)
                if len(text.encode("utf-8")) > MAX_VALUE:
                    raise UsageError(f"{name} is larger than the {MAX_VALUE // 1024} KiB limit")
        handoff = _handoff(to, next_action, needs_review, changed_files)
        try:
            planned = self.client.plans.planned(step)
        except CorruptObject as exc:
            if not force:
                raise
            planned = None   # forced: the step ends, whatever its plan says
            self.client.warn(f"step {step} ends outside its plan: {exc}")
        unmet = self.client.plans.unmet(planned) if planned and status == "complete" \
            and not force else []
        if unmet:
            waits = f"step {step} waits for {', '.join(unmet)}, not complete yet"
            raise Refused(waits, fix=("force", "to complete it anyway"),
                          cli=waits + " (complete it anyway with --force)")

        judged = []

        def end(got):   # on a version that changed meanwhile, judged again on the new one
            lease = Lease(step, got)
            if force and judged and lease.state not in ENDED:
                raise LostLease(f"cannot end step {step}: the lease changed meanwhile ("
                                f"{lease.holder or 'nobody'} holds it now); try again")
            judged.append(lease)   # a forced end acts on what it read, not on what came since
            forced = self._may_end(step, lease, force)
            record = lease.record if lease.blob else {"step": step, "agent": self.client.agent,
                                                      "generation": 1, "ttl": DEFAULT_TTL}
            return dict(self._ended(record, status, note, forced), handoff=handoff)
        got = self.records.update(self.key(step, "claim"), end, remembered=not force)
        shape = self._publish_end(step, *got)
        if planned:   # (a step planned while it ended is put right by the next `plan show`)
            try:
                self.client.plans.ended(step, Lease(step, got))
            except TracecraftError as exc:   # ended all the same: the plan is put right later
                self.client.warn(f"step {step} ended, but its dependents were not told: {exc}")
        if to is not None:
            try:
                self.client.inbox.send(to, _handoff_text(shape), step=step)
            except TracecraftError as exc:
                self.client.warn(f"step {step} ended, but its handoff was not sent to {to}: "
                                 f"{exc}")
        return shape

    def _may_end(self, step, lease, force):
        """Refuse, saying why, unless this agent may end the step now: it holds a live lease on
        it, or `force`.  Returns whether ending it is forced (recorded as such)."""
        me, fix = self.client.agent, ("force", "to end it anyway")
        if lease.blob is None:
            if not force:
                raise Refused(f"step {step} is not claimed by anyone: claim it first", fix=fix,
                              cli=f"step {step} is not claimed by anyone: claim it first "
                              f"(tracecraft claim {step}), or end it anyway with --force")
            return True
        if lease.state in ENDED:
            self._already_ended(step, lease)
        live = lease.held_by(me) and lease.left() > 0
        if force:
            return not live
        generation = lease.record["generation"]
        if lease.state != "held":
            raise LostLease(f"cannot end step {step}: its lease was released; claim it first")
        if lease.holder != me:
            if lease.record.get("previous") == me:
                raise LostLease(f"cannot end step {step}: this agent lost it: {lease.holder} took "
                                f"it over (generation {generation})")
            raise LostLease(f"cannot end step {step}: it is held by {lease.holder} (generation "
                            f"{generation}); only the holder can end it", fix=fix)
        if not live:
            raise LostLease(f"cannot end step {step}: this agent's lease expired "
                            f"{_duration(-lease.left())} ago; claim it again")
        return False

    def _ended(self, lease, status, note, forced):
        """The lease as ended.  It records the end, note included: it is the one object changed
        by compare-and-swap, so it is the authority; status.json and handoff.json follow it."""
        return dict(lease, state=status, ended_by=self.client.agent, ended_at=self.client.now(),
                    forced=forced, note=note)

    def _already_ended(self, step, lease):
        """Refuse to end a step again, saying how it ended; first write the status.json that a
        call which died after ending the lease may have left unwritten."""
        if not self.store.exists(self.key(step, "status")):
            self._publish_end(step, lease.record, lease.blob)   # and what came after it:
            self.client.plans.ended(step, lease)
        by = lease.ended_by or lease.holder
        raise Refused(f"step {step} is already {lease.state} (by {by}"
                      + (", this agent)" if by == self.client.agent else ")"))

    def _publish_end(self, step, lease, written):
        """Write status.json and handoff.json after the ended lease; return the step.  An ended
        lease is never remembered: what this agent wrote last is no longer a lease to act on."""
        self.records.forget(self.key(step, "claim"))
        shape = Lease(step, (lease, written)).shape()
        handoff = shape["handoff"] or {}
        if shape["note"] is not None or handoff:
            self.records.write(self.key(step, "handoff"), dict(
                {k: handoff.get(k) for k in HANDOFF_FIELDS}, schema=2, step=step,
                note=shape["note"], status=shape["status"], by=shape["ended_by"],
                at=shape["ended_at"], state="needs_review" if handoff.get("needs_review")
                else shape["status"]))
        self.records.write(self.key(step, "status"),
                           {"step": step, "status": shape["status"], "holder": shape["holder"],
                            "generation": shape["generation"], "note": shape["note"],
                            "forced": shape["forced"], "by": shape["ended_by"],
                            "at": shape["ended_at"]})
        return shape

    def step_status(self, step):
        """The step (Lease.shape()): status (pending / in_progress / expired / complete / failed
        / blocked), holder, generation, ttl, lease_left (seconds, by the store's clock),
        claimed_at, ended_by, ended_at, forced, note, handoff; and `messages`, those sent
        tagged with it (messages()).  One read (the lease records its end) and one listing (and
        a read more for a step never claimed: is it in a plan, or a typo?)."""
        lease = self.lease(step)
        if lease.blob is None:
            self._unknown([step])
        return dict(lease.shape(), messages=self.messages(step))

    def _unknown(self, steps):
        """Warn about steps in no plan that were never claimed (typos, most often)."""
        unknown = [s for s in steps if not self.client.plans.definition(s)]
        if unknown:
            self.client.warn(f"no step {', '.join(unknown)} is in a plan or was ever claimed "
                             "(a typo?)")
        return unknown
    def messages(self, step):
        """The messages sent tagged with `step`, in the order they were tagged (the store's
        clock): a listing of steps/<step>/messages/ and a read per message.  A tag whose
        message is gone or was emptied by `inbox --delete` shows nothing."""
        prefix = self.client.key("steps", check_name("step id", step), "messages") + "/"
        found = []
        for entry in self.store.list(prefix):
            log, _, n = entry.key[len(prefix):-5].rpartition("-")
            try:
                if not (entry.key.endswith(".json") and n.isascii() and n.isdigit() and
                        len(n) <= LOG_WIDTH and 0 < int(n) < LOG_TOP):
                    raise UsageError("not a message's tag")
                if log != BROADCAST:
                    check_agent(log)
            except UsageError as exc:
                self.client.warn_once(f"skipped {entry.key}: {exc}")
                continue
            inbox = self.client.inbox
            message = inbox._fetch(Entry(inbox._key(log, int(n)), 1, None))
            if message is not None and message.get("step") == step:   # not a forged tag
                found.append((entry.last_modified or 0, dict(
                    message, kind="broadcast" if log == BROADCAST else "direct", seq=int(n))))
        return [message for _, message in sorted(found, key=lambda pair: pair[0])]

    def wait_for(self, steps, timeout=300.0, on_complete=None):
        """Block until every step is complete; return {step: Lease.shape()}.  Raises StepEnded
        at once when one ends failed or blocked, and WaitTimeout naming what is left (timeout
        None: no limit).  The first round reads every step's lease; then each round reads one
        (poll()'s schedule: every WAIT_POLL_FAST s at first and after progress, backing off to
        every WAIT_POLL_MAX s): on three rounds of four the first step still pending, which is
        what holds the wait up (and, once it is complete, the next in the same round); on the
        fourth one of the others, in turn.  So a later step's failure is reported within
        4 (n-1) rounds for n steps pending: about 6 (n-1) s into an idle wait."""
        if isinstance(steps, str) or not isinstance(steps, (list, tuple)):
            raise UsageError("steps must be a list of step ids")
        pending = list(dict.fromkeys(check_name("step id", s) for s in steps))
        if not pending:
            raise UsageError("steps must name at least one step", cli="wait-for needs at least "
                             "one step id")
        if timeout is not None:
            timeout = check_number("the timeout", timeout, 0, MAX_SECONDS, True)
        done, rounds, unclaimed = {}, [0], []

        def ended(step):
            lease = self.lease(step)
            if lease.blob is None and rounds[0] == 1:
                unclaimed.append(step)
            if lease.state not in ENDED:
                return False
            shape = lease.shape()
            if shape["status"] != "complete":
                note = f": {shape['note']}" if shape["note"] else ""
                raise StepEnded(f"step {step} ended {shape['status']} "
                                f"(by {shape['ended_by']}){note}")
            done[step] = shape
            pending.remove(step)
            if on_complete:
                on_complete(step, shape)
            return True

        def attempt():
            rounds[0] += 1
            before = len(pending)
            if rounds[0] == 1:
                for step in list(pending):
                    ended(step)
                self._unknown(unclaimed)
            elif rounds[0] % 4 == 0 and len(pending) > 1:
                ended(pending[1 + (rounds[0] // 4) % (len(pending) - 1)])
            else:
                while pending and ended(pending[0]):
                    pass
            return (done if not pending else None), len(pending) < before
        return poll(attempt, timeout, lambda: f"timed out after {_seconds(timeout)} waiting for: "
                    + ", ".join(pending), cancel=self.client.cancel, tick=self.client.agents.touch)

    def leases(self, cache=None, ended=True, only=None):
        """The Lease of every step with one, in listing order; with ended=False only of those
        not yet ended, whose leases need no read (status.json marks them in the same listing);
        with `only` (a set of steps), only of those (the others are not read).
        One listing of steps/ and one read per lease; `cache`: see status()."""
        prefix = self.client.key("steps") + "/"
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
            if (ended or step not in finished) and (only is None or step in only):
                try:
                    check_name("step id", step)
                    got, since = self.records.read_listed(entry, cache)
                    leases.append(Lease(step, got, since))
                except (CorruptObject, UsageError) as exc:
                    self.client.warn_once(f"skipped {entry.key}: {exc}")
        return leases

    def _remembered_as_held(self, key):
        """Whether this agent last wrote the lease on `key` as held by itself."""
        got = self.records.remembered(key)
        try:
            return bool(got) and Lease(key, got).held_by(self.client.agent)
        except CorruptObject:
            return False

    def renew_held(self):
        """Renew every lease this agent holds (heartbeat); returns the steps renewed.  Leases it
        remembers holding that another agent took over are reported through warn(), once."""
        renewed = []
        for lease in self.leases(ended=False):
            key = self.key(lease.step, "claim")
            if lease.held_by(self.client.agent):
                try:
                    self.renew(lease.step)
                    renewed.append(lease.step)
                except Refused as exc:
                    self.client.warn(exc.for_cli())
            elif self._remembered_as_held(key):
                self.client.warn(f"this agent lost step {lease.step}: {lease.holder} holds it now "
                                 f"(generation {lease.record.get('generation')})")
                self.records.forget(key)
        return renewed


def _handoff(to, next_action, needs_review, changed_files):
    """The structured part of a handoff (the original's schema 2), checked; None when a step
    ends with none."""
    if to is not None:
        check_agent(to)
    if type(needs_review) is not bool:
        raise UsageError("needs_review is true or false")
    if changed_files is not None and (isinstance(changed_files, str)
                                      or not isinstance(changed_files, (list, tuple))):
        raise UsageError("changed_files must be a list of paths")
    files = list(dict.fromkeys(check_text("a changed file", f) for f in changed_files or ()))
    if to is None and next_action is None and not needs_review and changed_files is None:
        return None
    return {"next_agent": to, "next_action": next_action,
            "changed_files": files[:CHANGED_FILES_LIMIT], "needs_review": needs_review}


def _handoff_text(shape):
    """A handoff as the message its next agent finds in its inbox."""
    handoff = shape["handoff"] or {}
    files = handoff.get("changed_files") or []
    lines = [f"Handoff: step {shape['step']} is {shape['status']} (by {shape['ended_by']})"
             + (", and needs review" if handoff.get("needs_review") else "")]
    def clipped(text):   # the whole handoff is in the step; a message has a size limit
        return text if len(text) <= 4000 else f"{text[:4000]} ... (step-status shows it all)"
    lines += [clipped(shape["note"])] if shape["note"] else []
    lines += [f"Next: {clipped(handoff['next_action'])}"] if handoff.get("next_action") else []
    if files:
        lines.append("Changed: " + ", ".join(files[:10])
                     + (f" and {len(files) - 10} more" if len(files) > 10 else ""))
    return "\n".join(lines)


# ==================================================================================================
# 6e. Plans.  Owns: plan/ (planned steps, their dependencies, what is ready, the pulse waiters
#    watch).  Calls: sections 1-5, 6a-6d, and 6g's touch() (a waiter stays online).
#
#    plan/steps/<id>.json     a planned step: after (its dependencies, fixed once written),
#                             labels, priority, note, rank (its place in plan order), and before
#                             (the steps that wait for it: the one field that changes, by CAS)
#    plan/ready/<rank>.json   a step whose dependencies are all complete, with what `next` needs
#                             to start it (its note, its dependencies' handoffs); emptied once
#                             claimed (blank, its size the seconds until its lease is worth
#                             checking again, at most 60), so a listing tells ready from held
#                             and an expired lease from a live one without a read; removed
#                             when the step ends
#    plan/blocked/<id>.json   a step waiting on a dependency that failed or was blocked
#    plan/pulse.json          rewritten whenever work becomes ready: what an idle `next --wait`
#                             reads (one GET a round, no listing)
#
#    Why it is atomic.  No cycle can be made: a step's dependencies must be in the plan when it
#    is added and never change, so the plan only grows in topological order (a file is checked
#    for cycles as a whole and written dependencies first; a step is created create-only, so of
#    two different definitions racing one wins and the other is refused).  Claiming is the
#    step's lease (6d), so `next` never hands one step to two agents; the ready index is a hint
#    that a claim confirms.  Readiness is never lost between a dependency's end and a new
#    dependent: a completer ends the lease and then reads `before`; an adder writes `before` (or
#    the new step) and then reads the dependency's lease, so of the two at least one sees the
#    other, and the marker is create-only.  A process killed between ending a step and marking
#    its dependents ready left the step's marker (it goes last): the next `next` to check that
#    lease again (within a minute) finishes the work; and a reader who finds nothing in flight
#    (`next`, `plan show`) recomputes readiness from the definitions and the leases.
# ==================================================================================================

PRIORITY_LIMIT = 10 ** 6   # priorities are integers between -limit and +limit (exclusive)
PLAN_AFTER_LIMIT = 256      # dependencies of one step
HELD_RECHECK = 60          # seconds a claimed step's emptied marker is trusted, at most, before
                            # `next` reads its lease again (an expired lease's step is ready)
MARKERS_PAGE = 1000         # ready markers `next` lists at a time: one request, S3's page
PLAN_LOOK_EVERY = 600       # seconds between an idle `next --wait`'s looks at the whole picture
PLAN_POLL_MAX = 1.6         # ... and between its reads while idle: 2,250 HEADs an hour ($0.0009
                            # at $0.0004 per 1,000) and a look every 10 minutes ($0.0001); the
                            # pulse read 3 rounds in 4, so new work is seen within 2.2 s
_RANK_HEAD = 27             # "<7-digit priority>-<18-digit plan order>-" before the step id


class Plans(_Peer):
    """Steps with dependencies (`tc.plans`): add (load), show, ready, next, and the plan's part
    of ending and reopening a step.

    What never changes is remembered: that a step is complete (only a failed or blocked step
    can be reopened), with its handoff, in this process and in the cache directory (`next`
    learns it from the step's dependencies, so its `complete` reads none of them); and the
    fixed part of a step's definition, in this process."""

    def __init__(self, client):
        super().__init__(client)
        self._complete, self._fixed, self._contended = {}, {}, 0

    def _key(self, *parts):
        return self.client.key("plan", *parts)

    def _definition_key(self, step):
        return self._key("steps", check_name("step id", step) + ".json")

    def _ready_key(self, rank):
        return self._key("ready", rank + ".json")

    def definition(self, step):
        """(definition, Blob) of a planned step, or None when the step is in no plan."""
        got = self.records.read(self._definition_key(step), missing_ok=True)
        if got:
            self._fixed[step] = self._checked(got[0], got[1].key, step)
        return got

    def planned(self, step):
        """The definition of a planned step, or None: what never changes in it, read once (a
        step this agent took with `next` is known planned without a read)."""
        if step not in self._fixed:
            known = self.records.kept("planned", step)
            if known and isinstance(known.get("after"), list):
                self._fixed[step] = {k: known.get(k) for k in
                                     ("step", "after", "labels", "priority", "note", "rank")}
        return self._definitions([step]).get(step)

    def _definitions(self, steps):
        """{step: definition} of those planned, for what never changes in one (all but
        `before`): read once per process."""
        for step in steps:
            if step not in self._fixed:
                self.definition(step)
        return {s: self._fixed[s] for s in steps if s in self._fixed}

    def _learn(self, step, handoff):
        """Remember that `step` is complete, with its handoff (complete is final)."""
        if step not in self._complete:
            self._complete[step] = handoff
            self.records.keep("complete", step, handoff)

    def _ended_dependencies(self, steps):
        """{step: its handoff} for those of `steps` that have ended: the ones known complete
        without a request, the others from their leases (one read each, or one listing)."""
        found, unknown = {}, []
        for step in steps:
            known = self._complete.get(step) or self.records.kept("complete", step)
            if known and known.get("status") == "complete":
                found[step] = self._complete[step] = {k: known.get(k) for k in _HANDOFF_KEYS}
            else:
                unknown.append(step)
        for step, lease in self._leases(unknown).items():
            if lease.state in ENDED:
                found[step] = _handoff_of(lease)
                if lease.state == "complete":
                    self._learn(step, found[step])
        return found

    @staticmethod
    def _checked(record, where, step=None):
        where = f"plan step {where}"
        for name, kinds in (("after", list), ("before", list), ("labels", list),
                            ("priority", int), ("rank", str), ("note", (str, type(None)))):
            record[name] = _field(record, name, kinds, where, [] if kinds is list else None,
                                  *((-PRIORITY_LIMIT, PRIORITY_LIMIT) if kinds is int else ()))
        rank = record["rank"]
        try:   # every name in it becomes a key: checked as names given on the command line
            for name in record["after"] + record["before"] + record["labels"] + [rank]:
                check_name("a name", name)
        except UsageError as exc:
            raise CorruptObject(f"{where} is not a tracecraft record: {exc}") from None
        if record.get("step") != step and step is not None or not rank[:7].isdigit() or \
                not rank[8:_RANK_HEAD - 1].isdigit() or rank[_RANK_HEAD:] != record.get("step"):
            raise CorruptObject(f"{where} is not a tracecraft record")
        return record

    # -- adding steps -------------------------------------------------------------------------

    def add(self, step, after=(), labels=(), priority=0, note=None):
        """Add one step to the plan (see load()); returns what load() returns."""
        return self.load([{"step": step, "after": list(after), "labels": list(labels),
                           "priority": priority, "note": note}])

    def load(self, steps):
        """Add steps to the plan: a list of {step, after, labels, priority, note}, in plan
        order.  Dependencies must be in the plan already or among `steps`; a cycle is refused,
        naming it.  A step already planned the same way is left alone (loading a plan twice
        changes nothing); one planned differently is refused.  Returns {"added": [...],
        "unchanged": [...], "ready": [...]}.

        Costs a listing of the plan, one create-only write per new step, one compare-and-swap
        per dependency planned earlier, and one read per dependency to decide what is ready."""
        self.client.me()
        wanted = self._parse(steps)
        listed = self._names()
        unknown = sorted({d for s in wanted.values() for d in s["after"]
                          if d not in wanted and d not in listed})
        if unknown:
            raise Refused("unknown dependencies (not in the plan; add them first): "
                          + ", ".join(shown(d) for d in unknown))
        order = _topological(wanted)
        for dep in {d for spec in wanted.values() for d in spec["after"] if d not in wanted}:
            self._existing(self.definition(dep), dep)   # checked before anything is written
        unchanged = [step for step in order if step in listed]
        for step in unchanged:   # refused before anything is written
            self._same(step, wanted[step])
        before = {step: [] for step in order}
        for step in order:
            for dep in wanted[step]["after"]:
                if dep in before:
                    before[dep].append(step)
        stamp = f"{int(self.client.clock() * 1000) % 10 ** 13:013d}"
        added, records, refused = [], {}, None
        for step in order:
            spec = wanted[step]
            if step in listed:
                continue
            rank = f"{PRIORITY_LIMIT - spec['priority']:07d}-{stamp}" \
                   f"{spec['position']:05d}-{step}"
            record = self.client.record(step=step, after=spec["after"], labels=spec["labels"],
                                        priority=spec["priority"], note=spec["note"], rank=rank,
                                        before=before[step])
            try:
                self.records.write(self._definition_key(step), record, create_only=True)
                added.append(step)
                records[step] = record
            except PreconditionFailed:
                try:
                    self._same(step, spec)   # planned meanwhile by another agent: the same way?
                    unchanged.append(step)
                except Refused as exc:   # the steps written so far are finished below (their
                    refused = exc        # dependencies told, their readiness marked): the
                    break                # steps after it in plan order are not written
        for step in added:   # dependencies planned earlier learn of their new dependents
            for dep in wanted[step]["after"]:
                if dep not in records:
                    self.records.update(self._definition_key(dep), lambda got, s=step: dict(
                        self._existing(got, dep), before=sorted(set(got[0]["before"]) | {s})),
                        remembered=False)
        ready = self._mark_ready(records, self._leases(records))   # planned after being claimed?
        if refused:
            raise Refused(f"{refused}" + (f" (added before it: {', '.join(added[:10])}"
                                          f"{' ...' if len(added) > 10 else ''})" if added else ""))
        return {"added": added, "unchanged": unchanged, "ready": ready}

    def _existing(self, got, step):
        if got is None:
            raise StoreError(f"plan step {step} vanished while steps were added after it")
        return self._checked(got[0], got[1].key, step)

    def _parse(self, steps):
        if not isinstance(steps, list) or not steps:
            raise UsageError("a plan is a non-empty list of steps")
        wanted = {}
        for position, spec in enumerate(steps):
            if not isinstance(spec, dict):
                raise UsageError(f"plan entry {position + 1} is not an object with a 'step'")
            extra = set(spec) - {"step", "after", "labels", "priority", "note"}
            if extra:
                raise UsageError(f"plan entry {position + 1} has unknown fields: "
                                 + ", ".join(sorted(shown(str(k)) for k in extra)))
            step = check_name("step id", spec.get("step"))
            after, labels = spec.get("after") or [], spec.get("labels") or []
            if not isinstance(after, list) or not isinstance(labels, list):
                raise UsageError(f"step {step}: 'after' and 'labels' are lists of names")
            after = list(dict.fromkeys(check_name("dependency", d) for d in after))
            labels = sorted({check_name("label", label) for label in labels})
            if len(after) > PLAN_AFTER_LIMIT or len(labels) > 32:
                raise UsageError(f"step {step}: at most {PLAN_AFTER_LIMIT} dependencies and 32 "
                                 "labels")
            priority = spec.get("priority") or 0
            if type(priority) is not int or abs(priority) >= PRIORITY_LIMIT:
                raise UsageError(f"step {step}: the priority is an integer between "
                                 f"-{PRIORITY_LIMIT - 1} and {PRIORITY_LIMIT - 1}")
            note = spec.get("note")
            if note is not None:
                check_text("note", note)
                if len(note.encode("utf-8")) > MAX_VALUE:
                    raise UsageError(f"step {step}: the note is larger than "
                                     f"{MAX_VALUE // 1024} KiB")
            entry = {"after": after, "labels": labels, "priority": priority, "note": note,
                     "position": position % 10 ** 5}
            if step in wanted and dict(wanted[step], position=0) != dict(entry, position=0):
                raise UsageError(f"step {step} is in the plan twice, differently")
            wanted.setdefault(step, entry)
        return wanted

    def _same(self, step, spec):
        got = self.definition(step)
        record = got[0] if got else {}
        if [record.get(k) for k in ("after", "labels", "priority", "note")] != \
                [spec[k] for k in ("after", "labels", "priority", "note")]:
            raise Refused(f"step {step} is already in the plan, differently (after: "
                          f"{', '.join(record.get('after') or []) or 'nothing'}); a step's "
                          "dependencies never change: give the new one another id")

    # -- readiness ----------------------------------------------------------------------------

    def _leases(self, steps):
        """{step: Lease} for the steps named: read one by one, or from one listing of steps/
        when there are many."""
        steps = set(steps)
        if len(steps) <= 32:
            return {s: self.client.steps.lease(s) for s in steps}
        found = {lease.step: lease for lease in self.client.steps.leases(only=steps)}
        return {s: found.get(s) or Lease(s, None) for s in steps}

    def _mark_ready(self, definitions, own=None, again=False):
        """Mark ready those of `definitions` ({step: definition}) whose dependencies are all
        complete, and mark blocked those with one failed or blocked.  `own`: their own leases,
        where known ({step: Lease}), so that one claimed or ended is not marked; the others are
        taken to be free (a marker for a step that is not is a hint `next` sees through).
        Returns the steps marked.  The markers are create-only (two agents marking one step
        make one), or with `again` rewritten (a released step whose marker `next` emptied)."""
        if not definitions:
            return []
        ended = self._ended_dependencies({d for r in definitions.values() for d in r["after"]})
        marked = []
        for step, record in definitions.items():
            if own and step in own and own[step].status() != "pending":
                continue
            deps = [ended.get(d) for d in record["after"]]
            failed = [d for d in deps if d and d["status"] in ("failed", "blocked")]
            if failed:
                self._block(step, failed[0])
            elif all(d and d["status"] == "complete" for d in deps):
                self._put_ready(record, deps, create_only=not again)
                marked.append(step)
        if marked:
            self._pulse()
        return marked

    def _put_ready(self, record, handoffs, create_only=True):
        context = {"step": record["step"], "note": record["note"], "after": record["after"],
                   "labels": record["labels"], "priority": record["priority"],
                   "handoffs": handoffs}
        try:
            self.records.write(self._ready_key(record["rank"]), context,
                               create_only=create_only)
        except PreconditionFailed:
            pass   # marked by another agent meanwhile

    def _block(self, step, dep):
        self.records.write(self._key("blocked", step + ".json"),
                           {"step": step, "after": dep["step"], "status": dep["status"],
                            "by": dep["by"], "note": dep["note"]})

    def _pulse(self):
        self.store.put(self._key("pulse.json"), os.urandom(8).hex().encode("ascii"),
                       content_type="text/plain")

    def ended(self, step, lease):
        """The plan's part of a step's end, after its lease was ended: mark ready the dependents
        it was the last to wait for or, when it failed or was blocked, mark them blocked; then
        drop its own marker (until then it is a step in flight: nobody takes the plan for
        stuck and recomputes it meanwhile).  Its definition is read after the end, never
        before: a dependent added meanwhile is then either in `before` or saw the step ended."""
        got = self.definition(step)
        if not got:
            return
        record = got[0]
        if lease.state == "complete":
            self._learn(step, _handoff_of(lease))
        self._mark_ready(self._definitions(record["before"]))
        try:   # last: while it is there, a process killed before this point is found out (its
            self.store.delete(self._ready_key(record["rank"]))   # lease is checked again)
        except NoSuchKey:
            pass

    def reopened(self, step, lease):
        """The plan's part of a reopened (or released) step: it may be ready again, and its
        dependents are no longer blocked by it."""
        got = self.definition(step)   # (its dependents' blocked marks fall when next read)
        if not got:
            return
        # rewritten, not created: `next` emptied the marker of a step it claimed
        self._mark_ready({step: got[0]}, {step: lease}, again=True)

    # -- what is ready ------------------------------------------------------------------------

    def _markers(self, start_after=None, limit=None):
        """(ready entries, held entries, the last key if `limit` keys were listed) of
        plan/ready/, in rank order: all of them, or `limit` keys from `start_after` (a key)."""
        ready, held, listed = [], [], []
        for entry in self.store.list(self._key("ready") + "/", start_after, limit):
            rank = entry.key.rsplit("/", 1)[-1][:-5]
            listed.append(entry.key)
            if len(rank) > _RANK_HEAD and entry.key.endswith(".json"):
                (held if entry.size <= HELD_RECHECK else ready).append(entry)
        return ready, held, listed[-1] if limit and len(listed) == limit else None

    def _context(self, entry, cache):
        """What a ready marker says (a step's context), or None: gone, held, or not a marker
        (warned about once)."""
        try:
            got, _ = self.records.read_listed(entry, cache)
            if not got or got[1].size <= HELD_RECHECK:
                return None
            record = got[0]
            step = entry.key.rsplit("/", 1)[-1][_RANK_HEAD:-5]
            if record.get("step") != step or not all(
                    isinstance(record.get(k), list) for k in ("labels", "after", "handoffs")) \
                    or not all(isinstance(h, dict) for h in record["handoffs"]):
                raise CorruptObject("not a ready marker")
        except CorruptObject as exc:
            self.client.warn_once(f"skipped {entry.key}: {exc}")
            return None
        return dict(record, handoffs=[_handoff_entry(h) for h in record["handoffs"]])

    def ready(self, label=None, cache=None):
        """Steps that can be picked up now, in the order `next` takes them: {"ready": [context
        each: step, note, after, labels, priority, handoffs], "blocked": [{step, after, status,
        by, note}]}.  A listing of ready markers and a read of each; blocked(): a listing, and
        a read of each mark and of the two leases it speaks of."""
        cache = {} if cache is None else cache
        if label is not None:
            check_name("label", label)
        ready = []
        for entry in self._markers()[0]:
            context = self._context(entry, cache)
            if context and (label is None or label in context["labels"]):
                ready.append(_ready_shape(context))
        return {"ready": ready, "blocked": self.blocked()}

    def blocked(self):
        """The steps marked blocked by a failed or blocked dependency: [{step, after, status,
        by, note}].  A mark is checked against the two leases it speaks of (blocked lists are
        short): one whose dependency was reopened or forced to an end, or whose step has
        ended, is no longer true, and is dropped."""
        found = []
        for entry in self.store.list(self._key("blocked") + "/"):
            try:
                record, _ = self.records.read(entry.key)
                shape = {k: record.get(k) for k in ("step", "after", "status", "by", "note")}
                if not all(isinstance(shape[k], str) for k in ("step", "after")):
                    raise CorruptObject("not a tracecraft record")
                dep, own = (self.client.steps.lease(s) for s in (shape["after"], shape["step"]))
            except (NoSuchKey, CorruptObject, UsageError) as exc:
                if not isinstance(exc, NoSuchKey):
                    self.client.warn_once(f"skipped {entry.key}: {exc}")
                continue
            if dep.state in ("failed", "blocked") and own.state not in ENDED:
                found.append(dict(shape, status=dep.state))
            elif not self.client.read_only:
                try:
                    self.store.delete(entry.key)
                except NoSuchKey:
                    pass
        return found

    def next(self, label=None, ttl=None, wait=None):
        """Claim one ready step, highest priority first, then plan order; return it: {step,
        note, after, labels, priority, handoffs (its dependencies' notes), lease}.

        Raises NotFound when nothing is ready; with `wait` (seconds, True for no limit) blocks
        until a step is ready, returns None when every planned step has ended, and raises
        WaitTimeout.  While waiting it reads one small key a round and lists again only when it
        has changed: plan/pulse.json (new work) three rounds in four, and the marker of one
        step in flight (its end may be the plan's) the fourth; and it looks at the whole
        picture (expired leases) every PLAN_LOOK_EVERY seconds."""
        self.client.me()
        if label is not None:
            check_name("label", label)
        if wait is None:
            found = self._take(label, ttl, {})
            if isinstance(found, dict):
                return found
            raise NotFound(found)
        timeout = None if wait is True else check_number("the wait", wait, 0, MAX_SECONDS, True)
        cache, watch, pulse = {}, [], self._key("pulse.json")
        seen = {"etags": None, "turn": 0, "looked": None}

        def attempt():
            if seen["looked"] is None:   # the first look, at once: most find work waiting
                seen["looked"] = 0.0
                found = self._take(label, ttl, cache, watch)
                if isinstance(found, dict):
                    return found, True
            if seen["etags"] is not None:
                seen["turn"] += 1
                turn = 1 if watch and seen["turn"] % 4 == 0 else 0
                if self._etag(([pulse] + watch)[turn]) == seen["etags"][turn] and \
                        time.monotonic() - seen["looked"] < PLAN_LOOK_EVERY:
                    return None, False
            before = self._etag(pulse)   # read before looking: no later pulse goes unseen
            found = self._take(label, ttl, cache, watch)
            watched = [self._etag(k) for k in watch]
            # a watched step that ended before it could be read: look again next round
            seen.update(etags=[before] + watched if None not in watched else None,
                        looked=time.monotonic())
            if isinstance(found, dict):
                return found, True
            return (False if found.startswith("every") else None), False
        found = poll(attempt, timeout, lambda: f"nothing became ready in {_seconds(timeout)}",
                     slow=PLAN_POLL_MAX, cancel=self.client.cancel, tick=self.client.agents.touch)
        return found or None

    def _etag(self, key):
        try:
            return self.store.head(key).etag or "?"
        except NoSuchKey:
            return None

    def _take(self, label, ttl, cache, watch=None, repaired=False):
        """Claim the first ready step: its context (a dict), else why nothing was (text).
        `watch` gets the key of one step in flight, for a waiter to watch.  The markers are
        listed a page at a time, the next only when no step of this one could be taken: one
        listing request, however many steps are ready."""
        ready, held, refused, page = [], [], [], (None, None, None)
        while page[2] or page[0] is None:
            page = self._markers(page[2], MARKERS_PAGE)
            ready, held = ready + page[0], held + page[1]
            taken = self._first(page[0], label, ttl, cache, refused)
            if taken:
                return taken
        if watch is not None:   # a step in flight: held, or claimed just now by another agent
            watch[:] = ([e.key for e in held] + refused)[:1]
        tidied = False
        for entry in held:   # claimed a while ago: has its lease expired, or been released?
            now = entry.server_time if entry.server_time is not None else time.time()
            if entry.last_modified is None or now - entry.last_modified >= entry.size:
                context = self._recheck(entry, label)
                taken = isinstance(context, dict) and self._try(context, ttl, entry)
                if taken:
                    return taken
                tidied = tidied or context == "ended"
        if tidied and not repaired:   # finished a dead ender's work: its dependents may be ready
            return self._take(label, ttl, cache, watch, True)
        if ready or held:
            return f"nothing is ready{' with label ' + label if label else ''}: " \
                   f"{len(held)} in progress"
        why = self._repair()
        return self._take(label, ttl, cache, watch, True) if why is None and not repaired else \
            why or "nothing is ready"

    def _first(self, ready, label, ttl, cache, refused):
        """Claim the first of these ready markers that this agent can have (with `label`);
        the keys of those another agent had go to `refused`."""
        candidates, lost = list(ready), 0
        if self._contended and len(candidates) > 1:
            lost = self._spread(candidates)
        while candidates:
            entry = candidates.pop(0)
            context = None
            if label is not None:   # the label is in the marker: read before claiming
                context = self._context(entry, cache)
                if not context or label not in context["labels"]:
                    continue
            taken = self._try(context, ttl, entry, cache)
            if taken:
                return taken
            refused.append(entry.key)   # claimed by another agent, its marker not yet emptied
            lost += 1
            if lost == 1 and candidates:
                self._contended = self._spread(candidates)
        return None

    @staticmethod
    def _spread(candidates):
        """Others race for the same first steps: start from a random place among the ready
        steps of the highest priority, so that a fleet spreads out instead of colliding at
        every step (a lone agent, never losing a race, keeps to plan order).  Returns 1."""
        import random
        top = sum(1 for e in candidates if e.key.rsplit("/", 1)[-1][:7] ==
                  candidates[0].key.rsplit("/", 1)[-1][:7])
        start = random.randrange(top)
        candidates[:top] = candidates[start:top] + candidates[:start]
        return 1

    def _try(self, context, ttl, entry, cache=None):
        """Claim the step of a ready marker; read the marker (its context) once won, if not
        read yet.  Returns the step as next() does, or None when another agent has it."""
        step = entry.key.rsplit("/", 1)[-1][_RANK_HEAD:-5]
        try:
            lease = self.client.steps.claim(step, ttl)
        except Refused as exc:   # taken meanwhile, or ended: its ender is marking what follows,
            current = getattr(exc, "lease", None)   # or died doing so, and then the marker,
            if current is not None and current.state in ENDED and entry.size > HELD_RECHECK:
                etag = entry.etag or self._etag(entry.key)   # held, is read again in a minute
                if etag:                                     # (_recheck) and finished; gone:
                    self._hold(entry.key, HELD_RECHECK, if_match=etag)   # never brought back
            return None
        except UsageError:
            self.client.warn_once(f"skipped {entry.key}: not a step's marker")
            return None
        context = context or self._context(entry, {} if cache is None else cache) or \
            self._rebuilt(step)
        if context is None:   # a marker written by another tool, for a step in no plan
            self.client.steps.release(step)
            self.client.warn_once(f"skipped {entry.key}: not a planned step's marker")
            return None
        self._hold(entry.key, lease["ttl"])
        rank = entry.key.rsplit("/", 1)[-1][:-5]
        self.records.keep("planned", step, {"step": step, "after": context["after"],
                                            "labels": context["labels"], "rank": rank,
                                            "priority": context["priority"],
                                            "note": context["note"]})
        for handoff in context["handoffs"]:   # its dependencies are complete, for good
            if isinstance(handoff, dict) and handoff.get("status") == "complete":
                self._learn(handoff.get("step"), handoff)
        return dict(_ready_shape(context), lease=lease)

    def _hold(self, key, seconds, if_match=None):
        """Empty a ready marker: held, worth checking again in `seconds` (at most a minute).
        Another agent's marker is emptied only if it is the version read (`if_match`): its
        holder may have ended the step and removed it since, and it must not come back."""
        try:
            self.store.put(key, b"\n" * max(1, min(HELD_RECHECK, int(seconds) + 1)),
                           if_match=if_match)
        except (PreconditionFailed, NoSuchKey):
            pass

    def _recheck(self, entry, label):
        """A held marker's lease read again: the step's context if it is free again, else None,
        or "ended"."""
        step = entry.key.rsplit("/", 1)[-1][_RANK_HEAD:-5]
        lease = self.client.steps.lease(step)
        status = lease.status()
        if status == "in_progress":   # still held: trusted again for a while
            etag = entry.etag or self._etag(entry.key)
            if etag:
                self._hold(entry.key, lease.left(), if_match=etag)
            return None
        if status in ENDED:
            self.ended(step, lease)
            return "ended"
        return self._rebuilt(step, label)

    def _rebuilt(self, step, label=None):
        """A step's context built from its definition, without its marker; None when it is in
        no plan or lacks the label."""
        got = self._definitions([step]).get(step)
        if not got or label is not None and label not in got["labels"]:
            return None
        ended = self._ended_dependencies(got["after"])
        return {"step": step, "note": got["note"], "after": got["after"],
                "labels": got["labels"], "priority": got["priority"],
                "handoffs": [_handoff_entry(ended.get(d) or {"step": d}) for d in got["after"]]}

    def _repair(self):
        """Nothing ready and nothing in flight: has every planned step ended?  Two listings
        say (a definition and a status.json for each: the second is of everything under
        steps/, a page per 1,000 objects), reading nothing.  If not, recompute
        readiness from the whole plan (a process that died between ending a step and marking
        its dependents left them unmarked), at most once a minute for this agent; say what is
        left."""
        planned = self._names()
        if not planned:
            return "the plan is empty (tracecraft plan add STEP, or plan load FILE)"
        prefix = self.client.key("steps") + "/"
        ended = {e.key[len(prefix):-len("/status.json")] for e in self.store.list(prefix)
                 if e.key.endswith("/status.json")}
        if planned <= ended:
            return f"every planned step has ended ({len(planned)})"
        last = self.records.kept("plan-scan", "") or {}
        if isinstance(last.get("at"), (int, float)) and 0 <= time.time() - last["at"] < \
                HELD_RECHECK:
            return f"nothing is ready: {len(planned - ended)} steps have not ended"
        self.records.keep("plan-scan", "", {"at": time.time()})
        order, _, leases, states, repaired = self._survey({})
        if repaired:
            return None
        states = [states[s] for s in order]
        if not states:
            return "the plan is empty (tracecraft plan add STEP, or plan load FILE)"
        # ended: by its lease (a step blocked by a dependency's failure has not: reopened,
        # the dependency may yet run)
        if all(s in leases and leases[s].state in ENDED for s in order):
            return f"every planned step has ended ({len(order)})"
        stuck = sum(state == "blocked" for state in states)
        return f"nothing is ready: {stuck} blocked, {states.count('waiting')} waiting" \
            if stuck or "waiting" in states else "nothing is ready"

    # -- the whole plan -----------------------------------------------------------------------

    def show(self, cache=None):
        """The whole plan in plan order: {"steps": [{step, state, after, labels, priority,
        note, holder, rank}], "repaired": [...]}.  state: the lease's (in_progress, expired,
        complete, failed, blocked) or, for a step nobody holds, ready, waiting (for
        dependencies) or blocked (a dependency, or one of theirs, failed or was blocked).
        Reads every definition and every lease; marks ready any step found ready unmarked."""
        order, definitions, leases, states, repaired = self._survey({} if cache is None
                                                                   else cache)
        return {"steps": [{"step": s, "state": states[s], "after": definitions[s]["after"],
                           "labels": definitions[s]["labels"],
                           "priority": definitions[s]["priority"], "note": definitions[s]["note"],
                           "holder": leases[s].holder if s in leases and
                           states[s] in ("in_progress", "expired") else None}
                          for s in order],
                "repaired": repaired}

    def _survey(self, cache):
        """show()'s reading of the plan: (steps in plan order, {step: definition}, {step:
        Lease}, {step: state}, the steps it marked ready)."""
        definitions = self._listed(cache)
        leases = {lease.step: lease for lease in self.client.steps.leases(cache)}
        marked = {e.key.rsplit("/", 1)[-1][:-5] for group in self._markers()[:2] for e in group}
        states = {}
        try:
            topological = _topological(definitions)   # acyclic by construction, unless...
        except Refused as exc:
            raise CorruptObject(f"the plan's definitions were edited by hand or by another "
                                f"tool: {exc}") from None
        for step in topological:   # dependencies first
            own = leases[step].status() if step in leases else "pending"
            deps = [states.get(d) or (leases[d].status() if d in leases else "waiting")
                    for d in definitions[step]["after"]]
            states[step] = own if own != "pending" else \
                "ready" if all(d == "complete" for d in deps) else \
                "blocked" if any(d in ("failed", "blocked") for d in deps) else "waiting"
        order = sorted(definitions, key=lambda s: definitions[s]["rank"][8:])   # plan order
        repaired = [s for s in order if states[s] == "ready"
                    and definitions[s]["rank"] not in marked]
        if repaired and not self.client.read_only:
            for step in repaired:
                self._put_ready(definitions[step], [_handoff_of(leases[d]) for d in
                                                    definitions[step]["after"]])
            self._pulse()
        return order, definitions, leases, states, repaired

    def dependencies(self, cache=None):
        """{step: its dependencies} of every planned step (see _listed)."""
        return {step: d["after"] for step, d in self._listed({} if cache is None else
                                                             cache).items()}

    def _names(self):
        """The ids of every planned step: one listing, reading nothing."""
        prefix = self._key("steps") + "/"
        return {e.key[len(prefix):-5] for e in self.store.list(prefix) if e.key.endswith(".json")}

    def _listed(self, cache):
        """{step: definition} of every planned step: a listing, and a read of each definition
        the listing shows changed since `cache` last saw it; one written by another tool is
        warned about and skipped."""
        prefix, found = self._key("steps") + "/", {}
        for entry in self.store.list(prefix):
            step = entry.key[len(prefix):-5]
            try:
                got, _ = self.records.read_listed(entry, cache)
                if got:
                    found[step] = self._checked(dict(got[0]), entry.key, step)
            except CorruptObject as exc:
                self.client.warn_once(f"skipped {entry.key}: {exc}")
        return found

    def unmet(self, record):
        """The dependencies of a planned step (its definition) that are not complete."""
        ended = self._ended_dependencies(record["after"])
        return [d for d in record["after"] if (ended.get(d) or {}).get("status") != "complete"]


def _topological(wanted):
    """The steps of `wanted` ({step: {after: [...]}}), dependencies first, else in their own
    order; raises Refused naming a cycle.  Iterative: a chain of 5,000 steps is no recursion."""
    order, done = [], set()
    for root in wanted:
        path, on_path, stack = [], set(), [(root, iter(wanted[root]["after"]))]
        if root in done:
            continue
        path.append(root), on_path.add(root)
        while stack:
            step, deps = stack[-1]
            dep = next((d for d in deps if d in wanted and d not in done), None)
            if dep is None:
                stack.pop(), path.pop(), on_path.discard(step), done.add(step)
                order.append(step)
            elif dep in on_path:
                cycle = path[path.index(dep):] + [dep]
                raise Refused("the plan has a cycle: " + " -> ".join(shown(s) for s in cycle))
            else:
                stack.append((dep, iter(wanted[dep]["after"])))
                path.append(dep), on_path.add(dep)
    return order


_HANDOFF_KEYS = ("step", "status", "by", "note") + HANDOFF_FIELDS


def _handoff_entry(handoff):
    """A dependency's handoff with every key, each of its kind (read from a marker another
    tool may have written): what `next` shows, whatever it was given."""
    entry = {k: handoff.get(k) if isinstance(handoff.get(k), str) else None
             for k in _HANDOFF_KEYS}
    files = handoff.get("changed_files")
    entry["changed_files"] = [f for f in files if isinstance(f, str)] \
        if isinstance(files, list) else []
    entry["needs_review"] = handoff.get("needs_review") is True
    return entry


def _handoff_of(lease):
    """A dependency's handoff as `next` shows it: who ended it, how, and the note."""
    record = lease.record
    handoff = record.get("handoff") if isinstance(record.get("handoff"), dict) else {}
    return {"step": lease.step, "status": lease.status(), "by": lease.ended_by,
            "note": record.get("note"), **{k: handoff.get(k) for k in HANDOFF_FIELDS}}


def _ready_shape(context):
    return {k: context.get(k) for k in ("step", "note", "after", "labels", "priority",
                                        "handoffs")}


# ==================================================================================================
# 6f. Reservations.  Owns: reservations/table.json (the paths agents are editing, as leases that
#    exclude overlaps) and what a path glob is and when two overlap.  Calls: sections 1-5, 6a-6e
#    (6d's leases: a reservation tied to a step lives while its agent holds that step's lease).
# ==================================================================================================
#
#    One table, not an object per glob: two reservations that overlap have different names
#    (src/api/** and src/api/auth.py), so a create-only object per glob could not exclude the
#    other.  Every reservation of a project is an entry of one object, changed only by
#    compare-and-swap on its ETag (Records.update): a reserve judges overlaps on exactly the
#    version it replaces, so of agents racing for overlapping globs one wins and the others'
#    swaps fail, re-read and are refused.  Reservations are few and change at the pace of
#    commands, so one object is no bottleneck.
#
#    Time is the store's: an entry's `expires` is the store's clock (the Date of the read its
#    change replaced) plus its ttl, and it is judged against the Date of a later read, never this
#    machine's clock, so a skewed client can neither steal a live reservation nor keep a dead one.
#    A step-tied entry (claim --paths) has no expiry of its own: it is live while its agent holds
#    that step's lease at that generation (the lease is read only when the entry decides an
#    answer).  Dead entries are dropped by the next change; heartbeat renews an agent's own.
#
#    Globs are paths relative to the repository's root, '/'-separated, normalised (no '.', '..'
#    or empty segments, not absolute).  `**` as a whole segment matches zero or more segments;
#    within a segment `*`, `?` and `[...]` match as fnmatch does, never across a '/' (so
#    `src/*.py` is not `src/api/auth.py`: another depth).  A glob whose last segment is a plain
#    name also covers everything under it, since the name may be a directory (as `git add
#    src/api` does): `src/api` is `src/api/**` too; a trailing '/' means the same.  Two globs
#    overlap when some path could match both, decided exactly, segment by segment, by searching
#    the product of their automata (_meet).  Conservative (an overlap where no real path could
#    be in both) only where a plain name is taken as a possible directory (`docs/index.md` meets
#    `**/*.py` at docs/index.md/x.py) and where a class's only common character is '/'.

MAX_GLOB = 512         # characters in one glob
MAX_GLOBS = 100        # globs in one reserve
_DEEP = "**"           # a compiled glob's segment that matches zero or more segments
_ANY_CHAR = (True, ())  # a character set: (negated, ((low, high) code points, ...))
_END = object()
_globs_compiled = {}


def _segment_tokens(segment):
    """A segment of a glob as tokens: None for '*', else the set of characters one position
    matches, (negated, ranges).  Classes read as fnmatch reads them: `[!...]` negates, a ']'
    first is literal, an unclosed '[' is literal; one that matches nothing is refused."""
    tokens, i, n = [], 0, len(segment)
    while i < n:
        c = segment[i]
        i += 1
        if c == "*":
            if not tokens or tokens[-1] is not None:
                tokens.append(None)
            continue
        if c == "?":
            tokens.append(_ANY_CHAR)
            continue
        end = i + (segment[i:i + 1] == "!")
        end = segment.find("]", end + (segment[end:end + 1] == "]")) if c == "[" else -1
        if end < 0:
            tokens.append((False, ((ord(c), ord(c)),)))
            continue
        body, negated = segment[i:end], segment[i:i + 1] == "!"
        body, ranges, k = body[negated:], [], 0
        while k < len(body):
            if k + 2 < len(body) and body[k + 1] == "-":
                if body[k] <= body[k + 2]:
                    ranges.append((ord(body[k]), ord(body[k + 2])))
                k += 3
            else:
                ranges.append((ord(body[k]), ord(body[k])))
                k += 1
        if not ranges and not negated:
            raise UsageError(f"[{body}] matches no character")
        tokens.append((negated, tuple(ranges)))
        i = end + 1
    return tokens


def check_glob(glob, what="glob"):
    """The normal form of a path glob (see this section's header), or UsageError naming `what`:
    not absolute, no '..', no backslash (git would read it as an escape, fnmatch as a
    character), no control character, a class that matches something.  A trailing '/' means
    everything under it; '.' alone is the whole repository."""
    if not isinstance(glob, str) or not glob.strip():
        raise UsageError(f"{what}: a path glob must be non-empty text, relative to the "
                         "repository's root (e.g. src/api/**)")
    check_text(what, glob)
    wrong = None
    if len(glob) > MAX_GLOB:
        wrong = f"is {len(glob)} characters long; the limit is {MAX_GLOB}"
    elif not glob.isprintable():
        wrong = "contains a control character"
    elif glob.startswith(("/", "~")) or glob[1:3] in (":/", ":\\"):
        wrong = "is absolute: give it relative to the repository's root (e.g. src/api/**)"
    elif "\\" in glob:
        wrong = "contains a backslash: separate directories with '/'"
    segments = [s for s in glob.split("/") if s not in ("", ".")]
    if wrong is None and ".." in segments:
        wrong = "contains '..': it must stay inside the repository"
    if wrong is None:
        try:
            for s in segments:
                _segment_tokens(s)
        except UsageError as exc:
            wrong = str(exc)
    if wrong:
        raise UsageError(f"{what}: {shown(glob)!r:.80} {wrong}")
    collapsed = []
    for s in (segments + ([_DEEP] if glob.endswith("/") else [])) or [_DEEP]:
        if not (s == _DEEP and collapsed[-1:] == [_DEEP]):
            collapsed.append(s)
    return "/".join(collapsed)


def _compiled(glob):
    """A normalised glob as its segments (_DEEP, or a segment's tokens); one whose last segment
    is a plain name ends in _DEEP as well: that name may be a directory."""
    found = _globs_compiled.get(glob)
    if found is None:
        segments = glob.split("/")
        found = [_DEEP if s == _DEEP else _segment_tokens(s) for s in segments]
        if not any(c in segments[-1] for c in "*?["):
            found.append(_DEEP)
        if len(_globs_compiled) > 4096:
            _globs_compiled.clear()
        _globs_compiled[glob] = found
    return found


def _chars_meet(a, b):
    """Whether some character is in both sets.  Negated sets are of an unbounded alphabet, so
    two always share one."""
    if a[0] and b[0]:
        return True
    (_, positive), (negated, other) = (b, a) if a[0] else (a, b)
    if not negated:
        return any(low <= high2 and low2 <= high for low, high in positive for low2, high2 in other)
    for low, high in positive:   # some character of this range that `other` does not hold?
        at = low
        for low2, high2 in sorted(other):
            if low2 > at:
                break
            at = max(at, high2 + 1)
        if at <= high:
            return True
    return False


def _meet(p, q, deep, each):
    """Whether two sequences have a common match: a search of the product automaton, whose
    states are pairs of positions.  `deep` is the element that matches any run of the other's
    (a '*' token within a segment, _DEEP among segments); `each(a, b)` says whether two other
    elements have a common match."""
    seen, todo = set(), [(0, 0)]
    while todo:
        state = todo.pop()
        if state in seen:
            continue
        seen.add(state)
        i, j = state
        if i == len(p) and j == len(q):
            return True
        a = p[i] if i < len(p) else _END
        b = q[j] if j < len(q) else _END
        if a is deep:
            todo.append((i + 1, j))         # matches nothing more
            if b is not _END:
                todo.append((i, j + 1))     # ... or takes b in
        if b is deep:
            todo.append((i, j + 1))
            if a is not _END:
                todo.append((i + 1, j))
        if a is not _END and b is not _END and a is not deep and b is not deep and each(a, b):
            todo.append((i + 1, j + 1))
    return False


def _segments_meet(p, q):
    """Whether some segment matches both token lists ('*' is None: it takes in any character)."""
    return _meet(p, q, None, _chars_meet)


def globs_overlap(a, b):
    """Whether some path could match both normalised globs (check_glob): src/api/** and
    src/api/auth.py do, src/*.py and src/api/auth.py do not (different depths), src/*.py and
    src/a*.py do, docs/** and src/** do not."""
    return _meet(_compiled(a), _compiled(b), _DEEP, _segments_meet)


def glob_matches(glob, path):
    """Whether a path (relative to the repository's root, as git names it) is covered by a
    normalised glob: the same search, the path's characters each a set of one."""
    literal = [[(False, ((ord(c), ord(c)),)) for c in s] for s in path.split("/") if s]
    return _meet(_compiled(glob), literal, _DEEP, _segments_meet)


def _reservation_shape(entry, left):
    """A reservation as shown everywhere: glob, agent, shared, step, note, at, expires_in
    (seconds left by the store's clock; null for one just released)."""
    return {"glob": entry["glob"], "agent": entry["agent"], "shared": entry["shared"],
            "step": entry["step"], "note": entry["note"], "at": entry["at"],
            "expires_in": _rounded(left)}


class _Unchanged(TracecraftError):
    """A change to the table that changes nothing: no write."""


class _Vanished(TracecraftError):
    """The table was deleted between its creation and the change."""


class Reservations(_Peer):
    """Paths agents are editing (`tc.reservations`): tc.reservations() lists the live ones;
    reserve, unreserve, renew (heartbeat), blocking (the git guard).  See the section's header
    for what overlapping means and why one table."""

    def key(self):
        return self.client.key("reservations", "table.json")

    def __call__(self):
        """Every live reservation (_reservation_shape), by glob.  One read, and one per step
        that step-tied reservations name."""
        got = self.records.read(self.key(), missing_ok=True)
        if got is None:
            return []
        now, leases, live = self._now(got), {}, []
        for entry in self._entries(got):
            left = self._left(entry, now, leases)
            if left > 0:
                live.append(_reservation_shape(entry, left))
        return sorted(live, key=lambda r: (r["glob"], r["agent"]))

    def globs(self, globs, what="glob"):
        """Globs checked and normalised (check_glob), without repeats."""
        if isinstance(globs, str):
            globs = [globs]
        if not isinstance(globs, (list, tuple)) or not globs:
            raise UsageError(f"{what}: give at least one path glob (e.g. src/api/**)")
        if len(globs) > MAX_GLOBS:
            raise UsageError(f"{what}: at most {MAX_GLOBS} globs at once")
        return list(dict.fromkeys(check_glob(g, what) for g in globs))

    def reserve(self, globs, ttl=None, shared=False, note=None, held=None, what="glob"):
        """Reserve path globs for this agent, as a lease of `ttl` seconds (default 30 minutes)
        that heartbeat renews; `shared` ones coexist with other shared ones.  `held`: the step
        (Steps.claim()'s answer) the reservations are tied to instead (claim --paths).

        Refused, naming the holder and its glob, while another agent's live reservation
        overlaps one of `globs` (an exclusive one, or any when this one is exclusive).  This
        agent's own reservations never stand in its way; one of the same glob (and step) is
        replaced.  Atomic: judged on the version of the table that the compare-and-swap
        replaces.  Returns the reservations made (_reservation_shape)."""
        me = self.client.me()
        globs = self.globs(globs, what)
        ttl = DEFAULT_TTL if ttl is None else check_number("the reservation ttl", ttl)
        if note is not None:
            check_text("note", note)
            if len(note) > 1000:
                raise UsageError("note: at most 1000 characters")
        step = held["step"] if held else None
        made = []

        def change(got):
            entries, now, leases = self._entries(got), self._now(got), {}
            kept = [e for e in entries if not self._expired(e, now)
                    and not (e["agent"] == me and e["glob"] in globs and e["step"] == step)]
            if len(kept) > 64:   # grown with entries of steps that ended elsewhere (forced,
                kept = [e for e in kept   # taken over): tidied, a lease read per step
                        if e["step"] is None or self._left(e, now, leases) > 0]
            for glob in globs:
                for e in kept:
                    if e["agent"] != me and not (shared and e["shared"]) and \
                            globs_overlap(glob, e["glob"]):
                        left = self._left(e, now, leases)
                        if left > 0:
                            raise Refused(self._refusal(glob, e, left))
            kept = [e for e in kept if e["step"] not in leases or self._left(e, now, leases) > 0]
            made[:] = [{"id": os.urandom(6).hex(), "glob": glob, "agent": me,
                        "shared": bool(shared), "step": step,
                        "generation": held["generation"] if held else None, "note": note,
                        "ttl": None if held else ttl, "expires": None if held else now + ttl,
                        "at": self.client.now()} for glob in globs]
            return self.client.record(reservations=kept + made)
        self._change(change, create=True)
        if held:   # remembered, so that ending the step drops them without a read otherwise
            self.records.keep("reserved-steps", step, {"generation": held["generation"]})
        left = held["lease_left"] if held else ttl
        return [_reservation_shape(e, left) for e in made]

    def unreserve(self, globs=None, step=None):
        """Drop this agent's reservations of `globs` (None: all of them; `step`: those tied to
        that step).  Returns the reservations dropped (expires_in null); none is no error."""
        me = self.client.me()
        globs = None if globs is None or globs == [] else self.globs(globs)
        dropped = []

        def change(got):
            entries, now = self._entries(got), self._now(got)
            dropped[:] = [e for e in entries if e["agent"] == me
                          and (globs is None or e["glob"] in globs)
                          and (step is None or e["step"] == step)]
            kept = [e for e in entries if e not in dropped and not self._expired(e, now)]
            if len(kept) == len(entries):
                raise _Unchanged()
            return self.client.record(reservations=kept)
        self._change(change)
        if step is not None:
            self.records.keep("reserved-steps", step, None)
        return [_reservation_shape(e, None) for e in dropped]

    def step_ended(self, step):
        """Drop this agent's reservations tied to `step`, which it has completed or released:
        only when it remembers making some (else no request; they are dead anyway, since their
        lease has ended)."""
        if self.records.kept("reserved-steps", step):
            return self.unreserve(step=step)
        return []

    def renew(self):
        """Extend each of this agent's live reservations that is not tied to a step by its ttl,
        from now: one read, and one compare-and-swap when it holds any.  Those that expired
        before they were renewed are dropped and reported through warn() (another agent may
        hold them now).  Returns the globs renewed."""
        me = self.client.me()
        renewed, lost = [], []

        def change(got):
            entries, now = self._entries(got), self._now(got)
            renewed[:], lost[:], new = [], [], []
            for e in entries:
                if self._expired(e, now):
                    if e["agent"] == me:
                        lost.append(e["glob"])
                    continue
                if e["agent"] == me and e["step"] is None:
                    e = dict(e, expires=now + e["ttl"])
                    renewed.append(e["glob"])
                new.append(e)
            if not renewed and len(new) == len(entries):
                raise _Unchanged()
            return self.client.record(reservations=new)
        self._change(change)
        for glob in lost:
            self.client.warn(f"this agent's reservation of {glob} expired before it was renewed: "
                             f"reserve it again (tracecraft reserve {glob})")
        return renewed

    def blocking(self, paths):
        """[(path, reservation)] for each path that another agent's live exclusive reservation
        covers: what the git guard refuses.  Shared ones and this agent's own never block."""
        others = [r for r in self() if not r["shared"] and r["agent"] != self.client.agent]
        return [(path, r) for path in paths for r in others if glob_matches(r["glob"], path)]

    # What the table holds, and how it changes.

    def _change(self, change, create=False):
        """Records.update of the table, judged on what the store holds (its read's Date is the
        clock); with `create`, an empty table is made first if there is none (no clock to judge
        by without a read)."""
        key = self.key()
        for _ in _retries(key):
            got = self.records.read(key, missing_ok=True)
            if got is None:
                if not create:
                    return None
                try:
                    self.records.write(key, self.client.record(reservations=[]), create_only=True)
                except (PreconditionFailed, ConditionalConflict):
                    pass
                got = self.records.read(key, missing_ok=True)
                if got is None:
                    continue
            try:
                return self.records.update(key, lambda got: change(got) if got else _vanish(),
                                           remembered=False, start=got)
            except _Vanished:
                continue
            except _Unchanged:
                return None

    @staticmethod
    def _now(got):
        blob = got[1]
        return blob.server_time if blob.server_time is not None else time.time()

    def _entries(self, got):
        """The table's entries, checked: an object written by another tool is CorruptObject
        naming it, never a crash."""
        record, blob = got
        where = f"reservations table {blob.key}"
        entries = _field(record, "reservations", list, where)
        checks = (("id", str), ("glob", str), ("agent", str), ("shared", bool),
                  ("step", (str, type(None))), ("generation", (int, type(None)), None, 1, MAX_INT),
                  ("note", (str, type(None))), ("ttl", (float, type(None)), None, 0.001,
                                                     MAX_SECONDS),
                  ("expires", (float, type(None))), ("at", (str, type(None))))
        checked = []
        for entry in entries:
            if not isinstance(entry, dict):
                raise CorruptObject(f"{where} is not a tracecraft record: an entry is "
                                    f"{shown(repr(entry)):.40}")
            entry = {name: _field(entry, name, kinds, where, *bounds)
                     for name, kinds, *bounds in checks}
            try:
                check_agent(entry["agent"])
                if entry["glob"] != check_glob(entry["glob"]):
                    raise UsageError("a glob not in normal form")
                if entry["step"] is not None:
                    check_name("step id", entry["step"])
            except UsageError as exc:
                raise CorruptObject(f"{where} is not a tracecraft record: {exc}") from None
            if (entry["step"] is None) != (entry["generation"] is None) or \
                    (entry["step"] is None) == (entry["expires"] is None) or \
                    (entry["step"] is None and entry["ttl"] is None):
                raise CorruptObject(f"{where} is not a tracecraft record: the reservation of "
                                    f"{shown(entry['glob']):.60} is neither a lease nor a step's")
            checked.append(entry)
        return checked

    @staticmethod
    def _expired(entry, now):
        """Whether a reservation that is not tied to a step has passed its time (a step-tied
        one is judged by its lease: _left)."""
        return entry["step"] is None and entry["expires"] <= now

    def _left(self, entry, now, leases):
        """Seconds a reservation has left by the store's clock (<= 0: dead): its own, or its
        step's lease's while its agent holds that lease at that generation.  `leases` keeps the
        leases read, a read per step."""
        if entry["step"] is None:
            return entry["expires"] - now
        step = entry["step"]
        if step not in leases:
            try:
                leases[step] = self.client.steps.lease(step)
            except CorruptObject as exc:
                self.client.warn_once(f"reservations of step {step} are taken as ended: {exc}")
                leases[step] = None
        lease = leases[step]
        if lease is None or not lease.held_by(entry["agent"]) or \
                lease.record["generation"] != entry["generation"]:
            return 0.0
        return lease.left()

    @staticmethod
    def _refusal(glob, entry, left):
        kind = "shared" if entry["shared"] else "exclusively"
        step = f" for step {entry['step']}" if entry["step"] else ""
        note = f"; note: {entry['note']}" if entry["note"] else ""
        overlap = glob if glob == entry["glob"] else f"{glob} overlaps {entry['glob']}, which is"
        return (f"{overlap} reserved {kind} by {entry['agent']}{step} (for {_duration(left)} "
                f"more{note}): ask them (tracecraft send {entry['agent']} ...), or wait")


def _vanish():
    raise _Vanished()


# ==================================================================================================
# 6g. Agents.  Owns: agents/<id>.json (heartbeats) and the picture of the whole project.
#    Calls: sections 1-5, 6a-6e, and 6i's list() (the sessions each agent mirrored).
# ==================================================================================================

def _agent_shape(agent, record, age, holding, sessions=()):
    """An agent as shown everywhere: agent, state, holding, last_seen, age_seconds, host,
    sessions (its mirrored transcripts: session, harness, state, last_event)."""
    state = ("offline" if age is None or age >= IDLE_SECONDS
             else "idle" if age >= ONLINE_SECONDS else "online")
    first = record.get("first_seen")
    return {"agent": agent, "state": state, "holding": holding,
            "first_seen": first if isinstance(first, str) else None,
            "last_seen": record.get("last_seen"),
            "age_seconds": None if age is None else int(age), "host": record.get("host"),
            "sessions": [{k: s[k] for k in ("session", "harness", "state", "last_event")}
                         for s in sessions]}


class Agents(_Peer):
    """Who is alive (`tc.agents`): tc.agents() lists them; heartbeat, touch, status."""

    def __call__(self, cache=None, leases=None):
        """Every agent with a record: agent, state (online / idle / offline by heartbeat age, on
        the store's clock), holding (the steps it holds, from the leases; `leases`: Steps.leases()
        already read), last_seen, age_seconds, host, sessions.  `cache`: see status()."""
        result = []
        cache = {} if cache is None else cache
        holding, sessions = {}, {}
        for lease in self.client.steps.leases(cache, ended=False) if leases is None else leases:
            if lease.status() == "in_progress":
                holding.setdefault(lease.holder, []).append(lease.step)
        for session in self.client.sessions.list(cache=cache):
            sessions.setdefault(session["agent"], []).append(session)
        prefix = self.client.key("agents") + "/"
        for entry in self.store.list(prefix):
            agent = entry.key[len(prefix):-5]
            try:
                if not entry.key.endswith(".json") or "/" in agent:
                    raise UsageError("not an agent's record")
                check_agent(agent)
                got, since = self.records.read_listed(entry, cache)
                if not got:
                    continue
                record, blob = got
                for name in ("host", "last_seen"):
                    _field(record, name, (str, type(None)), f"agent record {entry.key}")
            except (CorruptObject, UsageError) as exc:
                self.client.warn_once(f"skipped {entry.key}: {exc}")
                continue
            now = (blob.server_time or time.time()) + since
            age = max(0.0, now - blob.last_modified) if blob.last_modified else None
            result.append(_agent_shape(agent, record, age, holding.get(agent, []),
                                       sessions.get(agent, [])))
        return result

    def _publish(self):
        """Write this agent's record: who and where it is, and when it was last seen.  Only the
        agent itself writes it, so a plain write does; what it holds is read from the leases."""
        # When this agent was first seen is kept on this machine: the record is written plainly,
        # never read first (so a lost cache directory makes it later than it was).
        first = self.records.kept("first-seen", self.client.agent)
        if not first or not isinstance(first.get("at"), str):
            first = {"at": self.client.now()}
            self.records.keep("first-seen", self.client.agent, first)
        record = self.client.record(agent=self.client.agent, project=self.client.project,
                                    host=_hostname(), pid=os.getpid(), first_seen=first["at"],
                                    last_seen=self.client.now())
        self.records.write(self.client.key("agents", self.client.agent + ".json"), record)
        stamp = self.records.state_path("heartbeat")
        try:
            os.makedirs(os.path.dirname(stamp), mode=0o700, exist_ok=True)
            replace_file(stamp, b"")
        except OSError:
            pass   # no cache directory: heartbeats are merely refreshed more often
        return record

    def heartbeat(self, renew=True):
        """Record that this agent is alive and, with `renew`, renew every lease it holds.
        Returns the agent (as agents() shows it), with `holding`: the steps renewed.  Leases
        this agent remembers holding that another agent took over are reported through warn()."""
        self.client.me()
        record = self._publish()
        renewed = self.client.steps.renew_held() if renew else []
        return _agent_shape(self.client.agent, record, 0.0, renewed)

    def status(self, cache=None, states=None, agent=None):
        """One picture of the project: agents (each with `unread`, the messages it has not read),
        steps (Lease.shape() each), `counts` of steps per state, the latest handoff notes and
        the number of memory keys.  `states` keeps only the steps in those states; `agent` only
        that agent and the steps it holds or ended (`counts` are of its steps, in every state).

        Costs a few listings, one read per step and per agent, and two requests per agent for
        unread counts.  Pass the same dict as `cache` to later calls (status --watch does): an
        object whose listing shows it unchanged is not read again."""
        for state in states or ():
            if state not in STEP_STATES:
                raise UsageError(f"a step's state is one of {', '.join(STEP_STATES)}, not "
                                 f"{shown(state)!r:.40}")
        cache = {} if cache is None else cache
        leases = self.client.steps.leases(cache)
        agents = [a for a in self(cache, leases) if agent is None or a["agent"] == agent]
        broadcast_tail = self.client.inbox.tail(BROADCAST)
        for one in agents:
            one["unread"] = self.client.inbox.unread(one["agent"], broadcast_tail)
        steps = [lease.shape() for lease in leases]
        if agent is not None:
            steps = [s for s in steps if agent in (s["holder"], s["ended_by"])]
        counts = {state: 0 for state in STEP_STATES}
        for step in steps:
            counts[step["status"]] = counts.get(step["status"], 0) + 1
        handoffs = sorted((s for s in steps if s["note"] is not None),
                          key=lambda s: s["ended_at"] or "", reverse=True)[:5]
        if states:
            steps = [s for s in steps if s["status"] in states]
        return {"project": self.client.project, "agents": agents, "steps": steps, "counts": counts,
                "handoffs": [{"step": s["step"], "by": s["ended_by"], "at": s["ended_at"],
                              "note": s["note"]} for s in handoffs],
                "blocked": self.client.plans.blocked() if agent is None else [],
                "memory_keys": len(self.client.memory.list())}

    def touch(self):
        """Refresh the heartbeat at most once a minute.  The last refresh is remembered in a
        stamp file in the user's cache directory, so that separate command-line processes of
        one agent share the limit and most calls cost no request for it.  A read-only observer
        is never an agent, and writes nothing."""
        if not self.client.agent or self.client.read_only:
            return
        try:
            age = time.time() - os.stat(self.records.state_path("heartbeat")).st_mtime
            if 0 <= age < HEARTBEAT_EVERY:
                return
        except OSError:
            pass
        self._publish()


# ==================================================================================================
# 6h. Artifacts.  Owns: artifacts/<step>/<name> and its .meta/<name>.json.
#    Calls: sections 1-5, 6a.
# ==================================================================================================

class Artifacts(_Peer):
    """Shared files (`tc.artifacts`): bytes kept exactly, with size, SHA-256 and content type.

    An artifact is two objects, its bytes and its metadata, which no store can write together.
    So the file is read once and staged (store.stage: hashed on the way into a temporary file,
    memory or a multipart upload's parts, none of them visible); then the metadata is written,
    naming the upload about to happen and keeping the entries of the last few uploads before it
    ("previous"); then the bytes are committed.  Whatever a crash or a
    race leaves behind (the new bytes, the old ones, another upload's), the bytes are described
    by one of those entries: a download finds the one whose SHA-256 matches what it received,
    and an upload that loses a race to replace the bytes tries again after the winner."""
    DEFAULT_STEP = "shared"
    PREVIOUS = 8   # earlier uploads an artifact's metadata keeps
    BIG = 64 << 20   # bytes of a new artifact worth a HEAD first: none sent for nothing

    def _keys(self, name, step):
        step = check_name("step id", step or self.DEFAULT_STEP)
        check_artifact_name(name)
        return (self.client.key("artifacts", step, name),
                self.client.key("artifacts", step, ".meta", name + ".json"), step)

    def upload(self, source, step=None, name=None, overwrite=False, progress=None):
        """Upload a file: a path, or a binary file object (then `name` is needed).  Refuses to
        replace an existing artifact unless `overwrite`.  The file is read and hashed once, and
        what is recorded is what was sent: a file that grows meanwhile is sent as it was when
        the upload began, and one changed in place while it is read is refused.  Returns the
        artifact."""
        if not isinstance(source, str) and not name:
            raise UsageError("uploading a file object needs name=")
        name = name or os.path.basename(os.path.abspath(source))
        data_key, meta_key, step = self._keys(name, step)
        import mimetypes
        ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        changed = UsageError(f"{shown(source)} changed while it was being uploaded: upload it "
                             "again once it is complete")
        with self._readable(source) as f:
            try:
                if not overwrite and _file_size(f) > self.BIG and self.store.exists(data_key):
                    raise self._exists(name, step)   # before sending a big file for nothing
                with self.store.stage(data_key, f, ctype, progress) as staged:
                    entry = {"size": staged.size, "sha256": staged.sha256, "md5": staged.md5,
                             "etag": staged.etag,
                             "content_type": ctype, "uploader": self.client.agent,
                             "at": self.client.now()}
                    (self._replace if overwrite else self._create)(data_key, meta_key, name,
                                                                   step, entry, staged)
            except (BadDigest, LocalFileError):
                raise changed from None
            except OSError as exc:
                raise UsageError(f"cannot read {shown(source)}: {os_reason(exc)}") from None
        return _artifact_shape(name, step, entry)

    @staticmethod
    def _exists(name, step):
        return Refused(f"artifact {name} already exists in step {step}",
                       fix=("overwrite", "to replace it"))

    @staticmethod
    def _readable(source):
        """The source as a seekable binary file: a copy of a pipe (a retry must send it again)."""
        import tempfile
        try:
            f = open(source, "rb") if isinstance(source, str) else source
            import stat
            kind = os.fstat(f.fileno()).st_mode if hasattr(f, "fileno") else stat.S_IFREG
            if stat.S_ISCHR(kind) or stat.S_ISBLK(kind):   # /dev/zero "seeks" and has size 0
                raise UsageError(f"{shown(str(source))} is a device, not a file: refused")
            if f.seekable():
                return f
            import shutil
            spool = tempfile.TemporaryFile()
            shutil.copyfileobj(f, spool)
            return spool
        except OSError as exc:
            raise UsageError(f"cannot read {source}: {exc.strerror or exc}") from None

    def _current(self, meta_key):
        """(checked metadata, or None when it is not tracecraft's, and its blob), or None when
        there is none.  Metadata that is not tracecraft's is replaced by the next upload."""
        try:
            blob = self.store.get(meta_key)
            return _meta_record(self.records.parse(blob), meta_key), blob
        except NoSuchKey:
            return None
        except CorruptObject as exc:
            self.client.warn(f"replacing {exc}")
            return None, self.store.head(meta_key)

    def _intent(self, meta_key, name, step, entry, current, there=None):
        """Write the metadata naming `entry` as the artifact's content, before its bytes are
        sent, keeping what `current` (from _current()) said of the uploads before.  The upload
        whose bytes are there now (`there`: their ETag) is never dropped, however many uploads
        died since without sending theirs."""
        previous = []
        if current and current[0]:
            record = current[0]
            previous = [u for u in [{k: record[k] for k in _ENTRY_FIELDS}] + record["previous"]
                        if u["sha256"] != entry["sha256"]]
            held = [u for u in previous if there and f'"{u["md5"]}"' == there]
            previous = (held[:1] + [u for u in previous if u not in held[:1]])[:self.PREVIOUS]
        record = self.client.record(name=name, step=step, **entry, previous=previous)
        return self.records.write(meta_key, record, create_only=current is None,
                                  replacing=current[1] if current else None)

    def _identify(self, data_key, uploads):
        """The one of `uploads` whose bytes are at `data_key`, or None: by the ETag where it is
        the MD5 of the bytes (a single PUT, without SSE-KMS), else by reading them."""
        try:
            head = self.store.head(data_key)
        except NoSuchKey:
            return None
        sized = [u for u in uploads if u["size"] == head.size]
        bare = _version(head.etag)
        found = next((u for u in sized if _etag_of(u) == bare), None)
        if found or not sized or len(bare) == 32 and all(c in "0123456789abcdef" for c in bare):
            return found   # an MD5 (a single PUT) or a multipart ETag recorded at the upload
        into = HashingFile(_Discard())
        self.store.get(data_key, into=into)
        return next((u for u in sized if u["sha256"] == into.sha256.hexdigest()), None)

    def _stale(self, current):
        """Whether metadata (from _current()) names an upload that must have ended by now, by
        the store's clock: its uploader's own deadline for sending the bytes has passed."""
        record, blob = current
        if blob.last_modified is None:
            return True
        now = blob.server_time if blob.server_time is not None else time.time()
        size = record["size"] if record else 0
        return now - blob.last_modified > _retry_settings()[1] + size / TRANSFER_RATE + 60

    def _create(self, data_key, meta_key, name, step, entry, staged):
        """A new artifact: metadata then bytes (`staged`), both create-only (two requests).
        A store that ignores If-None-Match on CompleteMultipartUpload (the bytes of a big file)
        is still safe: the create-only metadata lets one upload through, which alone commits;
        an upload that took a dead one's place may replace what that one committed late, with
        bytes its metadata describes."""
        exists = self._exists(name, step)
        try:
            written = self._intent(meta_key, name, step, entry, None)
        except PreconditionFailed:
            if self.store.exists(data_key):
                raise exists from None   # (a retry of this very write is told apart by write())
            # Metadata without bytes is an upload that never sent them: once it must have
            # ended, take its place.
            current = self._current(meta_key)
            busy = Refused(f"artifact {name} in step {step} is being uploaded by another agent")
            if current and not self._stale(current):
                raise busy from None
            try:
                written = self._intent(meta_key, name, step, entry, current)
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                raise busy from None
        try:
            staged.commit(if_none_match=True)
        except PreconditionFailed as exc:
            if exc.retried and self._identify(data_key, [entry]):
                return
            self._give_back(meta_key, written, data_key)
            raise exists from None
        except BaseException:
            # The bytes did not land (the store failed, an interruption): take the metadata
            # back, or a retry would find this upload "in progress" until it is stale.
            try:
                self._give_back(meta_key, written, data_key)
            except (TracecraftError, OSError):
                pass
            raise

    def _give_back(self, meta_key, written, data_key):
        """Bytes landed that are not this upload's: make the metadata it just wrote describe
        them again (an earlier upload's entry), or take it back when none does."""
        current = self._current(meta_key)
        if not current or not current[0] or current[1].etag != written.etag:
            return   # changed since: it is someone else's now
        record = current[0]
        there = self._identify(data_key, record["previous"])
        try:
            if there is None:
                self.store.delete(meta_key, if_match=written.etag)
            else:
                self.records.write(meta_key, dict(
                    self.client.record(name=record["name"], step=record["step"]), **there,
                    previous=[u for u in record["previous"] if u is not there]),
                    replacing=current[1])
        except (PreconditionFailed, ConditionalConflict, NoSuchKey):
            pass

    def _replace(self, data_key, meta_key, name, step, entry, staged):
        """Replace an artifact: metadata by compare-and-swap, then the bytes by compare-and-swap
        on the version read before, so that of racing uploads each replaces the one before it,
        in turn, and the bytes left are always described."""
        for _ in _retries(f"artifact {step}/{name}"):
            current = self._current(meta_key)
            try:
                before = self.store.head(data_key).etag
            except NoSuchKey:
                before = None
            try:
                self._intent(meta_key, name, step, entry, current, before)
            except (PreconditionFailed, ConditionalConflict, NoSuchKey):
                continue
            try:
                staged.commit(if_none_match=before is None, if_match=before)
                return
            except (PreconditionFailed, ConditionalConflict, NoSuchKey) as exc:
                if exc.retried and self._identify(data_key, [entry]):
                    return
                continue   # another upload replaced the bytes first: go again, after it

    def list(self, step=None, cache=None):
        """Every artifact (of one step, or all), sorted by step and name: name, step, size,
        sha256, content_type, uploader, at.  Objects that are not artifacts are skipped with a
        warning.  `cache`: see Agents.status() (metadata unchanged is not read again)."""
        root = self.client.key("artifacts") + "/"
        prefix = root + (check_name("step id", step) + "/" if step else "")
        result, entries = [], list(self.store.list(prefix))
        metas = {e.key: e for e in entries if "/.meta/" in e.key}
        for entry in entries:
            parts = entry.key[len(root):].split("/")
            if len(parts) == 3 and parts[1] == ".meta":
                continue
            try:
                if len(parts) != 2:
                    raise UsageError("not an artifact (artifacts are <step>/<name>)")
                data_key, meta_key, _ = self._keys(parts[1], parts[0])
                got = self.records.read_listed(metas[meta_key], cache)[0] \
                    if cache is not None and meta_key in metas else \
                    self.records.read(meta_key, missing_ok=True)
                result.append(self._listed(parts[1], parts[0], entry, got, data_key))
            except (CorruptObject, UsageError) as exc:
                self.client.warn_once(f"skipped {entry.key}: {exc}")
        return result

    def _listed(self, name, step, entry, got, data_key):
        """What a listing shows of one artifact: the upload whose bytes are there, told by the
        listed ETag where the store lists one (S3), else by the size (and, when uploads of that
        size differ, by the bytes' ETag)."""
        if not got:
            return _artifact_shape(name, step, {"size": entry.size})
        record = _meta_record(got[0], got[1].key)
        uploads, etag = [record] + record["previous"], entry.etag

        def fits(upload):
            if etag and _etag_of(upload):
                return _etag_of(upload) == _version(etag)
            return upload["size"] == entry.size
        fitting = [u for u in uploads if fits(u)]
        if etag is None and len({u["md5"] for u in fitting}) > 1:
            etag = self.store.head(data_key).etag
            fitting = [u for u in uploads if fits(u)]
        # An ETag that is no MD5 (SSE-KMS) fits nothing: then the size, then the newest, says.
        fitting = fitting or [u for u in uploads if u["size"] == entry.size] or uploads
        return _artifact_shape(name, step, fitting[0])

    def download(self, name, step=None, dest=None, progress=None, overwrite=False):
        """Download into the current directory (or `dest`: a file or directory path), verified
        by SHA-256 against the upload it came from.  Writes only regular files: refuses to
        replace anything else (a device, a FIFO, a link), and an existing file unless
        `overwrite`; a new file gets the mode the user's umask gives.  Returns (path, artifact).
        The name is validated, so it can never place a file outside the destination directory."""
        data_key, meta_key, step = self._keys(name, step)
        dest, replacing = _destination(dest, name, overwrite)
        directory = os.path.dirname(dest)
        sweep(directory, ".tracecraft-")
        try:
            fd, tmp = create_exclusive(directory, ".tracecraft-", 0o666)
        except OSError as exc:
            raise UsageError(f"cannot write to {directory}: {os_reason(exc)}") from None
        try:
            try:
                with os.fdopen(fd, "w+b") as f:
                    into = HashingFile(f)
                    try:
                        blob = self.store.get(data_key, into=into, progress=progress)
                    except NoSuchKey:
                        raise NotFound(f"no artifact {name} in step {step}") from None
                artifact = self._verified(name, step, meta_key, into.sha256.hexdigest(), blob)
                if replacing is not None:
                    os.chmod(tmp, replacing.st_mode & 0o777)
                    os.replace(tmp, dest)
                else:
                    _place_new(tmp, dest, name)
            except OSError as exc:
                raise UsageError(f"cannot write {dest}: {os_reason(exc)}") from None
        finally:
            unlink_quietly(tmp)
        return dest, artifact

    def _verified(self, name, step, meta_key, sha256, blob):
        """The upload whose bytes were received (by their SHA-256), or CorruptObject."""
        got = self.records.read(meta_key, missing_ok=True)
        if got is None:
            self.client.warn(f"artifact {name} in step {step} has no metadata: its bytes could "
                             "not be verified")
            return _artifact_shape(name, step, {"size": blob.size, "sha256": sha256})
        record = _meta_record(got[0], got[1].key)
        for upload in [record] + record["previous"]:
            if upload["sha256"] == sha256 and upload["size"] == blob.size:
                if upload is not record:
                    self._heal(meta_key, got, record, upload)
                return _artifact_shape(name, step, upload)
        raise CorruptObject(f"artifact {name} in step {step} matches none of its recorded "
                            "uploads (SHA-256): changed while downloading? try again")

    def _heal(self, meta_key, got, record, upload):
        """The bytes are an earlier upload's (a later one died before sending its bytes, or lost
        a race): once that later one is a minute old, make the metadata say so."""
        if self.client.read_only or not self._stale((record, got[1])):
            return
        previous = [u for u in [{k: record[k] for k in _ENTRY_FIELDS}] + record["previous"]
                    if u is not upload and u["sha256"] != upload["sha256"]][:self.PREVIOUS]
        healed = dict(got[0], **{k: upload[k] for k in _ENTRY_FIELDS}, previous=previous)
        try:
            self.records.write(meta_key, healed, replacing=got[1])
        except (PreconditionFailed, ConditionalConflict, NoSuchKey):
            pass   # someone else changed it: theirs is newer


def _etag_of(upload):
    """The ETag (unquoted) an upload's bytes have: recorded since multipart uploads (whose ETag
    is no MD5), else the MD5's."""
    return _version(upload.get("etag")) or upload.get("md5")


_ENTRY_FIELDS = ("size", "sha256", "md5", "etag", "content_type", "uploader", "at")


def _meta_record(record, where):
    """An artifact's metadata read from the store, checked: the current upload's fields and its
    previous uploads' (metadata from before "previous" existed has none)."""
    where = f"metadata {where}"

    def entry(upload):
        if not isinstance(upload, dict):
            raise CorruptObject(f"{where} is not a tracecraft record: an upload is "
                                f"{shown(repr(upload)):.40}")
        _field(upload, "size", int, where, None, 0, MAX_INT)
        sha = _field(upload, "sha256", str, where)
        if len(sha) != 64 or not all(c in "0123456789abcdef" for c in sha):
            raise CorruptObject(f"{where} is not a tracecraft record: its sha256 is not one")
        for name in ("md5", "etag", "content_type", "uploader", "at"):
            _field(upload, name, (str, type(None)), where)
        return {k: upload.get(k) for k in _ENTRY_FIELDS}
    checked = entry(record)
    checked["previous"] = [entry(u) for u in _field(record, "previous", list, where, [])]
    checked.update(name=record.get("name"), step=record.get("step"))
    return checked


def _artifact_shape(name, step, upload):
    """An artifact as shown everywhere: name, step, size, sha256, content_type, uploader, at."""
    return {"name": name, "step": step, "size": upload.get("size"),
            "sha256": upload.get("sha256"), "content_type": upload.get("content_type"),
            "uploader": upload.get("uploader"), "at": upload.get("at")}


def _destination(dest, name, overwrite):
    """(absolute path to write, its lstat if an existing regular file is to be replaced)."""
    if dest is None:
        dest = os.path.join(current_directory(), name)
    elif not isinstance(dest, str) or not dest:
        raise UsageError("the download's destination must be a path, not empty")
    elif os.path.isdir(dest):
        dest = os.path.join(dest, name)
    dest = os.path.join(current_directory(), dest) if not os.path.isabs(dest) else dest
    try:
        found = os.lstat(dest)
    except FileNotFoundError:
        if not os.path.isdir(os.path.dirname(dest)):
            raise UsageError(f"cannot write {dest}: no directory {os.path.dirname(dest)}") from None
        return dest, None
    except OSError as exc:
        raise UsageError(f"cannot write {dest}: {os_reason(exc)}") from None
    import stat
    if stat.S_ISLNK(found.st_mode):
        raise UsageError(f"{dest} is a symbolic link: not replaced (remove it or choose another "
                         "path)")
    if stat.S_ISDIR(found.st_mode):
        raise UsageError(f"{dest} is a directory")
    if not stat.S_ISREG(found.st_mode):
        raise UsageError(f"{dest} is not a regular file (a device, FIFO or socket): not replaced")
    if not overwrite:
        raise _exists(dest)
    return dest, found


def _place_new(tmp, dest, name):
    """Give the downloaded file its name, failing if one appeared there meanwhile."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise _exists(dest) from None
    except OSError:   # a file system without hard links
        if os.path.lexists(dest):
            raise _exists(dest) from None
        os.replace(tmp, dest)


def _exists(dest):
    return Refused(f"{dest} already exists", fix=("overwrite", "to replace it"))


# ==================================================================================================
# 6i. Sessions.  Owns: sessions/<harness>/<session id>/ (a mirrored transcript: its parts and its
#    meta.json), finding and reading each harness's transcripts on this machine (read-only), and
#    redaction.  Calls: sections 1-5, 6a.
#
#    A transcript is mirrored as numbered parts, each the redacted bytes of whole source lines,
#    and meta.json, whose "parts" list, in order, *is* the transcript.  A flush takes a part
#    number with a create-only write, then appends the part to the list by compare-and-swap,
#    which holds only if the list still ends where the part begins in the source ("segment"
#    and "position" are the bucket's, not this machine's).  So two mirrors of one session, a
#    mirror killed between its two writes, or one that lost its local state waste at most a
#    part (never listed; deleted when known) and never list a byte twice or skip one.  A source
#    that shrinks or whose first bytes change was replaced: a new segment starts at its start.
# ==================================================================================================

HARNESSES = ("claude-code", "codex", "openclaw", "hermes")
PART_BYTES = 4 << 20      # source bytes a part holds at most (unless one line is longer)
LINE_BYTES = 32 << 20     # a line longer than this is cut (and redacted piece by piece)
HEAD_BYTES = 4096         # the start of a source that tells whether it was replaced
PARTS_KEPT = 500          # parts in a transcript before a mirror compacts them
MAX_PARTS = 10 ** 9       # part numbers (part-NNNNNN.jsonl: six digits or more)
ORPHAN_SECONDS = 3600     # an unlisted part this old was left by a killed mirror
_PART_GUARD = 600.0       # a part older than this (paused mirror) is not appended: redone

# name, pattern, the group replaced (0: the whole match).  No pattern can match part of a JSON
# escape, a quote or a line break, so a line redacted with them stays JSON.  Private keys span
# escaped line breaks: they are found by Redactor._keys, within one JSON string at a time.
SECRET_PATTERNS = (
    ("aws-access-key-id", r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|APKA|AROA|ASCA)"
                          r"[A-Z0-9]{16}(?![A-Za-z0-9])", 0),
    ("aws-secret-access-key", r"(?i:secret_?access_?key)[\"'\\]*[ \t]*[:=][ \t]*[\"'\\]*"
                              r"([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+])", 1),
    ("aws-session-token", r"(?i:session_?token)[\"'\\]*[ \t]*[:=][ \t]*[\"'\\]*"
                          r"([A-Za-z0-9/+=]{100,})", 1),
    ("anthropic", r"sk-ant-[A-Za-z0-9_\-]{16,}", 0),
    ("openai", r"sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}", 0),
    ("huggingface", r"hf_[A-Za-z0-9]{30,}", 0),
    ("github", r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})", 0),
    ("slack", r"(?:xox[abposr]|xapp)-[A-Za-z0-9-]{10,}", 0),
    # a token has a digit: "the bearer responsibilities" is no secret
    ("bearer", r"[Bb]earer[ \t]+((?=[A-Za-z._~+/=-]*[0-9])[A-Za-z0-9._~+/=-]{16,})", 1),
)
_HINTS = {"aws-secret-access-key": ("ecret", "ECRET"), "aws-session-token": ("oken", "OKEN"),
          "bearer": ("earer",)}   # a scan without a literal prefix is slow: look first
_KEY_BEGIN, _KEY_END = "-----BEGIN ", "-----END "
_JSON_STRING = r'"(?:[^"\\\n]|\\.)*"'


class Redactor:
    """Replaces secrets with [REDACTED:<pattern>] and counts them per pattern, before bytes
    leave the machine: SECRET_PATTERNS, private key blocks, the store's own secret and session
    token (`literals`), and a project's own patterns (`extra`: name -> regular expression, from
    the config's "redact_patterns").  Lines stay lines: no match spans one.  JSON stays JSON
    and is otherwise kept byte for byte: a line where a private key or a project's pattern
    matched is redacted within each of its JSON strings, and a string that a pattern would
    break is replaced whole."""

    def __init__(self, extra=None, literals=()):
        import re
        self.re, self.literals = re, tuple(literals)
        self.patterns = [(name, re.compile(re.escape(value)), 0)
                         for name, value in literals if isinstance(value, str) and len(value) >= 8]
        self.patterns += [(name, re.compile(p), group) for name, p, group in SECRET_PATTERNS]
        self.own = []
        for name, pattern in (extra or {}).items():
            check_name("redaction pattern name", name)
            try:
                if not isinstance(pattern, str) or len(pattern) > 1000:
                    raise ValueError("wanted a regular expression of at most 1000 characters")
                self.own.append((name, re.compile(pattern), 0))
            except (ValueError, re.error) as exc:
                raise ConfigError(f"redaction pattern {name!r} is not usable: {exc}") from None
        self.key_start = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----")
        self.strings = re.compile(_JSON_STRING)

    def _sub(self, text, counts, patterns):
        for name, pattern, group in patterns:
            if name in _HINTS and not any(h in text for h in _HINTS[name]):
                continue
            tag, hits = f"[REDACTED:{name}]", 0

            def replace(m):
                nonlocal hits
                start, whole = m.start(), m.group(0)
                # "sk-" inside a word ("risk-assessment-...") is no key; after an escape
                # (\n, \t) or an ANSI colour (\u001b[32m) it starts one
                if name == "openai" and start and (text[start - 1].isalnum() or
                                                   text[start - 1] == "_") and not (
                        start > 1 and text[start - 2] == "\\" or
                        self.re.search(r"\[[0-9;]*m\Z", text[max(0, start - 12):start])):
                    return whole
                if "\n" in whole or not whole:
                    return whole
                hits += 1
                return whole[:m.start(group) - start] + tag + whole[m.end(group) - start:]
            text = pattern.sub(replace, text)
            if hits:
                counts[name] = counts.get(name, 0) + hits
        return text

    def _keys(self, text, counts):
        """Private key blocks in `text` (one JSON string's content, or a line that is no JSON),
        from BEGIN to the first END after it, or to the end when there is none; linear."""
        out, at = [], 0
        for m in self.key_start.finditer(text):
            if m.start() < at:
                continue
            end = text.find(_KEY_END, m.end())
            close = text.find("-----", end + len(_KEY_END)) if end >= 0 else -1
            stop = close + 5 if close >= 0 else len(text)
            out += [text[at:m.start()], "[REDACTED:private-key]"]
            counts["private-key"] = counts.get("private-key", 0) + 1
            at = stop
        return "".join(out) + text[at:] if out else text

    def _within_strings(self, line, counts):
        """A JSON line redacted string by string, each of its strings checked still to be one."""
        def string(m):
            found = {}
            inner = self._keys(m.group(0)[1:-1], found)
            inner = self._sub(inner, found, self.patterns + self.own)
            if not _parses('"' + inner + '"'):
                inner, found = f"[REDACTED:{next(iter(found), 'private-key')}]", \
                    {next(iter(found), "private-key"): 1}
            for name, hits in found.items():
                counts[name] = counts.get(name, 0) + hits
            return '"' + inner + '"'
        return self.strings.sub(string, line)

    def __call__(self, data, counts):
        """Redacted `data` (bytes of whole lines); adds what it replaced to `counts`."""
        text = data.decode("utf-8", "surrogateescape")
        found = {}
        out = self._sub(text, found, self.patterns)
        careful = bool(self.own) or _KEY_BEGIN in text
        if out == text and not careful:
            return data
        if careful:   # key blocks, and a project's patterns, line by line and string by string
            lines = out.split("\n")
            for i, line in enumerate(lines):
                if _KEY_BEGIN in line or self.own:
                    lines[i] = self._within_strings(line, found) if _parses(line) else \
                        self._sub(self._keys(line, found), found, self.own)
            out = "\n".join(lines)
        for name, hits in found.items():
            counts[name] = counts.get(name, 0) + hits
        return out.encode("utf-8", "surrogateescape")


def _uptime():
    """Seconds on a clock that runs while the machine sleeps (a suspended laptop's mirror must
    see how old its part is), where there is one."""
    return time.clock_gettime(time.CLOCK_BOOTTIME) if hasattr(time, "CLOCK_BOOTTIME") \
        else time.monotonic()


def _parses(line):
    try:
        json.loads(line)
        return True
    except (ValueError, RecursionError):
        return False


class Transcript:
    """One session's transcript on this machine, never written to: an append-only JSONL file,
    or (Hermes) the rows of one session in a SQLite database, one JSON line per row.  A
    position is a byte offset in the file, or the id of the last row read."""

    def __init__(self, harness, session, path, cwd=None, row_key=None):
        self.harness = check_harness(harness)
        self.session = check_name("session id", session)
        for what, value in (("transcript path", path), ("directory", cwd)):
            if value is not None and (not isinstance(value, str) or "\0" in value):
                raise UsageError(f"the {what} must be text without NUL characters")
        self.path, self.cwd = path, cwd
        self.row_key = session if row_key is None else row_key   # Hermes: its session_id as stored

    def __repr__(self):
        return f"Transcript({self.harness!r}, {self.session!r}, {self.path!r})"

    def signature(self):
        """What changes when the transcript may have (a stat; None when it is gone): a
        following mirror reads nothing, and asks the store nothing, while it stays the same."""
        found = []
        for path in (self.path, self.path + "-wal") if self.harness == "hermes" else (self.path,):
            try:
                st = os.stat(path)
                found.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                found.append(None)
        return tuple(found) if found[0] else None

    def modified(self):
        signature = self.signature()
        return max(s[2] for s in signature if s) / 1e9 if signature else 0.0

    def _open(self):
        """The file, read-only, only if it is a regular file (a FIFO or a device in its place
        would block or never end)."""
        import stat
        try:
            fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC)
        except OSError as exc:
            raise UsageError(f"cannot read the transcript {shown(self.path)}: "
                             f"{os_reason(exc)}") from None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise UsageError(f"the transcript {shown(self.path)} is not a regular file")
        return os.fdopen(fd, "rb")

    def head(self, length):
        """SHA-256 of the first `length` bytes, or None if the file is shorter (Hermes: "")."""
        if self.harness == "hermes":
            return ""
        with self._open() as f:
            data = f.read(length)
        return _hash("sha256", data).hexdigest() if len(data) == length else None

    def end(self):
        """Where the transcript ends now (its size; Hermes: its last row's id)."""
        if self.harness == "hermes":
            return self._rows(0, 0, last=True)
        with self._open() as f:
            return os.fstat(f.fileno()).st_size

    def read(self, position, limit=None, end=None):
        """(bytes of whole lines from `position` up to `end` at most, the position after them,
        lines) or None when the source was replaced: it no longer reaches `position`, or the
        byte before `position` ends no line.  A last line without its line break is still
        being written: it waits for the next read."""
        limit = limit or PART_BYTES
        if self.harness == "hermes":
            return self._rows(position, limit, upto=end)
        with self._open() as f:
            if os.fstat(f.fileno()).st_size < position:
                return None
            if position:
                f.seek(position - 1)
                if f.read(1) != b"\n":
                    return None
            if end is not None:
                limit = max(0, min(limit, end - position))
            data = f.read(limit)
            end = data.rfind(b"\n") + 1
            while not end and len(data) < LINE_BYTES:   # one line longer than a part
                more = f.read(min(limit, LINE_BYTES - len(data)))
                if not more:
                    break
                found = more.rfind(b"\n") + 1
                end = len(data) + found if found else 0
                data += more
            if not end and len(data) >= LINE_BYTES:
                end = len(data)   # a monster line: cut, so that the mirror moves on
        data = data[:end]
        return data, position + end, data.count(b"\n")

    def _rows(self, after, limit, last=False, upto=None):
        import sqlite3
        db = _hermes_db(self.path)
        try:
            top = db.execute("SELECT MAX(id) FROM messages WHERE session_id = ?",
                             (self.row_key,)).fetchone()[0] or 0
            if type(top) is not int:
                raise UsageError(f"the Hermes database {shown(self.path)} has message ids that "
                                 "are not integers")
            if last:
                return top
            if top < after:
                return None
            lines, size, last = [], 0, after
            while size < limit:
                cursor = db.execute("SELECT * FROM messages WHERE session_id = ? AND id > ? "
                                    "AND id <= ? ORDER BY id LIMIT 500",
                                    (self.row_key, last, MAX_INT if upto is None else upto))
                names = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
                if not rows:
                    break
                for row in rows:
                    line = (_row_json(dict(zip(names, row))) + "\n").encode("utf-8",
                                                                          "surrogateescape")
                    lines.append(line)
                    size += len(line)
                    last = row[names.index("id")]
                    if size >= limit:
                        break
        except sqlite3.Error as exc:
            raise UsageError(f"cannot read the Hermes database {shown(self.path)}: {exc}") from None
        finally:
            db.close()
        return b"".join(lines), last, len(lines)


def _hermes_db(path):
    """Hermes' state.db, read-only (mode=ro: never `immutable`, which would miss what its WAL
    holds), waiting a little for a writer's lock."""
    import sqlite3
    try:
        return sqlite3.connect("file:" + uri_encode(os.path.abspath(path), keep_slash=True)
                               + "?mode=ro", uri=True, timeout=2.0)
    except sqlite3.Error as exc:
        raise UsageError(f"cannot open the Hermes database {shown(path)}: {exc}") from None


def _row_json(row):
    """One Hermes message row as a JSON line: every column there is; content that starts
    with \\x00json: holds JSON."""
    for name, value in row.items():
        if isinstance(value, str) and value.startswith("\x00json:"):
            try:
                row[name] = loads(value[6:])
            except ValueError:
                pass
        elif isinstance(value, bytes):
            row[name] = value.decode("utf-8", "replace")
        elif isinstance(value, float) and value - value != 0:
            row[name] = repr(value)
    return json.dumps(row, ensure_ascii=False)


def check_harness(harness):
    if harness not in HARNESSES:
        raise UsageError(f"harness must be one of {', '.join(HARNESSES)}, not "
                         f"{shown(harness)!r:.40}")
    return harness


def _home(variable, *default):
    value = os.environ.get(variable)
    return value if value else os.path.join(os.path.expanduser("~"), *default)


def _scan(directory, suffix=".jsonl"):
    """Regular files named *suffix in `directory` (nothing when it cannot be read)."""
    try:
        with os.scandir(directory) as entries:
            return [e.path for e in entries if e.name.endswith(suffix)
                    and e.is_file(follow_symlinks=False)]
    except OSError:
        return []


def _subdirs(directory):
    try:
        with os.scandir(directory) as entries:
            return [e.path for e in entries if e.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _cwd_of(path, field):
    """The working directory a transcript's first lines record (`field`: a function from a
    parsed line to it, or None), or None: read from its first 64 KiB only."""
    try:
        with open(path, "rb") as f:
            start = f.read(64 << 10)
    except OSError:
        return None
    for line in start.split(b"\n"):
        try:
            found = field(json.loads(line))
        except (ValueError, RecursionError, AttributeError, TypeError, KeyError):
            continue
        if isinstance(found, str):
            return found
    return None


def _claude_cwd(line):
    return line.get("cwd")


def _codex_cwd(line):
    return line["payload"]["cwd"] if line.get("type") == "session_meta" else None


def find_transcripts(harness, cwd=None):
    """Every session of `harness` on this machine for the directory `cwd` (None: for any
    directory), newest activity first.  Claude Code and Codex record their working directory;
    OpenClaw and Hermes sessions belong to no directory, so all of them are listed."""
    import re
    found = []
    if harness == "claude-code":
        root = os.path.join(_home("CLAUDE_CONFIG_DIR", ".claude"), "projects")
        dirs = _subdirs(root)
        if cwd:
            names = {re.sub(r"[/\\.:]", "-", cwd), re.sub(r"[^A-Za-z0-9]", "-", cwd)}
            named = [d for d in dirs if os.path.basename(d) in names]
            dirs = named or dirs   # the encoding is in doubt: the lines' cwd decides
        for directory in dirs:
            for path in _scan(directory):
                recorded = _cwd_of(path, _claude_cwd) if cwd else None
                if cwd is None or recorded == cwd or (recorded is None and directory in named):
                    found.append((os.path.basename(path)[:-6], path, recorded))
    elif harness == "codex":
        root = os.path.join(_home("CODEX_HOME", ".codex"), "sessions")
        for year in _subdirs(root):
            for month in _subdirs(year):
                for day in _subdirs(month):
                    for path in _scan(day):
                        name = os.path.basename(path)[:-6]
                        if not name.startswith("rollout-"):
                            continue
                        name = name[len("rollout-"):]
                        if re.match(r"\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d-", name):
                            name = name[20:]
                        recorded = _cwd_of(path, _codex_cwd)
                        if cwd is None or recorded == cwd:
                            found.append((name, path, recorded))
    elif harness == "openclaw":
        base = os.environ.get("OPENCLAW_STATE_DIR") or _home("OPENCLAW_HOME", ".openclaw")
        for agent_dir in _subdirs(os.path.join(base, "agents")):
            for path in _scan(os.path.join(agent_dir, "sessions")):
                found.append((f"{os.path.basename(agent_dir)}__{os.path.basename(path)[:-6]}",
                              path, None))
    else:
        path = os.path.join(_home("HERMES_HOME", ".hermes"), "state.db")
        if os.path.isfile(path):
            import sqlite3
            db = _hermes_db(path)
            try:
                rows = db.execute("SELECT session_id, MAX(id) FROM messages GROUP BY "
                                  "session_id ORDER BY MAX(id) DESC").fetchall()
            except sqlite3.Error as exc:
                raise UsageError(f"cannot read the Hermes database {shown(path)}: {exc}") from None
            finally:
                db.close()
            return [t for t in (_transcript("hermes", str(s), path, None, s) for s, _ in rows
                                if s is not None) if t]
    transcripts = [t for t in (_transcript(harness, *f) for f in found) if t]
    return sorted(transcripts, key=lambda t: t.modified(), reverse=True)


def _transcript(harness, session, path, cwd, row_key=None):
    try:
        return Transcript(harness, session, path, cwd, row_key)
    except UsageError:
        return None   # a file whose name is no session id tracecraft can keep


def _timely(stamp):
    """Whether `stamp` is an ISO 8601 UTC time of this era (2026-12-02T10:00...): a time read
    from an agent's records or transcript is hostile until it is one."""
    return isinstance(stamp, str) and len(stamp) >= 16 and stamp[4] == stamp[7] == "-" and \
        stamp[10] == "T" and stamp[13] == ":" and stamp[:4].isascii() and \
        stamp[:4].isdigit() and "1970" <= stamp[:4] <= "2999"


def _event_time(line):
    """The time a transcript line records (its "timestamp"), as ISO 8601 text, or None."""
    try:
        found = json.loads(line)
        stamp = found.get("timestamp") if isinstance(found, dict) else None
    except (ValueError, RecursionError):
        return None
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool) and 0 < stamp < 1e11:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))
    return stamp[:40] if _timely(stamp) else None


def _session_shape(record):
    """A mirrored session as shown everywhere."""
    return {"session": record.get("session"), "harness": record.get("harness"),
            "agent": record.get("agent"), "host": record.get("host"), "cwd": record.get("cwd"),
            "source": record.get("source"), "first_event": record.get("first_event"),
            "last_event": record.get("last_event"), "bytes": record.get("bytes", 0),
            "lines": record.get("lines", 0), "parts": len(record.get("parts", [])),
            "state": record.get("state"), "redacted": record.get("redacted"),
            "redactions": record.get("redactions", {}), "updated": record.get("updated")}


class Sessions(_Peer):
    """Mirrored session transcripts (`tc.sessions`): mirror() copies what is new in one,
    list(), get(), read() give them back, compact() and stop() look after them."""

    def _key(self, harness, session, name):
        return self.client.key("sessions", check_harness(harness),
                               check_name("session id", session), name)

    def _meta(self, got, key):
        """The meta record of a (record, Blob) read, checked; None for None."""
        if got is None:
            return None
        record, where = got[0], f"session record {key}"
        wrong = CorruptObject(f"{where} is not a tracecraft record")
        for name, kinds in (("session", str), ("harness", str), ("state", str)):
            _field(record, name, kinds, where)
        if key.split("/")[-3:-1] != [record["harness"], record["session"]]:
            raise CorruptObject(f"{where} describes another session ({shown(record['harness'])!r:.30} "
                                f"{shown(record['session'])!r:.60})")
        for name in ("agent", "host", "cwd", "source", "first_event", "last_event", "updated"):
            record[name] = _field(record, name, (str, type(None)), where)
        for name in ("segment", "position", "bytes", "lines"):
            _field(record, name, int, where, None, 0, MAX_INT)
        _field(record, "next_part", int, where, None, 1, MAX_PARTS)
        if not all(isinstance(part, list) and len(part) == 5 and all(
                type(v) is int and 0 <= v <= MAX_INT for v in part)
                for part in _field(record, "parts", list, where)):
            raise wrong
        head = _field(record, "head", list, where)
        if len(head) != 2 or type(head[0]) is not int or not 0 <= head[0] <= HEAD_BYTES or \
                not isinstance(head[1], str):
            raise wrong
        if not all(isinstance(k, str) and type(v) is int and 0 <= v <= MAX_INT
                   for k, v in _field(record, "redactions", dict, where).items()):
            raise wrong
        return record

    def _new(self, transcript, redacted):
        return self.client.record(
            session=transcript.session, harness=transcript.harness, agent=self.client.agent,
            host=_hostname(), cwd=transcript.cwd, source=transcript.path, first_event=None,
            last_event=None, bytes=0, lines=0, parts=[], next_part=1, segment=0, position=0,
            head=[0, _hash("sha256", b"").hexdigest()], redacted=redacted, redactions={},
            state="active", updated=self.client.now())

    def secrets(self):
        """The store's secret and session token of the moment (renewed ones in a long run)."""
        store = getattr(self.store, "store", self.store)   # an observer's store wraps one
        return (("store-secret", getattr(store, "secret_key", None)),
                ("store-session-token", getattr(store, "session_token", None)))

    def redactor(self):
        return Redactor(self.client.redact_patterns, self.secrets())

    def mirror(self, transcript, redact=True, redactor=None):
        """Copy what is new in `transcript` (a Transcript): every whole line after the end of
        the mirrored copy, redacted unless `redact` is False, a part per PART_BYTES.  Returns
        {"session", "harness", "parts" written, "bytes", "lines", "lost": races lost to
        another mirror}.  Costs 2 requests per part once this agent knows the session's
        record (one read more the first time), none when nothing is new."""
        self.client.me()
        redactor = redactor or (self.redactor() if redact else None)
        key = self._key(transcript.harness, transcript.session, "meta.json")
        got, fresh = self.records.remembered(key), False
        done = {"session": transcript.session, "harness": transcript.harness, "parts": 0,
                "bytes": 0, "lines": 0, "lost": 0}
        goal, replaced = transcript.end(), False   # what there is now: a call ends
        while True:
            if got is None:
                got, fresh = self.records.read(key, missing_ok=True), True
            meta = self._meta(got, key)
            base = meta or self._new(transcript, redactor is not None)
            segment, position = base["segment"], base["position"]
            chunk = transcript.read(position, end=goal) if position and \
                transcript.head(base["head"][0]) == base["head"][1] else None
            if chunk is None:   # new, or replaced (shorter, or other first bytes): a segment
                if replaced:
                    return done   # replaced again already: a source that keeps changing
                replaced = bool(base["position"])
                segment, position = segment + replaced, 0
                chunk = transcript.read(0, end=goal)
            data, end, lines = chunk
            if not data:
                if meta is None:   # a session is listed from the start, before its first line
                    try:
                        self.records.remember(key, self.records.write(key, base,
                                                                      create_only=True))
                    except PreconditionFailed:
                        pass   # another mirror listed it first
                return done
            counts = {}
            body = redactor(data, counts) if redactor else data
            number = self._take_part(transcript.harness, transcript.session, base["next_part"],
                                     lambda: body, fresh)
            if number is None:
                got = None   # the hint was stale: start again from what the store holds
                continue
            put_at, text = _uptime(), data.split(b"\n")
            head = base["head"] if position else \
                [min(len(data), HEAD_BYTES), transcript.head(0) if transcript.harness ==
                 "hermes" else _hash("sha256", data[:HEAD_BYTES]).hexdigest()]

            def append(current):
                now = self._meta(current, key)
                if now is None and meta is not None:
                    raise Refused(f"{key} was deleted")
                now = now or base
                if (now["segment"], now["position"]) != (base["segment"], base["position"]):
                    raise Refused("another mirror appended first")
                # A number below next_part was skipped by whoever took a later one (a compaction
                # that found it unlisted): it may be swept as an orphan, so it is not listed.
                if now["next_part"] > number or _uptime() - put_at > _PART_GUARD:
                    raise Refused("the part was passed over, or written too long ago, to be "
                                  "appended safely")
                redactions = dict(now["redactions"])
                for name, hits in counts.items():
                    redactions[name] = redactions.get(name, 0) + hits
                return dict(now, parts=now["parts"] + [[number, len(body), lines, segment, end]],
                            next_part=max(now["next_part"], number + 1), segment=segment,
                            position=end, head=head, bytes=now["bytes"] + len(body),
                            lines=now["lines"] + lines, redactions=redactions, state="active",
                            first_event=now.get("first_event") or _event_time(text[0]),
                            last_event=_event_time(text[-2]) or now.get("last_event"),
                            updated=self.client.now())
            try:
                got = self.records.update(key, append, start=got)
                fresh = False
            except Refused:
                self.store.delete(self._part(transcript.harness, transcript.session, number))
                done["lost"] += 1
                if done["lost"] > 100:
                    raise StoreError(f"{key}: gave up after losing 100 races to other mirrors")
                got = None
                continue
            done.update(parts=done["parts"] + 1, bytes=done["bytes"] + len(body),
                        lines=done["lines"] + lines)
            if len(got[0]["parts"]) > PARTS_KEPT:
                try:
                    self.compact(transcript.session, transcript.harness)
                except Refused:
                    pass   # another process compacted it meanwhile
                got = None

    def _part(self, harness, session, number):
        return self._key(harness, session, f"part-{number:06d}.jsonl")

    def _take_part(self, harness, session, number, body, fresh=True):
        """Write `body()` as the first free part from `number` on (create-only), and return
        its number; None when `number` was taken and the record it came from was a hint (not
        `fresh`).  A number taken is a part nobody listed: a killed mirror's, or one in flight."""
        for number in range(number, min(number + 1000, MAX_PARTS)):
            try:
                self.store.put(self._part(harness, session, number), body(),
                               if_none_match=True, content_type="application/jsonl")
                return number
            except PreconditionFailed:
                if not fresh:
                    return None
        raise StoreError(f"session {session}: 1000 part numbers in a row are taken")

    def find(self, session, harness=None):
        """(record, Blob) of a mirrored session's meta.json (`harness`: where to look; by
        default each in turn).  Raises NotFound."""
        for name in (check_harness(harness),) if harness else HARNESSES:
            key = self._key(name, session, "meta.json")
            got = self.records.read(key, missing_ok=True)
            if got:
                return self._meta(got, key), got[1]
        raise NotFound(f"no mirrored session {shown(session)!r:.80}"
                       + (f" of {harness}" if harness else ""))

    def get(self, session, harness=None):
        """A mirrored session as list() shows it."""
        return _session_shape(self.find(session, harness)[0])

    def list(self, harness=None, agent=None, cache=None):
        """Every mirrored session (or only one harness's, one agent's), last updated first.
        A listing of sessions/ (it holds the parts too) and a read per session record;
        `cache`: see Agents.status()."""
        prefix = self.client.key("sessions", check_harness(harness) if harness else "")
        prefix = prefix.rstrip("/") + "/"
        cache = {} if cache is None else cache
        found = []
        for entry in self.store.list(prefix):
            if not entry.key.endswith("/meta.json"):
                continue
            try:
                got, _ = self.records.read_listed(entry, cache)
                record = self._meta(got, entry.key)
            except CorruptObject as exc:
                self.client.warn_once(f"skipped {entry.key}: {exc}")
                continue
            if record and (agent is None or record.get("agent") == agent):
                found.append(_session_shape(record))
        return sorted(found, key=lambda s: str(s["updated"] or ""), reverse=True)

    def read(self, session, harness=None, into=None, tail=None, start=0):
        """Write the mirrored transcript into `into` (a binary file), byte for byte as it was
        mirrored, from byte `start` on, or only its last `tail` lines.  A compaction that runs
        meanwhile is followed: nothing is written twice or left out.  Returns the session's
        record (its "bytes": where the copy written ends, where a later read may start)."""
        record, blob = self.find(session, harness)
        if tail is not None:   # from the part where the last `tail` lines begin
            lines, parts = 0, record["parts"]
            while parts and lines < tail:
                lines += parts[-1][2]
                parts = parts[:-1]
            start = sum(p[1] for p in parts)
            into, target = _Tail(tail), into
        done, version = [start], blob.etag
        for _ in range(10):
            try:
                self._copy(record, done, into)
                break
            except NoSuchKey as exc:   # compacted meanwhile: the new list says where they are
                record, blob = self.find(session, harness)
                if blob.etag == version:
                    raise CorruptObject(f"session {session} lists a part that is missing "
                                        f"({exc})") from None
                version = blob.etag
        else:
            raise StoreError(f"session {session}: its parts keep disappearing")
        if tail is not None and target is not None:
            target.write(into.lines())
        return record

    def _copy(self, record, done, into):
        """Write the transcript from byte done[0] on into `into`, counting in done[0]."""
        import tempfile
        offset = 0
        for number, size, *_ in record["parts"]:
            if offset + size <= done[0]:
                offset += size
                continue
            key = self._part(record["harness"], record["session"], number)
            with tempfile.TemporaryFile() as spool:
                if size > MAX_RECORD:   # a compacted part: streamed, never held in memory
                    self.store.get(key, into=spool)
                    got = spool.tell()
                    spool.seek(done[0] - offset)
                    blocks = iter(lambda: spool.read(1 << 20), b"")
                else:
                    body = self.store.get(key).body
                    got, blocks = len(body), [body[done[0] - offset:]]
                if got != size:
                    raise CorruptObject(f"{key} holds {got} bytes; its session record says {size}")
                for block in blocks:
                    into.write(block)
                    done[0] += len(block)
            offset += size

    def compact(self, session, harness=None):
        """Merge every part of a mirrored session into one, atomically: a reader sees the old
        list of parts or the new one, each whole.  Parts nobody listed that are older than
        ORPHAN_SECONDS (left by killed mirrors) are removed.  Returns the session's record."""
        import tempfile
        self.client.me()
        record, blob = self.find(session, harness)
        harness, parts = record["harness"], record["parts"]
        key = self._key(harness, session, "meta.json")
        if len(parts) > 1:
            with tempfile.TemporaryFile() as merged:
                try:
                    self._copy(record, [0], merged)
                except NoSuchKey:
                    raise Refused(f"session {session} was compacted by another process "
                                  "meanwhile") from None
                size = merged.tell()
                number = self._take_part(harness, session, record["next_part"],
                                         lambda: merged)
            last = parts[-1]
            entry = [number, size, sum(p[2] for p in parts), last[3], last[4]]

            def merge(current):
                now = self._meta(current, key)
                if now is None or now["parts"][:len(parts)] != parts:
                    raise Refused(f"session {session} was compacted by another process meanwhile")
                return dict(now, parts=[entry] + now["parts"][len(parts):],
                            next_part=max(now["next_part"], number + 1))
            try:
                record, blob = self.records.update(key, merge, start=(record, blob))
            except Refused:
                self.store.delete(self._part(harness, session, number))
                raise
            for old in parts:
                self.store.delete(self._part(harness, session, old[0]))
        listed = {p[0] for p in record["parts"]}
        for entry in self.store.list(self._key(harness, session, "part-")):
            name = entry.key.rpartition("/")[2]
            digits = name[5:-6]
            if digits.isascii() and digits.isdigit() and int(digits) not in listed and \
                    int(digits) < record["next_part"] and entry.server_time and \
                    entry.server_time - (entry.last_modified or 0) > ORPHAN_SECONDS:
                self.store.delete(entry.key)
        return _session_shape(record)

    def stop(self, session, harness=None):
        """Mark a mirrored session ended (a later mirror of it marks it active again)."""
        self.client.me()
        record, blob = self.find(session, harness)
        key = self._key(record["harness"], session, "meta.json")

        def ended(current):
            now = self._meta(current, key)
            if now is None:
                raise NotFound(f"no mirrored session {session!r}")
            return dict(now, state="ended", ended_at=self.client.now(), updated=self.client.now())
        record, _ = self.records.update(key, ended, start=(record, blob))
        return _session_shape(record)


class _Tail:
    """A file that keeps only the last `count` lines written to it."""

    def __init__(self, count):
        self.count, self.data = count, bytearray()

    def write(self, block):
        self.data += block
        if len(self.data) > (8 << 20):
            self.data = bytearray(self.lines())

    def lines(self):
        end = len(self.data) - (1 if self.data.endswith(b"\n") else 0)
        cut = end
        for _ in range(self.count):
            cut = self.data.rfind(b"\n", 0, cut)
            if cut < 0:
                return bytes(self.data)
        return bytes(self.data[cut + 1:]) if self.count else b""


# ==================================================================================================
# 6j. Timeline.  Owns: nothing in the bucket; the one history of a project told from every other
#    peer's objects (what `replay` draws).  Calls: sections 1-5, 6a-6i.
#
#    Records keep their last state and a little history (a lease its earlier holders, a memory
#    key its last values, an artifact its last uploads), so the timeline is what those hold: a
#    memory key written more often than its history keeps shows its latest writes only.
# ==================================================================================================

SESSION_LINES_SHOWN = 5000   # lines of one mirrored transcript in a timeline (the newest)
TEXT_SHOWN = 4000            # characters of one text in a timeline


def _clip(text):
    text = text if isinstance(text, str) else dumps(text)
    return text if len(text) <= TEXT_SHOWN else text[:TEXT_SHOWN] + f" ... ({len(text)} chars)"


def _transcript_event(line):
    """(kind, text, detail) for one transcript line, compactly: a user prompt, the assistant's
    text, a tool call or its result; None for bookkeeping lines."""
    try:
        found = json.loads(line)
    except (ValueError, RecursionError):
        return "note", _clip(line), None
    if not isinstance(found, dict):
        return None
    message = found.get("message") if isinstance(found.get("message"), dict) else \
        found.get("payload") if isinstance(found.get("payload"), dict) else found
    role = message.get("role") or found.get("role") or found.get("type")
    content = message.get("content")
    if isinstance(content, list):
        texts, calls = [], []
        for block in content:
            if not isinstance(block, dict):
                continue
            kind = block.get("type")
            if kind in ("text", "output_text", "input_text") and isinstance(block.get("text"), str):
                texts.append(block["text"])
            elif kind in ("tool_use", "function_call"):
                calls.append(f"{block.get('name')}({dumps(block.get('input', block.get('arguments')))})")
            elif kind == "tool_result":
                texts.append(dumps(block.get("content")))
        if calls:
            return "tool", _clip("; ".join(calls)), _clip("\n".join(texts)) if texts else None
        content = "\n".join(texts)
    if role not in ("user", "assistant", "tool", "system") or not content:
        return None
    kind = {"user": "prompt", "assistant": "said"}.get(role, role)
    return kind, _clip(content), None


class Timeline(_Peer):
    """A project's history (`tc.timeline`): tc.timeline() reads every kind of record and
    returns {"project", "agents", "steps", "events"}, events in time order.

    Pass the same dict as `state` to later calls (a live view does): they return only the
    events that are new, and cost requests in proportion to what changed: listings (a page
    per 1,000 objects), new messages only, and a read of each record the listings show
    changed (as status --watch)."""

    def __call__(self, since=None, until=None, agents=None, sessions=True, state=None):
        client, events, given = self.client, [], state
        # Worked on a copy, kept only if the whole look succeeds: a store that fails halfway
        # must not make the next look skip what this one had found.
        state = {"cache": dict((given or {}).get("cache", {})),
                 "seen": set((given or {}).get("seen", ())),
                 "logs": dict((given or {}).get("logs", {})),
                 "sessions": dict((given or {}).get("sessions", {})),
                 "ids": (given or {}).get("ids", 0)}
        cache, seen = state["cache"], state["seen"]

        def add(at, kind, agent, **fields):
            if not _timely(at) or \
                    (since is not None and at < since) or (until is not None and at > until) or \
                    (agents and agent not in agents and fields.get("to") not in agents):
                return
            event = {k: v for k, v in dict(fields, at=at, kind=kind, agent=agent).items()
                     if v is not None}
            signature = dumps(event)
            if signature not in seen:
                seen.add(signature)
                events.append(dict(event, agent=agent))
        leases = client.steps.leases(cache)
        known = {a["agent"]: a for a in client.agents(cache, [lease for lease in leases
                                                               if lease.state not in ENDED])}
        steps, planned = [], client.plans.dependencies(cache)
        for lease in leases + [Lease(s, None) for s in planned if s not in
                               {lease.step for lease in leases}]:
            record, shape = lease.record, lease.shape()
            shape["note"] = None if shape["note"] is None else _clip(shape["note"])
            steps.append(dict(shape, after=planned.get(lease.step, [])))   # the plan's edges
            for earlier in record.get("holders", []):
                add(earlier.get("from"), "claim", earlier.get("agent"), step=lease.step,
                    generation=earlier.get("generation"))
                add(earlier.get("to"), "release" if earlier.get("how") == "released" else
                    "expired", earlier.get("agent"), step=lease.step,
                    generation=earlier.get("generation"))
            add(record.get("at"), "takeover" if record.get("previous") else "claim",
                lease.holder, step=lease.step, generation=record.get("generation"),
                previous=record.get("previous"))
            if lease.state == "released":
                add(record.get("released_at"), "release", lease.holder, step=lease.step,
                    generation=record.get("generation"))
            if lease.state in ENDED:
                add(shape["ended_at"], lease.state, shape["ended_by"], step=lease.step,
                    note=shape["note"], forced=shape["forced"], generation=shape["generation"])
        read = state["logs"]
        if not read:   # the first look: every log there is, an agent's that never ran too
            prefix = client.key("messages") + "/"
            read.update((e.key[len(prefix):].partition("/")[0], 0)
                        for e in self.store.list(prefix))
        read.update((log, read.get(log, 0)) for log in [BROADCAST] + sorted(known))
        for log in sorted(read):
            try:
                check_name("agent id", log)
            except UsageError:
                continue
            for message in client.inbox.log(log, read.get(log, 0)):
                read[log] = max(read.get(log, 0), message["seq"])
                add(message["at"], "message", message["from"], to=message["to"] or BROADCAST,
                    text=_clip(message["text"]), seq=message["seq"])
        for key, record in client.memory.entries(cache):
            for entry in [record] + record.get("history", []):
                add(entry.get("at"), "memory", entry.get("by"), key=key,
                    value=_clip(entry.get("value")), revision=entry.get("revision"))
        for artifact in client.artifacts.list(cache=cache):
            add(artifact["at"], "artifact", artifact["uploader"], name=artifact["name"],
                step=artifact["step"], size=artifact["size"])
        for agent in known.values():
            add(agent["first_seen"], "joined", agent["agent"])
            add(agent["last_seen"], "seen", agent["agent"])
        if sessions:
            done = state["sessions"]
            for session in client.sessions.list(cache=cache):
                self._session_events(session, add, done)
        events.sort(key=lambda e: e["at"])
        for event in events:
            state["ids"] = event["id"] = state["ids"] + 1
        if given is not None:
            given.update(state)
        names = sorted({e["agent"] for e in events if isinstance(e["agent"], str)} | set(known))
        return {"project": client.project, "agents": names, "steps": steps, "events": events}

    def _session_events(self, session, add, done):
        """The events of a mirrored session's lines: the last SESSION_LINES_SHOWN at first,
        then only the lines mirrored since (`done`: bytes read of each session)."""
        import io
        out, which = io.BytesIO(), (session["harness"], session["session"])
        if done.get(which, 0) >= session["bytes"]:
            return
        try:
            record = self.client.sessions.read(
                session["session"], session["harness"], out, start=done.get(which, 0),
                tail=None if which in done else SESSION_LINES_SHOWN)
            done[which] = record["bytes"]
        except (NotFound, CorruptObject) as exc:
            self.client.warn_once(f"skipped session {session['session']}: {exc}")
            return
        last = session["first_event"]
        for line in out.getvalue().decode("utf-8", "replace").split("\n"):
            found = _transcript_event(line) if line else None
            stamp = (_event_time(line) if line else None) or last
            if found and stamp:
                last = stamp
                add(stamp, found[0], session["agent"], text=found[1], detail=found[2],
                    session=session["session"], harness=session["harness"])


# ==================================================================================================
# 6k. The client.  Owns: an agent's identity in a project and the peers that act for it.
#    Calls: sections 1-5, and 6a-6j.
# ==================================================================================================

class Client:
    """One agent's handle on one project: a thin façade over its peers, each the owner of one
    kind of object in the layout above.

        tc.records     how records are written and read, and what this agent remembers
        tc.memory      shared key-value memory: tc.memory.set(), .get(), .incr(), ...
        tc.inbox       messages: tc.inbox() reads this agent's, tc.inbox.send() sends
        tc.steps       leases on steps: claim, renew, release, complete, reopen, wait_for
        tc.plans       steps with dependencies: add, load, show, ready, next
        tc.reservations  paths agents are editing: tc.reservations() lists them; reserve,
                       unreserve, renew, blocking
        tc.agents      who is alive: tc.agents() lists them; heartbeat, status
        tc.artifacts   shared files: upload, download, list
        tc.sessions    mirrored transcripts: mirror, list, read, compact, stop
        tc.timeline    the project's history: tc.timeline() (what `replay` draws)

    The verbs of the command line are also the client's own (tc.claim(), tc.send(), ...).
    `warn(message)` hears what does not stop a call (an object skipped in a listing);
    `cancel`, a threading.Event, ends a wait (the MCP server sets it)."""

    def __init__(self, store, project, agent=None, clock=time.time, warn=None,
                 redact_patterns=None):
        self.store = store
        self.project = check_name("project", project)
        self.agent = check_agent(agent) if agent else None
        self.read_only = isinstance(store, ReadOnlyStore)
        self.clock = clock              # stamps records; coordination itself never trusts it
        self.warn = warn or (lambda message: None)
        self.cancel = None
        if redact_patterns is not None and not isinstance(redact_patterns, dict):
            raise ConfigError("redact_patterns must be an object: pattern name -> regular "
                              "expression")
        self.redact_patterns = redact_patterns   # a project's own secrets (see Redactor)
        self._warned = set()
        self.records = Records(self)      # conditional writes, checked reads, remembered hints
        self.memory = Memory(self)        # memory/
        self.inbox = Inbox(self)          # messages/ and cursors/
        self.steps = Steps(self)          # steps/
        self.plans = Plans(self)          # plan/
        self.reservations = Reservations(self)   # reservations/
        self.agents = Agents(self)        # agents/, and the picture of the whole project
        self.artifacts = Artifacts(self)  # artifacts/
        self.sessions = Sessions(self)    # sessions/
        self.timeline = Timeline(self)    # reads them all: the history replay draws

    def __repr__(self):
        return (f"<tracecraft.Client project={self.project!r} agent={self.agent!r} on "
                f"{self.store.describe()}>")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.records.save()
        self.store.close()

    def warn_once(self, message):
        if message not in self._warned:
            self._warned.add(message)
            self.warn(message)

    def key(self, *parts):
        return "/".join((self.project,) + parts)

    def me(self):
        if not self.agent:
            raise UsageError("no agent id: give agent= to connect(), or set TRACECRAFT_AGENT"
                             + (" (a read-only observer has none)" if self.read_only else ""),
                             cli="no agent id: pass --agent to `tracecraft init` (or to the "
                             "command), or set TRACECRAFT_AGENT"
                             + (" (a read-only observer has none)" if self.read_only else ""))
        return self.agent

    def now(self):
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))

    def record(self, **fields):
        """A JSON record that says who wrote it and when."""
        fields.setdefault("by", self.agent)
        fields.setdefault("at", self.now())
        return fields

    # The command line's verbs, each its peer's.

    def send(self, to, text, step=None):
        return self.inbox.send(to, text, step)

    def claim(self, step, ttl=None, paths=None):
        """Steps.claim(); with `paths`, also reserve those globs for as long as this agent holds
        the step (Reservations.reserve).  A refused reservation undoes the claim (a step this
        agent already held stays held) and is the error, naming the holder."""
        if not paths:
            return self.steps.claim(step, ttl)
        globs = self.reservations.globs(paths, "--paths")
        lease = self.steps.claim(step, ttl)
        try:
            self.reservations.reserve(globs, held=lease, what="--paths")
        except TracecraftError:
            if not lease["already_held"]:
                try:
                    self.steps.release(step)
                except TracecraftError as exc:
                    self.warn(f"could not release step {step} again: {exc.for_cli()}")
            raise
        return lease

    def renew(self, step, ttl=None):
        return self.steps.renew(step, ttl)

    def release(self, step):
        return self._step_over(step, self.steps.release(step))

    def complete(self, step, note=None, force=False, status="complete", **handoff):
        return self._step_over(step, self.steps.complete(step, note, force, status, **handoff))

    def reopen(self, step):
        return self.steps.reopen(step)

    def next(self, label=None, ttl=None, wait=None):
        return self.plans.next(label, ttl, wait)

    def ready(self, label=None):
        return self.plans.ready(label)

    def _step_over(self, step, shape):
        """After this agent ended or released a step: drop the reservations it tied to it (they
        are dead already, their lease being over: this only tidies the table)."""
        try:
            self.reservations.step_ended(step)
        except StoreError as exc:
            self.warn(f"could not drop the reservations of step {step} (they ended with it): "
                      f"{exc.for_cli()}")
        return shape

    def reserve(self, globs, ttl=None, shared=False, note=None):
        return self.reservations.reserve(globs, ttl, shared, note)

    def unreserve(self, globs=None):
        return self.reservations.unreserve(globs)

    def step_status(self, step):
        return self.steps.step_status(step)

    def wait_for(self, steps, timeout=300.0, on_complete=None):
        return self.steps.wait_for(steps, timeout, on_complete)

    def heartbeat(self, renew=True):
        """Agents.heartbeat(); with `renew`, this agent's reservations are renewed too."""
        shape = self.agents.heartbeat(renew)
        if renew:
            self.reservations.renew()
        return shape

    def status(self, cache=None, states=None, agent=None):
        return self.agents.status(cache, states, agent)

    def touch(self):
        return self.agents.touch()

    def probe(self):
        return probe_store(self.store, self.key("_probe"))


# ==================================================================================================
# 7. Python API.  Owns: connect() and open_client().  Calls: sections 1-6.
# ==================================================================================================

def connect(project=None, agent=None, *, config=None, warn=None, **settings):
    """Open a project as one agent and return a Client.

    Whatever is not given comes from the config file that applies here (TRACECRAFT_CONFIG, the
    nearest .tracecraft.json, ~/.config/tracecraft/config.json) and the environment
    (TRACECRAFT_AGENT, TRACECRAFT_PROJECT, AWS_*).  With no config at all the local store is used.
    `settings`: backend ("local", "s3", "hf"), bucket, root, endpoint, region, access_key,
    secret_key, session_token, profile (an AWS profile), addressing ("path" or "virtual"),
    insecure, read_only (an observer that writes nothing).  `warn(message)` hears what does not
    stop a call.

        tc = tracecraft.connect(project="demo", agent="designer", backend="local")
        tc.claim("design"); tc.memory.set("design.status", "complete")
        tc.complete("design", note="mockups in artifacts"); tc.send("developer", "ready")
    """
    unknown = set(settings) - {"backend", "bucket", "root", "endpoint", "region", "access_key",
                               "secret_key", "session_token", "profile", "addressing", "insecure",
                               "read_only"}
    if unknown:
        raise TypeError(f"connect() got unknown settings: {', '.join(sorted(unknown))}")
    return open_client(resolve_settings(config, project=project, agent=agent, **settings), warn)


def open_client(settings, warn=None):
    """The Client that resolved settings (resolve_settings()) describe; what is unsafe about
    them goes to `warn`."""
    if not settings.get("project"):
        raise ConfigError("no project: pass project=..., set TRACECRAFT_PROJECT, or run "
                          "`tracecraft init`")
    for note in config_warnings(settings) if warn else ():
        warn(note)
    return Client(open_store(settings), settings["project"], settings.get("agent"), warn=warn,
                  redact_patterns=settings.get("redact_patterns"))


# ==================================================================================================
# 8. MCP server.  Owns: `tracecraft mcp`, a Model Context Protocol server on stdin/stdout (JSON-RPC
#    2.0, one message per line) whose tools map onto the Python API, and the instructions an
#    agent follows.  Calls: sections 1-7.
# ==================================================================================================

MCP_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")   # newest first
MCP_WORKERS = 8   # tool calls run at once; more wait for one to finish


def _arg(kind, text, **more):
    """One argument of a tool's input schema; `kind` None takes any JSON value."""
    return dict({"type": kind, "description": text} if kind else {"description": text}, **more)


def _schema(required=(), **properties):
    return {"type": "object", "required": list(required), "properties": properties,
            "additionalProperties": False}


STEP = _arg("string", "Step id, e.g. 'design' or 'build-api'")
NOTE = _arg("string", "Context for the next agent: what was done, where things are, what is left")
KEY = _arg("string", "Dotted key, e.g. 'design.status'")
VERSION = _arg("string", "Act only if the key is still at this version (from memory_get)")
TTL = _arg("number", "Lease length in seconds (default 1800)", exclusiveMinimum=0,
           maximum=MAX_SECONDS)
SECONDS = _arg("number", "Seconds", minimum=0, maximum=MAX_SECONDS)
LABEL = _arg("string", "Only a step with this label")
GLOBS = _arg("array", "Path globs relative to the repository's root, e.g. src/api/**",
             items={"type": "string"}, minItems=1)

MCP_TOOLS = {   # name: (description, input schema, run(client, arguments) -> dict)
    "memory_get": ("Read a shared memory value (any JSON) with its version, author and time.",
                   _schema(["key"], key=KEY), lambda c, a: c.memory.record(a["key"])),
    "memory_set": ("Write a shared memory value. Strings, numbers, objects and lists are kept as "
                   "JSON. Give if_version (from memory_get) or if_absent for compare-and-swap.",
                   _schema(["key", "value"], key=KEY, value=_arg(None, "Any JSON value"),
                           if_version=VERSION,
                           if_absent=_arg("boolean", "Write only if the key is unset")),
                   lambda c, a: c.memory.set(a["key"], a["value"], a.get("if_version"),
                                             bool(a.get("if_absent")))),
    "memory_incr": ("Atomically add a number to a memory value (unset counts as 0).",
                    _schema(["key"], key=KEY, by=_arg("number", "Amount to add (default 1)")),
                    lambda c, a: c.memory.incr(a["key"], a.get("by", 1))),
    "memory_list": ("List shared memory keys, optionally under a prefix (whole segments).",
                    _schema(prefix=_arg("string", "Key prefix, e.g. 'design'")),
                    lambda c, a: {"keys": c.memory.list(a.get("prefix") or "")}),
    "memory_history": ("A memory key's current and previous values, newest first.",
                       _schema(["key"], key=KEY),
                       lambda c, a: {"key": a["key"], "history": c.memory.history(a["key"])}),
    "memory_delete": ("Delete a memory key.", _schema(["key"], key=KEY, if_version=VERSION),
                      lambda c, a: c.memory.delete(a["key"], a.get("if_version"))
                      or {"key": a["key"], "deleted": True}),
    "send": ("Send a message to another agent, or to '_broadcast' for every agent.",
             _schema(["to", "text"], to=_arg("string", "Agent id, or _broadcast"),
                     text=_arg("string", "The message"),
                     step=_arg("string", "Tag it with this step (step_status lists it)")),
             lambda c, a: c.send(a["to"], a["text"], a.get("step"))),
    "inbox": ("Read this agent's unread messages (direct and broadcast) and mark them read.",
              _schema(peek=_arg("boolean", "Do not mark them read"),
                      all=_arg("boolean", "Every message, read or not (marks nothing)"),
                      delete=_arg("boolean", "Also delete the direct messages read"),
                      wait=_arg("number", "Seconds to wait for a message if there is none yet",
                                minimum=0, maximum=MAX_SECONDS),
                      step=_arg("string", "Only messages tagged with this step (marks nothing "
                                "read)")),
              lambda c, a: {"messages": c.inbox(bool(a.get("peek")), bool(a.get("all")),
                                                bool(a.get("delete")), a.get("wait") or None,
                                                a.get("step"))}),
    "claim": ("Claim a step as a lease before working on it; fails if another agent holds it.",
              _schema(["step"], step=STEP, ttl=TTL, paths=dict(GLOBS, description=(
                  "Also reserve these path globs while this agent holds the step"))),
              lambda c, a: c.claim(a["step"], a.get("ttl"), a.get("paths"))),
    "renew": ("Extend this agent's lease on a step during long work.",
              _schema(["step"], step=STEP, ttl=TTL), lambda c, a: c.renew(a["step"], a.get("ttl"))),
    "release": ("Give a step's lease up so another agent can claim it.",
                _schema(["step"], step=STEP), lambda c, a: c.release(a["step"])),
    "complete": ("End a step this agent holds: complete (default), failed or blocked, with a "
                 "handoff for the next agent.",
                 _schema(["step"], step=STEP, note=NOTE,
                         status=_arg("string", "How it ended (default complete)", enum=list(ENDED)),
                         to=_arg("string", "The agent to take it from here (also sent the "
                                           "handoff in its inbox)"),
                         next_action=_arg("string", "What the next agent should do first"),
                         needs_review=_arg("boolean", "The work wants a review"),
                         changed_files=_arg("array", "Paths changed", items={"type": "string"}),
                         force=_arg("boolean", "End a step this agent does not hold, or whose "
                                               "dependencies are not complete (recorded)")),
                 lambda c, a: c.complete(a["step"], a.get("note"), bool(a.get("force")),
                                         a.get("status", "complete"), to=a.get("to"),
                                         next_action=a.get("next_action"),
                                         needs_review=bool(a.get("needs_review")),
                                         changed_files=a.get("changed_files"))),
    "reopen": ("Put a failed or blocked step back to pending (its history keeps the failure).",
               _schema(["step"], step=STEP), lambda c, a: c.reopen(a["step"])),
    "next": ("Claim the next ready step of the plan (highest priority, then plan order) and get "
             "its note and its dependencies' handoffs. Errors when nothing is ready; with "
             "`wait`, waits for one (step null and ended true once every step has ended).",
             _schema(label=LABEL, ttl=TTL,
                     wait=dict(SECONDS, description="Seconds to wait for a ready step")),
             lambda c, a: _next_result(c.next(a.get("label"), a.get("ttl"),
                                              a.get("wait")))),
    "ready": ("The planned steps that can be picked up now, and those blocked by a failed "
              "dependency.", _schema(label=LABEL), lambda c, a: c.ready(a.get("label"))),
    "plan_show": ("The whole plan: every step with its state (ready, waiting, blocked, "
                  "in_progress, complete, ...) and dependencies.",
                  _schema(), lambda c, a: c.plans.show()),
    "plan_add": ("Add a step to the plan, after the steps it depends on (already planned).",
                 _schema(["step"], step=STEP, after=_arg("array", "Steps it waits for",
                                                         items={"type": "string"}),
                         labels=_arg("array", "Labels", items={"type": "string"}),
                         priority=_arg("integer", "Higher runs first (default 0)",
                                       minimum=1 - PRIORITY_LIMIT, maximum=PRIORITY_LIMIT - 1),
                         note=NOTE),
                 lambda c, a: c.plans.add(a["step"], a.get("after") or (),
                                          a.get("labels") or (), a.get("priority", 0),
                                          a.get("note"))),
    "step_status": ("A step's status, holder, lease time left and handoff note.",
                    _schema(["step"], step=STEP), lambda c, a: c.step_status(a["step"])),
    "wait_for": ("Block until the given steps are complete (fails at once if one fails).",
                 _schema(["steps"], steps=_arg("array", "Step ids", items={"type": "string"},
                                               minItems=1),
                         timeout=dict(SECONDS, description="Seconds to wait (default 300)")),
                 lambda c, a: {"complete": c.wait_for(a["steps"], a.get("timeout", 300))}),
    "heartbeat": ("Record that this agent is alive and renew every lease it holds.",
                  _schema(), lambda c, a: c.heartbeat()),
    "reserve": ("Reserve the paths (globs relative to the repository's root, e.g. src/api/**) "
                "this agent is about to edit; fails naming the holder if another agent holds "
                "an overlapping one. Renewed by heartbeat.",
                _schema(["globs"], globs=GLOBS,
                        ttl=dict(TTL, description="Reservation length in seconds (default 1800)"),
                        shared=_arg("boolean", "Coexist with other shared reservations"),
                        note=_arg("string", "What this agent is doing there")),
                lambda c, a: {"reservations": c.reserve(a["globs"], a.get("ttl"),
                                                        bool(a.get("shared")), a.get("note"))}),
    "unreserve": ("Drop this agent's reservations of these globs (all of them without globs).",
                  _schema(globs=dict(GLOBS, minItems=0)),
                  lambda c, a: {"released": c.unreserve(a.get("globs"))}),
    "reservations": ("List live path reservations: glob, agent, shared, step, note, expires_in.",
                     _schema(), lambda c, a: {"reservations": c.reservations()}),
    "artifact_list": ("List shared files, optionally of one step.",
                      _schema(step=STEP), lambda c, a: {"artifacts": c.artifacts.list(a.get("step"))}),
    "artifact_upload": ("Share a local file with the other agents.",
                        _schema(["path"], path=_arg("string", "Local file path"), step=STEP,
                                name=_arg("string", "Name to store it under"),
                                overwrite=_arg("boolean", "Replace an existing artifact")),
                        lambda c, a: c.artifacts.upload(a["path"], a.get("step"), a.get("name"),
                                                        bool(a.get("overwrite")))),
    "artifact_download": ("Download a shared file into the current directory (or dest).",
                          _schema(["name"], name=_arg("string", "Artifact name"), step=STEP,
                                  dest=_arg("string", "File or directory to write to"),
                                  overwrite=_arg("boolean", "Replace an existing file")),
                          lambda c, a: _downloaded(*c.artifacts.download(
                              a["name"], a.get("step"), a.get("dest"),
                              overwrite=bool(a.get("overwrite"))))),
    "agents": ("List agents: online / idle / offline, the steps they hold, when last seen.",
               _schema(), lambda c, a: {"agents": c.agents()}),
    "status": ("One picture of the project: agents, steps (counts per state), unread messages, "
               "recent handoffs.",
               _schema(state=_arg("array", "Only steps in these states",
                                  items={"type": "string", "enum": list(STEP_STATES)}),
                       agent=_arg("string", "Only this agent and its steps")),
               lambda c, a: c.agents.status(None, a.get("state"), a.get("agent"))),
    "session_list": ("List the mirrored session transcripts of the agents (Claude Code, Codex, "
                     "OpenClaw, Hermes): agent, harness, state, size, last event.",
                     _schema(harness=_arg("string", "Only this harness's", enum=list(HARNESSES)),
                             agent=_arg("string", "Only this agent's")),
                     lambda c, a: {"sessions": c.sessions.list(a.get("harness"), a.get("agent"))}),
    "session_show": ("A mirrored session and its last lines: what another agent was told, "
                     "said and did.",
                     _schema(["session"], session=_arg("string", "Session id (from session_list)"),
                             harness=_arg("string", "Its harness", enum=list(HARNESSES)),
                             tail=_arg("number", "Lines from the end (default 20)", minimum=0,
                                       maximum=1000)),
                     lambda c, a: _session_tail(c, a["session"], a.get("harness"),
                                                int(a.get("tail", 20)))),
}


def _next_result(found):
    """What `next` answers, as --json and MCP show it: the same keys whether a step was claimed
    or every planned step has ended."""
    if found:
        return dict(found, ended=False)
    return {"step": None, "note": None, "after": [], "labels": [], "priority": None,
            "handoffs": [], "lease": None, "ended": True}


def _session_tail(client, session, harness, tail):
    import io
    lines = io.BytesIO()
    record = client.sessions.read(session, harness, lines, tail=tail)
    text = lines.getvalue().decode("utf-8", "replace")
    return dict(_session_shape(record), tail=text.split("\n")[:-1] if text else [])


def _downloaded(path, artifact):
    return dict(artifact, path=path)


def _invalid(spec, value):
    """What is wrong with `value` for one schema of MCP_TOOLS, or None."""
    kind = spec.get("type")
    if kind == "string" and not isinstance(value, str):
        return "must be text"
    if kind == "boolean" and not isinstance(value, bool):
        return "must be true or false"
    if kind == "integer" and type(value) is not int:
        return "must be a whole number"
    if kind in ("number", "integer"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value - value == 0:
            return "must be a finite number"
        if value < spec.get("minimum", value) or value > spec.get("maximum", value) or \
                value <= spec.get("exclusiveMinimum", value - 1):
            low = spec.get("minimum", spec.get("exclusiveMinimum", "-"))
            return f"must be from {low} to {spec.get('maximum', '-')}" + \
                (" (not 0)" if "exclusiveMinimum" in spec else "")
    if kind == "array":
        if not isinstance(value, list) or len(value) < spec.get("minItems", 0):
            return f"must be a list of at least {spec.get('minItems', 0)}"
        for item in value:
            problem = _invalid(spec["items"], item)
            if problem:
                return f"has an item that {problem}"
    if "enum" in spec and value not in spec["enum"]:
        return f"must be one of {', '.join(spec['enum'])}"
    return None


def _check_arguments(name, schema, arguments):
    """A UsageError naming the argument when `arguments` do not fit the tool's schema."""
    properties = schema["properties"]
    accepted = ", ".join(properties) or "no arguments"
    for argument in arguments:
        if argument not in properties:
            raise UsageError(f"{name} has no argument {shown(argument)!r:.60}; it takes: {accepted}")
    for argument in schema["required"]:
        if argument not in arguments:
            raise UsageError(f"{name} needs the argument {argument!r} "
                             f"({properties[argument]['description']})")
    for argument, value in arguments.items():
        problem = _invalid(properties[argument], value)
        if problem:
            raise UsageError(f"{name}: argument {argument!r} {problem}")


def serve_mcp(open_client, stdin=None, stdout=None):
    """Answer MCP requests on stdin until it closes.  `open_client()` makes a Client: each tool
    call runs in a thread of its own with a client of its own (a client is one connection), so
    a ping or a status is answered while a wait_for waits, and notifications/cancelled ends a
    wait (a cancelled call gets no answer, as the protocol asks).  Tool failures are results
    with isError and the command line's message; protocol errors are JSON-RPC errors.  While
    the server runs, the agent's heartbeat stays fresh."""
    import threading
    stdin = stdin or sys.stdin.buffer
    stdout = stdout or sys.stdout.buffer
    first = open_client()
    idle, running, beating = [first], {}, []
    output, state = threading.Lock(), threading.Lock()
    slots, stopping = threading.Semaphore(MCP_WORKERS), threading.Event()

    def reply(message):
        data = (dumps(dict(message, jsonrpc="2.0")) + "\n").encode("utf-8")
        with output:
            stdout.write(data)
            stdout.flush()

    def call(request_id, name, arguments, cancel):
        # The slot is waited for here, never by the reader: a ping must not queue behind waits.
        with slots:
            client = None
            try:
                if cancel.is_set():
                    return
                with state:
                    client = idle.pop() if idle else None
                if client is None:
                    client = open_client()
                client.cancel = cancel
                result = _tool_result(client, name, arguments)
                if not cancel.is_set():
                    reply({"id": request_id, "result": result})
            except Cancelled:
                pass
            except TracecraftError as exc:   # opening a client failed
                reply({"id": request_id, "result": _tool_error(exc.for_cli())})
            finally:
                with state:
                    running.pop(_hashable(request_id), None)
                    if client is not None:
                        client.cancel = None
                        idle.append(client)

    def beat():
        client = open_client()
        with state:
            beating.append(client)
        while True:
            try:
                client.touch()
            except TracecraftError:
                pass
            if stopping.wait(HEARTBEAT_EVERY / 2):
                return
    threading.Thread(target=beat, daemon=True).start()

    for line in stdin:
        if not line.strip():
            continue
        try:
            request = loads(line.decode("utf-8"), numbers=False)   # arguments are checked
        except (UnicodeDecodeError, ValueError):
            reply({"id": None, "error": {"code": -32700, "message": "parse error"}})
            continue
        if not isinstance(request, dict) or not isinstance(request.get("method"), str):
            if isinstance(request, dict) and ("result" in request or "error" in request):
                continue   # a response to nothing we asked
            reply({"id": None, "error": {"code": -32600, "message": "invalid request"}})
            continue
        method, params = request["method"], request.get("params") or {}
        if "id" not in request:   # a notification: initialized, cancelled, ...
            if method == "notifications/cancelled" and isinstance(params, dict):
                with state:
                    cancel = running.get(_hashable(params.get("requestId")))
                if cancel is not None:
                    cancel.set()
            continue
        request_id = request["id"]
        if isinstance(request_id, bool) or not (isinstance(request_id, str) or (
                isinstance(request_id, (int, float)) and request_id - request_id == 0)):
            reply({"id": None, "error": {"code": -32600, "message": "invalid request: an id must "
                                                                   "be a string or a number"}})
            continue
        try:
            if not isinstance(params, dict):
                raise TypeError("params must be an object")
            if method != "tools/call":
                reply({"id": request_id, "result": _mcp_answer(first, method, params)})
                continue
            name, arguments = params.get("name"), params.get("arguments") or {}
            if name not in MCP_TOOLS:
                raise TypeError(f"unknown tool {shown(repr(name)):.60}: the tools are "
                                + ", ".join(MCP_TOOLS))
            if not isinstance(arguments, dict):
                raise TypeError("arguments must be an object")
        except LookupError as exc:
            reply({"id": request_id, "error": {"code": -32601, "message": str(exc)}})
            continue
        except TypeError as exc:
            reply({"id": request_id, "error": {"code": -32602, "message": f"invalid params: {exc}"}})
            continue
        cancel = threading.Event()
        with state:
            running[_hashable(request_id)] = cancel
        threading.Thread(target=call, args=(request_id, name, arguments, cancel),
                         daemon=True).start()
    stopping.set()
    with state:
        waiting = list(running.values())
    for cancel in waiting:   # the client went away: nobody waits for these answers
        cancel.set()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with state:
            if not running:
                break
        time.sleep(0.02)
    with state:   # a call still running keeps its client; the process ends anyway
        done = idle + beating
    for client in done:
        client.close()


def _hashable(request_id):
    return request_id if isinstance(request_id, (str, int, float)) else repr(request_id)


def _tool_error(text):
    return {"content": [{"type": "text", "text": text}], "isError": True}


def _tool_result(client, name, arguments):
    """The result of one tools/call: structured data and its text, or a tool error."""
    description, schema, run = MCP_TOOLS[name]
    try:
        _check_arguments(name, schema, arguments)
        data = run(client, arguments)
        return {"content": [{"type": "text", "text": dumps(data)}], "structuredContent": data,
                "isError": False}
    except Cancelled:
        raise
    except TracecraftError as exc:
        return _tool_error(exc.for_cli())
    except Exception as exc:   # a bug: the session must go on, and say so
        return _tool_error(f"internal error in tracecraft ({type(exc).__name__}: {exc}): a bug, "
                           "please report it")


def _mcp_answer(client, method, params):
    if method == "initialize":
        asked = params.get("protocolVersion")
        return {"protocolVersion": asked if asked in MCP_VERSIONS else MCP_VERSIONS[0],
                "capabilities": {"tools": {"listChanged": False}},
                "serverInfo": {"name": "tracecraft", "version": __version__},
                "instructions": agent_prompt(client.project, client.agent, tools=True)}
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [{"name": name, "description": text, "inputSchema": schema}
                          for name, (text, schema, _) in MCP_TOOLS.items()]}
    raise LookupError(f"method not found: {shown(method):.60}")


# What an agent is told, as (the command line's words, the MCP tools' words) per line.
PROMPT = [
    ("coordinate through `tracecraft` (run it in a shell; add `--json` to parse its output).",
     "coordinate through the tracecraft tools (each returns JSON; an error says what is wrong)."),
    ("", ""),
    ("- Before working on a step, claim it: `tracecraft claim STEP` (exit 1 = someone else holds it:\n"
     "  pick another step). Claims are leases (30 min by default, `--ttl 2h` for longer work).",
     "- Before working on a step, claim it: `claim` with `step` (an error naming the holder =\n"
     "  someone else holds it: pick another step). Claims are leases (30 min by default; `ttl`\n"
     "  in seconds for longer work)."),
    ("- During long work, keep your leases alive: `tracecraft heartbeat` (or `tracecraft renew STEP`)\n"
     "  every few minutes.",
     "- During long work, keep your leases alive: `heartbeat` (or `renew`) every few minutes."),
    ("- When done, end the step with a useful note for the next agent:\n"
     "  `tracecraft complete STEP --note \"what you did, where it is, what is left\"`.\n"
     "  If you cannot finish: `tracecraft complete STEP --status failed --note \"why\"` (or\n"
     "  `--status blocked`), or `tracecraft release STEP` to hand it back.",
     "- When done, end the step with `complete` and a useful `note` for the next agent: what\n"
     "  you did, where it is, what is left. If you cannot finish: `complete` with `status`\n"
     "  \"failed\" (or \"blocked\") and a `note` saying why, or `release` to hand it back."),
    ("- Before editing files another agent may touch, reserve them: `tracecraft reserve 'src/api/**'`\n"
     "  (exit 1 = another agent holds an overlapping reservation: ask it, or work elsewhere);\n"
     "  `tracecraft unreserve` when done.",
     "- Before editing files another agent may touch, reserve them: `reserve` with `globs` (an\n"
     "  error naming the holder = another agent holds an overlapping one: ask it, or work\n"
     "  elsewhere); `unreserve` when done."),
    ("- Check messages between steps: `tracecraft inbox`. Tell others what they need:\n"
     "  `tracecraft send AGENT \"message\"` or `tracecraft send _broadcast \"message\"`.",
     "- Check messages between steps: `inbox`. Tell others what they need: `send` with `to`\n"
     "  (an agent, or `_broadcast` for everyone) and `text`."),
    ("- Wait for dependencies instead of polling by hand: `tracecraft wait-for STEP [STEP...]`.",
     "- Wait for dependencies instead of polling by hand: `wait_for` with `steps`."),
    ("- With a plan, take work with `tracecraft next` (claims the next ready step and prints\n"
     "  its note and its dependencies' handoffs; `--wait` blocks until one is ready). Hand off\n"
     "  with `complete STEP --to AGENT --next-action \"...\"` (`--needs-review`, `--changed-files-\n"
     "  from-git`).",
     "- With a plan, take work with `next` (claims the next ready step, with its note and its\n"
     "  dependencies' handoffs); hand off with `complete` and `to`, `next_action`,\n"
     "  `needs_review`, `changed_files`."),
    ("- Share state and files: `tracecraft memory set KEY VALUE`, `tracecraft memory get KEY`,\n"
     "  `tracecraft artifact upload PATH --step STEP`, `tracecraft artifact download NAME --step STEP`.",
     "- Share state and files: `memory_set`, `memory_get`, `memory_incr`, `artifact_upload`,\n"
     "  `artifact_download`."),
    ("- See the whole picture: `tracecraft status`; who is online: `tracecraft agents`.",
     "- See the whole picture: `status`; who is online: `agents`."),
    ("- See what another agent was told and did: `tracecraft session list`, then\n"
     "  `tracecraft session show ID --tail 20` (its mirrored transcript).",
     "- See what another agent was told and did: `session_list`, then `session_show` (its\n"
     "  mirrored transcript)."),
]


def agent_prompt(project, agent, tools=False):
    """The block an agent pastes into CLAUDE.md / AGENTS.md: who it is and how to behave;
    with `tools`, the same in the words of the MCP tools (the server's instructions)."""
    me = agent or "<your-agent-id>"
    lines = "\n".join(pair[bool(tools)] for pair in PROMPT)
    return (f"## Coordination (tracecraft)\n\nYou are agent `{me}` in project `{project}`. Other "
            f"agents work on this project at the same time;\n{lines}\n")


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

global flags (before or after the command):
  --json           print one JSON document instead of lines (errors too)
  --agent ID       act as this agent (default: $TRACECRAFT_AGENT, then the config)
  --project NAME   use this project (default: $TRACECRAFT_PROJECT, then the config)
  --config PATH    the config file (default: $TRACECRAFT_CONFIG, the nearest .tracecraft.json,
                   then ~/.config/tracecraft/config.json)

several agents in one directory: set TRACECRAFT_AGENT (and TRACECRAFT_PROJECT) per call.
`tracecraft COMMAND --help` explains each command, with examples.

exit codes:
  0 success      1 the answer is no (missing key, step held or not complete)
  2 bad input    3 timed out      4 the store failed (unreachable, credentials, config)
"""


class Output:
    """Human lines on stdout, notes on stderr; with --json, one JSON document on stdout.  What
    agents wrote reaches a person's terminal only through shown(): an escape sequence in a
    message cannot rewrite the screen or the clipboard.  --json stays exact."""

    def __init__(self, as_json):
        self.as_json = as_json

    def result(self, data, *lines):
        if self.as_json:
            print(dumps(data, indent=2))
        else:
            for line in lines:
                for part in str(line).split("\n"):
                    print(shown(part))

    def note(self, text):
        if getattr(self, "_drawn", False):   # a progress line cut short (an error): end it
            print(file=sys.stderr)
            self._drawn = False
        print(shown(text), file=sys.stderr)

    def warn(self, text):
        self.note(f"tracecraft: warning: {text}")

    def progress(self, verb, name):
        """A progress callback for transfers of PROGRESS_BYTES or more, drawn on one line of
        stderr at most 5 times a second, only when stderr is a terminal (never with --json):
        bytes done of the total, the rate so far and the time left at that rate."""
        if self.as_json or not sys.stderr.isatty():
            return None
        state = {"shown": 0.0, "started": time.monotonic(), "ended": False}

        def report(done, total):
            now = time.monotonic()
            if total < PROGRESS_BYTES or state["ended"] or \
                    (now - state["shown"] < 0.2 and done < total):
                return
            state["shown"], state["ended"] = now, done >= total
            took = now - state["started"]
            rate = done / max(took, 1e-3)
            # The first second's rate says little (a connection's start): no time left yet.
            left = f", {_duration((total - done) / rate)} left" if rate and done < total \
                and took >= 1 else ""
            print(f"\r{verb} {shown(name)}: {_size(done)} of {_size(total)}, "
                  f"{_size(rate)}/s{left}\x1b[K", end="\n" if state["ended"] else "",
                  file=sys.stderr, flush=True)
            self._drawn = not state["ended"]
        return report


PROGRESS_BYTES = 4 << 20   # transfers smaller than this finish before a progress line helps


def _size(n):
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def _ago(seconds):
    return "never" if seconds is None else _duration(seconds) + " ago"


def _indented(text, prefix="    "):
    """Text of several lines with every line after the first indented, so that what an agent
    wrote can never pass for a line of tracecraft's own."""
    return str(text).replace("\n", "\n" + prefix)


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
    if not 0 <= value <= MAX_SECONDS:   # NaN fails this too
        raise UsageError(f"{shown(text)!r:.40} is not a duration (use e.g. 30, 90s, 10m or "
                         f"2h; at most {MAX_SECONDS // 86400:g} days)")
    return value


def _stdin_text(what):
    """Standard input as text, without the line break(s) that end it (as $(...) does)."""
    return sys.stdin.buffer.read().decode("utf-8", "surrogateescape").rstrip("\r\n")


def _open_client(args, warn):
    """A new Client for this command's settings."""
    path = getattr(args, "config", None)
    for flag, check in (("project", lambda v: check_name("project", v)), ("agent", check_agent)):
        value = getattr(args, flag, None)
        if value == "":
            raise UsageError(f"--{flag}: no {'agent id' if flag == 'agent' else 'project'} "
                             "given (it is empty)")
        if value is not None:
            try:
                check(value)
            except UsageError as exc:
                raise UsageError(f"--{flag}: {exc}") from None
    path = path or find_config()
    if path is None:
        raise ConfigError("no tracecraft config found here, in any parent directory or in "
                          f"{user_config_path()}: run `tracecraft init` first (or set "
                          "TRACECRAFT_CONFIG)")
    return open_client(resolve_settings(path, project=args.project, agent=args.agent), warn)


def _client(args):
    """The Client a command works with (opened once per process and kept on `args`)."""
    if getattr(args, "client", None) is None:
        args.client = _open_client(args, args.out.warn)
    return args.client


def _default_agent():
    import getpass
    try:
        name = getpass.getuser()
    except Exception:
        name = "agent"
    name = "".join(c for c in name if c.isalnum() or c in "-_.").lstrip("_.") or "agent"
    return name[:MAX_NAME]


def _default_project(directory):
    """(A project name, what it is named after) for `init` without --project: the git
    repository's (the same from every worktree of it, so agents in worktrees share one
    project), else the directory's."""
    for parent in parents(directory):
        dot_git = os.path.join(parent, ".git")
        if not os.path.lexists(dot_git):
            continue
        common = dot_git
        try:   # a linked worktree: .git is a file naming its gitdir, whose commondir is the
            if os.path.isfile(dot_git):   # repository's own .git
                with open(dot_git, encoding="utf-8") as f:
                    gitdir = f.read(4096).partition("gitdir:")[2].strip()
                gitdir = os.path.normpath(os.path.join(parent, gitdir))
                with open(os.path.join(gitdir, "commondir"), encoding="utf-8") as f:
                    common = os.path.normpath(os.path.join(gitdir, f.read(4096).strip()))
        except (OSError, UnicodeDecodeError):
            common = dot_git
        root = os.path.dirname(common) if os.path.basename(common) == ".git" else common
        name = os.path.basename(root)
        name = name[:-4] if name.endswith(".git") and len(name) > 4 else name
        return _project_name(name, "the git repository", directory)
    return _project_name(os.path.basename(directory), "this directory", directory)


def _project_name(name, what, directory):
    try:
        return check_name("project", name.strip()[:MAX_NAME]), f"{what} {name}"
    except UsageError:   # a name no project may have (the root directory, say)
        return "default", None


def _git_work_tree(directory):
    return any(os.path.exists(os.path.join(parent, ".git")) for parent in parents(directory))


def _ignore_in_git(directory):
    """Add .tracecraft.json to the directory's .gitignore (it may hold a secret key); never
    through a link."""
    path = os.path.join(directory, ".gitignore")
    try:
        if os.path.islink(path):
            raise OSError(0, "it is a symbolic link")
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except FileNotFoundError:
            text = ""
        if CONFIG_NAME in text.splitlines() or "/" + CONFIG_NAME in text.splitlines():
            return False
        replace_file(path, (text + ("" if not text or text.endswith("\n") else "\n")
                            + CONFIG_NAME + "\n").encode("utf-8"), 0o644)
        return True
    except OSError as exc:
        print(f"tracecraft: warning: could not add {CONFIG_NAME} to {shown(path)}: "
              f"{exc.strerror or exc}", file=sys.stderr)
        return False


def cmd_init(args, out):
    s3_options = ("endpoint", "access_key", "secret_key", "region", "addressing", "profile")
    backend = args.backend or ("s3" if any(getattr(args, o) for o in s3_options) else "local")
    project, named = args.project or os.environ.get("TRACECRAFT_PROJECT"), None
    if not project:
        project, named = _default_project(current_directory())
    check_name("project", project)
    if args.read_only:
        if args.agent:
            raise UsageError("--read-only makes an observer, which has no agent id: drop --agent")
        agent = None
    else:
        agent = args.agent or os.environ.get("TRACECRAFT_AGENT") or _default_agent()
        check_agent(agent)
    if bool(args.access_key) != bool(args.secret_key):
        raise UsageError("give both --access-key and --secret-key, or neither")
    if backend == "hf" and not args.bucket:
        raise UsageError("--backend hf needs --bucket NAMESPACE/NAME (a bucket on the Hub)")
    config = {"version": 1, "backend": backend, "project": project, "agent": agent,
              "bucket": args.bucket or "tracecraft"}
    if args.read_only:
        config["read_only"] = True
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
        if args.profile:
            config["profile"] = args.profile
        if args.insecure:
            config["insecure"] = True
    for warning in config_warnings(config):
        out.warn(warning)
    store = open_store(config)
    failed = []
    with store:
        created = store.ensure_bucket(project + "/")
        moved = getattr(store, "region", None) not in (None, config.get("region"))
        if moved:   # found in another region (S3Store._moved): sign for it from the start
            out.warn(f"bucket {config['bucket']} is in {store.region}, not "
                     f"{config['region']}: the config says {store.region}")
            config["region"] = store.region
        client = Client(store, project, agent)
        if args.read_only:
            list(store.list(client.key(""), limit=1))   # the one thing an observer needs
        else:
            try:
                failed = [f"{name}: {detail}" for name, ok, detail in client.probe() if not ok]
            except AccessDenied as exc:
                raise AccessDenied(f"{exc}; credentials that may only read and list can watch "
                                   "as an observer: tracecraft init --read-only") from None
            if failed and not args.accept_unsafe_store:
                raise StoreError(f"{store.describe()} ignores conditional writes "
                                 f"({'; '.join(failed)}): claims, leases, memory updates and "
                                 "inboxes would not be safe on it. Use a store that honours "
                                 "If-None-Match/If-Match (AWS S3, MinIO, R2, SeaweedFS, Ceph), "
                                 "or pass --accept-unsafe-store to accept the risk")
            config["unsafe_store"] = bool(failed)
            client.heartbeat(renew=False)
    path = user_config_path() if args.user else os.path.join(current_directory(), CONFIG_NAME)
    write_config(path, config)
    lines = []
    if created:
        lines.append(f"Created local store {store.dir}" if isinstance(store, LocalStore)
                     else f"Created bucket {config['bucket']}")
    who = "as a read-only observer" if args.read_only else f"as agent {agent}"
    lines.append(f"Initialized project {project} {who} on {store.describe()}"
                 + (f" (named after {named}; --project NAME to choose)" if named else ""))
    if isinstance(store, HFStore):
        lines.append(f"Watch the agents coordinate at {store.hub_url}")
    if failed:
        lines.append("WARNING: this store ignores conditional writes; atomic operations are unsafe")
    lines.append(f"Wrote {path}")
    if not args.user and _git_work_tree(current_directory()) and \
            _ignore_in_git(current_directory()):
        lines.append(f"Added {CONFIG_NAME} to .gitignore")
    safe = {k: v for k, v in config.items() if k not in SECRET_FIELDS}
    out.result(dict(safe, config_path=path, bucket_created=created), *lines)


def _show_value(value):
    return value if isinstance(value, str) else dumps(value)


def _parse_value(text, force_string):
    """A value from the command line: JSON if it parses as standard JSON, else the text."""
    check_text("memory value", text)
    if force_string:
        return text
    try:
        return loads(text)
    except ValueError as exc:
        if "out of range" in str(exc) or "64-bit" in str(exc):
            raise UsageError(f"memory value {shown(text)!r:.40} is a number beyond the range "
                             "of JSON numbers (use --string to keep it as text)") from None
        if "nested too deep" in str(exc):
            raise UsageError("memory value is nested too deep") from None
        return text


def cmd_memory_set(args, out):
    value = _stdin_text("memory value") if args.value == "-" else args.value
    record = _client(args).memory.set(args.key, _parse_value(value, args.string),
                                      if_version=args.if_version, if_absent=args.if_absent)
    out.result(record, f"Set {args.key} = {_show_value(record['value'])}")


def cmd_memory_get(args, out):
    record = _client(args).memory.record(args.key)
    out.result(record, _show_value(record["value"]))


def cmd_memory_incr(args, out):
    record = _client(args).memory.incr(args.key, _parse_value(args.by, False))
    out.result(record, _show_value(record["value"]))


def cmd_memory_history(args, out):
    entries = _client(args).memory.history(args.key)
    out.result({"key": args.key, "history": entries},
               *[f"{e['revision']}  {e['at']}  {e['by']}  {_indented(_show_value(e['value']))}"
                 for e in entries])


def cmd_memory_list(args, out):
    keys = _client(args).memory.list(args.prefix or "")
    if not keys and not out.as_json:
        out.note("No keys" + (f" under {args.prefix}" if args.prefix else ""))
    out.result({"keys": keys}, *keys)


def cmd_memory_delete(args, out):
    _client(args).memory.delete(args.key, if_version=args.if_version)
    out.result({"key": args.key, "deleted": True}, f"Deleted {args.key}")


def cmd_send(args, out):
    text = " ".join(args.message)
    if text == "-":
        text = _stdin_text("message")
    message = _client(args).send(args.to, text, args.step)
    out.result(message, f"Sent to {args.to}: {_indented(text)}")


def cmd_inbox(args, out):
    wait = None if args.wait is None else (True if args.wait == "forever"
                                          else parse_duration(args.wait))
    messages = _client(args).inbox(peek=args.peek, everything=args.all, delete=args.delete,
                                   wait=wait, step=args.step)
    lines = [f"[{m['at']}] ({m['kind']}) {m['from']}: {_indented(m['text'])}" for m in messages]
    if not messages and not out.as_json:
        out.note("No new messages" if not args.all else "No messages")
    out.result({"messages": messages}, *lines)


def _ttl(args):
    return parse_duration(args.ttl) if args.ttl else None


def cmd_claim(args, out):
    client = _client(args)
    lease = client.claim(args.step, ttl=_ttl(args), paths=args.paths)
    verb = "Already holding" if lease["already_held"] else "Claimed"
    out.result(lease, f"{verb} step {args.step} as {client.agent}"
               + (f", reserving {', '.join(args.paths)}" if args.paths else ""))


def cmd_renew(args, out):
    lease = _client(args).renew(args.step, ttl=_ttl(args))
    out.result(lease, f"Renewed step {args.step} for {_duration(lease['lease_left'])}")


def cmd_release(args, out):
    lease = _client(args).release(args.step)
    out.result(lease, f"Released step {args.step}")


def _git_changed_files():
    """The files changed in the git work tree here: modified, added, renamed and untracked
    (deleted ones are not there to read); [] outside a work tree or without git."""
    import subprocess
    try:
        done = subprocess.run(["git", "status", "--porcelain=v1", "-z", "--untracked-files=all"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    files, fields = [], iter(done.stdout.decode("utf-8", "surrogateescape").split("\0"))
    for field in fields:
        code, path = field[:2], field[3:]
        if len(code) < 2:
            continue
        if code[0] in "RC":
            next(fields, None)   # the name it had before
        if path and "D" not in code and code != "!!":
            files.append(path.encode("utf-8", "surrogateescape").decode("utf-8", "replace"))
    return files


def cmd_complete(args, out):
    status = "blocked" if args.blocked else args.status
    if args.blocked and args.status not in ("complete", "blocked"):
        raise UsageError("--blocked is --status blocked: give one of them")
    files = _git_changed_files() if args.changed_files_from_git else None
    record = _client(args).complete(args.step, note=args.note, force=args.force, status=status,
                                    to=args.to, next_action=args.next_action,
                                    needs_review=args.needs_review, changed_files=files)
    verb = {"complete": "Completed", "failed": "Marked failed:", "blocked": "Marked blocked:"}
    extra = " (forced)" if record["forced"] else ""
    handoff = record["handoff"] or {}
    said = [" with a handoff note" if args.note is not None else ""]
    said += [f", {len(handoff['changed_files'])} changed files"] if files is not None else []
    said += [", for review"] if args.needs_review else []
    said += [f", handed to {args.to}"] if args.to else []
    out.result(record, f"{verb[status]} step {args.step}{extra}" + "".join(said))


def _plan_text(text):
    """A plan written by hand: one `step: dep dep` per line (`step:` alone for a step without
    dependencies); blank lines, and from a word starting with # to the end of the line, are
    comments.  The step id ends at the first ':' followed by a space or the end of the line,
    so ids may hold ':' but not spaces."""
    import re
    steps = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"(.+?):(?:\s+(.*))?$", line)
        if not match or not match.group(1).strip():
            raise UsageError(f"plan line {number}: write `step: dependency dependency`, or "
                             f"`step:` alone, not {shown(line)!r:.60}")
        after = (match.group(2) or "").split()
        after = after[:next((i for i, d in enumerate(after) if d.startswith("#")), len(after))]
        steps.append({"step": match.group(1).strip(), "after": after})   # (# ... : a comment)
    return steps


def cmd_plan_load(args, out):
    if args.file == "-":
        text = _stdin_text("plan")
    else:
        try:
            with open(args.file, "rb") as f:
                text = f.read(MAX_RECORD + 1).decode("utf-8", "surrogateescape")
        except OSError as exc:
            raise LocalFileError(f"cannot read {args.file}: {os_reason(exc)}") from None
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > MAX_RECORD:   # never a plan cut short (its last steps silently left out)
        raise UsageError(f"{args.file} is larger than {MAX_RECORD >> 20} MiB: load it in parts")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{args.file} is not UTF-8 text") from None
    if text.lstrip()[:1] in ("[", "{"):
        try:
            steps = loads(text)
        except ValueError as exc:
            raise UsageError(f"{args.file} is not valid JSON: {exc}") from None
        steps = steps.get("steps") if isinstance(steps, dict) else steps
    else:
        steps = _plan_text(text)
    _plan_result(out, _client(args).plans.load(steps))


def cmd_plan_add(args, out):
    _plan_result(out, _client(args).plans.add(args.step, args.after or (), args.label or (),
                                              args.priority, args.note))


def _plan_result(out, result):
    lines = [f"Added {len(result['added'])} steps to the plan"
             + (f" ({len(result['unchanged'])} already there, unchanged)"
                if result["unchanged"] else "")]
    if result["ready"]:
        lines.append(f"Ready now: {_elided(result['ready'], 10)}")
    out.result(result, *lines)


def cmd_plan_show(args, out):
    plan = _client(args).plans.show()
    lines = []
    for s in plan["steps"]:
        extra = f" [{', '.join(s['labels'])}]" if s["labels"] else ""
        extra += f" priority {s['priority']}" if s["priority"] else ""
        extra += f" ({s['holder']})" if s["holder"] else ""
        lines.append(f"  {s['state']:<12} {s['step']:<24} after: "
                     f"{', '.join(s['after']) or '-'}{extra}")
    if not plan["steps"]:
        out.note("The plan is empty (tracecraft plan add STEP --after DEP, or plan load FILE)")
    elif not out.as_json:
        counts = {}
        for s in plan["steps"]:
            counts[s["state"]] = counts.get(s["state"], 0) + 1
        lines.insert(0, f"PLAN  {len(plan['steps'])} steps: "
                     + ", ".join(f"{n} {state}" for state, n in counts.items()))
    out.result(plan, *lines)


def cmd_ready(args, out):
    found = _client(args).ready(args.label)
    lines = [f"  {r['step']:<24} after: {', '.join(r['after']) or '-'}"
             + (f" [{', '.join(r['labels'])}]" if r["labels"] else "")
             + (f" priority {r['priority']}" if r["priority"] else "") for r in found["ready"]]
    if found["blocked"]:
        lines += ["BLOCKED (a dependency failed or was blocked)"]
        lines += [_blocked_line(b) for b in found["blocked"]]
    if not found["ready"] and not out.as_json:
        out.note("Nothing is ready" + (f" with label {args.label}" if args.label else ""))
    out.result(found, *lines)
    return EXIT_OK if found["ready"] else EXIT_NO


def cmd_next(args, out):
    wait = None if args.wait is None else (True if args.wait == "forever"
                                          else parse_duration(args.wait))
    client = _client(args)
    found = client.next(args.label, _ttl(args), wait)
    if found is None:
        out.result(_next_result(None), "Every planned step has ended: nothing "
                   "left to do")
        return EXIT_OK
    lines = [f"Claimed step {found['step']} as {client.agent}"
             + (f" (priority {found['priority']})" if found["priority"] else "")]
    if found["note"]:
        lines.append(f"  note: {_indented(found['note'], '        ')}")
    for h in found["handoffs"]:
        lines.append(f"  after {h['step']} ({h['status']} by {h['by']})"
                     + (f": {_indented(h['note'], '      ')}" if h["note"] else ""))
        if h["next_action"]:
            lines.append(f"      next: {_indented(h['next_action'], '        ')}")
    out.result(_next_result(found), *lines)


def cmd_reopen(args, out):
    lease = _client(args).reopen(args.step)
    out.result(lease, f"Reopened step {args.step}: pending again (the next claim is generation "
                      f"{lease['generation'] + 1})")


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
        lines.append(f"  handoff: {_indented(info['note'], '           ')}")
    lines += [f"  message: [{m['at']}] {m['from']} -> {m['to']}: {_indented(m['text'], '    ')}"
              for m in info["messages"]]
    out.result(info, *lines)
    return EXIT_OK if info["status"] == "complete" else EXIT_NO


def cmd_wait_for(args, out):
    client = _client(args)
    timeout = parse_duration(args.timeout)
    if not out.as_json:
        out.note(f"Waiting for: {', '.join(args.steps)} (timeout {_seconds(timeout)})")
    shown_done = (lambda step, record: print(f"\u2713 {shown(step)} complete", flush=True)) \
        if not out.as_json else None
    done = client.wait_for(args.steps, timeout=timeout, on_complete=shown_done)
    out.result({"complete": done})


def cmd_artifact_upload(args, out):
    client = _client(args)
    if args.path == "-" and not args.name:
        raise UsageError("uploading standard input needs a name (--name)")
    source = sys.stdin.buffer if args.path == "-" else args.path
    name = args.name or os.path.basename(os.path.abspath(args.path))
    meta = client.artifacts.upload(source, step=args.step, name=args.name,
                                   overwrite=args.overwrite,
                                   progress=out.progress("Uploading", name))
    out.result(meta, f"Uploaded {meta['name']} ({_size(meta['size'])}) to step {meta['step']}")


def cmd_artifact_download(args, out):
    client = _client(args)
    path, meta = client.artifacts.download(args.name, step=args.step, dest=args.output,
                                           progress=out.progress("Downloading", args.name),
                                           overwrite=args.overwrite)
    out.result(dict(meta, path=path), f"Downloaded {args.name} ({_size(meta['size'])}) to {path}")


def cmd_artifact_list(args, out):
    items = _client(args).artifacts.list(step=args.step)
    lines = [f"{m['step']}/{m['name']}  {_size(m['size'] or 0)}  "
             f"{m['content_type'] or '?'}  by {m['uploader'] or '?'}  {m['at'] or ''}"
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
        lines += _sessions_of(a, " " * (width + 2))
    if not agents and not out.as_json:
        out.note("No agents yet")
    out.result({"agents": agents}, *lines)


def _sessions_of(agent, indent):
    """An agent's mirrored sessions, a line each (the three most recent)."""
    found = sorted(agent["sessions"], key=lambda s: str(s["last_event"] or ""), reverse=True)
    lines = [f"{indent}session {s['harness']} {s['session']} ({s['state']}, last event "
             f"{s['last_event'] or '?'})" for s in found[:3]]
    return lines + ([f"{indent}... and {len(found) - 3} more sessions"] if len(found) > 3 else [])


def cmd_heartbeat(args, out):
    record = _client(args).heartbeat(renew=True)
    held = ", ".join(record["holding"]) or "no steps"
    out.result(record, f"Heartbeat recorded for {record['agent']} (renewed: {held})")


def _latency(seconds):
    return f"{seconds * 1000:.1f} ms" if seconds >= 0.001 else f"{seconds * 1000:.3f} ms"


def cmd_doctor(args, out):
    """Configuration, identity, reachability, credentials, conditional writes, latency, skew."""
    import statistics
    checks = []
    path = getattr(args, "config", None) or find_config()
    checks.append(("config", bool(path), path or "none found: run `tracecraft init`"))
    if path:
        try:
            client = _client(args)
            store, local = client.store, isinstance(client.store.store if client.read_only
                                                     else client.store, LocalStore)
            checks.append(("identity", bool(client.agent) or client.read_only,
                           f"agent {client.agent} in project {client.project}" if client.agent
                           else f"a read-only observer of project {client.project}"
                           if client.read_only else f"no agent id in project {client.project}"))
            credentials = getattr(getattr(store, "store", store), "credentials", None)
            if credentials is not None:
                credentials.keys()   # renewed first when due: what is shown is what signs
                checks.append(("credentials", credentials.expires is None or
                               credentials.expires > time.time(), _credentials_detail(credentials)))
            timings, skews = [], []
            probe_key = client.key("_probe", "latency.json")
            if not client.read_only:
                store.put(probe_key, b"{}", content_type=JSON_TYPE)
            for _ in range(5):
                started = time.monotonic()
                if client.read_only:
                    entries = list(store.list(client.key(""), limit=1))
                    when = entries[0].server_time if entries else None
                else:
                    when = store.get(probe_key).server_time
                timings.append(time.monotonic() - started)
                if when and not local:
                    skews.append(time.time() - when)
            if not client.read_only:
                store.delete(probe_key)
            access = "readable (read-only observer)" if client.read_only else \
                "readable and writable" if local else "reachable, credentials accepted, " \
                "read/write ok"
            checks.append(("store", True, f"{store.describe()}: {access}; median latency "
                           f"{_latency(statistics.median(timings))}"))
            if skews:
                skew = statistics.median(skews)
                checks.append(("clock", abs(skew) < 30, f"this machine is {abs(skew):.1f} s "
                               f"{'ahead of' if skew > 0 else 'behind'} the store (leases use "
                               "the store's clock)"))
            if not client.read_only:
                checks += client.probe()
        except TracecraftError as exc:
            checks.append(("credentials" if isinstance(exc, NoCredentials) else "store", False,
                           exc.for_cli()))
    ok = all(passed for _, passed, _ in checks)
    out.result({"ok": ok, "checks": [{"check": c, "ok": p, "detail": d} for c, p, d in checks]},
               *[f"{'ok  ' if p else 'FAIL'}  {c}: {d}" for c, p, d in checks])
    return EXIT_OK if ok else EXIT_STORE


def _credentials_detail(credentials):
    """Where the store's credentials come from and when they expire; of the keys, only the
    access key's first characters (the kind of key: AKIA long-term, ASIA temporary)."""
    detail = f"{credentials.source}; access key {credentials.access_key[:4]}…"
    if credentials.expires is None:
        return detail + "; they do not expire"
    left = credentials.expires - time.time()
    return detail + (f"; they expire in {_duration_words(left)}" if left > 0 else
                     f"; they expired {_duration_words(-left)} ago")


def cmd_status(args, out):
    client = _client(args)
    interval = None if args.watch is None else parse_duration(args.watch)
    if interval is not None and interval < 0.5:
        raise UsageError("--watch: redraw at most every 0.5 s (a smaller interval would keep a "
                         "core busy and flood the store with requests)")
    cache, states = {}, args.state or None

    def picture():
        return client.status(cache, states, args.agent_only)
    if interval is None:
        info = picture()
        out.result(info, *_status_lines(info, states))
        return EXIT_OK

    def redraw():
        if out.as_json:   # a JSON document per refresh, a line each
            print(dumps(picture()), flush=True)
        else:
            print("\033[H\033[2J" + "\n".join(shown(line) for text in _status_lines(
                picture(), states) for line in text.split("\n")), flush=True)
        return None, False   # never done: until interrupted
    try:
        poll(redraw, None, None, interval, interval)   # a person watching is no agent at work
    except KeyboardInterrupt:
        return EXIT_OK


STATUS_LISTED = 10   # steps of one state listed before the rest are counted


def _natural(name):
    """A sort key that puts step-2 before step-10."""
    import re
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name))]


def _elided(names, most=5):
    return ", ".join(names[:most]) + (f" ... and {len(names) - most} more" if
                                       len(names) > most else "") if names else "-"


def _status_lines(info, states=None):
    """The screen `status` prints: counts first, then what needs attention (in progress,
    expired, failed, blocked), a few of each; with `states`, every step in those states."""
    online = sum(a["state"] == "online" for a in info["agents"])
    lines = [f"Project {info['project']}", "",
             f"AGENTS  {len(info['agents'])} ({online} online)"]
    for a in info["agents"]:
        lines.append(f"  {a['agent']:<16} {a['state']:<8} unread {a['unread']:<4} "
                     f"seen {_ago(a['age_seconds']):<9} holding {_elided(a['holding'])}")
        lines += _sessions_of(a, "    ")
    counts = info["counts"]
    lines += ["", f"STEPS  {sum(counts.values())}: " + ", ".join(
        f"{n} {state}" for state, n in counts.items())]
    listed = states or STEP_STATES[:4]
    if not states and any(counts[s] for s in listed):
        lines.append("NEEDS ATTENTION")
    for state in listed:
        steps = sorted((s for s in info["steps"] if s["status"] == state),
                       key=lambda s: _natural(s["step"]))
        most = len(steps) if states else STATUS_LISTED
        for st in steps[:most]:
            lines.append(_step_line(st))
        if len(steps) > most:
            lines.append(f"  ... and {len(steps) - most} more {state} (status --state {state} "
                         "lists them all)")
    if info["handoffs"]:
        lines += ["", "RECENT HANDOFFS"]
        lines += [f"  {h['step']} ({h['by']}, {h['at']}): {_indented(h['note'])}"
                  for h in info["handoffs"]]
    if info["blocked"]:
        lines += ["", "BLOCKED IN THE PLAN (by a failed or blocked dependency)"]
        lines += [_blocked_line(b) for b in info["blocked"][:STATUS_LISTED]]
    lines += ["", f"MEMORY  {info['memory_keys']} keys"]
    return lines


def _blocked_line(b):
    return f"  {b['step']:<24} after {b['after']}, {b['status']} by {b['by']}" + \
        (f": {_indented(b['note'])}" if b["note"] else "")


def _step_line(st):
    detail = ""
    if st["status"] in ("in_progress", "expired"):
        left = st["lease_left"] or 0
        detail = f"{st['holder']} (generation {st['generation']}, " + \
            (f"lease {_duration(left)} left)" if left > 0 else f"expired {_duration(-left)} ago)")
    elif st["status"] in ENDED:
        detail = f"by {st['ended_by']}"
    return f"  {st['status']:<12} {st['step']:<24} {detail}"


def cmd_prompt(args, out):
    """Print the instructions: no store is opened and nothing is written (an agent named here
    is not registered by it)."""
    project = args.project or os.environ.get("TRACECRAFT_PROJECT")
    agent = args.agent or os.environ.get("TRACECRAFT_AGENT")
    path = getattr(args, "config", None) or find_config()
    if path:
        settings = resolve_settings(path, project=args.project, agent=args.agent)
        project, agent = settings.get("project"), settings.get("agent")
    text = agent_prompt(project or "<project>", agent)
    out.result({"prompt": text}, text.rstrip("\n"))


def cmd_mcp(args, out):
    serve_mcp(lambda: _open_client(args, out.warn))


def _transcripts(args):
    """The transcripts `session mirror` copies: the one named, the newest for the directory,
    or (--all) every one for it."""
    harnesses = [args.harness] if args.harness else list(HARNESSES)
    if args.transcript:
        name = os.path.basename(args.transcript)
        return [Transcript(args.harness or "claude-code",
                           args.session_id or (name[:-6] if name.endswith(".jsonl") else name),
                           os.path.abspath(args.transcript), args.cwd)]
    cwd = os.path.abspath(args.cwd) if args.cwd else current_directory()
    found = []
    for harness in harnesses:
        try:
            found += find_transcripts(harness, None if args.session_id else cwd)
        except UsageError as exc:   # one harness's broken files must not hide the others'
            if args.harness:
                raise
            args.out.warn(str(exc))
    if args.session_id:
        found = [t for t in found if t.session == args.session_id]
    found.sort(key=lambda t: t.modified(), reverse=True)
    if not found:
        which = "/".join(harnesses) if args.harness else "Claude Code, Codex, OpenClaw or Hermes"
        raise NotFound(f"no {which} session " + (f"{shown(args.session_id)!r:.80}" if
                                                 args.session_id else f"for {shown(cwd)}")
                       + " on this machine (see `tracecraft session mirror --help` for where "
                       "each harness keeps its transcripts)")
    return found if args.all else found[:1]


def _mirrored(result):
    lines = result["lines"]
    return (f"Mirrored {lines} line{'' if lines == 1 else 's'} ({_size(result['bytes'])}) of "
            f"{result['harness']} session {result['session']}"
            + (f" in {result['parts']} parts" if result["parts"] > 1 else ""))


GONE_SECONDS = 60   # a followed transcript missing this long is let go


def _follow_lock(client, transcript):
    """The open lock file that makes this process the one that follows `transcript` for this
    agent on this machine (its pid inside, for SessionEnd), or None when another holds it."""
    path = _mirror_lock(client, transcript.harness, transcript.session)
    try:
        import fcntl
    except ImportError:
        return -1   # no flock here: followers are not made exclusive
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, dumps({"pid": os.getpid(), "session": transcript.session}).encode("utf-8"))
    return fd


def _mirror_lock(client, harness, session):
    return client.records.state_path("mirrors", f"{harness}/{session}")[:-5] + ".lock"


def _running_mirror(path):
    """The pid of the process that follows a session (holding its lock file), or None."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except (ImportError, OSError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return None   # nobody holds it
    except OSError:
        found = loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
        return found.get("pid") if isinstance(found, dict) and type(found.get("pid")) is int \
            and found["pid"] > 0 else None
    except ValueError:
        return None
    finally:
        os.close(fd)


def cmd_session_mirror(args, out):
    client = _client(args)
    interval = parse_duration(args.interval)
    if args.follow and interval < 0.05:
        raise UsageError("--interval: at least 0.05 s")
    redactor = None if args.no_redact else client.sessions.redactor()
    transcripts, found_at = _transcripts(args), time.monotonic()
    seen, warned, gone, locks = {}, {}, {}, {}

    def flush():
        nonlocal transcripts, found_at, redactor
        if args.all and time.monotonic() - found_at > 30:   # sessions started since
            try:
                transcripts, found_at = _transcripts(args), time.monotonic()
            except NotFound:
                pass
        results = []
        for transcript in list(transcripts):
            which = (transcript.harness, transcript.session)
            if args.follow and which not in locks:
                locks[which] = _follow_lock(client, transcript)
                if locks[which] is None:   # followed by another process: leave it to that one
                    del locks[which]
                    transcripts.remove(transcript)
                    continue
            signature = transcript.signature()   # before reading: a change meanwhile is next
            if args.follow and signature is None:   # gone (deleted, or not yet there)
                if time.monotonic() - gone.setdefault(which, time.monotonic()) > GONE_SECONDS:
                    transcripts.remove(transcript)
                    fd = locks.pop(which, -1)
                    if fd >= 0:
                        os.close(fd)
                continue
            gone.pop(which, None)
            if args.follow and seen.get(which) == signature:
                continue   # nothing new: no request
            if redactor is not None and redactor.literals != client.sessions.secrets():
                redactor = client.sessions.redactor()   # the keys were renewed: hide the new
            try:
                result = client.sessions.mirror(transcript, redact=not args.no_redact,
                                                redactor=redactor)
            except TracecraftError as exc:
                if not args.follow:
                    raise
                message = f"{transcript.harness} session {transcript.session}: {exc.for_cli()}"
                if warned.get(which) != message:   # once, not every interval
                    out.warn(message)
                warned[which], seen[which] = message, signature
                continue
            warned.pop(which, None)
            seen[which] = signature
            results.append(result)
        return results
    if not args.follow:
        results = flush()
        out.result({"sessions": results}, *[_mirrored(r) for r in results])
        return EXIT_OK
    if not out.as_json:
        out.note(f"Mirroring {len(transcripts)} session(s) every {_seconds(interval)} "
                 "(Ctrl-C to stop)")

    def attempt():
        for result in flush():   # --json: a line per flush, one JSON document each
            if out.as_json:
                print(dumps(result), flush=True)
            elif result["parts"]:
                out.result(result, _mirrored(result))
                sys.stdout.flush()
        if not transcripts and not args.all:
            if not out.as_json:
                out.note("Nothing left to follow (gone, or followed by another process)")
            return True, False
        return None, False
    try:
        poll(attempt, None, None, interval, interval)
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def _session_lines(s):
    redactions = ", ".join(f"{k} {v}" for k, v in sorted(s["redactions"].items())) or "none"
    return [f"{s['harness']} session {s['session']} ({s['state']})",
            f"  agent:      {s['agent']} on {s['host']}", f"  directory:  {s['cwd'] or '-'}",
            f"  events:     {s['first_event'] or '?'} .. {s['last_event'] or '?'}",
            f"  size:       {_size(s['bytes'])}, {s['lines']} lines in {s['parts']} part(s)",
            f"  redactions: {redactions}" + ("" if s["redacted"] else " (not redacted)")]


def cmd_session_list(args, out):
    sessions = _client(args).sessions.list(args.harness, args.agent_only)
    lines = [f"{'SESSION':<38} {'HARNESS':<11} {'AGENT':<14} {'STATE':<6} {'LAST EVENT':<20} "
             f"{'SIZE':>9} {'LINES':>7} REDACTED"] if sessions else []
    for s in sessions:
        lines.append(f"{s['session']:<38} {s['harness']:<11} {str(s['agent']):<14} "
                     f"{s['state']:<6} {str(s['last_event'] or '-')[:20]:<20} "
                     f"{_size(s['bytes']):>9} {s['lines']:>7} "
                     f"{sum(s['redactions'].values())}")
    if not sessions and not out.as_json:
        out.note("No mirrored sessions")
    out.result({"sessions": sessions}, *lines)


class _Shown:
    """Standard output for transcript bytes: exact, or neutralised line by line on a terminal."""

    def __init__(self, neutralise):
        self.neutralise, self.rest = neutralise, b""

    def write(self, block):
        if not self.neutralise:
            sys.stdout.buffer.write(block)
            return
        lines = (self.rest + block).split(b"\n")
        self.rest = lines.pop()
        for line in lines:
            print(shown(line.decode("utf-8", "replace")))

    def close(self):
        if self.rest:
            self.write(b"\n")
        sys.stdout.flush()


def cmd_session_show(args, out):
    client = _client(args)
    if args.tail is not None and args.tail < 0:
        raise UsageError("--tail: a number of lines, 0 or more")
    if args.raw:
        sink = _Shown(sys.stdout.isatty())
        record = client.sessions.read(args.session, args.harness, sink,
                                      tail=args.tail)
        sink.close()
    else:
        import io
        data = io.BytesIO()
        record = client.sessions.read(args.session, args.harness, data,
                                      tail=20 if args.tail is None else args.tail)
        text = data.getvalue().decode("utf-8", "replace")
        lines = text.split("\n")[:-1] if text else []
        session = _session_shape(record)
        out.result(dict(session, tail=lines), *_session_lines(session), "",
                   *[(line if len(line) <= 400 else line[:400] + "...") for line in lines])
    if not args.follow:
        return EXIT_OK
    harness, done = record["harness"], [record["bytes"]]
    sink = _Shown(sys.stdout.isatty() or not args.raw)

    def attempt():
        before = done[0]
        found = client.sessions.read(args.session, harness, sink, start=before)
        done[0] = found["bytes"]
        sys.stdout.flush()
        return (True if found["state"] == "ended" else None, done[0] > before)
    try:
        poll(attempt, None, None)
    except KeyboardInterrupt:
        pass
    sink.close()
    return EXIT_OK


def cmd_session_compact(args, out):
    s = _client(args).sessions.compact(args.session, args.harness)
    out.result(s, f"Compacted {s['harness']} session {s['session']}: {s['parts']} part(s), "
                  f"{_size(s['bytes'])}")


def cmd_session_stop(args, out):
    s = _client(args).sessions.stop(args.session, args.harness)
    out.result(s, f"Marked {s['harness']} session {s['session']} ended")


def _self_argv():
    """How this tracecraft runs again: the installed command it was run as, or this
    interpreter with this file."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "tracecraft" and os.path.isfile(argv0):
        return [os.path.abspath(argv0)]
    return [sys.executable, os.path.abspath(__file__)]


def _self_command():
    """The command hooks run: `tracecraft` when that is on the PATH (a settings file others
    share then works for them too), else _self_argv()."""
    import shlex
    import shutil
    return "tracecraft" if shutil.which("tracecraft") else \
        " ".join(shlex.quote(word) for word in _self_argv())


def _is_our_hook(hook):
    """Whether a hook in .claude/settings.json is one of tracecraft's: `<tracecraft or
    tracecraft.py> session hook`, and nothing else that merely looks like it."""
    words = str(hook.get("command", "")).split() if isinstance(hook, dict) else []
    return len(words) >= 3 and words[-2:] == ["session", "hook"] and \
        os.path.basename(words[-3].strip("'\"")) in ("tracecraft", "tracecraft.py")


HOOK_EVENTS = ("SessionStart", "Stop", "SessionEnd")


def cmd_hooks_claude_code(args, out):
    command = (args.command or _self_command()) + " session hook"
    events = HOOK_EVENTS + (("UserPromptSubmit",) if args.inbox else ())
    ours = {"type": "command", "command": command, "timeout": 10}
    if not args.install:
        snippet = {"hooks": {e: [{"matcher": "", "hooks": [ours]}] for e in events}}
        out.result(snippet, dumps(snippet, indent=2))
        return EXIT_OK
    directory = os.path.abspath(args.dir) if args.dir else current_directory()
    path = os.path.join(directory, ".claude", "settings.json")
    try:
        with open(path, "rb") as f:
            settings = loads(f.read(MAX_RECORD).decode("utf-8"))
    except FileNotFoundError:
        settings = {}
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{shown(path)} cannot be read as JSON ({exc}): fix it first, or add "
                         "the hooks that `tracecraft hooks claude-code` prints by hand") from None
    hooks = settings.setdefault("hooks", {}) if isinstance(settings, dict) else None
    if not isinstance(hooks, dict) or not all(isinstance(v, list) for v in hooks.values()):
        raise UsageError(f"{shown(path)}: its \"hooks\" are not shaped as Claude Code reads them")

    for event in set(hooks) | set(events):
        groups = []
        for group in hooks.get(event, []):
            if isinstance(group, dict) and isinstance(group.get("hooks"), list):
                group = dict(group, hooks=[h for h in group["hooks"] if not _is_our_hook(h)])
                if not group["hooks"]:
                    continue
            groups.append(group)
        if event in events:
            groups.append({"matcher": "", "hooks": [ours]})
        if groups:
            hooks[event] = groups
        else:
            hooks.pop(event, None)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    replace_file(path, (dumps(settings, indent=2) + "\n").encode("utf-8"), 0o644)
    out.result({"path": path, "events": list(events), "command": command},
               f"Installed tracecraft's hooks ({', '.join(events)}) in {path}")


def cmd_session_hook(args, out):
    """Run as a Claude Code hook: the hook's JSON on standard input says what happened.  Prints
    nothing but new messages (UserPromptSubmit with --inbox); a failure goes to standard error
    with exit 1, never 2 (which would block the agent's prompt)."""
    try:
        return _hook(args, out)
    except TracecraftError as exc:
        out.note(f"tracecraft: {exc.for_cli()}")
        return EXIT_NO


def _hook(args, out):
    try:
        event = loads(sys.stdin.buffer.read(MAX_VALUE).decode("utf-8"))
        name, session = event.get("hook_event_name"), event.get("session_id")
        path, cwd = event.get("transcript_path"), event.get("cwd")
    except (ValueError, UnicodeDecodeError, AttributeError):
        raise UsageError("session hook: standard input is not the JSON object a hook gets") \
            from None
    client = _client(args)
    if name == "UserPromptSubmit":
        messages = client.inbox()
        if messages:
            print(f"New messages for {client.agent} (tracecraft):")
            for m in messages:
                print(shown(f"[{m['at']}] ({m['kind']}) {m['from']}: {_indented(m['text'])}"))
        return EXIT_OK
    if not isinstance(path, str) or not isinstance(session, str):
        raise UsageError(f"session hook: the {name} event carries no session_id and "
                         "transcript_path")
    transcript = Transcript("claude-code", session, os.path.abspath(path),
                            cwd if isinstance(cwd, str) else None)
    lock = _mirror_lock(client, "claude-code", session)
    if name == "SessionStart":
        if _running_mirror(lock) is None:   # two at once: the mirrors' lock keeps one
            import subprocess
            command = _self_argv()
            os.makedirs(os.path.dirname(lock), mode=0o700, exist_ok=True)
            with open(lock[:-5] + ".log", "ab") as log:
                child = subprocess.Popen(
                    command + ["session", "mirror", "--harness", "claude-code", "--session-id",
                               session, "--transcript", transcript.path, "--follow"]
                    + (["--config", args.config] if getattr(args, "config", None) else []),
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                    start_new_session=True, cwd=cwd if isinstance(cwd, str) and
                    os.path.isdir(cwd) else None)
            del child   # it runs on by itself, past this hook
        return EXIT_OK
    if name in ("Stop", "SessionEnd"):
        if name == "SessionEnd":
            pid = _running_mirror(lock)
            if pid:
                import _signal
                try:
                    os.kill(pid, _signal.SIGTERM)
                except OSError:
                    pass   # it ended meanwhile
        if os.path.isfile(transcript.path):
            client.sessions.mirror(transcript)
        if name == "SessionEnd":
            try:
                client.sessions.stop(session, "claude-code")
            except NotFound:
                pass   # nothing was ever mirrored
    return EXIT_OK


REPLAY_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{padding:10px 16px;background:#1d2330;color:#fff}header h1{font-size:16px;margin:0}
#filters{padding:8px 16px;display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;
background:#fff;border-bottom:1px solid #dde}
#filters label{white-space:nowrap}#q{width:220px}
#lanes{display:block;width:100%;background:#fff;border-bottom:1px solid #dde;cursor:crosshair}
main{display:flex;height:calc(100vh - 220px);min-height:260px}
#list{flex:3;overflow-y:auto;position:relative;background:#fff}
#rows{position:relative}
.row{position:absolute;left:0;right:0;height:22px;padding:0 8px;white-space:nowrap;
overflow:hidden;text-overflow:ellipsis;border-bottom:1px solid #f0f0f3;cursor:pointer}
.row:hover{background:#eef3ff}.row.sel{background:#dfe8ff}
.k{display:inline-block;width:74px;font-weight:600}.t{color:#667;width:150px;display:inline-block}
.a{display:inline-block;width:110px;overflow:hidden;vertical-align:bottom}
aside{flex:2;overflow:auto;padding:8px 12px;border-left:1px solid #dde}
aside pre{white-space:pre-wrap;word-break:break-word;background:#f4f5f8;padding:8px}
#steps li{cursor:pointer}#steps li:hover{text-decoration:underline}
"""

REPLAY_SCRIPT = """
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const KIND_COLORS = {claim:"#2a7", takeover:"#d80", release:"#999", expired:"#c70",
  released:"#999", complete:"#16a", failed:"#c23", blocked:"#a3c", message:"#07c",
  memory:"#690", artifact:"#850", seen:"#bbb", joined:"#bbb", prompt:"#333", said:"#58f", tool:"#f80",
  system:"#aaa", note:"#aaa"};
const color = (k) => KIND_COLORS[k] || "#555";
const el = (tag, text, cls) => { const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
const agents = D.agents, lane = new Map(agents.map((a, i) => [a, i]));
const kinds = [...new Set(D.events.map((e) => e.kind))].sort();
const shown = {agents: new Set(agents), kinds: new Set(kinds), q: ""};
const time = (e) => Date.parse(e.at) || 0;
let t0 = Infinity, t1 = -Infinity;
for (const e of D.events) { t0 = Math.min(t0, time(e)); t1 = Math.max(t1, time(e)); }
if (!(t1 > t0)) { t0 = t0 === Infinity ? 0 : t0; t1 = t0 + 1; }
function summary(e) {
  const parts = [];
  for (const k of ["step", "to", "key", "name", "generation", "revision"]) {
    if (e[k] !== undefined && e[k] !== null) parts.push(k + " " + e[k]); }
  for (const k of ["text", "note", "value", "previous"]) {
    if (e[k] !== undefined && e[k] !== null) parts.push(String(e[k])); }
  return parts.join("  ");
}
function matches(e) {
  if (!shown.agents.has(e.agent) && !(e.to && shown.agents.has(e.to))) return false;
  if (!shown.kinds.has(e.kind)) return false;
  return !shown.q || JSON.stringify(e).toLowerCase().includes(shown.q);
}
let visible = D.events, selected = null;
function checkbox(box, name, set, tint, before) {
  const label = el("label"), input = el("input"); input.type = "checkbox"; input.checked = true;
  input.dataset.name = name; input.dataset.group = set === shown.agents ? "agents" : "kinds";
  input.addEventListener("change", () => {
    if (input.checked) set.add(name); else set.delete(name); refresh(); });
  label.append(input, el("span", " " + name)); if (tint) label.style.color = tint;
  if (before) box.insertBefore(label, before); else box.append(label);
}
function buildFilters() {
  const box = $("filters");
  box.append(el("b", "agents"));
  agents.forEach((a) => checkbox(box, a, shown.agents));
  const heading = el("b", "kinds"); heading.id = "kinds-heading"; box.append(heading);
  kinds.forEach((k) => checkbox(box, k, shown.kinds, color(k)));
  const q = el("input"); q.id = "q"; q.placeholder = "search text";
  q.addEventListener("input", () => { shown.q = q.value.toLowerCase(); refresh(); });
  box.append(q, el("span", "", "count")); box.lastChild.id = "count";
}
const ROW = 22;
function drawLanes() {
  const c = $("lanes"), w = c.clientWidth || 800, h = 24 * agents.length + 24;
  c.width = w; c.height = h; const g = c.getContext("2d"); g.clearRect(0, 0, w, h);
  g.font = "12px sans-serif";
  agents.forEach((a, i) => { g.fillStyle = i % 2 ? "#fafbfc" : "#f1f3f7";
    g.fillRect(0, 12 + 24 * i, w, 24); g.fillStyle = "#334"; g.fillText(a, 4, 28 + 24 * i); });
  const x = (e) => 120 + (w - 130) * (time(e) - t0) / (t1 - t0);
  g.fillStyle = "#667";
  for (let i = 0; i <= 4; i++) { const t = new Date(t0 + (t1 - t0) * i / 4).toISOString();
    g.fillText(t.slice(0, 19).replace("T", " "), Math.min(120 + (w - 130) * i / 4, w - 130), 10); }
  const y = (a) => 24 + 24 * lane.get(a);
  for (const e of visible) {
    if (!lane.has(e.agent)) continue;
    g.strokeStyle = g.fillStyle = color(e.kind);
    if (e.kind === "message" && lane.has(e.to)) { g.beginPath(); g.moveTo(x(e), y(e.agent));
      g.lineTo(x(e), y(e.to)); g.stroke(); }
    g.beginPath(); g.arc(x(e), y(e.agent), e === selected ? 6 : 3.5, 0, 7); g.fill();
  }
  c.onclick = (ev) => { const r = c.getBoundingClientRect(), px = ev.clientX - r.left,
    py = ev.clientY - r.top; let best = null, d = 64;
    for (const e of visible) { if (!lane.has(e.agent)) continue;
      const dd = (x(e) - px) ** 2 + (y(e.agent) - py) ** 2; if (dd < d) { d = dd; best = e; } }
    if (best) select(best, true); };
}
function renderRows() {
  const list = $("list"), rows = $("rows"), top = list.scrollTop, height = list.clientHeight;
  rows.style.height = visible.length * ROW + "px"; rows.textContent = "";
  const first = Math.max(0, Math.floor(top / ROW) - 5);
  const last = Math.min(visible.length, Math.ceil((top + height) / ROW) + 5);
  for (let i = first; i < last; i++) {
    const e = visible[i], row = el("div", undefined, "row" + (e === selected ? " sel" : ""));
    row.style.top = i * ROW + "px"; row.dataset.id = e.id;
    const k = el("span", e.kind, "k"); k.style.color = color(e.kind);
    row.append(el("span", e.at.slice(0, 19).replace("T", " "), "t"), el("span", String(e.agent), "a"), k,
      el("span", summary(e)));
    row.addEventListener("click", () => select(e, false)); rows.append(row);
  }
}
function select(e, scroll) {
  selected = e; history.replaceState(null, "", "#e" + e.id);
  const box = $("detail"); box.textContent = "";
  box.append(el("h3", e.kind + " by " + e.agent), el("div", e.at));
  const link = el("a", "link to this event"); link.href = "#e" + e.id; box.append(link);
  box.append(el("pre", JSON.stringify(e, null, 2)));
  if (scroll) { const i = visible.indexOf(e); if (i >= 0) $("list").scrollTop = i * ROW - 60; }
  renderRows(); drawLanes();
}
function story(step) {
  const s = D.steps.find((x) => x.step === step), box = $("detail"); box.textContent = "";
  box.append(el("h3", "step " + step + ": " + (s ? s.status : "")));
  if (s && s.after && s.after.length) box.append(el("p", "after " + s.after.map((d) =>
    d + " (" + ((D.steps.find((x) => x.step === d) || {}).status || "not claimed") + ")")
    .join(", ")));
  const own = D.events.filter((e) => e.step === step);
  const from = own.length ? own[0].at : "", to = own.length ? own[own.length - 1].at : "";
  const holders = new Set(own.map((e) => e.agent));
  const told = D.events.filter((e) => e.step === step || (e.session && holders.has(e.agent)
    && e.at >= from && e.at <= to));
  const list = el("ul"); told.forEach((e) => { const li = el("li",
    e.at + "  " + e.agent + "  " + e.kind + "  " + summary(e));
    li.addEventListener("click", () => select(e, true)); list.append(li); });
  box.append(list);
}
function buildSteps() {
  const ul = $("steps");
  D.steps.forEach((s) => { const li = el("li", s.step + "  " + s.status +
    (s.holder ? "  " + s.holder + " (generation " + s.generation + ")" : "") +
    (s.after && s.after.length ? "  after " + s.after.join(", ") : ""));
    li.addEventListener("click", () => story(s.step)); ul.append(li); });
}
function refresh() {
  visible = D.events.filter(matches);
  $("count").textContent = visible.length + " of " + D.events.length + " events";
  renderRows(); drawLanes();
}
$("title").textContent = "tracecraft replay: " + D.project;
$("range").textContent = D.events.length ? D.events[0].at + " .. " +
  D.events[D.events.length - 1].at : "no events";
const params = new URLSearchParams(location.hash.startsWith("#e") ? "" : location.hash.slice(1));
for (const [name, set] of [["agents", shown.agents], ["kinds", shown.kinds]]) {
  if (params.has(name)) { const keep = new Set(params.get(name).split(","));
    for (const x of [...set]) if (!keep.has(x)) set.delete(x); } }
if (params.has("q")) shown.q = params.get("q").toLowerCase();
buildFilters(); buildSteps();
document.querySelectorAll("#filters input[type=checkbox]").forEach((box) => {
  box.checked = shown[box.dataset.group].has(box.dataset.name); });
$("q").value = shown.q; refresh();
$("list").addEventListener("scroll", renderRows);
window.addEventListener("resize", () => { renderRows(); drawLanes(); });
function merge(news) {
  for (const a of news.agents) if (!lane.has(a)) { lane.set(a, agents.length); agents.push(a);
    shown.agents.add(a); checkbox($("filters"), a, shown.agents, null, $("kinds-heading")); }
  for (const k of new Set(news.events.map((e) => e.kind))) if (!kinds.includes(k)) {
    kinds.push(k); shown.kinds.add(k); checkbox($("filters"), k, shown.kinds, color(k), $("q")); }
  for (const e of news.events) D.events.push(e);
  D.events.sort((a, b) => (a.at < b.at ? -1 : a.at > b.at));
  t0 = Infinity; t1 = -Infinity;
  for (const e of D.events) { t0 = Math.min(t0, time(e)); t1 = Math.max(t1, time(e)); }
  if (!(t1 > t0)) t1 = t0 + 1;
  $("range").textContent = D.events[0].at + " .. " + D.events[D.events.length - 1].at;
  D.steps = news.steps; $("steps").textContent = ""; buildSteps(); refresh();
}
if (D.live) {
  const token = new URLSearchParams(location.search).get("token") || "";
  let last = D.events.reduce((m, e) => Math.max(m, e.id), 0), busy = false;
  setInterval(async () => {
    if (busy) return; busy = true;
    try { const r = await fetch("events?after=" + last, {headers: {"X-Tracecraft-Token": token}});
      if (r.ok) { const news = await r.json();
        if (news.events.length) { last = news.events[news.events.length - 1].id; merge(news); } }
    } catch (err) { /* the server is gone: keep what is shown */ }
    busy = false; }, 1000);
}
const wanted = /^#e(\\d+)$/.exec(location.hash);
if (wanted) { const e = D.events.find((x) => x.id === Number(wanted[1])); if (e) select(e, true); }
"""

REPLAY_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{policy}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>tracecraft replay</title><style>{style}</style></head>
<body><header><h1 id="title"></h1><div id="range"></div></header>
<div id="filters"></div><canvas id="lanes" height="60"></canvas>
<main><div id="list"><div id="rows"></div></div>
<aside><div id="detail">Click an event, or a step below for its story.</div><h3>Steps</h3><ul id="steps"></ul></aside></main>
<script id="data" type="application/json">{data}</script>
<script>{script}</script></body></html>
"""


def page_policy(live=False):
    """The Content-Security-Policy of the replay page: only its own script and style (by
    hash); the live page may also ask its own server for new events."""
    import base64

    def digest(text):
        return "'sha256-" + base64.b64encode(_hash("sha256", text.encode("utf-8")).digest()) \
            .decode("ascii") + "'"
    return (f"default-src 'none'; script-src {digest(REPLAY_SCRIPT)}; style-src "
            f"{digest(REPLAY_STYLE)}; img-src 'none'; form-action 'none'; base-uri 'none'"
            + ("; connect-src 'self'" if live else ""))


def page_json(value):
    """JSON for the page: < > & and U+2028/9 escaped (no `</script>` can end its script
    element), and a lone surrogate (half of an emoji an agent cut) made U+FFFD."""
    import re
    data = re.sub("[\ud800-\udfff]", "\ufffd", dumps(value))
    for raw, escaped in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        data = data.replace(raw, escaped)
    return data


def replay_page(timeline, live=False):
    """The self-contained HTML page of a timeline: no request when it is opened, and nothing an
    agent wrote can run in it (the data is JSON read by a script that only sets textContent,
    and the Content-Security-Policy admits only this page's own script and style).  `live`:
    the page asks its server (`tracecraft ui`) for new events every second."""
    return REPLAY_PAGE.format(policy=page_policy(live), style=REPLAY_STYLE,
                              data=page_json(dict(timeline, live=live)),
                              script=REPLAY_SCRIPT)


def _moment(text, flag):
    """An ISO 8601 time (UTC; a prefix such as 2026-12-02 will do) or a duration ago (2h)."""
    if text is None:
        return None
    text = text.strip()
    if text[:4].isdigit() and text[4:5] == "-":
        return text
    try:
        ago = parse_duration(text)
    except UsageError:
        raise UsageError(f"{flag}: {shown(text)!r:.40} is neither a time (2026-12-02T10:00Z) nor "
                         "a duration ago (90m, 2h)") from None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - ago))


def cmd_replay(args, out):
    client = _client(args)
    for agent in args.agent_only or ():
        check_agent(agent)
    timeline = client.timeline(_moment(args.since, "--since"), _moment(args.until, "--until"),
                               set(args.agent_only or ()) or None)
    path = os.path.abspath(args.out_file or f"tracecraft-replay-{client.project}.html")
    page = replay_page(timeline).encode("utf-8")
    replace_file(path, page, 0o644)
    out.result({"path": path, "events": len(timeline["events"]), "agents": timeline["agents"],
                "bytes": len(page)},
               f"Wrote {path}: {len(timeline['events'])} events of {len(timeline['agents'])} "
               f"agents ({_size(len(page))}); open it in a browser")


def cmd_ui(args, out):
    """Serve the replay page live: read-only, on 127.0.0.1 unless --bind says otherwise (then
    every request must carry the token printed here), answering only requests for its own
    address (a DNS rebinding page cannot reach it)."""
    import http.server
    import threading
    client = _client(args)
    host = args.bind or "127.0.0.1"
    if not 0 <= args.port <= 65535:
        raise UsageError("--port: from 0 (any free port) to 65535")
    token = None if host == "127.0.0.1" else os.urandom(18).hex()   # another address: a token
    every = parse_duration(args.refresh)
    state, lock, events = {}, threading.Lock(), []
    first = client.timeline(state=state)
    looked = [time.monotonic()]
    events += first["events"]
    latest = [first]

    def refresh():
        with lock:   # one look at the store at a time, however many pages ask
            if time.monotonic() - looked[0] >= every:
                found = client.timeline(state=state)
                events.extend(found["events"])
                latest[0], looked[0] = found, time.monotonic()
            return latest[0]

    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 60   # an idle connection is let go

        def version_string(self):
            return "tracecraft"

        def log_message(self, format, *arguments):
            if args.verbose:
                out.note("ui: " + format % arguments)

        def answer(self, status, body, ctype="text/plain; charset=utf-8"):
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            self.send_header("Referrer-Policy", "no-referrer")
            self.send_header("Content-Security-Policy", page_policy(live=True)
                             + "; frame-ancestors 'none'")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def do_GET(self):
            # On 127.0.0.1, only requests for this address (a DNS-rebinding page names another
            # host); on another address, the token is what keeps strangers out.
            allowed = {f"localhost:{port}", f"127.0.0.1:{port}"} | \
                ({"localhost", "127.0.0.1"} if port == 80 else set())
            if token is None and self.headers.get("Host", "") not in allowed:
                return self.answer(403, b"tracecraft ui answers only requests for its own "
                                        b"address\n")
            path, _, query = self.path.partition("?")
            fields = dict(p.partition("=")[::2] for p in query.split("&") if p)
            if token is not None and token not in (fields.get("token"),
                                                   self.headers.get("X-Tracecraft-Token")):
                return self.answer(403, b"this tracecraft ui needs its token (printed when it "
                                        b"started)\n")
            try:
                if path == "/":
                    return self.answer(200, replay_page(dict(latest[0], events=list(events)),
                                                        live=True).encode("utf-8"),
                                       "text/html; charset=utf-8")
                if path == "/events":
                    after = fields.get("after", "0")
                    after = int(after) if after.isascii() and after.isdigit() and \
                        len(after) <= 18 else 0
                    found = refresh()
                    with lock:
                        news = [e for e in events if e["id"] > after][:5000]
                    answer = dict(found, events=news) if news else {"events": []}
                    return self.answer(200, page_json(answer).encode("utf-8"),
                                       "application/json")
            except TracecraftError as exc:
                return self.answer(503, (exc.for_cli() + "\n").encode("utf-8"))
            return self.answer(404, b"not found\n")
        do_HEAD = do_GET

        def refuse(self):
            self.answer(405, b"tracecraft ui is read-only\n")
        do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = refuse

    class Server(http.server.ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            pass   # a browser that went away mid-answer: nothing to tell

    args.reads_only = True   # a viewer: no heartbeat, even on the way out
    try:
        server = Server((host, args.port), Handler)
    except OSError as exc:
        raise UsageError(f"cannot listen on {host}:{args.port}: {os_reason(exc)}") from None
    server.daemon_threads = True
    port = server.server_address[1]
    shown_host = f"[{host}]" if ":" in host else host
    url = f"http://{shown_host}:{port}/" + (f"?token={token}" if token else "")
    if token and not _is_loopback(host):
        out.note(f"tracecraft ui: listening on {host}, not only for this machine: anyone who "
                 "can reach it and has the token can read the whole project")
    print(f"Serving project {client.project} at {url} (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser
        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _reservation_line(r):
    mode = "shared" if r["shared"] else "exclusive"
    step = f"  step {r['step']}" if r["step"] else ""
    note = f"  {_indented(r['note'])}" if r["note"] else ""
    return f"{r['glob']}  {r['agent']}  {mode}  {_duration(r['expires_in'] or 0)} left{step}{note}"


def cmd_reserve(args, out):
    client = _client(args)
    made = client.reserve(args.globs, ttl=_ttl(args), shared=args.shared, note=args.note)
    mode = "shared" if args.shared else "exclusively"
    out.result({"reservations": made}, f"Reserved {', '.join(r['glob'] for r in made)} {mode} "
               f"as {client.agent} for {_duration(made[0]['expires_in'])} (renewed by heartbeat)")


def cmd_unreserve(args, out):
    dropped = _client(args).unreserve(args.globs or None)
    out.result({"released": dropped}, "Released " + (", ".join(r["glob"] for r in dropped)
                                                     or "nothing: no such reservation"))


def cmd_reservations(args, out):
    found = _client(args).reservations()
    if not found and not out.as_json:
        out.note("No reservations")
    out.result({"reservations": found}, *map(_reservation_line, found))


GUARD_MARK = "# tracecraft guard:"   # the line that tells tracecraft's pre-commit hook
GUARD_CHAINED = "pre-commit.tracecraft-chained"   # the hook that was there before, run first


def _git(*words):
    """The output (bytes) of a git command in the current directory, or UsageError."""
    import subprocess
    try:
        done = subprocess.run(["git", *words], capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise UsageError(f"git could not run: {exc}") from None
    if done.returncode:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise UsageError(f"git {words[-1] if words[0] == '-c' else words[0]}: "
                         f"{said[0] if said else 'failed'}")
    return done.stdout


def _guard_paths():
    """(pre-commit, the chained hook's path), where this work tree's git runs hooks (its
    core.hooksPath, a linked worktree's common directory)."""
    try:
        hooks = _git("rev-parse", "--git-path", "hooks").decode("utf-8", "surrogateescape")
    except UsageError as exc:
        raise UsageError(f"guard: not in a git work tree ({exc})") from None
    hooks = os.path.abspath(hooks.strip())
    return os.path.join(hooks, "pre-commit"), os.path.join(hooks, GUARD_CHAINED)


def _marked_file(path, mark):
    """Whether `path` is a regular file (never a link) that carries tracecraft's `mark`: one of
    the scripts it wrote."""
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return False
        with open(path, "rb") as f:
            return mark.encode() in f.read(64 * 1024)
    except OSError:
        return False


def _guard_script(command):
    return (f"#!/bin/sh\n{GUARD_MARK} refuses a commit that touches paths another agent has\n"
            "# reserved exclusively (`tracecraft reservations`). `tracecraft guard uninstall` "
            "removes it\n# and puts back the hook it runs first, if there was one.\n"
            f'chained="$(dirname "$0")/{GUARD_CHAINED}"\n'
            'if [ -x "$chained" ]; then "$chained" "$@" || exit $?; fi\n'
            f"exec {command} guard check\n").encode("utf-8")


def cmd_guard_install(args, out):
    hook, chained = _guard_paths()
    script = _guard_script(args.command or _self_command())
    kept = None
    if _marked_file(hook, GUARD_MARK):
        with open(hook, "rb") as f:
            if f.read() == script:
                out.result({"hook": hook, "chained": os.path.lexists(chained), "changed": False},
                           f"The guard is already installed in {hook}")
                return EXIT_OK
    elif os.path.lexists(hook):
        if os.path.isdir(hook) and not os.path.islink(hook):
            raise UsageError(f"guard: {shown(hook)} is a directory, not a hook")
        if os.path.lexists(chained) and not args.force:
            raise Refused(f"guard: {shown(chained)} exists already, beside a pre-commit hook "
                          "that is not tracecraft's: move one of them, or --force to put the "
                          "current hook there in its place")
        os.replace(hook, chained)   # moved aside as it is (a link stays a link), run first
        kept = chained
    os.makedirs(os.path.dirname(hook), exist_ok=True)
    replace_file(hook, script, 0o755)   # a link planted at the name is replaced, not followed
    out.result({"hook": hook, "chained": os.path.lexists(chained), "changed": True},
               f"Installed the guard in {hook}" + (f"; the hook that was there runs first, as "
                                                   f"{kept}" if kept else ""))


def cmd_guard_uninstall(args, out):
    hook, chained = _guard_paths()
    if not _marked_file(hook, GUARD_MARK):
        raise Refused(f"guard: {shown(hook)} is not tracecraft's guard: nothing to uninstall")
    os.unlink(hook)
    restored = os.path.lexists(chained)
    if restored:
        os.replace(chained, hook)
    out.result({"hook": hook, "restored": restored}, f"Removed the guard from {hook}"
               + ("; the hook it ran first is back" if restored else ""))


def cmd_guard_check(args, out):
    """The pre-commit hook: refuse (exit 1) a commit whose staged paths another live agent
    reserved exclusively.  When the reservations cannot be read (no config, the store down or
    refusing, a corrupt table), warn and let the commit go: a guard that breaks commits offline
    gets uninstalled."""
    args.reads_only = True   # a check writes nothing, not even a heartbeat
    try:
        staged = _git("-c", "diff.relative=false", "diff", "--cached", "--name-only",
                      "--no-renames", "-z")
        paths = [p for p in staged.decode("utf-8", "surrogateescape").split("\0") if p]
        blocked = _client(args).reservations.blocking(paths) if paths else []
    except TracecraftError as exc:
        out.warn(f"guard: reservations not checked, so the commit goes ahead: {exc.for_cli()}")
        return EXIT_OK
    out.result({"blocked": [dict(r, path=path) for path, r in blocked]})
    for path, r in blocked:
        step = f" for step {r['step']}" if r["step"] else ""
        note = f" ({_indented(r['note'])})" if r["note"] else ""
        out.note(f"tracecraft guard: {path} is reserved exclusively by {r['agent']}{step} as "
                 f"{r['glob']}, for {_duration(r['expires_in'])} more{note}")
    if blocked:
        holders = sorted({r["agent"] for _, r in blocked})
        out.note(f"Commit refused. Ask {', '.join(holders)} (tracecraft send {holders[0]} ...), "
                 "wait until the reservation ends (tracecraft reservations), or, when you must, "
                 "commit anyway with git commit --no-verify.")
        return EXIT_NO
    return EXIT_OK


# -- install: the `tracecraft` command, isolated and precompiled -----------------------------------

LAUNCHER_MARK = "# tracecraft launcher:"   # the line that tells a launcher `install` wrote
REINSTALL = ("reinstall: python3 tracecraft.py install, or curl -fsSL <URL of tracecraft.py> | "
             "python3 - install")


def _install_paths(prefix):
    """(the private directory, the launcher) under `prefix` (default ~/.local)."""
    prefix = os.path.abspath(os.path.expanduser(prefix or os.path.join("~", ".local")))
    return os.path.join(prefix, "lib", "tracecraft"), os.path.join(prefix, "bin", "tracecraft")


def _own_directory(path):
    """`path` as a real directory, made if missing: one planted as a symbolic link (or a file)
    is refused, so that install never writes through it."""
    import stat
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise UsageError(f"install: {shown(path)} is a symbolic link or not a directory: "
                             "refused (remove it, or choose another --prefix)") from None
    return path


def _own_code():
    """(source bytes, None) or (None, code object) of the running tracecraft.  Run from a file,
    its source; from an installed .pyc, that bytecode; from standard input (`curl ... | python3 -
    install`) the source is gone, but the module's code object still runs below main()."""
    import marshal
    import importlib.util
    path = globals().get("__file__") or ""
    if path.endswith(".py") and os.path.isfile(path):
        with open(path, "rb") as f:
            return f.read(), None
    if path.endswith(".pyc") and os.path.isfile(path):
        with open(path, "rb") as f:
            data = f.read()
        if data[:4] == importlib.util.MAGIC_NUMBER:
            return None, marshal.loads(memoryview(data)[16:])
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>"
                                     and frame.f_globals is globals()):
        frame = frame.f_back
    if frame is None:
        raise UsageError("install: tracecraft's own code is not at hand here: save "
                         "tracecraft.py and run python3 tracecraft.py install")
    return None, frame.f_code


def _pyc(code, source=None):
    """The bytes of a .pyc file (PEP 552) holding `code`: checked against the size and time of
    `source` (an os.stat_result) when there is a source, else bytecode on its own."""
    import marshal
    import importlib.util
    mtime, size = (int(source.st_mtime), source.st_size) if source else (0, 0)
    return importlib.util.MAGIC_NUMBER + bytes(4) + (mtime & 0xFFFFFFFF).to_bytes(4, "little") \
        + (size & 0xFFFFFFFF).to_bytes(4, "little") + marshal.dumps(code)


def _launcher_text(python, lib):
    """The launcher: this interpreter, isolated (-I: no PYTHON* variables, no user site, not the
    current directory; -S: no site-packages to scan, as tracecraft needs none), importing the
    private copy, whose bytecode is cached; a copy it cannot load says to reinstall."""
    failed = (f"tracecraft: the copy installed in %s does not load in this Python (%s): "
              f"{REINSTALL}\n")
    return (f"#!{python} -IS\n"
            f"{LAUNCHER_MARK} written by `tracecraft install` ({__version__}); "
            "`tracecraft uninstall` removes it.\n"
            "import sys\n"
            f"LIB = {lib!r}\n"
            "sys.path.append(LIB)\n"
            "try:\n"
            "    import tracecraft\n"
            "except ImportError as exc:   # bytecode of another Python, with no source beside it\n"
            f"    sys.stderr.write({failed!r} % (LIB, exc))\n"
            "    sys.exit(4)   # as main() exits when this machine's own files fail\n"
            "sys.exit(tracecraft.main())\n").encode("utf-8")


def _launcher_python():
    """This interpreter's path as a #! line can name it: a virtual environment's python resolved
    (-S would not see the environment anyway, and it may be deleted), any other as it is called
    (/usr/bin/python3, not python3.11: after an upgrade the launcher runs the new one, which
    compiles the copy anew)."""
    python = sys.executable or ""
    if sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        python = os.path.realpath(python)
    if not sys.executable or not os.access(python, os.X_OK):
        raise UsageError("install: this Python does not know its own executable")
    if len(python) > 120 or any(c.isspace() for c in python):
        raise UsageError(f"install: {shown(python)} cannot be named on a #! line (spaces, or "
                         "too long): run install with a python3 at a plainer path")
    return python


def _installed_files(lib):
    """What install may have written in `lib`, beginning with the directory itself: the copy and
    its bytecode (of any Python that compiled it since)."""
    cache = os.path.join(lib, "__pycache__")
    names = []
    if os.path.isdir(cache) and not os.path.islink(cache):
        names = sorted(os.path.join(cache, n) for n in os.listdir(cache)
                       if n.startswith("tracecraft.") and n.endswith(".pyc"))
    return [lib, os.path.join(lib, "tracecraft.py"), os.path.join(lib, "tracecraft.pyc"),
            *names, cache]


def cmd_install(args, out):
    if os.name == "nt":
        raise UsageError("install: not on Windows (no #! launchers): run python tracecraft.py")
    import importlib.util
    lib, launcher = _install_paths(args.prefix)
    python = _launcher_python()
    if os.path.isdir(launcher) and not os.path.islink(launcher):
        raise UsageError(f"install: {shown(launcher)} is a directory")
    if os.path.lexists(launcher) and not _marked_file(launcher, LAUNCHER_MARK) and not args.force:
        raise Refused(f"install: {shown(launcher)} exists and is not tracecraft's launcher (pip's "
                      "command, or a link?): remove it, or --force to replace it")
    source, code = _own_code()
    _own_directory(lib)
    py, bare = os.path.join(lib, "tracecraft.py"), os.path.join(lib, "tracecraft.pyc")
    cached = importlib.util.cache_from_source(py, optimization="")
    if source is not None:
        replace_file(py, source, 0o644)
        code = compile(source, py, "exec", dont_inherit=True, optimize=0)
        _own_directory(os.path.dirname(cached))
        replace_file(cached, _pyc(code, os.stat(py)), 0o644)
        unlink_quietly(bare)
    else:   # bytecode alone: a source beside it would be imported instead
        replace_file(bare, _pyc(code), 0o644)
        for stale in _installed_files(lib)[1:-1]:
            if stale != bare:
                unlink_quietly(stale)
    os.makedirs(os.path.dirname(launcher), exist_ok=True)
    replace_file(launcher, _launcher_text(python, lib), 0o755)   # a link there is replaced
    bin_dir = os.path.dirname(launcher)
    on_path = any(os.path.realpath(d) == os.path.realpath(bin_dir)
                  for d in os.environ.get("PATH", "").split(os.pathsep) if d)
    out.result({"installed": py if source is not None else bare,
                "bytecode": cached if source is not None else bare, "launcher": launcher,
                "python": python, "version": __version__, "source": source is not None,
                "on_path": on_path},
               f"Installed tracecraft {__version__} in {lib}, compiled"
               + ("" if source is not None else " (bytecode only: it came from standard input; "
                  "for the source, save tracecraft.py and install from it)"),
               f"Launcher: {launcher} (runs {python} -I -S)")
    import shutil
    found = on_path and shutil.which("tracecraft")
    if found and os.path.realpath(found) != os.path.realpath(launcher):
        out.warn(f"`tracecraft` on your PATH runs {found}, found before {launcher}: remove "
                 f"it, or put {bin_dir} earlier in PATH")
    if not on_path:
        import shlex
        out.warn(f"{bin_dir} is not on your PATH: add this line to ~/.profile (or your shell's "
                 f"rc file):  export PATH={shlex.quote(bin_dir)}:\"$PATH\"")


def cmd_uninstall(args, out):
    lib, launcher = _install_paths(args.prefix)
    removed = []
    if _marked_file(launcher, LAUNCHER_MARK):
        os.unlink(launcher)
        removed.append(launcher)
    elif os.path.lexists(launcher):
        out.warn(f"{launcher} is not tracecraft's launcher: left alone")
    if os.path.islink(lib):
        out.warn(f"{lib} is a symbolic link, not install's directory: left alone")
    elif os.path.isdir(lib):
        files = _installed_files(lib)
        for path in files[1:-1]:
            if path.endswith(".py") and os.path.lexists(path) and \
                    not _marked_file(path, '"""tracecraft:'):
                out.warn(f"{path} is not a copy of tracecraft: left alone")
            elif os.path.lexists(path):
                os.unlink(path)
                removed.append(path)
        for directory in (files[-1], lib):
            try:
                os.rmdir(directory)
                removed.append(directory)
            except FileNotFoundError:
                pass
            except OSError:
                out.warn(f"{directory} holds files tracecraft did not write: left there")
    if not removed:
        raise NotFound(f"uninstall: tracecraft is not installed in {os.path.dirname(lib)} and "
                       f"{os.path.dirname(launcher)}")
    out.result({"removed": removed}, *(f"Removed {path}" for path in removed))


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
    def shared(agent=True):   # the global flags, also after the command
        flags = argparse.ArgumentParser(add_help=False, formatter_class=raw)
        flags.add_argument("--json", action="store_true", default=S,
                           help="print one JSON document instead of human-readable lines")
        if agent:
            flags.add_argument("--agent", default=S, metavar="ID", help="act as this agent "
                               "(default: $TRACECRAFT_AGENT, then the config)")
        flags.add_argument("--project", default=S, metavar="NAME", help="use this project "
                           "(default: $TRACECRAFT_PROJECT, then the config)")
        flags.add_argument("--config", default=S, metavar="PATH",
                           help="config file to use (default: $TRACECRAFT_CONFIG, the nearest "
                                ".tracecraft.json, then ~/.config/tracecraft/config.json)")
        return flags
    common = shared()
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

    def command(name, func, summary, *examples, parent=commands, epilog=None, flags=None):
        depth = 0 if parent is commands else 1
        if isinstance(parent, _Unbuilt) or (wanted and len(wanted) > depth
                                             and wanted[depth] != name):
            return _Unbuilt()
        if examples:
            epilog = (epilog + "\n\n" if epilog else "") + "examples:\n" + \
                "\n".join(f"  {example}" for example in examples)
        sub = parent.add_parser(name, parents=[flags or common], help=summary, description=summary,
                                epilog=epilog, formatter_class=raw)
        sub.set_defaults(func=func, parser=sub)   # its errors show its own usage
        return sub

    p = command("init", cmd_init, "Configure the store, project and agent for this directory.",
                "tracecraft init --project demo --agent designer",
                "tracecraft init --project demo --agent designer \\\n"
                "      --endpoint http://localhost:9000 --bucket tracecraft \\\n"
                "      --access-key admin --secret-key admin123456",
                "tracecraft init --project demo --read-only      # an observer",
                "tracecraft init --project demo --bucket team-agents --profile dev   # AWS: SSO, "
                "roles...",
                epilog="with no store options, uses the local store (no server) under "
                       "$XDG_DATA_HOME/tracecraft.")
    p.add_argument("--backend", choices=BACKENDS,
                   help="where state lives (default: s3 when an S3 option is given, else local)")
    p.add_argument("--bucket", help="bucket name (default: tracecraft)")
    p.add_argument("--endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, "
                                      "$AWS_ENDPOINT_URL, else AWS)")
    p.add_argument("--region", help="S3 region (default: $AWS_REGION, else us-east-1)")
    p.add_argument("--access-key", help="S3 access key (default: the AWS credential chain: "
                                        "AWS_* variables, the profile, container, instance)")
    p.add_argument("--profile", help="AWS profile for this project's store, when AWS_PROFILE "
                                     "is not set (default: default)")
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
    p.add_argument("--read-only", action="store_true",
                   help="watch as an observer: read everything, write nothing (no agent id, no "
                        "heartbeat, no probe writes), for credentials that may only list and read")
    p.add_argument("--user", action="store_true",
                   help=f"write the user config ({user_config_path()}) instead of "
                        f"./{CONFIG_NAME}")

    command("agents", cmd_agents, "List agents: online / idle / offline, the steps they hold.",
            "tracecraft agents", "tracecraft agents --json",
            epilog=f"online: seen in the last {ONLINE_SECONDS // 60} minutes; idle: in the last "
                   f"{IDLE_SECONDS // 60}; every command refreshes the heartbeat (at most once "
                   "a minute).")
    command("heartbeat", cmd_heartbeat, "Record that this agent is alive and renew its leases.",
            "tracecraft heartbeat", "while sleep 300; do tracecraft heartbeat; done &",
            epilog="run it every few minutes during long work so leases do not expire.")
    command("doctor", cmd_doctor, "Check config, store, credentials, conditional writes, "
                                  "latency and clock skew.", "tracecraft doctor",
            "tracecraft doctor --json")
    p = command("status", cmd_status, "One screen: agents, steps, unread messages, handoffs.",
                "tracecraft status", "tracecraft status --watch 5",
                "tracecraft status --state failed --state blocked",
                "tracecraft status --agent reviewer --json",
                epilog="counts of steps per state first, then what needs attention (in "
                       "progress, expired, failed,\nblocked: a few of each); --state lists "
                       "every step in that state. --watch --json prints\na JSON document per "
                       "refresh, a line each.", flags=shared(agent=False))
    p.add_argument("--agent", dest="agent_only", metavar="ID",
                   help="only this agent and the steps it holds or ended")
    p.add_argument("--watch", nargs="?", const="2", metavar="SECONDS",
                   help="redraw every SECONDS (default 2) until interrupted")
    p.add_argument("--state", action="append", choices=STEP_STATES,
                   help="only steps in this state (again for more states)")
    command("prompt", cmd_prompt, "Print instructions for CLAUDE.md / AGENTS.md.",
            "tracecraft prompt >> CLAUDE.md", "tracecraft prompt --agent reviewer",
            epilog="use --agent NAME to write them for another agent.")
    command("mcp", cmd_mcp, "Serve the tools over the Model Context Protocol (stdio).",
            "claude mcp add tracecraft --env TRACECRAFT_AGENT=designer -- tracecraft mcp",
            "codex mcp add tracecraft --env TRACECRAFT_AGENT=developer -- tracecraft mcp",
            epilog="set TRACECRAFT_AGENT in the client's environment for each agent.")
    p = command("install", cmd_install, "Install the `tracecraft` command: a private "
                "compiled copy of this file and a launcher.",
                "tracecraft install            # ~/.local/bin/tracecraft, ~/.local/lib/tracecraft",
                "tracecraft install --prefix /opt/tools",
                "tracecraft uninstall          # removes exactly what install wrote",
                epilog="also: python3 tracecraft.py install, or curl -fsSL <URL of "
                       "tracecraft.py> | python3 - install\n(from standard input, only the "
                       "bytecode is installed). the launcher runs this Python as\n`python3 -I "
                       "-S`: no site-packages (tracecraft needs none), PYTHON* variables and "
                       "the\ncurrent directory ignored, so a call starts about as fast as "
                       "Python can. installing\nagain replaces its own files; after upgrading "
                       "Python, install again.")
    p.add_argument("--prefix", metavar="DIR", help="install into DIR/bin and DIR/lib/tracecraft "
                                                   "(default: ~/.local)")
    p.add_argument("--force", action="store_true", help="replace a `tracecraft` in DIR/bin that "
                                                        "is not tracecraft's launcher (pip's, say)")
    p = command("uninstall", cmd_uninstall, "Remove what `tracecraft install` wrote.",
                "tracecraft uninstall", "tracecraft uninstall --prefix /opt/tools")
    p.add_argument("--prefix", metavar="DIR", help="the prefix it was installed with "
                                                   "(default: ~/.local)")

    def group(name, summary):   # a command of commands: tracecraft memory set ...
        actions = command(name, None, summary).add_subparsers(
            dest=f"{name}_command", metavar="ACTION", prog=f"tracecraft {name}")
        actions.required = True
        return actions

    memory_commands = group("memory", "Shared key-value memory (values are JSON).")
    p = command("set", cmd_memory_set, "Set KEY to VALUE (JSON if it parses, else a string).",
                "tracecraft memory set design.status complete",
                "tracecraft memory set build.attempts 3",
                "tracecraft memory set cfg '{\"a\": 1}'", parent=memory_commands)
    p.add_argument("key", help="dotted key, e.g. design.status")
    p.add_argument("value", help="the value; '-' reads it from standard input")
    p.add_argument("--string", action="store_true", help="store VALUE as a string, never JSON")
    p.add_argument("--if-version", metavar="V", help="write only if KEY is still at version V "
                                                     "(from `memory get --json`)")
    p.add_argument("--if-absent", action="store_true", help="write only if KEY is unset")
    p = command("get", cmd_memory_get, "Print the value of KEY (exit 1 when unset).",
                "tracecraft memory get design.status",
                "tracecraft memory get build.attempts --json   # with version, author, time",
                parent=memory_commands)
    p.add_argument("key")
    p = command("incr", cmd_memory_incr, "Add N (default 1) to a number atomically; prints it.",
                "tracecraft memory incr experiments.done", "tracecraft memory incr budget -5",
                parent=memory_commands)
    p.add_argument("key")
    p.add_argument("by", nargs="?", default="1", metavar="N")
    p = command("history", cmd_memory_history, "Show KEY's current and previous values.",
                "tracecraft memory history design.status", parent=memory_commands)
    p.add_argument("key")
    p = command("list", cmd_memory_list, "List keys, optionally under PREFIX (whole segments).",
                "tracecraft memory list", "tracecraft memory list design   # design.*, never "
                "designer.*", parent=memory_commands)
    p.add_argument("prefix", nargs="?")
    p = command("delete", cmd_memory_delete, "Delete KEY (exit 1 when unset).",
                "tracecraft memory delete scratch.tmp", parent=memory_commands)
    p.add_argument("key")
    p.add_argument("--if-version", metavar="V", help="delete only if KEY is still at version V")

    p = command("send", cmd_send, "Send a message to an agent, or to _broadcast for everyone.",
                "tracecraft send developer Design is ready",
                "tracecraft send _broadcast 'build is red: do not merge'",
                "git log -1 | tracecraft send reviewer -",
                epilog="MESSAGE may be several words; '-' reads it from standard input.")
    p.add_argument("to", metavar="AGENT")
    p.add_argument("message", nargs="+")
    p.add_argument("--step", metavar="STEP", help="tag the message with a step (step-status "
                   "lists it; inbox --step filters by it)")
    p = command("inbox", cmd_inbox, "Show this agent's unread messages, direct and broadcast, "
                                    "and mark them read.",
                "tracecraft inbox", "tracecraft inbox --wait 60   # block up to a minute",
                "tracecraft inbox --all --json",
                epilog="the read position is kept in the store: another machine running the same "
                       "agent continues where this one left off.")
    p.add_argument("--all", action="store_true", help="show every message, read or not")
    p.add_argument("--peek", action="store_true", help="do not mark the messages read")
    p.add_argument("--delete", action="store_true", help="also delete the direct messages read")
    p.add_argument("--wait", nargs="?", const="forever", metavar="SECONDS",
                   help="block until a message arrives (exit 3 after SECONDS)")
    p.add_argument("--step", metavar="STEP", help="only the messages tagged with STEP; marks "
                   "nothing read (the others stay unread)")

    p = command("claim", cmd_claim, "Claim a step as a lease; exactly one of many racing agents "
                                    "wins.",
                "tracecraft claim design", "tracecraft claim train-model --ttl 2h && ./train.sh",
                epilog="exit 1 (naming the holder) when another agent holds a live lease or the "
                       "step has ended. An expired or released lease is taken over, with the "
                       "next generation number. Renew long work with `renew` or `heartbeat`.")
    p.add_argument("step")
    p.add_argument("--ttl", help="lease length, e.g. 90s, 10m, 2h (default: 30m)")
    p.add_argument("--paths", nargs="+", metavar="GLOB", help="also reserve these paths while "
                   "holding the step (see `tracecraft reserve --help`)")
    p = command("renew", cmd_renew, "Extend this agent's lease on a step.",
                "tracecraft renew train-model", "tracecraft renew train-model --ttl 4h")
    p.add_argument("step")
    p.add_argument("--ttl", help="new lease length (default: the one it was claimed with)")
    p = command("release", cmd_release, "Give a lease up so another agent can claim the step.",
                "tracecraft release design")
    p.add_argument("step")
    p = command("complete", cmd_complete, "End a step (complete, failed or blocked), with a "
                                          "handoff for the next agent.",
                "tracecraft complete design --note 'mockups in artifacts/design'",
                "tracecraft complete build --status failed --note 'tests red: see ci.log'",
                "tracecraft complete api --to reviewer --needs-review --changed-files-from-git "
                "\\\n      --next-action 'review the auth changes' --note 'tests pass'",
                "tracecraft complete deploy --blocked --note 'waiting for credentials'",
                epilog="only the holder of a live lease can end a step; a holder whose lease was "
                       "taken over is told it lost the step (exit 1). A planned step completes "
                       "only after its dependencies (exit 1 naming them).")
    p.add_argument("step")
    p.add_argument("--status", choices=ENDED, default="complete",
                   help="how the step ended (default: complete); wait-for stops on failed or "
                        "blocked")
    p.add_argument("--blocked", action="store_true", help="short for --status blocked")
    p.add_argument("--note", help="context for the next agent (saved as the step's handoff)")
    p.add_argument("--to", metavar="AGENT", help="the agent to take it from here: named in the "
                                                 "handoff and sent it in its inbox")
    p.add_argument("--next-action", metavar="TEXT", help="what the next agent should do first")
    p.add_argument("--needs-review", action="store_true", help="the work wants a review (the "
                                                               "handoff's state: needs_review)")
    p.add_argument("--changed-files-from-git", action="store_true",
                   help="list the files changed in this git work tree (modified, added, "
                        "untracked) in the handoff")
    p.add_argument("--force", action="store_true",
                   help="complete a step another agent holds, or whose dependencies are not "
                        "complete (recorded as forced)")
    p = command("reopen", cmd_reopen, "Put a failed or blocked step back to pending.",
                "tracecraft reopen build", "tracecraft reopen build && tracecraft next",
                epilog="by compare-and-swap on its lease: the next claim takes the next "
                       "generation; the failure stays in the step's history.")
    p.add_argument("step")
    p = command("step-status", cmd_step_status, "Show a step's status, lease and handoff note.",
                "tracecraft step-status design",
                "tracecraft step-status design && echo done",
                epilog="prints pending, in_progress, expired, complete, failed or blocked first; "
                       "exits 0 only when complete.")
    p.add_argument("step")
    p = command("wait-for", cmd_wait_for, "Block until every step is complete.",
                "tracecraft wait-for design", "tracecraft wait-for lint test --timeout 30m",
                epilog="exit 1 at once if a step ends failed or blocked; exit 3 when the timeout "
                       "passes, naming the steps still pending.")
    p.add_argument("steps", nargs="+", metavar="STEP")
    p.add_argument("--timeout", default="300", help="e.g. 30, 90s, 10m (default: 300s)")

    plan_commands = group("plan", "Steps with dependencies: what can run, and in which order.")
    p = command("add", cmd_plan_add, "Add a step to the plan, after the steps it depends on.",
                "tracecraft plan add lint", "tracecraft plan add test --after lint",
                "tracecraft plan add deploy --after test --after build --priority 10 \\\n"
                "      --label ops --note 'use the blue-green script'", parent=plan_commands,
                epilog="dependencies must be in the plan already and never change; adding the "
                       "same step twice\nchanges nothing.")
    p.add_argument("step")
    p.add_argument("--after", action="append", metavar="DEP", help="a step this one waits for "
                                                                   "(again for more)")
    p.add_argument("--label", action="append", metavar="L", help="a label `next --label` "
                                                                 "picks by (again for more)")
    p.add_argument("--priority", type=int, default=0, metavar="N",
                   help="higher runs first (default 0)")
    p.add_argument("--note", help="what the agent who takes the step should know")
    p = command("load", cmd_plan_load, "Add the steps of a plan file (JSON, or `step: dep dep` "
                "lines).", "tracecraft plan load plan.json",
                "printf 'lint:\\ntest: lint\\nbuild: lint\\ndeploy: test build\\n' | "
                "tracecraft plan load -", parent=plan_commands,
                epilog='JSON: [{"step": "test", "after": ["lint"], "labels": [], "priority": 0, '
                       '"note": null}, ...]\n(or {"steps": [...]}). Text: one `step: dep dep` '
                       'per line, `step:` alone for none;\n# starts a comment. Cycles and '
                       'unknown dependencies are refused, naming them;\nloading a plan twice '
                       'changes nothing.')
    p.add_argument("file", help="the plan file; '-' reads standard input")
    command("show", cmd_plan_show, "Show every planned step with its state and dependencies.",
            "tracecraft plan show", "tracecraft plan show --json", parent=plan_commands,
            epilog="states: ready, waiting (for dependencies), blocked (a dependency failed or "
                   "was blocked),\nin_progress, expired, complete, failed.")
    p = command("ready", cmd_ready, "List the planned steps that can be picked up now.",
                "tracecraft ready", "tracecraft ready --label gpu --json",
                epilog="exit 1 when nothing is ready; steps blocked by a failed dependency are "
                       "listed too.")
    p.add_argument("--label", metavar="L", help="only steps with this label")
    p = command("next", cmd_next, "Claim the next ready step and print what to know to start "
                                  "it.", "tracecraft next", "tracecraft next --label gpu "
                "--ttl 2h", "while step=$(tracecraft next --wait --json); do ...; done",
                epilog="highest priority first, then plan order; prints the step's note and its "
                       "dependencies' handoffs.\nexit 1 when nothing is ready; with --wait, "
                       "blocks until a step is ready (exit 0),\nevery planned step has ended "
                       "(exit 0, saying so) or SECONDS pass (exit 3).")
    p.add_argument("--label", metavar="L", help="only a step with this label")
    p.add_argument("--ttl", help="lease length (default: 30m)")
    p.add_argument("--wait", nargs="?", const="forever", metavar="SECONDS",
                   help="block until a step is ready (exit 3 after SECONDS)")

    artifact_commands = group("artifact", "Share files between agents.")
    p = command("upload", cmd_artifact_upload, "Upload a file (refuses to replace one).",
                "tracecraft artifact upload mockup.html --step design",
                "pytest 2>&1 | tracecraft artifact upload - --name test-log.txt",
                parent=artifact_commands)
    p.add_argument("path")
    p.add_argument("--step", help="attach to this step (default: shared)")
    p.add_argument("--name", help="name to store it under (default: the file's name)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    p = command("download", cmd_artifact_download, "Download an artifact to the current "
                "directory.", "tracecraft artifact download mockup.html --step design",
                "tracecraft artifact download report.pdf -o out/ --overwrite",
                parent=artifact_commands)
    p.add_argument("name")
    p.add_argument("--step", help="the step it belongs to (default: shared)")
    p.add_argument("-o", "--output", metavar="PATH", help="file or directory to write to")
    p.add_argument("--overwrite", action="store_true", help="replace an existing file")
    p = command("list", cmd_artifact_list, "List artifacts with size, type and uploader.",
                "tracecraft artifact list", "tracecraft artifact list --step design",
                parent=artifact_commands)
    p.add_argument("--step", help="only this step's artifacts")

    p = command("replay", cmd_replay, "Write one HTML file with the project's whole history: "
                "a lane per agent, every event.", "tracecraft replay",
                "tracecraft replay --since 2h --agent designer --agent reviewer --out team.html",
                epilog="the file is self-contained (no network when opened, works from file:// "
                       "and as an attachment):\nclaims and takeovers, releases, handoffs, "
                       "messages, memory writes, artifacts and the\nmirrored session "
                       "transcripts, with filters, details on click and a link to any event.",
                flags=shared(agent=False))   # --agent here chooses whose events
    p.add_argument("--out", dest="out_file", metavar="FILE", help="where to write it (default: "
                                                 "tracecraft-replay-<project>.html)")
    p.add_argument("--since", metavar="T", help="only events from T on: a time (2026-12-02T10:00Z) "
                                                "or a duration ago (2h)")
    p.add_argument("--until", metavar="T", help="only events until T")
    p.add_argument("--agent", dest="agent_only", action="append", metavar="A",
                   help="only this agent's events (again for more)")

    p = command("ui", cmd_ui, "Serve the replay page live: new events appear as they happen.",
                "tracecraft ui", "tracecraft ui --port 8800 --open",
                "tracecraft ui --bind 0.0.0.0   # other machines too: prints a token",
                epilog="read-only; binds 127.0.0.1 unless --bind says otherwise, and answers only "
                       "requests for its\nown address; refreshing reads only what changed.")
    p.add_argument("--port", type=int, default=8700, help="port (default: 8700; 0: any free one)")
    p.add_argument("--open", action="store_true", help="open it in a browser")
    p.add_argument("--bind", metavar="ADDRESS", help="listen on this address instead of "
                                                     "127.0.0.1 (requires the printed token)")
    p.add_argument("--refresh", default="1", metavar="SECONDS",
                   help="look at the store at most this often (default: 1; pages ask every second)")
    p.add_argument("--verbose", action="store_true", help="log every request to stderr")

    session_commands = group("session", "Mirror agents' session transcripts into the store, "
                                        "and read them back.")
    p = command("mirror", cmd_session_mirror, "Copy what is new in a session transcript "
                "(redacted) into the store.",
                "tracecraft session mirror                      # this directory's newest session",
                "tracecraft session mirror --harness codex --follow",
                "tracecraft session mirror --all -f --interval 10",
                parent=session_commands,
                epilog="transcripts are read, never changed:\n"
                       "  claude-code  $CLAUDE_CONFIG_DIR/projects (~/.claude/projects)\n"
                       "  codex        $CODEX_HOME/sessions (~/.codex/sessions)\n"
                       "  openclaw     $OPENCLAW_STATE_DIR, $OPENCLAW_HOME or ~/.openclaw\n"
                       "  hermes       $HERMES_HOME/state.db (~/.hermes/state.db)\n"
                       "secrets become [REDACTED:<pattern>] before they leave the machine; a "
                       "project adds\nits own as \"redact_patterns\": {\"name\": \"regex\"} "
                       "in .tracecraft.json.\nexactly once: two mirrors of one session, or one "
                       "killed and run again, never\ncopy a line twice or skip one.")
    p.add_argument("--harness", choices=HARNESSES,
                   help="whose transcripts (default: any; the most recently active wins)")
    p.add_argument("--session-id", metavar="ID", help="this session (default: the newest for "
                                                      "--cwd)")
    p.add_argument("--transcript", metavar="PATH",
                   help="mirror this file (as the Claude Code hook does; default harness "
                        "claude-code, default session id its name)")
    p.add_argument("--cwd", metavar="DIR", help="the project directory (default: this one)")
    p.add_argument("--all", action="store_true", help="every session for the directory")
    p.add_argument("-f", "--follow", action="store_true",
                   help="keep mirroring every --interval until interrupted")
    p.add_argument("--interval", default="5", metavar="SECONDS",
                   help="seconds between looks (default: 5)")
    p.add_argument("--no-redact", action="store_true", help="copy secrets as they are")
    p = command("list", cmd_session_list, "List mirrored sessions.", "tracecraft session list",
                "tracecraft session list --agent reviewer --json", parent=session_commands,
                flags=shared(agent=False))   # --agent here chooses whose sessions
    p.add_argument("--harness", choices=HARNESSES, help="only this harness's sessions")
    p.add_argument("--agent", dest="agent_only", metavar="ID", help="only this agent's sessions")
    p = command("show", cmd_session_show, "Show a mirrored session and its last lines.",
                "tracecraft session show 3f2c9a1e-...",
                "tracecraft session show 3f2c9a1e-... --raw > transcript.jsonl",
                "tracecraft session show 3f2c9a1e-... --tail 5 --follow",
                parent=session_commands)
    p.add_argument("session", metavar="ID")
    p.add_argument("--harness", choices=HARNESSES, help="its harness (default: found)")
    p.add_argument("--tail", type=int, metavar="N", help="the last N lines (default: 20; with "
                                                         "--raw, the whole transcript)")
    p.add_argument("--follow", action="store_true", help="keep printing new lines until the "
                                                         "session ends")
    p.add_argument("--raw", action="store_true", help="the transcript's bytes exactly as "
                                                      "mirrored (neutralised on a terminal)")
    p = command("compact", cmd_session_compact, "Merge a mirrored session's parts into one "
                "(readers see no change).", "tracecraft session compact 3f2c9a1e-...",
                parent=session_commands)
    p.add_argument("session", metavar="ID")
    p.add_argument("--harness", choices=HARNESSES, help="its harness (default: found)")
    p = command("stop", cmd_session_stop, "Mark a mirrored session ended.",
                "tracecraft session stop 3f2c9a1e-...", parent=session_commands)
    p.add_argument("session", metavar="ID")
    p.add_argument("--harness", choices=HARNESSES, help="its harness (default: found)")
    command("hook", cmd_session_hook, "Run as a Claude Code hook (reads the hook's JSON on "
            "standard input).", "tracecraft hooks claude-code --install   # sets it up",
            parent=session_commands)

    hooks_commands = group("hooks", "Hooks that make a harness record itself.")
    p = command("claude-code", cmd_hooks_claude_code, "Print (or --install) the Claude Code "
                "hooks that mirror every session.", "tracecraft hooks claude-code",
                "tracecraft hooks claude-code --install --inbox", parent=hooks_commands,
                epilog="SessionStart starts a background mirror of that session, Stop flushes "
                       "it,\nSessionEnd flushes and marks it ended; --inbox adds a "
                       "UserPromptSubmit hook\nthat puts this agent's new messages into its "
                       "context (nothing when there are none).")
    p.add_argument("--install", action="store_true",
                   help="merge them into .claude/settings.json, keeping what is there")
    p.add_argument("--inbox", action="store_true", help="also deliver new messages on every "
                                                        "prompt")
    p.add_argument("--dir", metavar="DIR", help="the project directory (default: this one)")
    p.add_argument("--command", metavar="CMD", help="how the hooks run tracecraft (default: "
                                                    "`tracecraft` if it is on the PATH, else "
                                                    "this Python and this file)")
    p = command("reserve", cmd_reserve, "Reserve paths this agent is editing; refused while "
                "another agent holds an overlapping one.",
                "tracecraft reserve 'src/api/**' --note 'auth rewrite'",
                "tracecraft reserve docs/ README.md --shared --ttl 2h",
                "tracecraft claim api --paths 'src/api/**'   # for as long as the step is held",
                epilog="globs are relative to the repository's root: `**` is any number of "
                       "directories, `*`, `?`\nand [...] match within one; a plain name covers "
                       "what is under it (src/api is src/api/**).\ntwo overlap when some path "
                       "could match both. exit 1 names the holder and its glob.\nreservations "
                       "are leases: `heartbeat` renews them; `guard install` makes git refuse "
                       "commits\nthat touch another agent's exclusive paths.")
    p.add_argument("globs", nargs="+", metavar="GLOB")
    p.add_argument("--ttl", help="how long it lasts unless renewed, e.g. 10m, 2h (default: 30m)")
    p.add_argument("--shared", action="store_true",
                   help="coexist with other shared reservations (not with an exclusive one)")
    p.add_argument("--note", help="what this agent is doing there (shown to whoever is refused)")
    p = command("unreserve", cmd_unreserve, "Drop this agent's reservations (all of them "
                "without GLOB).", "tracecraft unreserve 'src/api/**'", "tracecraft unreserve")
    p.add_argument("globs", nargs="*", metavar="GLOB")
    command("reservations", cmd_reservations, "List live path reservations.",
            "tracecraft reservations", "tracecraft reservations --json",
            epilog="glob, agent, shared or exclusive, time left (by the store's clock), step, "
                   "note.")
    guard_commands = group("guard", "A git pre-commit hook that refuses commits touching "
                                    "another agent's reserved paths.")
    p = command("install", cmd_guard_install, "Install the pre-commit hook in this git "
                "repository, keeping any hook there.", "tracecraft guard install",
                parent=guard_commands,
                epilog="the hook that was there moves to pre-commit.tracecraft-chained and runs "
                       "first; installing\ntwice changes nothing. respects core.hooksPath and "
                       "worktrees. when the store cannot be\nreached (or nothing is configured) "
                       "the hook warns and lets the commit go.")
    p.add_argument("--force", action="store_true", help="replace an earlier "
                   "pre-commit.tracecraft-chained with the current hook")
    p.add_argument("--command", metavar="CMD", help="how the hook runs tracecraft (default: "
                                                    "`tracecraft` if it is on the PATH, else "
                                                    "this Python and this file)")
    command("uninstall", cmd_guard_uninstall, "Remove the hook and put back the one it "
            "chained.", "tracecraft guard uninstall", parent=guard_commands)
    command("check", cmd_guard_check, "What the hook runs: exit 1 when a staged path is "
            "reserved exclusively by another agent.", "tracecraft guard check",
            "git commit --no-verify   # commit anyway, when you must", parent=guard_commands)
    if wanted and any(not isinstance(parent, _Unbuilt) and not parent.choices
                      for parent in (commands, memory_commands, artifact_commands,
                                     session_commands, hooks_commands, guard_commands)):
        return build_parser()   # a misspelt command: argparse lists the right ones
    return parser


def _on_sigterm(signum, frame):
    raise SystemExit(128 + signum)   # unwinds like Ctrl-C: partial files removed, cache saved


def main(argv=None):
    """Run the command line; returns the exit code (see the table in section 1)."""
    argv = sys.argv[1:] if argv is None else argv
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    try:
        import _signal   # signal.py would build its enums: only the handler is needed
        _signal.signal(_signal.SIGTERM, _on_sigterm)
    except (ImportError, AttributeError, ValueError):
        pass   # no SIGTERM here, or not the main thread
    parser = build_parser(argv)
    args, extra = parser.parse_known_args(argv)
    if extra:
        getattr(args, "parser", parser).error(f"unrecognized arguments: {' '.join(extra)}")
    out = args.out = Output(args.json)
    code = EXIT_BUG
    try:
        code = args.func(args, out) or EXIT_OK
        sys.stdout.flush()
    except TracecraftError as exc:
        code = exc.exit_code
        if out.as_json:
            print(dumps({"error": exc.for_cli(), "exit_code": code}))
        out.note(f"tracecraft: {exc.for_cli()}")
    except KeyboardInterrupt:
        code = 130
        out.note("tracecraft: interrupted")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = EXIT_OK
    except OSError as exc:   # this machine's own files and devices failed: not a bug of ours
        code = EXIT_STORE
        where = f" ({exc.filename})" if exc.filename else ""
        out.note(f"tracecraft: {exc.strerror or exc}{where}")
    except Exception as exc:
        if os.environ.get("TRACECRAFT_DEBUG"):
            raise
        out.note(f"tracecraft: internal error: {type(exc).__name__}: {exc} (a bug; set "
                 "TRACECRAFT_DEBUG=1 to see the traceback, and please report it)")
    finally:
        client = getattr(args, "client", None)
        if client is not None:
            try:
                # Every command that reached the store keeps its agent visible, whatever the
                # answer was (at most once a minute); bad input and a failing store do not.
                if code in (EXIT_OK, EXIT_NO, EXIT_TIMEOUT) and not getattr(args, "reads_only",
                                                                             False):
                    client.touch()
            except TracecraftError as exc:
                client.warn(f"could not refresh the heartbeat: {exc}")
            finally:
                client.close()   # saves what the client learned for the next call
    return code


if __name__ == "__main__":
    sys.exit(main())

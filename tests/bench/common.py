"""Shared by the benchmark driver (run.py), its worker processes (worker.py) and the counting proxy.

  * `label()` names one HTTP request by what it does to which kind of object, e.g.
    "GET memory", "PUT-cas steps/claim", "PUT-create messages", "LIST agents".
  * `RequestLog` records requests; `install_counter()` makes every tracecraft Transport in this
    process record into one (by wrapping Transport.request: tracecraft itself is not changed).
  * small statistics helpers.
"""

import os
import sys
import threading
import time
from collections import Counter
from urllib.parse import parse_qsl, unquote, urlsplit

HERE = os.path.dirname(os.path.abspath(__file__))
TESTS = os.path.dirname(HERE)
REPO = os.path.dirname(TESTS)
for _path in (REPO, TESTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)
# run.py measures a snapshot of tracecraft.py taken at its start; its workers import that copy.
if os.environ.get("BENCH_TRACECRAFT_DIR"):
    sys.path.insert(0, os.environ["BENCH_TRACECRAFT_DIR"])


# -- naming requests -----------------------------------------------------------------------------

def classify_key(rest):
    """The kind of object a key (relative to <bucket>/<project>/) belongs to."""
    parts = rest.split("/")
    kind = parts[0]
    if kind == "memory":
        return "memory"
    if kind == "messages":
        return "broadcast" if len(parts) > 1 and parts[1] == "_broadcast" else "messages"
    if kind == "cursors":
        return "cursor"
    if kind == "steps":
        if len(parts) > 2 and parts[2]:
            return "steps/" + parts[2][:-5] if parts[2].endswith(".json") else "steps/" + parts[2]
        return "steps"
    if kind == "agents":
        return "agents"
    if kind == "artifacts":
        return "artifact-meta" if ".meta" in parts[1:] else "artifact"
    if kind == "_probe":
        return "probe"
    if kind == "sessions":
        return "session-meta" if parts[-1] == "meta.json" else "session-part"
    return kind or "project"


def label(method, target, headers):
    """A short name for one S3 request (path-style addressing: /<bucket>/<project>/<rest>)."""
    split = urlsplit(target)
    path = unquote(split.path)
    query = dict(parse_qsl(split.query, keep_blank_values=True))
    lower = {str(k).lower() for k in headers}
    if "list-type" in query or (method == "GET" and path.strip("/").count("/") == 0
                                and path.strip("/")):
        prefix = query.get("prefix", "")
        rest = prefix.split("/", 1)[1] if "/" in prefix else ""
        return "LIST " + classify_key(rest)
    parts = path.lstrip("/").split("/", 2)
    if len(parts) < 2 or not parts[1]:
        return f"{method} bucket"
    what = classify_key(parts[2] if len(parts) > 2 else "")
    cond = "-create" if "if-none-match" in lower else "-cas" if "if-match" in lower else ""
    return f"{method}{cond} {what}"


def describe(labels):
    """'GET cursor, LIST messages, 10x GET messages, PUT-cas cursor': runs of one label merged."""
    out = []
    for name in labels:
        if out and out[-1][0] == name:
            out[-1][1] += 1
        else:
            out.append([name, 1])
    return ", ".join(name if n == 1 else f"{n}x {name}" for name, n in out) or "(none)"


def summarize(labels):
    """{label: count}, most frequent first."""
    return dict(Counter(labels).most_common())


# -- counting ------------------------------------------------------------------------------------

class RequestLog:
    """Thread-safe record of HTTP requests: (label, status, response bytes, monotonic time)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.entries = []
        self.connections = 0

    def add(self, name, status, nbytes=0):
        with self.lock:
            self.entries.append((name, status, nbytes, time.monotonic()))

    def mark(self):
        with self.lock:
            return len(self.entries)

    def since(self, mark=0):
        with self.lock:
            return list(self.entries[mark:])

    def labels(self, mark=0):
        return [e[0] for e in self.since(mark)]


_installed = None


def install_counter():
    """Record every request any tracecraft Transport in this process sends (each retry too).
    Returns the process-wide RequestLog.  Also counts new TCP connections (`connections`)."""
    global _installed
    if _installed is not None:
        return _installed
    import tracecraft
    log = RequestLog()
    original = tracecraft.Transport.request

    def request(self, method, target, make_headers, body=b"", into=None, progress=None,
                *more, **options):
        sent = []

        def headers():
            h = make_headers()
            sent.append(h)
            return h
        try:
            resp = original(self, method, target, headers, body, into, progress, *more, **options)
        except BaseException:
            for h in sent:
                log.add(label(method, target, h), None)
            raise
        for i, h in enumerate(sent):
            last = i == len(sent) - 1
            log.add(label(method, target, h), resp.status if last else "retried",
                    len(resp.body or b"") if last else 0)
        return resp

    tracecraft.Transport.request = request
    original_connect = tracecraft.Transport._connect

    def connect(transport, timeout):
        with log.lock:
            log.connections += 1
        return original_connect(transport, timeout)

    tracecraft.Transport._connect = connect
    _installed = log
    return log


# -- statistics ----------------------------------------------------------------------------------

def median(values):
    values = sorted(values)
    if not values:
        return float("nan")
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2


def percentile(values, p):
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)

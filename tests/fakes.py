"""Stand-ins for stores that break S3's promises, built on the stdlib, as loopback HTTP proxies in
front of a real server: one forgets the conditional-write headers (as rclone serve s3, s3rver or
Garage do), one injects network and server faults."""
import http.client
import http.server
import threading
from urllib.parse import urlsplit

CONDITIONAL = {"if-match", "if-none-match"}


def send_head(handler, status, headers, length):
    """Relay an upstream answer's status and headers, with our own Content-Length (but a HEAD
    answer's own: it tells the length of the object, not of its empty body)."""
    handler.send_response(status)
    for key, value in headers:
        if key.lower() not in ("content-length", "transfer-encoding", "connection"):
            handler.send_header(key, value)
    if handler.command == "HEAD":
        length = dict((k.lower(), v) for k, v in headers).get("content-length", length)
    handler.send_header("Content-Length", str(length))
    handler.end_headers()


def relay(handler, target, body, headers):
    """Send the handler's request to `target` (a urlsplit result) and its answer back."""
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    conn.request(handler.command, handler.path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    send_head(handler, resp.status, resp.getheaders(), len(data))
    if handler.command != "HEAD":
        handler.wfile.write(data)
    conn.close()


class LoopbackServer:
    """A threaded HTTP server on 127.0.0.1 and a free port; `stop()` ends it."""

    def serve(self, handler):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


class ForwardingProxy(LoopbackServer):
    """Forwards every request to `upstream`, through `answer(handler, body)` (subclasses change
    what is forwarded or answer themselves)."""

    def __init__(self, upstream):
        self.target = urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("content-length") or 0)
                proxy.answer(self, self.rfile.read(length) if length else None)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward

        self.serve(Handler)

    def answer(self, handler, body):
        relay(handler, self.target, body, dict(handler.headers.items()))


class IgnoringConditionsProxy(ForwardingProxy):
    """Forwards every request to `upstream` without If-Match / If-None-Match."""

    def answer(self, handler, body):
        relay(handler, self.target, body, {k: v for k, v in handler.headers.items()
                                           if k.lower() not in CONDITIONAL})


class RefusingProxy(ForwardingProxy):
    """Forwards every request to `upstream` but those `refuse(method, path)` picks, which it
    answers 400 InvalidRequest without forwarding (an error no client retries)."""

    def __init__(self, upstream, refuse):
        self.refuse, self.refused = refuse, 0
        super().__init__(upstream)

    def answer(self, handler, body):
        if not self.refuse(handler.command, handler.path):
            return super().answer(handler, body)
        self.refused += 1
        data = b"<Error><Code>InvalidRequest</Code><Message>refused</Message></Error>"
        send_head(handler, 400, [("Content-Type", "application/xml")], len(data))
        handler.wfile.write(data)


class FaultProxy(LoopbackServer):
    """A loopback proxy in front of a real S3 server that injects faults at a given rate:
    drops the connection before or after forwarding, answers 500 or 503 (before or after
    forwarding), delays, or cuts the response body short.  `counts` says what it did."""

    KINDS = ("drop_before", "drop_after", "error_before", "error_after", "delay", "cut")

    def __init__(self, upstream, rate=0.2, kinds=KINDS, seed=None):
        import random
        target = urlsplit(upstream)
        self.rate, self.kinds = rate, tuple(kinds)
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.counts = {kind: 0 for kind in self.kinds}
        self.counts["requests"] = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def upstream(self, body):
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=dict(self.headers.items()))
                resp = conn.getresponse()
                data = resp.read()
                conn.close()
                return resp, data

            def error(self, status):
                code = "SlowDown" if status == 503 else "InternalError"
                data = (f"<Error><Code>{code}</Code><Message>injected</Message></Error>").encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def forward(self):
                import time
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                fault = proxy.pick()
                if fault == "drop_before":
                    self.close_connection = True
                    return
                if fault == "error_before":
                    return self.error(proxy.random.choice((500, 503)))
                if fault == "delay":
                    time.sleep(proxy.random.uniform(0.05, 0.3))
                resp, data = self.upstream(body)
                if fault == "drop_after":
                    self.close_connection = True
                    return
                if fault == "error_after":
                    return self.error(500)
                send_head(self, resp.status, resp.getheaders(), len(data))
                if self.command == "HEAD":
                    return
                if fault == "cut" and len(data) > 1:
                    self.wfile.write(data[:len(data) // 2])
                    self.close_connection = True
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward

        self.serve(Handler)

    def pick(self):
        with self.lock:
            self.counts["requests"] += 1
            if self.random.random() >= self.rate:
                return None
            kind = self.random.choice(self.kinds)
            self.counts[kind] += 1
            return kind


class CountingStore:
    """Wraps a store and counts requests: one per get/head/exists/put/delete, one per listing
    page.  (exists() is counted here: inside the store it is a head() that no wrapper sees.)"""

    def __init__(self, store):
        self.store, self.calls = store, 0

    def __getattr__(self, name):
        attribute = getattr(self.store, name)
        if name not in ("get", "head", "exists", "put", "delete"):
            return attribute

        def counted(*args, **kwargs):
            self.calls += 1
            return attribute(*args, **kwargs)
        return counted

    def list(self, *args, **kwargs):
        self.calls += 1
        for n, entry in enumerate(self.store.list(*args, **kwargs)):
            if n and n % 1000 == 0:
                self.calls += 1
            yield entry


class Recording:
    """Wraps a store and records the name of each call (get, head, exists, put, delete, list)
    and its key or prefix."""

    def __init__(self, store):
        self.store, self.calls = store, []

    def __getattr__(self, name):
        attribute = getattr(self.store, name)
        if name not in ("get", "head", "exists", "put", "delete", "list"):
            return attribute

        def recorded(key="", *args, **kwargs):
            self.calls.append((name, key))
            return attribute(key, *args, **kwargs)
        return recorded


class StoreClock:
    """A store clock that tests move forward instead of sleeping: wrap(client) makes a client
    see its store through it.  Every answer's clock (server_time) is `offset` seconds ahead, and
    every object written is dated as written at the moved time, so leases expire and gaps in a
    log age by advance() alone.  The clients of a test share one StoreClock, as they share the
    store; what a client judges on its own clock (a lease it remembers) does not move."""

    def __init__(self):
        self.offset, self.written = 0.0, {}

    def advance(self, seconds):
        self.offset += seconds

    def wrap(self, client):
        client.store = _ClockedStore(client.store, self)
        return client


class _ClockedStore:
    def __init__(self, store, clock):
        self.store, self.clock = store, clock

    def __getattr__(self, name):
        return getattr(self.store, name)

    def _dated(self, found):
        if found.server_time is not None:
            found.server_time += self.clock.offset
        if found.last_modified is not None:
            found.last_modified += self.clock.written.get(found.key, 0.0)
        return found

    def get(self, key, *args, **kwargs):
        return self._dated(self.store.get(key, *args, **kwargs))

    def head(self, key):
        return self._dated(self.store.head(key))

    def list(self, *args, **kwargs):
        for entry in self.store.list(*args, **kwargs):
            yield self._dated(entry)

    def put(self, key, *args, **kwargs):
        etag = self.store.put(key, *args, **kwargs)
        self.clock.written[key] = self.clock.offset
        return etag

    def delete(self, key, *args, **kwargs):
        self.store.delete(key, *args, **kwargs)
        self.clock.written.pop(key, None)

class RegionProxy(ForwardingProxy):
    """A bucket that lives in `home` (a region), as AWS answers a request signed for another:
    301 PermanentRedirect with x-amz-bucket-region (`answer="301"`), or 400
    AuthorizationHeaderMalformed naming the region (`answer="400"`; a HEAD of an object gets a
    bare 400, the bucket's HEAD the header).  Requests signed for `home` go on to `upstream`, a
    real server.  `refused` counts the detours."""

    def __init__(self, upstream, home, answer="301"):
        self.home, self.style, self.refused = home, answer, 0
        super().__init__(upstream)

    def answer(self, handler, body):
        scope = handler.headers.get("authorization", "").split("Credential=")[-1]
        region = scope.split("/")[2] if scope.count("/") >= 4 else ""
        if region == self.home:
            return super().answer(handler, body)
        self.refused += 1
        home = self.home
        if self.style == "301":
            status, headers = 301, {"x-amz-bucket-region": home}
            data = b"<Error><Code>PermanentRedirect</Code></Error>"
        else:
            bucket_only = "/" not in handler.path.split("?")[0].strip("/")
            status, headers = 400, {"x-amz-bucket-region": home} if bucket_only else {}
            data = (f"<Error><Code>AuthorizationHeaderMalformed</Code><Message>the region "
                    f"'{region}' is wrong; expecting '{home}'</Message><Region>{home}</Region>"
                    "</Error>").encode()
        data = b"" if handler.command == "HEAD" else data
        send_head(handler, status, list(headers.items()), len(data))
        handler.wfile.write(data)

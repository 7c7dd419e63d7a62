"""A counting HTTP proxy on 127.0.0.1: forwards every request unchanged to one S3 endpoint and
records it (tracecraft signs the Host header it sends, i.e. the proxy's address, and the proxy
passes it through, so signatures stay valid).  Used to count the requests of fresh `tracecraft`
processes, which an in-process counter cannot see.

    with CountingProxy("127.0.0.1", 8333) as proxy:
        ... tracecraft init --endpoint {proxy.endpoint} ...
        mark = proxy.log.mark(); run(...); proxy.log.labels(mark)
"""

import http.client
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from common import RequestLog, label

HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authenticate",
              "proxy-authorization", "te", "trailers", "transfer-encoding", "upgrade"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"   # keep-alive, as tracecraft's client expects
    upstream = None

    def log_message(self, *args):
        pass

    def _upstream(self):
        if self.upstream is None:
            host, port = self.server.upstream_address
            self.upstream = http.client.HTTPConnection(host, port, timeout=60)
        return self.upstream

    def _forward(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        resp = data = None
        for attempt in range(2):   # a kept-alive upstream connection may have been closed
            conn = self._upstream()
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for name, value in self.headers.items():
                    if name.lower() not in HOP_BY_HOP:
                        conn.putheader(name, value)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (OSError, http.client.HTTPException):
                conn.close()
                self.upstream = None
                resp = None
        self.server.log.add(label(self.command, self.path, dict(self.headers.items())),
                            resp.status if resp else 502, len(data or b""))
        if resp is None:
            self.send_response_only(502)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        # send_response_only: no Server/Date of our own; the store's Date matters to leases.
        self.send_response_only(resp.status, resp.reason)
        upstream_length = None
        for name, value in resp.getheaders():
            lower = name.lower()
            if lower == "content-length":
                upstream_length = value
            elif lower not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            self.send_header("Content-Length", upstream_length or "0")
        else:
            self.send_header("Content-Length", str(len(data)))
        if resp.getheader("connection", "").lower() == "close":
            self.upstream.close()
            self.upstream = None
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

    def finish(self):
        try:
            super().finish()
        finally:
            if self.upstream is not None:
                self.upstream.close()
                self.upstream = None


class CountingProxy:
    def __init__(self, upstream_host, upstream_port):
        self.log = RequestLog()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self.server.upstream_address = (upstream_host, upstream_port)
        self.server.log = self.log
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = None

    def start(self):
        self.thread = threading.Thread(target=self.server.serve_forever, name="counting-proxy",
                                       daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.thread is not None:
            self.server.shutdown()
            self.thread.join(10)
            self.thread = None
        self.server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

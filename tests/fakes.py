"""Stand-ins for stores that break S3's promises, built on the stdlib: a loopback HTTP proxy in
front of a real server that forgets the conditional-write headers, the way rclone serve s3,
s3rver or Garage behave."""
import http.client
import http.server
import threading
from urllib.parse import urlsplit

CONDITIONAL = {"if-match", "if-none-match"}


class IgnoringConditionsProxy:
    """Forwards every request to `upstream` without If-Match / If-None-Match."""

    def __init__(self, upstream):
        target = urlsplit(upstream)
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else None
                headers = {k: v for k, v in self.headers.items() if k.lower() not in CONDITIONAL}
                conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for key, value in resp.getheaders():
                    if key.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        proxy.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

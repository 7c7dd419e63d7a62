"""Section 3's HTTP/1.1 client over real sockets: framing, keep-alive, retries, streaming.

Each test scripts a raw server on 127.0.0.1 answer by answer, so that it can send what a well
behaved HTTP library never would: a body cut short, an interim 100, a close at the worst moment."""
import os
import shutil
import socket
import ssl
import subprocess
import threading

import pytest

import tracecraft


def hang_up(conn):
    """An answer that is no answer: close the connection having read the request."""
    return False


def then_close(data):
    """An answer after which the server closes the connection."""
    def answer(conn):
        conn.sendall(data)
        return False
    return answer


def ok(body=b"ok", extra=b""):
    return b"HTTP/1.1 200 OK\r\n%sContent-Length: %d\r\n\r\n%s" % (extra, len(body), body)


class RawServer:
    """Serves one connection at a time on 127.0.0.1.  `answers` are used in order, one per
    request: bytes are sent as they are (the connection stays open), a callable gets the socket
    and returns whether to keep the connection.  `requests` holds (method, target, headers, body)
    as received, `connections` counts accepted connections, `closed` is released as each one
    is closed; `stop()` ends it."""

    def __init__(self, *answers, tls=None):
        self.answers, self.tls = list(answers), tls
        self.requests, self.connections, self.closed = [], 0, threading.Semaphore(0)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.stopping = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def transport(self, **options):
        return tracecraft.Transport("https" if self.tls else "http", "127.0.0.1", self.port,
                                    **dict({"timeout": 10, "max_attempts": 3}, **options))

    def stop(self):
        self.stopping = True
        self.thread.join(10)
        self.listener.close()
        assert not self.thread.is_alive()

    def _serve(self):
        while not self.stopping:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            self.connections += 1
            conn.settimeout(5)
            try:
                with conn:
                    if self.tls:
                        conn = self.tls.wrap_socket(conn, server_side=True)
                    with conn, conn.makefile("rb") as rfile:
                        self._converse(conn, rfile)
            except OSError:
                pass   # the client went away: the test says whether that was expected
            self.closed.release()

    def _converse(self, conn, rfile):
        while self.answers:
            line = rfile.readline()
            if not line:
                return
            method, target, _ = line.decode().split(" ", 2)
            headers = {}
            for line in iter(rfile.readline, b"\r\n"):
                if not line:
                    return
                name, _, value = line.decode().partition(":")
                headers[name.lower()] = value.strip()
            body = rfile.read(int(headers.get("content-length", 0)))
            self.requests.append((method, target, headers, body))
            answer = self.answers.pop(0)
            if callable(answer):
                if not answer(conn):
                    return
            else:
                conn.sendall(answer)


@pytest.fixture
def serve():
    """serve(*answers) starts a RawServer; the fixture stops every one it started."""
    started = []

    def start(*answers, **options):
        started.append(RawServer(*answers, **options))
        return started[-1]
    yield start
    for server in started:
        server.stop()


def get(transport, method="GET", body=b"", **options):
    return transport.request(method, "/b/k", lambda: {"Host": "example"}, body, **options)


def test_content_length_body_and_headers(serve):
    server = serve(ok(b"hello", b"ETag: \"e1\"\r\nX-Amz-Meta: 1\r\nx-amz-meta: 2\r\n"), ok(b"again"))
    t = server.transport()
    resp = get(t)
    assert (resp.status, resp.body, resp.attempts) == (200, b"hello", 1)
    assert resp.headers["etag"] == '"e1"'
    assert resp.headers["x-amz-meta"] == "1, 2"   # repeated headers joined, names lower-cased
    assert get(t).body == b"again"
    t.close()
    assert server.connections == 1   # kept alive
    method, target, headers, body = server.requests[0]
    assert (method, target, headers["host"], body) == ("GET", "/b/k", "example", b"")
    assert "content-length" not in headers   # GET without a body states none


def test_chunked_body_with_trailer(serve):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n1;name=value\r\n \r\n5\r\nworld\r\n0\r\nX-Trailer: t\r\n\r\n")
    server = serve(chunked, ok(b"next"))
    t = server.transport()
    assert get(t).body == b"hello world"
    assert get(t).body == b"next"   # the trailer was read to its end: the connection is in step
    t.close()
    assert server.connections == 1


def test_close_delimited_body(serve):
    server = serve(then_close(b"HTTP/1.1 200 OK\r\n\r\nuntil the end"), ok(b"fresh"))
    t = server.transport()
    resp = get(t)
    assert (resp.status, resp.body) == (200, b"until the end")
    resp = get(t)
    assert (resp.body, resp.attempts) == (b"fresh", 1)
    t.close()
    assert server.connections == 2


def test_head_204_and_304_have_no_body(serve):
    server = serve(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
                   b"HTTP/1.1 204 No Content\r\n\r\n",
                   b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
                   ok(b"after"))
    t = server.transport()
    resp = get(t, "HEAD")
    assert (resp.status, resp.body, resp.headers["content-length"]) == (200, b"", "1234")
    assert (get(t, "DELETE").status, get(t).status) == (204, 304)
    assert get(t).body == b"after"   # nothing was waited for or left behind
    t.close()
    assert server.connections == 1


def test_idle_connection_closed_by_server_is_reopened_without_an_attempt(serve):
    server = serve(then_close(ok(b"first")), ok(b"second"))
    t = server.transport(max_attempts=1)
    assert get(t).body == b"first"
    assert server.closed.acquire(timeout=5)   # closed while idle, before the next request
    resp = get(t)
    assert (resp.status, resp.body, resp.attempts) == (200, b"second", 1)
    t.close()
    assert server.connections == 2
    assert len(server.requests) == 2


def test_request_unanswered_on_reused_connection_is_resent_without_an_attempt(serve):
    server = serve(ok(b"first"), hang_up, ok(b"second"))
    t = server.transport(max_attempts=1)
    assert get(t).body == b"first"
    resp = get(t)   # the server closes on reading it, as if its idle timeout had just struck
    assert (resp.status, resp.body) == (200, b"second")
    assert resp.attempts == 2   # both sends count: the first may have reached the server
    t.close()
    assert server.connections == 2


def test_unanswered_on_fresh_connection_spends_an_attempt(serve):
    server = serve(hang_up, hang_up)
    with pytest.raises(tracecraft.Unreachable, match="closed the connection without answering"):
        get(server.transport(max_attempts=2))
    assert server.connections == 2


def test_truncated_body_is_retried(serve):
    server = serve(then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), ok(b"0123456789"))
    t = server.transport()
    resp = get(t)
    assert (resp.status, resp.body, resp.attempts) == (200, b"0123456789", 2)
    t.close()


def test_bad_chunk_is_retried_and_reported(serve):
    bad = then_close(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n")
    server = serve(bad, ok(b"good"), bad)
    t = server.transport()
    resp = get(t)
    assert (resp.body, resp.attempts) == (b"good", 2)
    t.close()   # the server serves one connection at a time
    with pytest.raises(tracecraft.Unreachable, match="not a chunk size"):
        get(server.transport(max_attempts=1))


def test_truncated_body_error_is_clear(serve):
    server = serve(then_close(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"))
    with pytest.raises(tracecraft.Unreachable, match="cut short, 7 bytes before its end"):
        get(server.transport(max_attempts=1))


def test_bad_status_line_is_a_retryable_error(serve):
    server = serve(then_close(b"SSH-2.0-OpenSSH_9.6\r\n"), ok(b"fine"))
    t = server.transport()
    assert get(t).attempts == 2
    t.close()
    server2 = serve(then_close(b"SSH-2.0-OpenSSH_9.6\r\n"))
    with pytest.raises(tracecraft.Unreachable, match="not an HTTP/1.x status line"):
        get(server2.transport(max_attempts=1))


def test_503_then_200_is_retried_on_the_same_connection(serve):
    busy = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 9\r\n\r\n<Error/>\n"
    server = serve(busy, ok(b"done"))
    t = server.transport()
    resp = get(t)
    assert (resp.status, resp.body, resp.attempts) == (200, b"done", 2)
    t.close()
    assert server.connections == 1   # the 503's body was read, so the connection stayed usable


def test_last_attempt_returns_the_error_answer(serve):
    busy = b"HTTP/1.1 503 Slow Down\r\nContent-Length: 4\r\n\r\nbusy"
    server = serve(busy, busy)
    t = server.transport(max_attempts=2)
    resp = get(t)
    assert (resp.status, resp.body, resp.attempts) == (503, b"busy", 2)
    t.close()


def test_interim_100_continue_is_skipped(serve):
    server = serve(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n" + ok(b"real", b"X-Final: 1\r\n"))
    t = server.transport()
    resp = get(t, "PUT", b"data")
    assert (resp.status, resp.body, resp.attempts) == (200, b"real", 1)
    assert "x-interim" not in resp.headers and resp.headers["x-final"] == "1"
    t.close()


def test_connection_close_header_closes(serve):
    server = serve(ok(b"bye", b"Connection: close\r\n"), ok(b"hello"))
    t = server.transport(max_attempts=1)
    assert get(t).body == b"bye"
    assert get(t).attempts == 1
    t.close()
    assert server.connections == 2


def test_stream_into_file_with_progress(serve, tmp_path):
    data = os.urandom(300_000)
    server = serve(ok(data))
    calls = []
    t = server.transport()
    with open(tmp_path / "out", "w+b") as into:
        into.write(b"stale contents that must go")
        resp = get(t, into=into, progress=lambda done, total: calls.append((done, total)))
    t.close()
    assert (resp.status, resp.body) == (200, b"")
    assert (tmp_path / "out").read_bytes() == data
    assert len(calls) > 1 and calls[-1] == (len(data), len(data))
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)


def test_error_answer_is_not_streamed_into_file(serve, tmp_path):
    server = serve(b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\n<NoSuch/>")
    t = server.transport()
    with open(tmp_path / "out", "w+b") as into:
        resp = get(t, into=into)
    t.close()
    assert (resp.status, resp.body) == (404, b"<NoSuch/>")
    assert (tmp_path / "out").read_bytes() == b""


def test_a_large_body_is_sent_in_pieces_and_arrives_intact(serve):
    data = os.urandom(200_000)   # more than one write: sent in pieces, each reported
    server = serve(ok(), ok(), ok())
    calls = []
    t = server.transport()
    resp = t.request("PUT", "/b/up", lambda: {"Host": "h", "Content-Length": "1"}, data,
                     progress=lambda done, total: calls.append((done, total)))
    assert get(t, "PUT").status == 200
    assert get(t, "POST", b"small").status == 200
    t.close()
    assert resp.status == 200
    method, _, headers, received = server.requests[0]
    assert method == "PUT" and received == data
    assert headers["content-length"] == str(len(data))   # the transport's own, not the caller's
    assert calls[-1] == (len(data), len(data))
    assert server.requests[1][2]["content-length"] == "0"   # PUT without a body says so
    assert server.requests[2][2]["content-length"] == "5" and server.requests[2][3] == b"small"


def test_unanswered_request_times_out_within_the_deadline(serve):
    server = serve(lambda conn: threading.Event().wait(1) and False)
    with pytest.raises(tracecraft.Unreachable, match="timed out"):
        get(server.transport(timeout=0.5, max_attempts=3))


def test_header_injection_is_refused(serve):
    server = serve(ok())
    t = server.transport()
    # a StoreError (exit 4), not a ValueError: the value may come from a store's answer (an ETag)
    with pytest.raises(tracecraft.StoreError, match="a line break in the request target or a header"):
        t.request("GET", "/b/k", lambda: {"Host": "h", "X-Bad": "1\r\nX-Evil: 1"})
    assert server.requests == []


@pytest.fixture
def tls_context(tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def test_https_without_verification(serve, tls_context):
    server = serve(ok(b"secret"), ok(b"again"), tls=tls_context)
    t = server.transport(verify=False)
    assert get(t).body == b"secret"
    assert get(t).body == b"again"
    t.close()
    assert server.connections == 1


def test_https_verifies_certificates_by_default(serve, tls_context):
    server = serve(ok(), tls=tls_context)
    with pytest.raises(tracecraft.Unreachable, match="CERTIFICATE_VERIFY_FAILED"):
        get(server.transport(max_attempts=1))


def in_pieces(*pieces):
    """An answer sent in pieces, each its own TCP segment: the client reads each before the next."""
    def answer(conn):
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for piece in pieces:
            conn.sendall(piece)
            threading.Event().wait(0.005)
        return True
    return answer


def test_answer_split_across_segments(serve):
    server = serve(in_pieces(b"HTTP/1.1 200 O", b"K\r\nETag: \"e", b"1\"\r\nContent-Length: 5\r",
                             b"\n\r\n", *(bytes([b]) for b in b"hello")),
                   in_pieces(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3", b"\r\nabc",
                             b"\r", b"\n0\r\n", b"\r\n"),
                   ok(b"third"))
    t = server.transport()
    resp = get(t)
    assert (resp.status, resp.headers["etag"], resp.body) == (200, '"e1"', b"hello")
    assert get(t).body == b"abc"
    assert get(t).body == b"third"
    t.close()
    assert server.connections == 1


class ScriptedSocket:
    """Its recv() returns `receives` one at a time, then b"" as at the end of the stream."""

    def __init__(self, *receives):
        self.receives = list(receives)

    def recv(self, size):
        assert not self.receives or len(self.receives[0]) <= size
        return self.receives.pop(0) if self.receives else b""


def test_reader_lines_blocks_and_the_end_of_the_stream():
    sock = ScriptedSocket(b"ab", b"c\nde", b"f\r\n0123456789\nxy", b"z")
    reader = tracecraft._Reader(sock)
    assert reader.wait()
    assert reader.readline(100) == b"abc\n"   # a line split across receives
    assert reader.readline(100) == b"def\r\n"
    assert reader.readline(4) == b"0123"      # cut at the limit; the rest is still there
    assert reader.readline(100) == b"456789\n"
    assert reader.read1(1) == b"x" and reader.read1(100) == b"y"
    assert sock.receives == [b"z"]            # read1 gave what was buffered before receiving
    assert reader.read1(100) == b"z"
    assert reader.readline(100) == b"" and reader.read1(10) == b"" and not reader.wait()


def test_reader_returns_a_line_cut_short_by_the_end_of_the_stream():
    reader = tracecraft._Reader(ScriptedSocket(b"HTTP/1.1 2", b"00 O"))
    assert reader.readline(100) == b"HTTP/1.1 200 O"
    assert reader.readline(100) == b""


def test_overlong_header_line_is_refused(serve):
    server = serve(then_close(b"HTTP/1.1 200 OK\r\nX-Long: " + b"x" * 70000 + b"\r\n\r\n"))
    with pytest.raises(tracecraft.Unreachable, match="longer than 65536 bytes"):
        get(server.transport(max_attempts=1))

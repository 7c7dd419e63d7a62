"""Section 3 against a hostile server: a raw-socket server on 127.0.0.1 that trickles bytes,
never ends its headers, answers 100 Continue forever, sends floods of headers, unclosed XML or
a huge body, and puts terminal escapes in its errors.  Each command, run through the real CLI,
ends within the deadline with exit 4, in bounded time and memory, and prints nothing raw."""
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from conftest import TRACECRAFT, clean_env

DEADLINE = 3.0     # TRACECRAFT_TIMEOUT for every command here
SLACK = 6.0        # interpreter start-up on a loaded 2-core machine, and the last attempt
MAX_RSS_KB = 100_000   # a command reading at most a few MB must stay far below this

# Runs the CLI and records its peak memory (resident set, in KB) in $RSS_FILE as it exits.  Linux's
# VmHWM, not getrusage(): ru_maxrss also counts the parent's memory when the child was spawned
# with vfork (as subprocess does), which is pytest's, not the command's.
MEASURED = ("import atexit, os, resource, runpy, sys\n"
            "def peak():\n"
            "    try:\n"
            "        for line in open('/proc/self/status'):\n"
            "            if line.startswith('VmHWM:'):\n"
            "                return line.split()[1]\n"
            "    except OSError:\n"
            "        pass\n"
            "    return str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
            "atexit.register(lambda: open(os.environ['RSS_FILE'], 'w').write(peak()))\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")


class HostileServer:
    """Accepts connections on 127.0.0.1 and answers every request with `behave(conn, stop)`,
    which writes what it likes; `stop` is set when the test ends."""

    def __init__(self, behave):
        self.behave, self.stop = behave, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.requests = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        with conn:
            try:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    more = conn.recv(65536)
                    if not more:
                        return
                    data += more
                self.requests += 1
                self.behave(conn, self.stop)
            except OSError:
                pass   # the client gave up: that is the point

    def close(self):
        self.stop.set()
        self.listener.close()


def trickle(head, step=0.5):
    def behave(conn, stop):
        conn.sendall(head)
        while not stop.wait(step):
            conn.sendall(b"x")
    return behave


def slow_headers(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\n")
    while not stop.wait(0.5):
        conn.sendall(b"X-Slow: 1\r\n")


def endless_continue(conn, stop):
    while not stop.wait(0.1):
        conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")


def header_flood(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 80_000 + b"Content-Length: 2\r\n\r\n{}")


def unclosed_tags(conn, stop):
    body = b"<ListBucketResult>" + b"<Contents><Key>a</Key>" * 20_000
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def huge_announced(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 600000000\r\n\r\n")
    block = b"{" * 65536
    while not stop.is_set():
        conn.sendall(block)


def huge_chunked(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"10000\r\n" + b"[" * 0x10000 + b"\r\n"
    while not stop.is_set():
        conn.sendall(block)


def escapes_in_error(conn, stop):
    body = (b"<Error><Code>Weird\x1b[2J</Code><Message>\x1b]52;c;cm0gLXJmIH4=\x07 boom "
            b"\x1b[31mred\r\x9b1m</Message></Error>")
    conn.sendall(b"HTTP/1.1 418 I'm a teapot\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


CASES = {   # name: (behaviour, command, words in the error)
    "a body trickling a byte every 0.5 s":
        (trickle(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"), ["memory", "get", "k"],
         "timed out"),
    "a header line every 0.5 s": (slow_headers, ["memory", "get", "k"], "timed out"),
    "100 Continue forever": (endless_continue, ["memory", "get", "k"], ("interim", "timed out")),
    "80,000 header lines": (header_flood, ["memory", "get", "k"], "header lines"),
    "a listing of unclosed tags": (unclosed_tags, ["memory", "list"], "left open"),
    "a 600 MB body for a record": (huge_announced, ["memory", "get", "k"], "bytes"),
    "an endless chunked body": (huge_chunked, ["memory", "get", "k"], "bytes"),
    "escape sequences in an error": (escapes_in_error, ["memory", "get", "k"], "boom"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_server_cannot_hold_or_flood_a_command(case, tmp_path):
    behave, command, words = CASES[case]
    server = HostileServer(behave)
    try:
        config = tmp_path / ".tracecraft.json"
        config.write_text(json.dumps({
            "backend": "s3", "endpoint": f"http://127.0.0.1:{server.port}", "bucket": "bucket",
            "project": "p", "agent": "a", "access_key": "key", "secret_key": "secret"}))
        config.chmod(0o600)
        env = dict(clean_env(tmp_path), TRACECRAFT_TIMEOUT=str(DEADLINE),
                   TRACECRAFT_MAX_ATTEMPTS="3", RSS_FILE=str(tmp_path / "rss"))
        started = time.monotonic()
        proc = subprocess.run([sys.executable, "-c", MEASURED, TRACECRAFT, *command],
                              cwd=tmp_path, env=env, capture_output=True, timeout=60)
        elapsed = time.monotonic() - started
        out, err = proc.stdout, proc.stderr
    finally:
        server.close()
    text = err.decode("utf-8", "replace")
    assert proc.returncode == 4, (case, proc.returncode, text)
    assert any(word in text for word in ((words,) if isinstance(words, str) else words)), text
    assert "Traceback" not in text
    assert elapsed < DEADLINE + SLACK, f"{case}: took {elapsed:.1f} s"
    assert b"\x1b" not in err + out and b"\x07" not in err and "\x9b" not in text
    assert len(err) < 2000, f"{case}: {len(err)} bytes of error"
    rss = int((tmp_path / "rss").read_text())
    assert rss < MAX_RSS_KB, f"{case}: {rss} KB of memory ({elapsed:.1f} s; {text[:300]})"


def endless_length(conn, stop):
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n")


def odd_listing(conn, stop):
    body = (b"<ListBucketResult><Contents><Key>p/memory/k.json</Key><Size>\xc2\xb2</Size>"
            b"<LastModified>2026-\xd9\xa1-01</LastModified></Contents></ListBucketResult>")
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def bad_redirect(conn, stop):
    conn.sendall(b"HTTP/1.1 307 Temporary Redirect\r\nLocation: https://cdn.example:99999/x"
                 b"\r\nContent-Length: 0\r\n\r\n")


@pytest.mark.parametrize("behave,command,backend,code", [
    (endless_length, ["memory", "get", "k"], "s3", 4),
    (odd_listing, ["memory", "list"], "s3", 0),
    (bad_redirect, ["memory", "get", "k"], "hf", 4)])
def test_numbers_and_urls_from_a_hostile_server_are_checked(behave, command, backend, code,
                                                            tmp_path):
    server = HostileServer(behave)
    try:
        config = tmp_path / ".tracecraft.json"
        config.write_text(json.dumps({
            "backend": backend, "endpoint": f"http://127.0.0.1:{server.port}",
            "bucket": "ns/bucket" if backend == "hf" else "bucket", "project": "p",
            "agent": "a", "access_key": "key", "secret_key": "secret"}))
        config.chmod(0o600)
        result = subprocess.run([sys.executable, TRACECRAFT, *command], cwd=tmp_path,
                                env=dict(clean_env(tmp_path), TRACECRAFT_TIMEOUT="3",
                                         TRACECRAFT_MAX_ATTEMPTS="2"),
                                capture_output=True, text=True, timeout=60)
    finally:
        server.close()
    assert result.returncode == code, result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr

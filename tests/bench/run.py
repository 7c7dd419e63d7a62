#!/usr/bin/env python3
"""tracecraft benchmark suite (issue 6).  Run with `make bench`, or:

    .venv/bin/python tests/bench/run.py [--quick] [--only NAME[,NAME...]] [--python PATH]

It starts its own SeaweedFS (`weed mini` on free loopback ports, signatures checked) and uses the
local store too, runs each scenario, prints one table of figures with every target's pass/MISS,
and writes the figures to tests/bench/results.json (git-ignored).

Scenarios (names for --only):
  cli          wall time of tracecraft commands as fresh processes, next to `python -c pass`;
               `tracecraft install`'s launcher next to its python's `-c pass` and `-I -S -c pass`
  requests     HTTP requests per command (counted at a loopback proxy) and per API call
  throughput   sequential ops/s of memory set/get and send through the Python API
  barrier      complete in one process -> wait-for returning in others; a waiter's requests/s
  contention   N processes claim from a pool of steps until none is left
  inbox        reading 10 new messages when the inbox holds 100 / 1,000 / 10,000 old ones
  scale        agents (threads in a few processes) working a DAG of steps with barriers, messages
  sessions     mirroring a 200 MB transcript (MB/s, peak memory); `mirror --all -f` over 50
               sessions: requests per minute while idle and while every session grows
  replay       a replay of 100 agents, 1,000 steps, 10,000 messages, 1,000 memory writes and 20
               sessions of 5 MB: build time, requests, file size, headless chromium; `ui` refreshes
  plans        50 processes taking a 5,000-step plan with next (a layered DAG, a wide fan-out):
               exactly once, never before a dependency, requests per step; the cost of one next
               at 100 and at 5,000 steps done
  idle         every waiting loop (inbox --wait, wait-for, next --wait, session mirror -f, ui,
               status --watch)
               as a real process through a counting proxy: requests/s by kind, $ per agent-hour
               at AWS prices, how soon new work is seen right after the start and after idling
  artifacts    a 1 GiB artifact (128 MiB with --quick) uploaded and downloaded by the command
               line: SeaweedFS with one PUT (threshold above the size) and with multipart (the
               default threshold), and the local store; MB/s and each process's peak memory

The machine is small and shared: timings are medians over repetitions, and every ratio is
measured within one run.  Request counts are exact and do not depend on the machine.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (HERE, REPO, describe, install_counter, median, percentile,  # noqa: E402
                    summarize)
from proxy import CountingProxy  # noqa: E402
from servers import SeaweedServer  # noqa: E402

# tracecraft.py is measured from a snapshot taken when the run starts (others may be editing
# the file meanwhile): this process, the command lines and the workers all use that copy.
SOURCE = os.path.join(REPO, "tracecraft.py")
TRACECRAFT = SOURCE      # set to the snapshot by main()
tracecraft = None        # the snapshot, imported by main()
WORKER = os.path.join(HERE, "worker.py")
BUCKET = "bench"
SCENARIOS = ["cli", "requests", "throughput", "barrier", "contention", "inbox", "scale",
             "sessions", "replay", "plans", "idle", "artifacts"]


class BenchError(Exception):
    pass


def ms(seconds):
    if seconds >= 0.01:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds * 1000:.1f} ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f} us"


def verdict(ok):
    return "" if ok is None else ("pass" if ok else "MISS")


# ==================================================================================================
# The bench: one SeaweedFS, a temp directory, rows of the table and the JSON figures.
# ==================================================================================================

class Bench:
    def __init__(self, args, s3, tmp):
        self.args, self.s3, self.tmp = args, s3, tmp
        self.quick = args.quick
        self.python = args.python
        self.rows = []
        self.figures = {}
        self.targets = []
        self.log = install_counter()
        home = os.path.join(tmp, "home")
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home,
                    "XDG_CONFIG_HOME": os.path.join(home, ".config"),
                    "XDG_CACHE_HOME": os.path.join(home, ".cache"),
                    "XDG_DATA_HOME": os.path.join(home, ".local", "share"),
                    "LANG": "C.UTF-8", "TMPDIR": tmp}
        for path in list(self.env.values())[1:5]:
            os.makedirs(path, exist_ok=True)
        # In-process clients and workers get the same clean view: no AWS_* or TRACECRAFT_*.
        for name in list(os.environ):
            if name.startswith(("AWS_", "TRACECRAFT_")):
                del os.environ[name]
        for name in ("HOME", "XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
            os.environ[name] = self.env[name]
        tracecraft.open_store(self.settings()).ensure_bucket()

    # -- table -----------------------------------------------------------------------------------

    def row(self, section, measure, value, target="", ok=None, detail=""):
        self.rows.append({"section": section, "measure": measure, "value": value,
                          "target": target, "result": verdict(ok), "detail": detail})
        if ok is not None:
            self.targets.append({"section": section, "measure": measure, "value": value,
                                 "target": target, "pass": bool(ok)})

    def progress(self, text):
        print(f"[{time.monotonic() - self.t0:6.1f}s] {text}", file=sys.stderr, flush=True)

    # -- stores and clients ----------------------------------------------------------------------

    def settings(self, endpoint=None):
        return {"backend": "s3", "endpoint": endpoint or self.s3.endpoint,
                "access_key": self.s3.access_key, "secret_key": self.s3.secret_key,
                "region": self.s3.region, "bucket": BUCKET}

    def local_settings(self):
        return {"backend": "local", "root": os.path.join(self.tmp, "localstore"), "bucket": BUCKET}

    def client(self, project, agent, settings=None):
        return tracecraft.connect(project=project, agent=agent, **(settings or self.settings()))

    # -- command line ----------------------------------------------------------------------------

    def cli_project(self, name, endpoint=None, local=False):
        directory = os.path.join(self.tmp, "cli", f"{name}-{'local' if local else 's3'}")
        os.makedirs(directory, exist_ok=True)
        if local:
            store = ["--backend", "local", "--root", os.path.join(self.tmp, "localstore"),
                     "--bucket", BUCKET]
        else:
            store = ["--endpoint", endpoint or self.s3.endpoint, "--bucket", BUCKET,
                     "--access-key", self.s3.access_key, "--secret-key", self.s3.secret_key]
        self.cli(["init", "--project", name, "--agent", "a"] + store, directory)
        return directory

    def cli(self, argv, cwd, agent=None, expect=(0,)):
        """Run `python tracecraft.py ARGV` as a fresh process; returns (seconds, CompletedProcess)."""
        return self.run([self.python, TRACECRAFT] + argv, cwd, agent, expect)

    def run(self, cmd, cwd=None, agent=None, expect=(0,), env=None, timeout=120):
        env = dict(env or self.env)
        if agent:
            env["TRACECRAFT_AGENT"] = agent
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd or self.tmp, env=env, stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
        seconds = time.perf_counter() - start
        if proc.returncode not in expect:
            raise BenchError(f"{' '.join(cmd[1:])} exited {proc.returncode} (expected {expect}): "
                             f"{proc.stderr.decode(errors='replace').strip()[-500:]}")
        return seconds, proc

    # -- worker processes ------------------------------------------------------------------------

    def workers(self, mode, configs, timeout, on_go=None):
        """Start one worker per config, wait until all are ready, start them at once, call
        on_go(start time) if given, and return (start time, [result dict]) in config order."""
        procs = []
        try:
            for cfg in configs:
                procs.append(subprocess.Popen(
                    [sys.executable, WORKER, mode, json.dumps(cfg)], stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=self.tmp,
                    env=dict(os.environ)))
            for proc in procs:
                line = proc.stdout.readline()
                if not line.strip():
                    proc.wait(30)
                    raise BenchError(f"a {mode} worker died before starting: "
                                     f"{proc.stderr.read().decode(errors='replace')[-800:]}")
            go = time.time()
            for proc in procs:
                proc.stdin.write(b"go\n")
                proc.stdin.flush()
            if on_go:
                on_go(go)
            results = []
            deadline = time.monotonic() + timeout
            for proc in procs:
                out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
                lines = [x for x in out.decode().splitlines() if x.strip()]
                if proc.returncode != 0 or not lines:
                    raise BenchError(f"a {mode} worker exited {proc.returncode}: "
                                     f"{err.decode(errors='replace')[-800:]}")
                result = json.loads(lines[-1])
                if result.get("tracecraft") != os.path.abspath(TRACECRAFT):
                    raise BenchError(f"a {mode} worker imported {result.get('tracecraft')}, "
                                     f"not the snapshot {TRACECRAFT}")
                results.append(result)
            return go, results
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

    def measure(self, func):
        """Run func() and return (its result, the labels of the requests it made in-process)."""
        mark = self.log.mark()
        result = func()
        return result, self.log.labels(mark)


# ==================================================================================================
# 1. CLI call cost
# ==================================================================================================

def scenario_cli(b):
    section = "1 cli"
    reps = 5 if b.quick else 15
    s3dir = b.cli_project("cli")
    localdir = b.cli_project("cli", local=True)
    for d in (s3dir, localdir):
        b.cli(["memory", "set", "bench.key", "0"], d)
        b.cli(["heartbeat"], d, agent="b")   # so that `send b` does not warn about a new agent
    py = b.python
    # (name, argv for repetition r, cwd, uses the store)
    commands = [("python -c pass", lambda r: [py, "-c", "pass"], None, None),
                ("python -S -c pass", lambda r: [py, "-S", "-c", "pass"], None, None),
                ("tracecraft --version", lambda r: [py, TRACECRAFT, "--version"], s3dir, None),
                ("tracecraft --help", lambda r: [py, TRACECRAFT, "--help"], s3dir, None)]
    for store, d in (("s3", s3dir), ("local", localdir)):
        commands += [
            (f"{store}: memory get", lambda r: [py, TRACECRAFT, "memory", "get", "bench.key"], d, store),
            (f"{store}: memory set", lambda r: [py, TRACECRAFT, "memory", "set", "bench.key", str(r)], d, store),
            (f"{store}: send", lambda r: [py, TRACECRAFT, "send", "b", f"hello {r}"], d, store),
            (f"{store}: claim", lambda r: [py, TRACECRAFT, "claim", f"c{r}"], d, store),
            (f"{store}: inbox (empty)", lambda r: [py, TRACECRAFT, "inbox"], d, store),
        ]
    # The same commands as an installed `tracecraft` command would run them (`pip install .`
    # makes a script that imports the module, whose bytecode is cached), while
    # `python tracecraft.py` compiles the whole file on every call.
    lib = os.path.join(b.tmp, "lib")
    os.makedirs(lib, exist_ok=True)
    shutil.copy(TRACECRAFT, os.path.join(lib, "tracecraft.py"))
    entry = os.path.join(lib, "tracecraft-entry.py")
    with open(entry, "w") as f:
        f.write("import sys\nfrom tracecraft import main\nsys.exit(main())\n")
    installed_env = dict(b.env, PYTHONPATH=lib)
    commands += [
        ("s3 installed: memory get", lambda r: [py, entry, "memory", "get", "bench.key"], s3dir, "s3i"),
        ("s3 installed: memory set", lambda r: [py, entry, "memory", "set", "bench.key", str(r)], s3dir, "s3i"),
        ("s3 installed: send", lambda r: [py, entry, "send", "b", f"hello {r}"], s3dir, "s3i"),
        ("s3 installed: claim", lambda r: [py, entry, "claim", f"i{r}"], s3dir, "s3i"),
        ("s3 installed: inbox (empty)", lambda r: [py, entry, "inbox"], s3dir, "s3i"),
    ]
    # The launcher `tracecraft install` writes: the interpreter behind this (virtual
    # environment's) python, isolated (-I -S), importing a private copy's cached bytecode.
    # Next to it, that interpreter as `python3 -c pass` (its site-packages and their .pth files)
    # and `python3 -I -S -c pass` (the floor).
    _, done = b.run([py, TRACECRAFT, "install", "--prefix", os.path.join(b.tmp, "prefix"),
                     "--json"])
    installed = json.loads(done.stdout)
    launcher, launcher_python = installed["launcher"], installed["python"]
    commands += [
        ("launcher's python3 -c pass", lambda r: [launcher_python, "-c", "pass"], None, None),
        ("launcher's python3 -I -S -c pass",
         lambda r: [launcher_python, "-I", "-S", "-c", "pass"], None, None),
        ("launcher: --version", lambda r: [launcher, "--version"], s3dir, None),
        ("s3 launcher: memory get", lambda r: [launcher, "memory", "get", "bench.key"], s3dir, "s3l"),
        ("s3 launcher: memory set", lambda r: [launcher, "memory", "set", "bench.key", str(r)], s3dir, "s3l"),
        ("s3 launcher: send", lambda r: [launcher, "send", "b", f"hello {r}"], s3dir, "s3l"),
        ("s3 launcher: claim", lambda r: [launcher, "claim", f"l{r}"], s3dir, "s3l"),
        ("s3 launcher: inbox (empty)", lambda r: [launcher, "inbox"], s3dir, "s3l"),
    ]
    path_python = shutil.which("python3")
    if path_python and (os.path.realpath(path_python) != os.path.realpath(py)
                        or _is_script(path_python)):
        # For context only: what `python3` on PATH costs here (e.g. a pyenv shim).
        commands.append(("context: python3 on PATH -c pass",
                         lambda r: [path_python, "-c", "pass"], "inherit", None))
    times = {name: [] for name, *_ in commands}
    for r in range(-1, reps):               # r = -1: warm-up, not counted
        for name, argv, cwd, store in commands:
            env = dict(os.environ) if cwd == "inherit" else installed_env if store == "s3i" \
                else None
            seconds, _ = b.run(argv(r if r >= 0 else 10_000), None if cwd == "inherit" else cwd,
                               env=env)
            if r >= 0:
                times[name].append(seconds)
    base = median(times["python -c pass"])
    path_base = median(times.get("context: python3 on PATH -c pass") or [float("nan")])
    launcher_base = median(times["launcher's python3 -c pass"])
    figures = {"reps": reps, "python": py, "python_version": platform.python_version(),
               "commands": {}}
    b.row(section, f"baseline: {py} -c pass", ms(base), "", None,
          f"median of {reps}; every command below runs with this interpreter")
    for name, _, _, store in commands:
        med = median(times[name])
        ratio = med / base
        figures["commands"][name] = {"median_s": med, "min_s": min(times[name]),
                                     "max_s": max(times[name]), "ratio": ratio,
                                     "all_s": times[name]}
        if name == "python -c pass":
            continue
        target, ok = "", None
        if store in ("s3", "s3i", "s3l"):
            target, ok = "<= 3.0x", ratio <= 3.0
        if name == "s3 launcher: memory get":   # issue 16: at or below the bare interpreter
            target, ok = "<= launcher's python3 -c pass", med <= launcher_base
        detail = f"min {ms(min(times[name]))}, max {ms(max(times[name]))}"
        if store == "s3l" or name.startswith("launcher"):
            detail += f"; {med / launcher_base:.2f}x launcher's python3 -c pass"
        elif store in ("s3", "s3i") and path_base == path_base:
            detail += f"; {med / path_base:.2f}x python3 on PATH"
        b.row(section, name, f"{ms(med)}  {ratio:.2f}x", target, ok, detail)
    for store, title in (("s3", "python tracecraft.py"), ("s3i", "installed command"),
                         ("s3l", "tracecraft install's launcher")):
        names = [n for n, *_, s in commands if s == store]
        headline = median([figures["commands"][n]["ratio"] for n in names])
        figures[f"headline_ratio_{store}"] = headline
        b.row(section, f"HEADLINE: {title} on SeaweedFS, median ratio", f"{headline:.2f}x",
              "<= 3.0x", headline <= 3.0,
              f"median over the {len(names)} commands above; vs python3 on PATH: "
              f"{median([figures['commands'][n]['median_s'] for n in names]) / path_base:.2f}x")
    b.figures["cli"] = figures


def _is_script(path):
    with open(path, "rb") as f:
        return f.read(2) == b"#!"


# ==================================================================================================
# 2. Requests per operation
# ==================================================================================================

def scenario_requests(b):
    section = "2 requests"
    host, port = b.s3.endpoint.rsplit("//", 1)[1].split(":")
    figures = {"cli": {}, "api": {}}
    with CountingProxy(host, int(port)) as proxy:
        d = b.cli_project("count", endpoint=proxy.endpoint)
        b.cli(["heartbeat"], d)
        b.cli(["heartbeat"], d, agent="b")
        direct_c = b.client("count", "c")     # sends to b, uncounted (direct, not via the proxy)
        blob = os.path.join(b.tmp, "blob.bin")
        with open(blob, "wb") as f:
            f.write(os.urandom(1024))

        def counted(argv, agent=None, expect=(0,)):
            mark = proxy.log.mark()
            b.cli(argv, d, agent=agent, expect=expect)
            return proxy.log.labels(mark)

        cli_rows = []

        def cli_row(name, argv, agent=None, expect=(0,), target=None):
            labels = counted(argv, agent, expect)
            figures["cli"][name] = {"requests": len(labels), "labels": labels}
            cli_rows.append((name, labels, target))

        cli_row("--version", ["--version"])
        cli_row("--help", ["--help"])
        cli_row("memory set (new key)", ["memory", "set", "k.one", "1"])
        cli_row("memory set (existing key)", ["memory", "set", "k.one", "2"], target=1)
        cli_row("memory get", ["memory", "get", "k.one"], target=1)
        cli_row("send (first message of an inbox)", ["send", "b", "first"])
        cli_row("send", ["send", "b", "second"], target=1)
        cli_row("inbox (empty)", ["inbox"])
        counted(["inbox"], agent="b")                       # drain b
        for k in (1, 10):
            for i in range(k):
                direct_c.send("b", f"m{i}")
            cli_row(f"inbox ({k} new)", ["inbox"], agent="b")
        cli_row("claim (won, uncontended)", ["claim", "w1"], target=1)
        cli_row("claim (lost: held by another)", ["claim", "w1"], agent="b", expect=(1,))
        cli_row("complete", ["complete", "w1"], target=3)
        counted(["claim", "w2"])
        cli_row("complete --note", ["complete", "w2", "--note", "done"], target=3)
        cli_row("wait-for (step complete)", ["wait-for", "w1", "--timeout", "10"])
        cli_row("step-status", ["step-status", "w1"])
        cli_row("heartbeat", ["heartbeat"])
        cli_row("agents (n = 2)", ["agents"])
        cli_row("artifact upload (1 KiB)", ["artifact", "upload", blob])
        cli_row("artifact download (1 KiB)", ["artifact", "download", "blob.bin", "-o",
                                              os.path.join(b.tmp, "blob.out")])
        stamps = os.path.join(b.env["XDG_CACHE_HOME"], "tracecraft")
        shutil.rmtree(stamps, ignore_errors=True)
        cli_row("memory get, heartbeat stamp > 60 s old", ["memory", "get", "k.one"])
        direct_c.close()

    # -- API calls, counted in-process, straight to SeaweedFS --------------------------------------
    a, bb, c = (b.client("api", x) for x in ("a", "b", "c"))
    bb.heartbeat(renew=False)
    api_rows = []

    def api_row(name, func, target=None):
        _, labels = b.measure(func)
        figures["api"][name] = {"requests": len(labels), "labels": labels}
        api_rows.append((name, labels, target))
        return labels

    api_row("memory set (new key)", lambda: a.memory.set("k.one", 1))
    api_row("memory set (existing key)", lambda: a.memory.set("k.one", 2), target=1)
    api_row("memory get", lambda: a.memory.get("k.one"), target=1)
    a.memory.incr("k.count")
    api_row("memory incr (existing key)", lambda: a.memory.incr("k.count"))
    api_row("send (first message of an inbox)", lambda: a.send("b", "first"))
    api_row("send (first call of a client)", lambda: c.send("b", "from c"), target=1)
    api_row("send (a's next call, after c wrote)", lambda: a.send("b", "again"))
    api_row("send (later calls)", lambda: a.send("b", "again"), target=1)
    api_row("inbox (empty)", lambda: c.inbox())
    bb.inbox()
    inbox_costs = {}
    for k in (1, 10, 100):
        for i in range(k):
            a.send("b", f"m{i}")
        labels = api_row(f"inbox ({k} new)", lambda: bb.inbox())
        inbox_costs[k] = len(labels)
    api_row("claim (won, uncontended)", lambda: a.claim("w1"), target=1)

    def lost():
        try:
            bb.claim("w1")
        except tracecraft.Refused:
            return
        raise BenchError("b won a claim on a step a holds")
    api_row("claim (lost: held by another)", lost)
    api_row("claim (already held by me)", lambda: a.claim("w1"))
    api_row("renew", lambda: a.renew("w1"))
    api_row("complete", lambda: a.complete("w1"), target=3)
    a.claim("w2")
    api_row("complete (with note)", lambda: a.complete("w2", note="done"), target=3)
    api_row("wait-for (1 step, complete)", lambda: bb.wait_for(["w1"], timeout=10))
    api_row("step-status", lambda: bb.step_status("w1"))
    api_row("heartbeat (no steps held)", lambda: bb.heartbeat())
    # wait-for on pending steps: count requests and polls (a poll is a burst of requests)
    mark = b.log.mark()
    try:
        bb.wait_for(["p1", "p2", "p3"], timeout=1.0)
    except tracecraft.WaitTimeout:
        pass
    entries = b.log.since(mark)
    polls = 1 + sum(1 for x, y in zip(entries, entries[1:]) if y[3] - x[3] > 0.02)
    per_poll = len(entries) / polls
    figures["api"]["wait-for per poll (3 pending steps)"] = {
        "requests": len(entries), "polls": polls, "per_poll": per_poll,
        "labels": [e[0] for e in entries]}
    for n in (1, 10, 100):
        project = f"agents{n}"
        for i in range(n):
            with b.client(project, f"x{i}") as x:
                x.heartbeat(renew=False)
        with b.client(project, "x0") as x:
            api_row(f"agents (n = {n})", lambda: x.agents())
    api_row("artifact upload (1 KiB)", lambda: a.artifacts.upload(blob, step="w1"))
    api_row("artifact download (1 KiB)",
            lambda: a.artifacts.download("blob.bin", step="w1", dest=os.path.join(b.tmp, "x.out")))
    for x in (a, bb, c):
        x.close()

    # -- rows --------------------------------------------------------------------------------------
    for name, labels, target in api_rows:
        ok = None if target is None else len(labels) <= target
        b.row(section, f"API  {name}", str(len(labels)), f"<= {target}" if target else "", ok,
              describe(labels))
    b.row(section, "API  wait-for: requests per poll, 3 pending steps", f"{per_poll:.1f}", "", None,
          f"{len(entries)} requests in {polls} polls within 1 s; "
          f"{describe(sorted(set(e[0] for e in entries)))} each")
    # k reads of messages, a constant, and one more listing page per LOG_PAGE-then-1,000 keys
    pages = {k: 1 if k <= tracecraft.LOG_PAGE else 2 + (k - tracecraft.LOG_PAGE) // 1000
             for k in inbox_costs}
    extra = {k: inbox_costs[k] - k - pages[k] for k in inbox_costs}
    linear = len(set(extra.values())) == 1
    b.row(section, "API  inbox: requests = k + listing pages + constant (k = 1, 10, 100)",
          f"{inbox_costs[1]}/{inbox_costs[10]}/{inbox_costs[100]}", "O(k)", linear,
          f"constant {extra[1]} per read, listing pages {pages[1]}/{pages[10]}/{pages[100]}")
    for name, labels, target in cli_rows:
        ok = None if target is None else len(labels) <= target
        b.row(section, f"CLI  {name}", str(len(labels)), f"<= {target}" if target else "", ok,
              describe(labels))
    b.figures["requests"] = figures


# ==================================================================================================
# 3. Library throughput
# ==================================================================================================

def scenario_throughput(b):
    section = "3 throughput"
    seconds = 0.5 if b.quick else 1.0
    rounds = 2 if b.quick else 5
    keys = [f"tp.k{i}" for i in range(100)]
    figures = {}
    for store, settings in (("s3", b.settings()), ("local", b.local_settings())):
        connections_before = b.log.connections
        with b.client("tp", "a", settings) as tc:
            for key in keys:
                tc.memory.set(key, 0)
            tc.send("b", "warm-up")
            ops = {"memory set": lambda i: tc.memory.set(keys[i % 100], i),
                   "memory get": lambda i: tc.memory.get(keys[i % 100]),
                   "send": lambda i: tc.send("b", f"message {i}")}
            # For context: what the store itself takes for the one request of a set and a get.
            raw_key, raw_body = tc.key("tp-raw.json"), b'{"value": 0}' * 30
            raw = {"etag": tc.store.put(raw_key, raw_body)}

            def raw_put(i):
                raw["etag"] = tc.store.put(raw_key, raw_body + b" " * (i % 2), if_match=raw["etag"])
            ops.update({"context: store alone, PUT If-Match": raw_put,
                        "context: store alone, GET": lambda i: tc.store.get(raw_key)})
            rates = {name: [] for name in ops}
            requests = {name: 0 for name in ops}
            counts = {name: 0 for name in ops}
            for _ in range(rounds):
                for name, op in ops.items():
                    mark = b.log.mark()
                    n, start = 0, time.perf_counter()
                    while time.perf_counter() - start < seconds:
                        op(n)
                        n += 1
                    rates[name].append(n / (time.perf_counter() - start))
                    requests[name] += len(b.log.labels(mark))
                    counts[name] += n
        connections = b.log.connections - connections_before
        figures[store] = {}
        for name in ops:
            rate = median(rates[name])
            per_op = requests[name] / counts[name]
            figures[store][name] = {"ops_per_s": rate, "all": rates[name],
                                    "requests_per_op": per_op if store == "s3" else None}
            target, ok = "", None
            if store == "s3" and name.startswith("memory "):
                target, ok = ">= 500/s", rate >= 500
            detail = f"{ms(1 / rate)}/op; range {min(rates[name]):.0f}-{max(rates[name]):.0f}"
            if store == "s3":
                detail += f"; {per_op:.2f} requests/op"
            b.row(section, f"{store}: {name}", f"{rate:.0f}/s", target, ok, detail)
        if store == "s3":
            figures[store]["connections_opened"] = connections
            b.row(section, "s3: TCP connections opened for all of the above", str(connections),
                  "1", connections == 1, f"{rounds} rounds x {seconds:g} s per operation")
    b.figures["throughput"] = figures


# ==================================================================================================
# 4. Barrier latency
# ==================================================================================================

def scenario_barrier(b):
    section = "4 barrier"
    n = 6 if b.quick else 24
    longest = 6.0 if b.quick else 12.0
    # Waiters wait 0.25 s .. `longest` s, spread evenly, each for its own step.
    delays = [0.25 + i * (longest - 0.25) / (n - 1) for i in range(n)]
    steps = [f"b{i:02d}" for i in range(n)]
    boss = b.client("barrier", "boss")
    for step in steps:
        boss.claim(step)
    configs = [{"settings": b.settings(), "project": "barrier", "agent": f"w{i:02d}", "step": s,
                "timeout": longest + 30} for i, s in enumerate(steps)]
    done = {}

    def complete_all(go):
        """Complete each step at its time, while the waiters wait."""
        for step, delay in zip(steps, delays):
            time.sleep(max(0.0, go + delay - time.time()))
            t0 = time.time()
            boss.complete(step)
            done[step] = (t0, time.time())

    go, results = b.workers("wait", configs, timeout=longest + 60, on_go=complete_all)
    boss.close()
    lat_start, lat_end, rates, total_req, total_time = [], [], [], 0, 0.0
    per = []
    for step, res in zip(steps, results):
        if not res["ok"]:
            raise BenchError(f"waiter for {step}: {res['error']}")
        t0, t1 = done[step]
        waited = res["detected"] - res["started"]
        lat_start.append(res["detected"] - t0)
        lat_end.append(res["detected"] - t1)
        rates.append(res["requests"] / waited)
        total_req += res["requests"]
        total_time += waited
        per.append({"step": step, "waited_s": waited, "latency_s": res["detected"] - t0,
                    "requests": res["requests"], "labels": res["labels"]})
    pooled = total_req / total_time
    # While idle (from 4 s into a wait on), a waiter polls at its slowest rate.
    idle = [(sum(1 for t in res["times"] if t >= 4.0), res["detected"] - res["started"] - 4.0)
            for res in results if res["detected"] - res["started"] > 5.0]
    idle_rate = sum(n for n, _ in idle) / sum(t for _, t in idle) if idle else float("nan")
    figures = {"waiters": n, "delays_s": delays, "latency_from_complete_call_s": lat_start,
               "latency_from_complete_return_s": lat_end, "pooled_requests_per_s": pooled,
               "idle_requests_per_s": idle_rate,
               "per_waiter": per}
    b.row(section, "detection latency, median (complete called -> wait-for returned)",
          ms(median(lat_start)), "< 500 ms", median(lat_start) < 0.5,
          f"p90 {ms(percentile(lat_start, 90))}, max {ms(max(lat_start))}; {n} waiters, "
          f"waits {delays[0]:.2f}-{delays[-1]:.1f} s")
    b.row(section, "detection latency, median (from complete returning)", ms(median(lat_end)),
          "", None, f"p90 {ms(percentile(lat_end, 90))}")
    b.row(section, "requests/s per waiter, average over all waiting", f"{pooled:.2f}/s", "<= 2/s",
          pooled <= 2.0, f"per waiter {min(rates):.2f}-{max(rates):.2f}/s (short waits cost most)")
    kinds = sorted({k for res in results for k in res["labels"]})
    b.row(section, "requests/s per waiter while idle (4 s into a wait and later)",
          f"{idle_rate:.2f}/s", "", None,
          f"from the {len(idle)} waits longer than 5 s; each poll: {', '.join(kinds)}")
    b.figures["barrier"] = figures


# ==================================================================================================
# 5. Contention
# ==================================================================================================

def _summed_labels(results):
    """The request labels of several workers' results, added up."""
    labels = {}
    for r in results:
        for k, v in r["labels"].items():
            labels[k] = labels.get(k, 0) + v
    return labels


def scenario_contention(b):
    section = "5 contention"
    n_workers, n_steps = (20, 200) if b.quick else (50, 500)
    project = "contend"
    configs = [{"settings": b.settings(), "project": project, "agent": f"r{i:02d}",
                "steps": n_steps, "policy": b.args.contention_policy, "deadline": 240}
               for i in range(n_workers)]
    go, results = b.workers("contend", configs, timeout=300)
    won = [s for r in results for s in r["won"]]
    errors = [e for r in results for e in r["errors"]]
    winners = {}
    for r, cfg in zip(results, configs):
        for s in r["won"]:
            winners.setdefault(s, []).append(cfg["agent"])
    doubles = sum(1 for v in winners.values() if len(v) > 1)
    # Check the store: every step ended once, by its one winner, with no takeover.
    with b.client(project, "checker") as checker:
        bad = []
        for i in range(n_steps):
            step = f"s{i:03d}"
            status = checker.step_status(step)
            if status["status"] != "complete" or status["generation"] != 1 or \
                    [status["ended_by"]] != winners.get(step):
                bad.append(step)
    wall = max(r["ended"] for r in results) - go
    requests = sum(r["requests"] for r in results)
    labels = _summed_labels(results)
    lost = sum(r["lost"] for r in results)
    lists = sum(r["lists"] for r in results)
    per_step = requests / n_steps
    exactly_once = not bad and len(won) == n_steps and len(set(won)) == n_steps
    b.figures["contention"] = {"workers": n_workers, "steps": n_steps,
                               "policy": b.args.contention_policy, "wall_s": wall,
                               "requests": requests, "requests_per_step": per_step,
                               "lost_claims": lost, "listings": lists, "double_claims": doubles,
                               "bad_steps": bad, "errors": errors, "labels": labels,
                               "won_per_worker": [len(r["won"]) for r in results]}
    b.row(section, f"{n_workers} processes, {n_steps} steps: every step done exactly once",
          f"{len(set(won))}/{n_steps}", "all, once", exactly_once,
          f"{len(bad)} steps wrong in the store; {len(errors)} errors" +
          (f": {errors[0]}" if errors else ""))
    b.row(section, "double claims", str(doubles), "0", doubles == 0, "")
    b.row(section, "total wall time", f"{wall:.1f} s", "", None,
          f"{n_steps / wall:.0f} steps/s; per worker {min(len(r['won']) for r in results)}-"
          f"{max(len(r['won']) for r in results)} steps")
    b.row(section, "requests per step (claim + complete + losses + listings)", f"{per_step:.1f}",
          "<= 3", per_step <= 3.0,
          f"{requests} requests; {lost} lost claims, {lists} listings; " +
          ", ".join(f"{k} {v / n_steps:.2f}" for k, v in sorted(labels.items(),
                                                               key=lambda kv: -kv[1])))


# ==================================================================================================
# 6. Inbox growth
# ==================================================================================================

def scenario_inbox(b):
    section = "6 inbox"
    sizes = [100, 1000] if b.quick else [100, 1000, 10000]
    reps = 3 if b.quick else 7
    project = "inbox"
    sender, reader = b.client(project, "s"), b.client(project, "r")
    reader.heartbeat(renew=False)
    figures = {}
    history = 0
    for size in sizes:
        start = time.perf_counter()
        for i in range(size - history):
            sender.send("r", f"old {history + i}")
        seeded = time.perf_counter() - start
        (caught_up, labels) = b.measure(lambda: reader.inbox())
        if len(caught_up) != size - history:
            raise BenchError(f"catch-up read {len(caught_up)} messages, not {size - history}")
        history = size
        times, counts, nbytes, sequences = [], [], [], []
        for _ in range(reps):
            for i in range(10):
                sender.send("r", f"new {i}")
            mark = b.log.mark()
            t = time.perf_counter()
            got = reader.inbox()
            times.append(time.perf_counter() - t)
            entries = b.log.since(mark)
            if len(got) != 10:
                raise BenchError(f"read {len(got)} new messages, not 10")
            counts.append(len(entries))
            nbytes.append(sum(e[2] for e in entries))
            sequences.append([e[0] for e in entries])
            history += 10
        figures[size] = {"median_s": median(times), "all_s": times, "requests": counts,
                         "bytes": nbytes, "labels": sequences[0], "seed_s": seeded,
                         "catch_up_requests": len(labels)}
        b.row(section, f"read 10 new, {size:,} old in the inbox",
              f"{counts[0]} req, {ms(median(times))}", "", None,
              f"{median(nbytes) / 1024:.0f} KiB received; {describe(sequences[0])}")
    first, last = figures[sizes[0]], figures[sizes[-1]]
    same = set(first["requests"]) == set(last["requests"]) and len(set(last["requests"])) == 1
    ratio = last["median_s"] / first["median_s"]
    b.row(section, f"requests flat from {sizes[0]:,} to {sizes[-1]:,} old", 
          f"{first['requests'][0]} -> {last['requests'][0]}", "equal", same, "")
    b.row(section, f"time flat from {sizes[0]:,} to {sizes[-1]:,} old", f"{ratio:.2f}x",
          "<= 1.5x", ratio <= 1.5,
          f"bytes received {median(first['bytes']) / 1024:.0f} -> "
          f"{median(last['bytes']) / 1024:.0f} KiB")
    sender.close()
    reader.close()
    b.figures["inbox"] = figures


# ==================================================================================================
# 7. Scale run
# ==================================================================================================

def scenario_scale(b):
    section = "7 scale"
    from worker import agent_name, dag
    if b.quick:
        n_agents, processes, layers, width = 20, 2, 5, 40
    else:
        n_agents, processes, layers, width = 100, 4, 10, 100
    n_steps = layers * width
    project = "scale"
    base = {"settings": b.settings(), "project": project, "agents": n_agents, "layers": layers,
            "width": width, "deps": 3, "seed": 6, "steal": 0.2, "deadline": 200,
            "broadcasters": list(range(0, n_agents, 10))}
    configs = [dict(base, mine=list(range(p, n_agents, processes))) for p in range(processes)]
    go, results = b.workers("scale", configs, timeout=300)
    agents = {}
    for r in results:
        agents.update(r["agents"])
    done = [s for a in agents.values() for s in a["done"]]
    errors = [e for a in agents.values() for e in a["errors"]]
    finished = max(a.get("finished", go) for a in agents.values())
    wall = finished - go
    requests = sum(r["requests"] for r in results)
    labels = _summed_labels(results)
    graph = dag(layers, width, 3, 6)
    # Messages: drain what is left, then every direct message must have reached its recipient
    # once and every broadcast every other agent once.
    received = {name: list(a["received"]) for name, a in agents.items()}
    for name in agents:
        with b.client(project, name) as c:
            received[name] += [m["text"] for m in c.inbox()]
    expected = {name: [] for name in agents}
    for name, a in agents.items():
        for to, text in a["sent"]:
            if to == "_broadcast":
                for other in agents:
                    if other != name:
                        expected[other].append(text)
            else:
                expected[to].append(text)
    wrong_inboxes = [n for n in agents if sorted(received[n]) != sorted(expected[n])]
    with b.client(project, "checker") as checker:
        ended = sum(1 for e in checker.store.list(checker.key("steps") + "/")
                    if e.key.endswith("/status.json"))
    exactly_once = sorted(done) == sorted(graph) and ended == n_steps
    lost = sum(a["lost"] for a in agents.values())
    waited = sum(a["waited"] for a in agents.values())
    deliveries = sum(len(v) for v in expected.values())
    b.figures["scale"] = {"agents": n_agents, "processes": processes, "steps": n_steps,
                          "layers": layers, "wall_s": wall, "steps_per_s": n_steps / wall,
                          "requests": requests, "requests_per_step": requests / n_steps,
                          "labels": labels, "lost_claims": lost, "barrier_wait_s": waited,
                          "messages_sent": sum(len(a["sent"]) for a in agents.values()),
                          "deliveries": deliveries, "wrong_inboxes": wrong_inboxes,
                          "errors": errors}
    b.row(section, f"{n_agents} agents ({processes} processes), {n_steps} steps in {layers} "
          "layers: all done once", f"{len(set(done))}/{n_steps}", "all, once", exactly_once,
          f"{len(errors)} errors" + (f": {errors[0]}" if errors else ""))
    b.row(section, "messages delivered exactly once", f"{deliveries - 0} deliveries",
          "all, once", not wrong_inboxes, f"{len(wrong_inboxes)} inboxes wrong")
    b.row(section, "wall time / throughput", f"{wall:.1f} s", "", None,
          f"{n_steps / wall:.1f} steps/s; {requests / wall:.0f} requests/s; "
          f"barrier waits {waited / n_agents:.1f} s per agent; {lost} lost claims")
    b.row(section, "requests total / per step", f"{requests} / {requests / n_steps:.1f}", "",
          None, ", ".join(f"{k} {v / n_steps:.2f}"
                          for k, v in sorted(labels.items(), key=lambda kv: -kv[1])))


# ==================================================================================================
# Driver
# ==================================================================================================


# ==================================================================================================
# 8. Session mirroring
# ==================================================================================================

def _transcript_lines(n, cwd, session, start=0):
    sys.path.insert(0, os.path.join(REPO, "tests"))
    from harnesses import SECRETS, claude_line
    return "".join(claude_line(i, cwd, session, SECRETS[i % len(SECRETS)] if i % 97 == 1 else None)
                   for i in range(start, start + n))


def scenario_sessions(b):
    import resource
    section = "8 sessions"
    size_mb = 40 if b.quick else 200
    d = b.cli_project("sessions")
    path = os.path.join(b.tmp, "big-session.jsonl")
    block = _transcript_lines(2000, d, "big-session").encode()
    with open(path, "wb") as f:
        while f.tell() < size_mb << 20:
            f.write(block)
    size = os.path.getsize(path)
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, _ = b.cli(["session", "mirror", "--transcript", path], d)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss   # KiB, the largest child yet
    client = b.client("sessions", "reader")
    meta = client.sessions.get("big-session")
    client.close()
    if meta["lines"] != block.count(b"\n") * (size // len(block)):
        raise BenchError(f"mirrored {meta['lines']} lines of {size} bytes: not all of them")
    rate = size / seconds / 1e6
    b.row(section, f"mirror a {size / 1e6:.0f} MB transcript to SeaweedFS (one process)",
          f"{rate:.1f} MB/s", ">= 20 MB/s", rate >= 20,
          f"{seconds:.1f} s, {meta['parts']} parts, redacted ({sum(meta['redactions'].values())} "
          "secrets)")
    b.row(section, "peak memory of that process (RSS)", f"{peak / 1024:.0f} MB",
          "bounded", peak < 200 * 1024,
          f"the source is {size / 1e6:.0f} MB; parts of {tracecraft.PART_BYTES >> 20} MiB"
          + ("" if peak > before else "; an earlier command had the peak"))
    b.figures["sessions"] = {"mirror_mb_s": rate, "mirror_s": seconds, "peak_rss_kb": peak,
                             "bytes": size, "parts": meta["parts"]}

    # --all over 50 live sessions: requests per minute, idle and growing
    host, port = b.s3.endpoint.rsplit("//", 1)[1].split(":")
    window = 10 if b.quick else 30
    with CountingProxy(host, int(port)) as proxy:
        d = b.cli_project("fleet", endpoint=proxy.endpoint)
        cwd = os.path.realpath(d)
        claude = os.path.join(b.tmp, "claude")
        directory = os.path.join(claude, "projects", cwd.replace("/", "-").replace(".", "-"))
        os.makedirs(directory, exist_ok=True)
        paths = [os.path.join(directory, f"s{i:02d}.jsonl") for i in range(50)]
        for p in paths:
            with open(p, "w") as f:
                f.write(_transcript_lines(20, cwd, os.path.basename(p)[:-6]))
        env = dict(b.env, CLAUDE_CONFIG_DIR=claude)
        follower = subprocess.Popen([b.python, TRACECRAFT, "session", "mirror", "--all",
                                     "--harness", "claude-code", "-f", "--interval", "5",
                                     "--json"], cwd=d, env=env, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 120
            flushed = set()
            while len(flushed) < 50 and time.monotonic() < deadline:
                line = follower.stdout.readline()
                if not line:
                    break
                flushed.add(json.loads(line)["session"])
            if len(flushed) < 50:
                raise BenchError(f"the follower flushed {len(flushed)} of 50 sessions")
            time.sleep(6)
            mark = proxy.log.mark()
            time.sleep(window)
            idle = len(proxy.log.labels(mark)) * 60 / window
            mark, t, lines = proxy.log.mark(), time.monotonic(), 0
            while time.monotonic() - t < window:
                for i, p in enumerate(paths):
                    with open(p, "a") as f:
                        f.write(_transcript_lines(1, cwd, f"s{i:02d}", 20 + lines))
                lines += 1
                time.sleep(1)
            time.sleep(5.5)   # the last lines' flush
            labels = proxy.log.labels(mark)
            growing = len(labels) * 60 / (time.monotonic() - t)
        finally:
            follower.kill()
            follower.wait()
        b.row(section, "mirror --all -f, 50 sessions, idle: requests per minute", f"{idle:.0f}",
              "0", idle == 0, f"over {window} s, --interval 5 (a stat of each source per look)")
        b.row(section, "mirror --all -f, 50 sessions, each growing a line a second",
              f"{growing:.0f}/min", "", None,
              f"{', '.join(f'{k} {v}' for k, v in summarize(labels).items())}; 2 requests "
              "per session per 5 s look would be 1200/min")
        b.figures["sessions"].update(idle_requests_per_min=idle, growing_requests_per_min=growing)



# ==================================================================================================
# 12. Big artifacts
# ==================================================================================================

def _run_peak(b, argv, cwd, env):
    """Run `python tracecraft.py ARGV`; (seconds, the process's own peak RSS in KiB).  The peak
    is VmHWM, read every 20 ms while it runs: getrusage's ru_maxrss would count the memory of
    this (large) process, which the child shares between fork and exec."""
    start = time.perf_counter()
    proc = subprocess.Popen([b.python, TRACECRAFT] + argv, cwd=cwd, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise BenchError(f"{' '.join(argv)} exited {proc.returncode}: "
                         f"{proc.stderr.read().decode(errors='replace').strip()[-500:]}")
    return seconds, peak


def scenario_artifacts(b):
    section = "12 artifacts"
    size = (128 if b.quick else 1024) << 20
    path = os.path.join(b.tmp, "big.bin")
    with open(path, "wb") as f:
        for _ in range(size >> 26):
            f.write(os.urandom(64 << 20))
    target = os.path.join(b.tmp, "copy.bin")
    default = tracecraft.multipart_threshold()
    runs = [("SeaweedFS, one PUT", False, size), ("SeaweedFS, multipart", False, default),
            ("local store", True, default)]
    for label, local, threshold in runs:
        d = b.cli_project(f"art{len(b.figures.get('artifacts', {}))}", local=local)
        env = dict(b.env, TRACECRAFT_MULTIPART_THRESHOLD=str(threshold))
        up, up_peak = _run_peak(b, ["artifact", "upload", path, "--name", "big.bin"], d, env)
        down, down_peak = _run_peak(b, ["artifact", "download", "big.bin", "-o", target], d, env)
        if os.path.getsize(target) != size:
            raise BenchError(f"{label}: downloaded {os.path.getsize(target)} of {size} bytes")
        os.unlink(target)
        how = ("parts of %d MiB, %d in flight" % (tracecraft.part_size(size, threshold) >> 20,
                                                  tracecraft.PARTS_IN_FLIGHT)
               if threshold < size and not local else "one PUT" if not local else "a copy")
        for verb, seconds, peak in (("upload", up, up_peak), ("download", down, down_peak)):
            b.row(section, f"{label}: {verb} {size >> 20} MiB", f"{size / seconds / 1e6:.0f} MB/s",
                  "", None, f"{seconds:.1f} s, peak RSS {peak / 1024:.0f} MB"
                  + (f"; {how}" if verb == "upload" else "; streamed to a file, SHA-256 checked"))
        b.figures.setdefault("artifacts", {})[label] = {
            "bytes": size, "upload_s": up, "upload_peak_rss_kb": up_peak, "download_s": down,
            "download_peak_rss_kb": down_peak, "threshold": threshold}
    multipart = b.figures["artifacts"]["SeaweedFS, multipart"]
    peak = multipart["upload_peak_rss_kb"] * 1024
    bound = (tracecraft.PARTS_IN_FLIGHT + 2) * tracecraft.part_size(size, default) + (64 << 20)
    b.row(section, "multipart upload's peak memory", f"{peak / 2**20:.0f} MB",
          f"<= {bound >> 20} MB", peak <= bound, "(parts in flight + 2) x part size + 64 MB "
          "for the interpreter")
    os.unlink(path)


# ==================================================================================================
# 9. Replay and the live view
# ==================================================================================================

def scenario_replay(b):
    import concurrent.futures
    section = "9 replay"
    scale = 0.2 if b.quick else 1.0
    n_agents, n_steps = 100, int(1000 * scale)
    n_messages, n_memory, n_sessions = int(10000 * scale), int(1000 * scale), int(20 * scale) or 1
    project, t = "replay", time.perf_counter()
    d = b.cli_project(project)
    clients = [b.client(project, f"agent-{i:03d}") for i in range(n_agents)]

    def work(i):
        c = clients[i]
        c.heartbeat(renew=False)
        for s in range(i, n_steps, n_agents):
            c.claim(f"step-{s}")
            c.complete(f"step-{s}", note=f"step {s} done by {c.agent}")
        for m in range(i, n_messages, n_agents):
            c.send(f"agent-{(m * 7) % n_agents:03d}" if m % 10 else "_broadcast", f"message {m}")
        for k in range(i, n_memory, n_agents):
            c.memory.set(f"results.r{k % 97}", {"k": k, "by": c.agent})
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(n_agents)))
    for i in range(n_sessions):
        path = os.path.join(b.tmp, f"replay-session-{i}.jsonl")
        block = _transcript_lines(2000, d, f"replay-session-{i}").encode()
        with open(path, "wb") as f:
            while f.tell() < 5 << 20:
                f.write(block)
        clients[i].sessions.mirror(tracecraft.Transcript("claude-code", f"replay-session-{i}",
                                                         path))
    built = time.perf_counter() - t
    for c in clients:
        c.close()
    out = os.path.join(b.tmp, "replay.html")
    b.progress(f"replay: project built in {built:.0f} s")
    seconds, _ = b.run([b.python, TRACECRAFT, "replay", "--out", out, "--json"], d,
                       timeout=600)
    reader = b.client(project, "reader")   # the same reads in this process, counted
    _, labels = b.measure(lambda: reader.timeline())
    reader.close()
    size = os.path.getsize(out)
    b.row(section, f"replay of {n_agents} agents, {n_steps} steps, {n_messages} messages, "
          f"{n_memory} memory writes, {n_sessions} sessions of 5 MB", f"{seconds:.1f} s",
          "<= 20 s", seconds <= 20, f"project built in {built:.0f} s; file {size / 1e6:.1f} MB")
    b.row(section, "requests of that replay", f"{len(labels)}", "", None,
          ", ".join(f"{k} {v}" for k, v in list(summarize(labels).items())[:8]))
    chrome = shutil.which("chromium") or shutil.which("chromium-browser")
    if chrome:
        profile = os.path.join(b.tmp, "chromium")
        base = [chrome, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                "--virtual-time-budget=2000", "--dump-dom"]
        t = time.perf_counter()
        subprocess.run(base + ["about:blank"], capture_output=True, timeout=120)
        empty = time.perf_counter() - t
        t = time.perf_counter()
        dom = subprocess.run(base + [f"file://{out}"], capture_output=True, timeout=300,
                             text=True).stdout
        loaded = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(base + [f"file://{out}#q=message%2042&kinds=message"], capture_output=True,
                       timeout=300)
        filtered = time.perf_counter() - t
        ok, rows = 'class="row' in dom, dom.count('class="row')
        b.row(section, "the page in headless chromium: loaded and drawn (beyond chromium's own "
              "start)", f"{loaded - empty:.2f} s", "< 2 s", ok and loaded - empty < 2,
              f"chromium alone {empty:.2f} s; rows drawn: {rows}")
        b.row(section, "the page opened with a text and kind filter", f"{filtered - empty:.2f} s",
              "< 2 s", filtered - empty < 2, "")
    # what `ui` does on each refresh: the same timeline call with the state it keeps, counted
    live, state = b.client(project, "viewer"), {}
    live.timeline(state=state)
    idle = []
    for _ in range(5):
        idle += b.measure(lambda: live.timeline(state=state))[1]
    writer = b.client(project, "agent-000")
    for m in range(100):
        writer.send("agent-001", f"live {m}")
    writer.close()
    found, busy = b.measure(lambda: live.timeline(state=state))
    live.close()
    if len(found["events"]) < 100:
        raise BenchError(f"the refresh after 100 messages found {len(found['events'])} events")
    b.row(section, "ui: requests per refresh, idle", f"{len(idle) / 5:.0f}", "", None,
          ", ".join(f"{k} {v / 5:g}" for k, v in summarize(idle).items()))
    b.row(section, "ui: requests of the refresh after 100 new messages", f"{len(busy)}", "", None,
          ", ".join(f"{k} {v}" for k, v in summarize(busy).items()))
    b.figures["replay"] = {"seconds": seconds, "bytes": size, "requests": len(labels),
                           "ui_idle_requests": len(idle) / 5, "ui_busy_requests": len(busy)}


# ==================================================================================================
# 10. Idle cost of every waiting loop (issue 15)
# ==================================================================================================

# AWS S3 Standard list prices, $ per request: what an hour of waiting costs.
PRICES = {"GET": 0.0004 / 1000, "HEAD": 0.0004 / 1000, "LIST": 0.005 / 1000, "PUT": 0.005 / 1000,
          "POST": 0.005 / 1000, "DELETE": 0.0}
IDLE_BUDGET = 0.001   # $ per agent-hour (issue 15): about 2,500 GETs or 200 LISTs


def _kind(name):
    """'GET', 'HEAD', 'LIST', 'PUT'... of a request label ('PUT-cas cursor' -> 'PUT')."""
    return name.split(" ")[0].split("-")[0]


class _Lines:
    """The lines a waiter reports, each with the monotonic time it was read."""

    def __init__(self):
        import queue
        import threading
        self.queue, self.threading = queue.Queue(), threading

    def follow(self, stream):
        def read():
            for line in iter(stream.readline, b""):
                self.queue.put((time.monotonic(), line.decode(errors="replace")))
        self.threading.Thread(target=read, daemon=True).start()
        return self

    def drain(self):
        while not self.queue.empty():
            self.queue.get()

    def until(self, wanted, timeout):
        """The time of the first line containing `wanted`, or None after `timeout` seconds."""
        import queue
        deadline = time.monotonic() + timeout
        while True:
            try:
                at, line = self.queue.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if wanted in line:
                return at


def _ui_lines(b, proc, lines):
    """Act as the live page does: ask the ui for new events every second; report each event's
    text as a line (a thread)."""
    import urllib.request
    url = None
    for line in iter(proc.stdout.readline, b""):
        if b"http://" in line:
            url = line.decode().split(" at ", 1)[1].split(" ", 1)[0]
            break
    if not url:
        raise BenchError(f"ui did not start: {proc.stderr.read().decode(errors='replace')[-500:]}")

    def page():
        last = 0
        while proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{url}events?after={last}", timeout=30) as r:
                    news = json.loads(r.read())["events"]
            except OSError:
                return
            for event in news:
                last = max(last, event["id"])
                lines.queue.put((time.monotonic(), json.dumps(event)))
            time.sleep(1)
    lines.threading.Thread(target=page, daemon=True).start()


# The waiting loops, one row each (table-driven: a new loop is a new row).  Per row:
#   argv(ctx, i)     the waiter's command line (waiter i of the row; "tracecraft" is implied)
#   trigger(ctx, i, n)  new work for waiter i (trigger number n), made in this process through
#                    the store directly (not counted); returns the text the waiter then reports
#   once             the waiter exits when it reports (each trial is a fresh process)
#   setup(ctx, i)    optional, before waiter i starts;  follow(b, proc, lines): how its reports
#                    are read (default: its standard output)
# ctx: {"dir": the project directory (its config names the counting proxy), "writer": a client
# of another agent, "tmp": a private directory}.
def _send_to(ctx, i, n):
    text = f"idle-{i}-{n}"
    ctx["writer"].send(f"w{i}", text)
    return text


def _complete_step(ctx, i, n):
    step = f"idle-{i}-{n}"
    ctx["writer"].claim(step)
    ctx["writer"].complete(step)
    return f"{step} complete"


def _step_in_flight(ctx, i):
    """A planned step held by another agent, so that a waiter waits instead of being told that
    every planned step has ended."""
    if not ctx.get("in flight"):
        ctx["writer"].plans.add("in-flight")
        ctx["writer"].next(ttl=7200)
        ctx["in flight"] = True


def _ready_step(ctx, i, n):
    step = f"idle-{i}-{n}"
    ctx["writer"].plans.add(step, labels=[f"w{i}"])
    return f'"step": "{step}"'


def _broadcast(ctx, i, n):
    text = f"idle-ui-{i}-{n}"
    ctx["writer"].send("_broadcast", text)
    return text


def _transcript_path(ctx, i):
    return os.path.join(ctx["tmp"], f"idle-session-{i}.jsonl")


def _new_transcript(ctx, i):
    with open(_transcript_path(ctx, i), "w") as f:
        f.write(_transcript_lines(5, ctx["dir"], f"idle-session-{i}"))


def _grow_transcript(ctx, i, n):
    with open(_transcript_path(ctx, i), "a") as f:
        f.write(_transcript_lines(1, ctx["dir"], f"idle-session-{i}", 100 + n))
    return f'"session": "idle-session-{i}"'


IDLE_LOOPS = [
    {"name": "inbox --wait", "once": True, "trigger": _send_to,
     "argv": lambda ctx, i: ["inbox", "--wait", "--json"]},
    {"name": "wait-for", "once": True, "trigger": _complete_step,
     "argv": lambda ctx, i: ["wait-for", f"idle-{i}-{ctx['trial']}", "--timeout", "3600"]},
    {"name": "next --wait", "once": True, "trigger": _ready_step, "setup": _step_in_flight,
     "argv": lambda ctx, i: ["next", "--wait", "--label", f"w{i}", "--json"]},
    {"name": "session mirror -f", "once": False, "trigger": _grow_transcript,
     "setup": _new_transcript,
     "argv": lambda ctx, i: ["session", "mirror", "--harness", "claude-code", "--session-id",
                             f"idle-session-{i}", "--transcript", _transcript_path(ctx, i),
                             "-f", "--json"]},
    {"name": "ui (a page open)", "once": False, "trigger": _broadcast, "follow": _ui_lines,
     "argv": lambda ctx, i: ["ui", "--port", "0"]},
    {"name": "status --watch", "once": False, "trigger": None,
     "argv": lambda ctx, i: ["status", "--watch", "--json"]},
]


def _idle_row(b, proxy, loop, section):
    quick = b.quick
    idle_s = 12 if quick else 60
    waiters = (2 if quick else 4) if loop["once"] else 1
    settle = tracecraft.WAIT_FAST_SECONDS + 4
    d = b.cli_project("idle-" + "".join(c for c in loop["name"] if c.isalnum()),
                      endpoint=proxy.endpoint)
    ctx = {"dir": d, "tmp": os.path.join(b.tmp, "idle", os.path.basename(d)), "trial": 0}
    os.makedirs(ctx["tmp"], exist_ok=True)
    ctx["writer"] = b.client(os.path.basename(d).rsplit("-", 1)[0], "boss")
    procs = []

    def start(i):
        if loop.get("setup"):
            loop["setup"](ctx, i)
        env = dict(b.env, TRACECRAFT_AGENT=f"w{i}")
        proc = subprocess.Popen([b.python, TRACECRAFT] + loop["argv"](ctx, i), cwd=d, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        procs.append(proc)
        lines = _Lines()
        (loop.get("follow") or (lambda b, p, l: l.follow(p.stdout)))(b, proc, lines)
        return proc, lines

    def stop(proc):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def detect(i, n, lines, proc, phase=0.0):
        lines.drain()   # what it reported before (a first look) is not this work
        time.sleep(phase)
        text = loop["trigger"](ctx, i, n)
        t = time.monotonic()
        at = lines.until(text, 30)
        if at is None:
            raise BenchError(f"{loop['name']}: waiter {i} did not report {text!r} within 30 s "
                             f"(exit {proc.poll()})")
        return at - t
    try:
        # Idle: the waiters started, settled (their first look and brisk first seconds done:
        # tracecraft.WAIT_FAST_SECONDS and the back-off after), counted for idle_s.
        started = [start(i) for i in range(waiters)]
        time.sleep(settle)
        mark = proxy.log.mark()
        time.sleep(idle_s)
        labels = proxy.log.labels(mark)
        late = []
        if loop["trigger"]:   # new work after the idle time (>= 30 s in a full run)
            import random
            for i, (proc, lines) in enumerate(started):
                # at a random moment of the waiters' polling: the waiters started together,
                # and work arriving right after each one's poll would measure the worst case
                late.append(detect(i, 0, lines, proc, random.uniform(0, 3)))
                if not loop["once"]:
                    for n in (1, 2):   # again, once the loop has slowed down again
                        time.sleep(12)
                        late.append(detect(i, n, lines, proc))
        for proc, _ in started:
            stop(proc)
        early = []
        if loop["trigger"]:   # new work 0.5-3 s after a waiter started
            delays = [0.5, 1.0, 1.5, 2.0, 3.0] if not quick else [0.5, 1.5, 3.0]
            if loop["once"]:
                for n, delay in enumerate(delays, 1):
                    ctx["trial"] = n
                    proc, lines = start(0)
                    time.sleep(delay)
                    early.append(detect(0, n, lines, proc))
                    stop(proc)
            else:
                proc, lines = start(1)
                time.sleep(2)
                for n, delay in enumerate(delays, 1):
                    time.sleep(delay)
                    early.append(detect(1, n, lines, proc))
                stop(proc)
    finally:
        for proc in procs:
            stop(proc)
        ctx["writer"].close()
    seconds = idle_s * waiters
    kinds = {}
    for name in labels:
        kinds[_kind(name)] = kinds.get(_kind(name), 0) + 1
    per_s = {k: v / seconds for k, v in kinds.items()}
    cost = sum(PRICES.get(k, PRICES["PUT"]) * v * 3600 for k, v in per_s.items())
    beat = sum(1 for name in labels if name == "PUT agents") / seconds
    waiting = cost - beat * 3600 * PRICES["PUT"]
    shown = ", ".join(f"{k} {v:.3f}" for k, v in sorted(per_s.items())) or "none"
    ok = waiting <= IDLE_BUDGET if loop["name"] != "status --watch" else None
    b.row(section, f"{loop['name']}: idle requests/s by kind", shown, "", None,
          f"{len(labels)} requests of {waiters} waiter(s) over {idle_s} s from {settle:g} s "
          "into the wait: "
          + ", ".join(f"{k} {v}" for k, v in summarize(labels).items()))
    b.row(section, f"{loop['name']}: idle $ per agent-hour (without the heartbeat)",
          f"${waiting:.5f}", f"<= ${IDLE_BUDGET}", ok,
          f"with the heartbeat's PUTs ({beat * 3600:.0f}/h): ${cost:.5f}")
    figures = {"idle_s": idle_s, "waiters": waiters, "per_s": per_s, "cost_per_hour": cost,
               "cost_per_hour_waiting": waiting, "labels": summarize(labels)}
    if early:
        b.row(section, f"{loop['name']}: detection, median, new work 0.5-3 s after the start",
              ms(median(early)), "<= 500 ms" if loop["once"] else "", median(early) <= 0.5
              if loop["once"] else None, f"{len(early)} trials, max {ms(max(early))}")
    if late:
        b.row(section, f"{loop['name']}: detection, median, after {idle_s + settle:g} s idle",
              ms(median(late)), "<= 3 s" if loop["once"] else "", median(late) <= 3.0
              if loop["once"] else None, f"{len(late)} trials, max {ms(max(late))}")
    figures.update(early_s=early, late_s=late)
    return figures


def scenario_idle(b):
    section = "10 idle"
    host, port = b.s3.endpoint.rsplit("//", 1)[1].split(":")
    b.figures["idle"] = {}
    with CountingProxy(host, int(port)) as proxy:
        for loop in IDLE_LOOPS:
            b.progress(f"idle: {loop['name']}")
            b.figures["idle"][loop["name"]] = _idle_row(b, proxy, loop, section)


def _plan_layout(layout, n):
    """A plan of n steps: "layered" (layers of 100, or 20 in a small plan, each step after two
    of the layer before) or "fan-out" (one root, every other step after it)."""
    if layout == "fan-out":
        return [{"step": "root"}] + [{"step": f"leaf-{i:04d}", "after": ["root"]}
                                     for i in range(n - 1)]
    width = 100 if n >= 1000 else 20
    return [{"step": f"L{layer:02d}-{i:03d}",
             "after": sorted({f"L{layer - 1:02d}-{i:03d}", f"L{layer - 1:02d}-{(i * 7 + 3) % width:03d}"})
             if layer else []} for layer in range(n // width) for i in range(width)]


def _cost_of_next(b, project, done):
    """The requests of one `next` in a project where `done` steps are complete: a new step after
    the root is added and taken."""
    with b.client(project, "prober") as prober:
        prober.plans.add(f"probe-{done}", after=["root"])
        found, labels = b.measure(lambda: prober.next())
        assert found["step"] == f"probe-{done}", found
        return labels


def scenario_plans(b):
    section = "11 plans"
    n_workers, n_steps = (10, 500) if b.quick else (50, 5000)
    b.figures["plans"] = {}
    for layout in ("layered", "fan-out"):
        project = f"plan-{layout}"
        plan = _plan_layout(layout, n_steps)
        b.progress(f"plans: loading {n_steps} steps ({layout})")
        with b.client(project, "loader") as loader:
            t = time.perf_counter()
            _, load_labels = b.measure(lambda: loader.plans.load(plan))
            load_s = time.perf_counter() - t
        b.progress(f"plans: {n_workers} processes working the {layout} plan")
        configs = [{"settings": b.settings(), "project": project, "agent": f"p{i:02d}",
                    "wait": 300} for i in range(n_workers)]
        go, results = b.workers("plan", configs, timeout=1800)
        done = [s for r in results for s, _ in r["done"]]
        takeovers = sum(1 for r in results for _, g in r["done"] if g != 1)
        errors = [e for r in results for e in r["errors"]]
        with b.client(project, "checker") as checker:
            leases = {lease.step: lease.shape() for lease in checker.steps.leases()}
        wrong = [s["step"] for s in plan if leases.get(s["step"], {}).get("status") != "complete"]
        early = [(s["step"], d) for s in plan for d in s.get("after", [])
                 if s["step"] in leases and d in leases and
                 leases[s["step"]]["claimed_at"] < (leases[d]["ended_at"] or "")]
        wall = max(r["ended"] for r in results) - go
        requests = sum(r["requests"] for r in results)
        labels = _summed_labels(results)
        per_step = requests / n_steps
        once = sorted(done) == sorted(s["step"] for s in plan) and not wrong
        b.figures["plans"][layout] = {
            "workers": n_workers, "steps": n_steps, "load_s": load_s,
            "load_requests": len(load_labels), "wall_s": wall, "requests": requests,
            "requests_per_step": per_step, "labels": labels, "takeovers": takeovers,
            "before_dependencies": early, "errors": errors,
            "per_worker": [len(r["done"]) for r in results]}
        name = f"{layout}, {n_steps} steps, {n_workers} processes"
        b.row(section, f"{name}: every step done exactly once", f"{len(set(done))}/{n_steps}",
              "all, once", once and not takeovers,
              f"{len(wrong)} not complete in the store, {len(done) - len(set(done))} twice, "
              f"{takeovers} taken over; {len(errors)} errors" + (f": {errors[0]}" if errors
                                                                  else ""))
        b.row(section, f"{layout}: claimed before a dependency had ended", str(len(early)), "0",
              not early, "claimed_at >= every dependency's ended_at, in the store")
        b.row(section, f"{layout}: load / wall time", f"{load_s:.1f} s / {wall:.1f} s", "",
              None, f"load {len(load_labels)} requests; {n_steps / wall:.0f} steps/s; steps per "
              f"worker {min(len(r['done']) for r in results)}-"
              f"{max(len(r['done']) for r in results)}")
        b.row(section, f"{layout}: requests per step (next + complete + waits)",
              f"{per_step:.1f}", "<= 4", per_step <= 4.0,
              ", ".join(f"{k} {v / n_steps:.2f}" for k, v in sorted(
                  labels.items(), key=lambda kv: -kv[1])[:8]))
    small = "plan-cost-100"
    with b.client(small, "loader") as loader:
        loader.plans.load(_plan_layout("fan-out", 100))
        for _ in range(100):
            loader.complete(loader.next()["step"])
    few = _cost_of_next(b, small, 100)
    many = _cost_of_next(b, "plan-fan-out", n_steps)
    b.figures["plans"]["next_cost"] = {"100": summarize(few), str(n_steps): summarize(many)}
    b.row(section, f"one next: requests at 100 / {n_steps} steps done", f"{len(few)} / {len(many)}",
          "equal", len(few) == len(many), ", ".join(f"{k} {v}" for k, v in
                                                    summarize(many).items()))


RUNNERS = {"cli": scenario_cli, "requests": scenario_requests, "throughput": scenario_throughput,
           "barrier": scenario_barrier, "contention": scenario_contention,
           "inbox": scenario_inbox, "scale": scenario_scale, "sessions": scenario_sessions,
           "replay": scenario_replay, "idle": scenario_idle, "plans": scenario_plans,
           "artifacts": scenario_artifacts}


def print_table(rows, out=sys.stdout):
    cols = ("section", "measure", "value", "target", "result")
    widths = {c: max([len(c)] + [len(str(r[c])) for r in rows]) for c in cols}
    head = "  ".join(c.ljust(widths[c]) for c in cols) + "  detail"
    print(head, file=out)
    print("-" * len(head), file=out)
    last = None
    for r in rows:
        if last is not None and r["section"] != last:
            print(file=out)
        last = r["section"]
        print("  ".join(str(r[c]).ljust(widths[c]) for c in cols) + "  " + r["detail"], file=out)


def source_state(path):
    """(sha256 prefix of tracecraft.py, whether it differs from git HEAD or None if unknown)."""
    import hashlib
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    try:
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "tracecraft.py"], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               timeout=10).returncode == 1
    except (OSError, subprocess.SubprocessError):
        dirty = None
    return digest, dirty


def main(argv=None):
    global tracecraft, TRACECRAFT
    snapshot = tempfile.mkdtemp(prefix="tc-bench-src-")
    try:
        shutil.copy(SOURCE, os.path.join(snapshot, "tracecraft.py"))
        TRACECRAFT = os.path.join(snapshot, "tracecraft.py")
        os.environ["BENCH_TRACECRAFT_DIR"] = snapshot     # for the workers (see common.py)
        sys.path.insert(0, snapshot)
        import tracecraft as module
        tracecraft = module
        return _main(argv)
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


def _main(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--quick", action="store_true",
                        help="fewer repetitions and smaller runs (about a minute)")
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="run only these scenarios: " + ", ".join(SCENARIOS))
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter for tracecraft commands and the python -c pass "
                             "baseline (default: this one, %(default)s)")
    parser.add_argument("--output", default=os.path.join(HERE, "results.json"),
                        help="where to write the figures (default: %(default)s)")
    parser.add_argument("--contention-policy", choices=("runs", "list", "scan"), default="runs",
                        help="how contention workers find steps: list steps/ and walk the "
                             "free ones from a random place (runs, default) or in random order "
                             "(list), or try every step once in random order (scan)")
    args = parser.parse_args(argv)
    selected = SCENARIOS
    if args.only:
        selected = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [s for s in selected if s not in RUNNERS]
        if unknown:
            parser.error(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    started = time.time()
    t0 = time.monotonic()
    digest, dirty = source_state(TRACECRAFT)
    failed = []
    with tempfile.TemporaryDirectory(prefix="tc-bench-") as tmp, SeaweedServer() as s3:
        bench = Bench(args, s3, tmp)
        bench.t0 = t0
        bench.progress(f"SeaweedFS at {s3.endpoint} (started in {s3.startup_seconds:.1f} s)")
        for name in selected:
            bench.progress(f"scenario {name} ...")
            t = time.monotonic()
            try:
                RUNNERS[name](bench)
            except Exception as exc:  # noqa: BLE001 - one scenario failing must not hide the rest
                traceback.print_exc()
                failed.append(name)
                bench.row(f"{SCENARIOS.index(name) + 1} {name}", "ERROR", type(exc).__name__, "",
                          False, str(exc)[:300])
            bench.figures.setdefault("durations_s", {})[name] = time.monotonic() - t
            bench.progress(f"scenario {name} done in {time.monotonic() - t:.1f} s")
    duration = time.monotonic() - t0
    digest_end, _ = source_state(SOURCE)
    print()
    print(f"tracecraft {tracecraft.__version__} (tracecraft.py sha256 {digest}"
          f"{', uncommitted changes' if dirty else ''}) benchmark, "
          f"{time.strftime('%Y-%m-%d %H:%M:%S')}, "
          f"{'quick' if args.quick else 'full'} run, {duration:.0f} s, python "
          f"{platform.python_version()}, {os.cpu_count()} CPUs, load "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    if digest_end != digest:
        print(f"note: tracecraft.py changed during the run ({digest} -> {digest_end}); "
              f"every figure is of the snapshot {digest} taken at the start")
    print()
    print_table(bench.rows)
    missed = [t for t in bench.targets if not t["pass"]]
    print()
    print(f"targets: {len(bench.targets) - len(missed)} pass, {len(missed)} MISS"
          + (f"; scenarios failed: {', '.join(failed)}" if failed else ""))
    results = {"meta": {"started": started, "duration_s": duration, "quick": args.quick,
                        "scenarios": selected, "python": args.python,
                        "python_version": platform.python_version(),
                        "tracecraft_version": tracecraft.__version__,
                        "tracecraft_sha256": digest, "repo_tracecraft_sha256_at_end": digest_end,
                        "uncommitted_changes": dirty, "cpus": os.cpu_count(),
                        "platform": platform.platform(), "failed": failed},
               "targets": bench.targets, "rows": bench.rows, "figures": bench.figures}
    with open(args.output, "w") as f:
        json.dump(results, f, indent=1, default=str)
    print(f"figures written to {os.path.relpath(args.output)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

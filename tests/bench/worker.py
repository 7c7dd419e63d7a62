"""Worker processes for the benchmark (started by run.py; not a test module).

    python worker.py MODE CONFIG_JSON

Every mode connects, prints {"ready": true}, waits for one line on stdin (the common start
signal), works, and prints one JSON line of results.  Every request is counted in-process
(common.install_counter), and every loop is bounded by the deadline in the config.

  wait       wait_for(step); report when it returned and what it cost        (barrier latency)
  contend    claim steps from a pool until none is left, completing each won (contention)
  scale      several agents as threads working a DAG of steps                (scale run)
  plan       next() / complete() until every planned step has ended          (plan run)
"""

import json
import os
import random
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import install_counter, summarize  # noqa: E402

import tracecraft  # noqa: E402  (common put the repository root on sys.path)


def handshake():
    print(json.dumps({"ready": True}), flush=True)
    sys.stdin.readline()


def report(data):
    print(json.dumps(dict(data, tracecraft=os.path.abspath(tracecraft.__file__))), flush=True)


# -- barrier: one waiter ---------------------------------------------------------------------------

def wait(cfg):
    log = install_counter()
    client = tracecraft.connect(project=cfg["project"], agent=cfg["agent"], **cfg["settings"])
    handshake()
    mark = log.mark()
    started, mono_started = time.time(), time.monotonic()
    try:
        client.wait_for([cfg["step"]], timeout=cfg["timeout"])
        ok, error = True, None
    except tracecraft.TracecraftError as exc:
        ok, error = False, str(exc)
    detected = time.time()
    entries = log.since(mark)
    labels = [e[0] for e in entries]
    client.close()
    report({"ok": ok, "error": error, "started": started, "detected": detected,
            "requests": len(labels), "labels": summarize(labels),
            "times": [e[3] - mono_started for e in entries]})


# -- contention: claim from a pool until none is left -------------------------------------------

def contend(cfg):
    """Policy "runs" (default): learn which steps are taken from one listing of steps/, then walk
    the free ones in order from a random place; after a lost claim (another worker's run begins
    there) list again and jump to a random free step.  Policy "list": the same listing, but claim
    the free steps in random order.  Both stop when a listing shows every step taken.  Policy
    "scan": try every step once, in random order."""
    log = install_counter()
    client = tracecraft.connect(project=cfg["project"], agent=cfg["agent"], **cfg["settings"])
    steps = [f"s{i:03d}" for i in range(cfg["steps"])]
    rng = random.Random(cfg["agent"])
    prefix = client.key("steps") + "/"
    stats = {"won": [], "lost": 0, "lists": 0, "errors": []}

    def candidates():
        """The free steps, in the order they will be tried (the last one first)."""
        stats["lists"] += 1
        taken = {e.key[len(prefix):].split("/")[0] for e in client.store.list(prefix)
                 if e.key.endswith("/claim.json")}
        left = [s for s in steps if s not in taken]
        if cfg["policy"] == "runs" and left:
            start = rng.randrange(len(left))
            return (left[start:] + left[:start])[::-1]
        rng.shuffle(left)
        return left

    handshake()
    started = time.time()
    deadline = time.monotonic() + cfg["deadline"]
    mark = log.mark()
    listing = cfg["policy"] in ("runs", "list")
    todo = candidates() if listing else rng.sample(steps, len(steps))
    while todo and time.monotonic() < deadline:
        step = todo.pop()
        try:
            client.claim(step)
        except tracecraft.Refused:
            stats["lost"] += 1
            if listing:
                todo = candidates()
            continue
        except tracecraft.TracecraftError as exc:
            stats["errors"].append(f"claim {step}: {exc}")
            continue
        try:
            client.complete(step)
            stats["won"].append(step)
        except tracecraft.TracecraftError as exc:
            stats["errors"].append(f"complete {step}: {exc}")
        if not todo and listing:
            todo = candidates()
    if todo:
        stats["errors"].append(f"deadline reached with {len(todo)} candidates left")
    ended = time.time()
    labels = log.labels(mark)
    client.close()
    report(dict(stats, started=started, ended=ended, requests=len(labels),
                labels=summarize(labels)))


# -- scale: agents as threads working a DAG -------------------------------------------------------

def dag(layers, width, deps, seed):
    """{step: [its dependencies]}: `layers` layers of `width` steps; every step after the first
    layer depends on `deps` random steps of the layer before (the barriers)."""
    rng = random.Random(seed)
    graph = {}
    for layer in range(layers):
        for i in range(width):
            before = [step_name(layer - 1, j) for j in sorted(rng.sample(range(width), deps))] \
                if layer else []
            graph[step_name(layer, i)] = before
    return graph


def step_name(layer, i):
    return f"L{layer:02d}-{i:03d}"


def agent_name(i):
    return f"agent{i:03d}"


def scale(cfg):
    log = install_counter()
    graph = dag(cfg["layers"], cfg["width"], cfg["deps"], cfg["seed"])
    n_agents, width = cfg["agents"], cfg["width"]
    clients = {i: tracecraft.connect(project=cfg["project"], agent=agent_name(i), **cfg["settings"])
               for i in cfg["mine"]}
    results = {}
    handshake()
    started = time.time()
    deadline = time.monotonic() + cfg["deadline"]
    mark = log.mark()

    def run_agent(idx):
        me = agent_name(idx)
        client = clients[idx]
        rng = random.Random(cfg["seed"] * 1000 + idx)
        r = results[me] = {"done": [], "lost": 0, "sent": [], "received": [], "errors": [],
                           "waited": 0.0}

        def read_inbox():
            r["received"].extend(m["text"] for m in client.inbox())

        def work(step):
            deps = graph[step]
            if deps:
                t = time.monotonic()
                client.wait_for(deps, timeout=max(1.0, deadline - time.monotonic()))
                r["waited"] += time.monotonic() - t
            client.memory.set(f"result.{step}", {"by": me, "deps": deps})
            to = agent_name((idx + 1) % n_agents)
            text = f"{step} done by {me}"
            client.send(to, text)
            r["sent"].append([to, text])
            read_inbox()
            client.complete(step)
            r["done"].append(step)

        def attempt(step):
            try:
                client.claim(step)
            except tracecraft.Refused:
                r["lost"] += 1
                return
            work(step)

        try:
            if idx in cfg["broadcasters"]:
                text = f"hello from {me}"
                client.send("_broadcast", text)
                r["sent"].append(["_broadcast", text])
            for layer in range(cfg["layers"]):
                for i in range(idx, width, n_agents):
                    if time.monotonic() > deadline:
                        raise tracecraft.WaitTimeout("deadline reached")
                    attempt(step_name(layer, i))
                # Sometimes help with the next layer: a claim that may race its owner's.
                if layer + 1 < cfg["layers"] and rng.random() < cfg["steal"]:
                    i = rng.randrange(width)
                    if i % n_agents != idx:
                        attempt(step_name(layer + 1, i))
            read_inbox()
        except tracecraft.TracecraftError as exc:
            r["errors"].append(f"{type(exc).__name__}: {exc}")
        r["finished"] = time.time()

    threads = [threading.Thread(target=run_agent, args=(i,), daemon=True) for i in cfg["mine"]]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 30))
    ended = time.time()
    labels = log.labels(mark)
    for c in clients.values():
        c.close()
    report({"agents": results, "started": started, "ended": ended, "requests": len(labels),
            "labels": summarize(labels), "alive": sum(t.is_alive() for t in threads)})


# -- plan: a fleet taking a plan's steps with next() ------------------------------------------------

def plan(cfg):
    log = install_counter()
    client = tracecraft.connect(project=cfg["project"], agent=cfg["agent"], **cfg["settings"])
    done, errors = [], []
    handshake()
    started = time.time()
    mark = log.mark()
    while True:
        try:
            found = client.next(wait=cfg["wait"])
        except tracecraft.TracecraftError as exc:
            errors.append(f"next: {exc}")
            break
        if found is None:
            break
        try:
            client.complete(found["step"])
            done.append([found["step"], found["lease"]["generation"]])
        except tracecraft.TracecraftError as exc:
            errors.append(f"complete {found['step']}: {exc}")
    ended = time.time()
    labels = log.labels(mark)
    client.close()
    report({"done": done, "errors": errors, "started": started, "ended": ended,
            "requests": len(labels), "labels": summarize(labels)})


def main():
    mode, cfg = sys.argv[1], json.loads(sys.argv[2])
    {"wait": wait, "contend": contend, "scale": scale, "plan": plan}[mode](cfg)


if __name__ == "__main__":
    main()


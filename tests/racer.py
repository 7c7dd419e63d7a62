"""A worker process for race tests.  Every line it prints says when the attempt began and ended
("began", "ended": time.time()), so that a test can check that the racers really raced.  A START
of "-" makes it print {"ready": true} once connected and read the start time from standard
input, so that all racers start together as soon as the slowest is ready (conftest.race).

    python tests/racer.py claim SETTINGS_JSON AGENT START ROUNDS
        waits for each round's start (START + round * 0.5 s), claims step-<round>, prints one
        JSON line per round: {"round": r, "won": bool, "holder": text}
    python tests/racer.py complete SETTINGS_JSON AGENT START ROUNDS
    python tests/racer.py reserve SETTINGS_JSON AGENT START ROUNDS    (the glob in $RACER_GLOB)
    python tests/racer.py work SETTINGS_JSON AGENT START MILLISECONDS
        takes planned steps with next(wait=...) and, after MILLISECONDS of "work" on each,
        completes them, until every step has ended
    python tests/racer.py incr SETTINGS_JSON AGENT START COUNT
        adds 1 to the object "counter" COUNT times with compare-and-swap, prints the retries
    python tests/racer.py memincr SETTINGS_JSON AGENT START COUNT
    python tests/racer.py send SETTINGS_JSON AGENT START COUNT SKEW_SECONDS
    python tests/racer.py read SETTINGS_JSON AGENT START 0
    python tests/racer.py upload SETTINGS_JSON AGENT START COUNT
    python tests/racer.py download SETTINGS_JSON AGENT START SECONDS
    python tests/racer.py create SETTINGS_JSON AGENT START MEBIBYTES
        one create-only upload of big.bin, MEBIBYTES long, every byte saying who wrote it:
        {"won": bool, "said": text, "began": t, "ended": t}
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import tracecraft  # noqa: E402

ROUND_GAP = float(os.environ.get("RACER_ROUND_GAP", "0.5"))   # seconds between rounds


def claim(client, start, rounds):
    for r in range(rounds):
        delay = start + r * ROUND_GAP - time.time()
        if delay > 0:
            time.sleep(delay)
        began = time.time()
        try:
            record = client.claim(f"step-{r}")
            won, holder = not record["already_held"], record["holder"]
        except tracecraft.Refused as exc:
            won, holder = False, str(exc)
        print(json.dumps({"round": r, "won": won, "holder": holder, "began": began,
                          "ended": time.time()}), flush=True)


def complete(client, start, rounds):
    """Round by round, end step-<round> (which this agent holds) at the same instant as the
    other racers: {"round": r, "won": bool, "began": t, "ended": t} per round."""
    for r in range(rounds):
        delay = start + r * ROUND_GAP - time.time()
        if delay > 0:
            time.sleep(delay)
        began, said = time.time(), ""
        try:
            client.complete(f"step-{r}", note=f"by process {os.getpid()}")
            won = True
        except tracecraft.Refused as exc:
            won, said = False, str(exc)
        print(json.dumps({"round": r, "won": won, "began": began, "ended": time.time(),
                          "pid": os.getpid(), "said": said}), flush=True)


def incr(client, start, count):
    store, key, retries = client.store, "race/counter", 0
    time.sleep(max(0, start - time.time()))
    began = time.time()
    for _ in range(count):
        while True:
            blob = store.get(key)
            try:
                store.put(key, str(int(blob.body) + 1).encode(), if_match=blob.etag)
                break
            except (tracecraft.PreconditionFailed, tracecraft.ConditionalConflict):
                retries += 1
    print(json.dumps({"retries": retries, "began": began, "ended": time.time()}), flush=True)




def memincr(client, start, count):
    """COUNT atomic increments of memory key "counter"."""
    time.sleep(max(0, start - time.time()))
    began = time.time()
    for _ in range(count):
        client.memory.incr("counter")
    print(json.dumps({"done": count, "began": began, "ended": time.time()}), flush=True)


def send(client, start, count, skew):
    """COUNT messages to r1, r2 and _broadcast in turn, stamped by a clock skewed by SKEW s."""
    client.clock = lambda: time.time() + skew
    time.sleep(max(0, start - time.time()))
    for i in range(count):
        to = ("r1", "r2", "_broadcast")[i % 3]
        text = f"{client.agent}:{i}"
        began = time.time()
        client.send(to, text)
        print(json.dumps({"to": to, "text": text, "began": began, "ended": time.time()}),
              flush=True)


def read(client, start, _):
    """Read until told "stop" on standard input (the senders are done, or the test has ended
    and closed it) and nothing more comes, or else until nothing has come for 3 s.  Prints,
    for each read that got messages, their texts and when the read began and ended."""
    import select
    time.sleep(max(0, start - time.time()))
    quiet_since, stopping = time.monotonic(), False
    while time.monotonic() - quiet_since < (0.5 if stopping else 3.0):
        began = time.time()
        messages = client.inbox()
        if messages:
            print(json.dumps({"texts": [m["text"] for m in messages], "began": began,
                              "ended": time.time()}), flush=True)
            quiet_since = time.monotonic()
        else:
            time.sleep(0.2)   # an idle reader must not flood the store the senders are using
        if not stopping and select.select([sys.stdin], [], [], 0)[0]:
            stopping = sys.stdin.readline().strip() in ("stop", "")   # "": nobody is left
            quiet_since = time.monotonic()


def upload(client, start, count):
    """COUNT uploads, with --overwrite, of a file whose every byte says who wrote it and when:
    artifact race.bin, 200 kB."""
    import tempfile
    time.sleep(max(0, start - time.time()))
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(count):
            path = os.path.join(tmp, "race.bin")
            with open(path, "wb") as f:
                f.write(f"{client.agent}:{i}:".encode().ljust(64) * 3200)
            began = time.time()
            client.artifacts.upload(path, overwrite=True)
            print(json.dumps({"uploaded": i, "began": began, "ended": time.time()}), flush=True)


def download(client, start, seconds):
    """Download race.bin again and again for SECONDS as uploads race; each download must
    verify (or find nothing yet).  Prints what each got."""
    import tempfile
    time.sleep(max(0, start - time.time()))
    with tempfile.TemporaryDirectory() as tmp:
        while time.time() < start + seconds:
            try:
                path, meta = client.artifacts.download("race.bin", dest=tmp, overwrite=True)
                with open(path, "rb") as f:
                    head = f.read(64).decode().strip()
                print(json.dumps({"got": head, "uploader": meta["uploader"]}), flush=True)
            except tracecraft.NotFound:
                print(json.dumps({"got": None}), flush=True)


def create(client, start, mebibytes):
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "big.bin")
        with open(path, "wb") as f:
            f.write(client.agent.encode().ljust(64) * (mebibytes << 14))
        time.sleep(max(0, start - time.time()))
        began, said = time.time(), ""
        try:
            client.artifacts.upload(path)
            won = True
        except tracecraft.Refused as exc:
            won, said = False, str(exc)
        print(json.dumps({"won": won, "said": said, "began": began, "ended": time.time()}),
              flush=True)


def reserve(client, start, rounds):
    """Round by round, reserve r<round>/$RACER_GLOB exclusively at the same instant as the other
    racers: {"round": r, "won": bool, "said": text, "began": t, "ended": t} per round."""
    glob = os.environ["RACER_GLOB"]
    for r in range(rounds):
        delay = start + r * ROUND_GAP - time.time()
        if delay > 0:
            time.sleep(delay)
        began, said = time.time(), ""
        try:
            client.reserve([f"r{r}/{glob}"])
            won = True
        except tracecraft.Refused as exc:
            won, said = False, str(exc)
        print(json.dumps({"round": r, "won": won, "said": said, "began": began,
                          "ended": time.time()}), flush=True)


def work(client, start, milliseconds):
    """Take the plan's steps one by one with next() and complete each, until every planned step
    has ended: one JSON line per step, {"step", "after", "began" (next called), "claimed" (it
    returned), "ended" (complete returned)}, and a last {"idle": seconds spent waiting}."""
    time.sleep(max(0, start - time.time()))
    while True:
        began = time.time()
        found = client.next(wait=60)
        if found is None:
            break
        claimed = time.time()
        time.sleep(milliseconds / 1000)
        client.complete(found["step"])
        print(json.dumps({"step": found["step"], "after": [h["step"] for h in found["handoffs"]],
                          "generation": found["lease"]["generation"], "began": began,
                          "claimed": claimed, "ended": time.time()}), flush=True)


def main():
    mode, settings, agent, start, n, *extra = sys.argv[1:]
    client = tracecraft.connect(project="race", agent=agent, **json.loads(settings))
    if start == "-":   # say that this racer is ready, and hear when all start (conftest.race)
        print(json.dumps({"ready": True}), flush=True)
        start = sys.stdin.readline()
    modes = {"claim": claim, "incr": incr, "memincr": memincr, "send": send, "read": read,
             "upload": upload, "download": download, "complete": complete,
             "reserve": reserve, "work": work, "create": create}
    modes[mode](client, float(start), int(n), *map(float, extra))


if __name__ == "__main__":
    main()

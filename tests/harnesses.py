"""Session transcripts in each harness's real shape, made here (there is no Claude Code, Codex,
OpenClaw or Hermes on these machines): the directory layouts and line shapes of ../shared/FACTS.md.

    python tests/harnesses.py append PATH SECONDS   append Claude Code lines to PATH for SECONDS,
                                                    some with secrets, some in two writes
"""

import json
import os
import re
import sqlite3
import sys
import time
import uuid

SECRETS = ["AKIAIOSFODNN7EXAMPLE", "sk-ant-api03-" + "a1B2" * 8, "sk-proj-" + "Zx9_" * 8,
           "hf_" + "abcdEFGH12" * 4, "ghp_" + "0123456789abcdefABCDEF" * 2,
           "xoxb-1234567890-abcdefghij", "Bearer eyJhbGciOiJIUzI1NiJ9.payload.sig",
           "aws_secret_access_key = wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
           "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n-----END RSA PRIVATE KEY-----"]


def claude_line(i, cwd, session, secret=None, start=None):
    """One line of a Claude Code transcript (user and assistant turns, a tool call); its time
    is `start` (epoch seconds; default 2026-12-02T10:00Z) plus i seconds."""
    kind = ("user", "assistant")[i % 2]
    text = f"turn {i}: " + ("let me look at the tests " * (i % 5)) + (f" key {secret}" if secret else "")
    content = [{"type": "text", "text": text}] if kind == "assistant" and i % 3 else text
    if kind == "assistant" and i % 3 == 0:
        content = [{"type": "tool_use", "id": f"toolu_{i}", "name": "Bash",
                    "input": {"command": f"pytest -q tests/test_{i}.py"}}]
    return json.dumps({"parentUuid": None if i == 0 else f"u{i - 1}", "isSidechain": False,
                       "type": kind, "message": {"role": kind, "content": content},
                       "uuid": f"u{i}", "sessionId": session, "cwd": cwd, "version": "2.0.0",
                       "timestamp": f"2026-12-02T10:{i // 60 % 60:02d}:{i % 60:02d}.000Z"
                       if start is None else time.strftime("%Y-%m-%dT%H:%M:%S.000Z",
                                                           time.gmtime(start + i))}) + "\n"


def claude_dir(config_dir, cwd):
    """Where Claude Code keeps the transcripts of sessions in `cwd`."""
    return os.path.join(config_dir, "projects", re.sub(r"[/\\.:]", "-", cwd))


def make_claude(config_dir, cwd, lines=20, session=None, encode=None, start=None):
    session = session or str(uuid.uuid4())
    directory = os.path.join(config_dir, "projects", encode(cwd)) if encode else \
        claude_dir(config_dir, cwd)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, session + ".jsonl")
    with open(path, "w") as f:
        for i in range(lines):
            f.write(claude_line(i, cwd, session, SECRETS[i % len(SECRETS)] if i % 4 == 1 else None,
                                start))
    return session, path


def make_codex(codex_home, cwd, lines=10, when="2026-12-02T09-30-00"):
    session = str(uuid.uuid4())
    day = os.path.join(codex_home, "sessions", *when[:10].split("-"))
    os.makedirs(day, exist_ok=True)
    path = os.path.join(day, f"rollout-{when}-{session}.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"timestamp": "2026-12-02T09:30:00.000Z", "type": "session_meta",
                            "payload": {"id": session, "cwd": cwd, "originator": "codex_cli_rs",
                                        "cli_version": "0.40.0"}}) + "\n")
        for i in range(lines - 1):
            f.write(json.dumps({"timestamp": f"2026-12-02T09:31:{i:02d}.000Z",
                                "type": ("response_item", "event_msg")[i % 2],
                                "payload": {"type": "message", "role": "assistant",
                                            "content": [{"type": "output_text",
                                                         "text": f"step {i}"}]}}) + "\n")
    return session, path


def make_openclaw(state_dir, agent="main", lines=8):
    session = str(uuid.uuid4())
    directory = os.path.join(state_dir, "agents", agent, "sessions")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "sessions.json"), "w") as f:
        json.dump({session: {"updatedAt": 1}}, f)
    with open(os.path.join(directory, session + ".jsonl.tmp"), "w") as f:
        f.write("{}\n")
    path = os.path.join(directory, session + ".jsonl")
    with open(path, "w") as f:
        f.write(json.dumps({"type": "session", "version": 3, "id": session,
                            "timestamp": "2026-12-02T08:00:00.000Z"}) + "\n")
        for i in range(lines - 1):
            f.write(json.dumps({"type": "message", "timestamp": f"2026-12-02T08:00:{i:02d}.000Z",
                                "message": {"role": ("user", "assistant")[i % 2],
                                            "content": [{"type": "text", "text": f"m{i}"}]}})
                    + "\n")
    return f"{agent}__{session}", path


def make_hermes(hermes_home, session="20261202_080000_ab12cd", rows=6):
    """A Hermes state.db in WAL mode, and the connection that keeps writing to it."""
    os.makedirs(hermes_home, exist_ok=True)
    db = sqlite3.connect(os.path.join(hermes_home, "state.db"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE IF NOT EXISTS sessions (id TEXT PRIMARY KEY, source TEXT, model TEXT, "
               "started_at REAL, ended_at REAL, title TEXT)")
    db.execute("CREATE TABLE IF NOT EXISTS messages (id INTEGER PRIMARY KEY AUTOINCREMENT, "
               "session_id TEXT, role TEXT, content TEXT, tool_calls TEXT, tool_name TEXT, "
               "timestamp REAL, token_count INTEGER)")
    db.execute("INSERT OR IGNORE INTO sessions VALUES (?, 'cli', 'hermes-3', 1764662400, NULL, "
               "'fix the build')", (session,))
    db.commit()
    add_hermes_rows(db, session, rows)
    return session, db


def add_hermes_rows(db, session, rows, start=0):
    for i in range(start, start + rows):
        content = "\x00json:" + json.dumps({"parts": [f"p{i}"]}) if i % 3 == 2 else \
            f"row {i}" + (f" token {SECRETS[1]}" if i % 4 == 1 else "")
        db.execute("INSERT INTO messages (session_id, role, content, tool_calls, tool_name, "
                   "timestamp, token_count) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (session, ("user", "assistant", "tool")[i % 3], content,
                    json.dumps([{"name": "terminal"}]) if i % 3 == 1 else None,
                    "terminal" if i % 3 == 2 else None, 1764662400.0 + i, 10 + i))
    db.commit()


def append(path, seconds):
    """Append Claude Code lines to `path` for `seconds`: some with secrets, and now and then a
    line in two writes, the way a harness flushing mid-line would leave it."""
    cwd, session = os.getcwd(), os.path.basename(path)[:-6]
    with open(path) as f:
        i = sum(1 for _ in f)
    end = time.time() + seconds
    with open(path, "a") as f:
        while time.time() < end:
            line = claude_line(i, cwd, session, SECRETS[i % len(SECRETS)] if i % 3 == 1 else None)
            if i % 7 == 3:
                f.write(line[:len(line) // 2])
                f.flush()
                time.sleep(0.01)
                f.write(line[len(line) // 2:])
            else:
                f.write(line)
            f.flush()
            i += 1
            time.sleep(0.003)
    print(i)


if __name__ == "__main__":
    if sys.argv[1] == "append":
        append(sys.argv[2], float(sys.argv[3]))

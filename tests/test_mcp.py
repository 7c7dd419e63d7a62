"""Section 8: the MCP server, driven by the official MCP Python SDK as the client over stdio."""
import json

import pytest

from conftest import COMMAND

mcp = pytest.importorskip("mcp")   # before anyio, which comes with the SDK
import anyio  # noqa: E402
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402


def server(cli, agent):
    return StdioServerParameters(command=COMMAND[0], args=[*COMMAND[1:], "mcp"],
                                 env=dict(cli.env, TRACECRAFT_AGENT=agent), cwd=str(cli.cwd))


async def call(session, tool, **arguments):
    result = await session.call_tool(tool, arguments)
    return result


def data(result):
    assert not result.is_error, result.content[0].text
    return result.structured_content


def test_seed_scenario_through_mcp_tool_calls(cli):
    async def scenario():
        async with stdio_client(server(cli, "designer")) as (r1, w1), \
                stdio_client(server(cli, "developer")) as (r2, w2):
            async with ClientSession(r1, w1) as designer, ClientSession(r2, w2) as developer:
                init = await designer.initialize()
                assert init.server_info.name == "tracecraft"
                assert "claim" in (init.instructions or "")
                await developer.initialize()
                tools = {t.name: t for t in (await designer.list_tools()).tools}
                for name in ("memory_get", "memory_set", "memory_list", "memory_incr", "send",
                             "inbox", "claim", "renew", "release", "complete", "step_status",
                             "wait_for", "artifact_list", "artifact_upload",
                             "artifact_download", "agents", "status", "heartbeat",
                             "memory_delete", "memory_history"):
                    assert name in tools and tools[name].description
                    assert tools[name].input_schema["type"] == "object"
                assert data(await call(designer, "claim", step="design"))["holder"] == "designer"
                held = await call(developer, "claim", step="design")
                assert held.is_error and "held by designer" in held.content[0].text
                await call(designer, "memory_set", key="design.status", value="complete")
                await call(designer, "send", to="developer", text="Design is ready")
                inbox = data(await call(developer, "inbox"))["messages"]
                assert [m["text"] for m in inbox] == ["Design is ready"]
                got = data(await call(developer, "memory_get", key="design.status"))
                assert got["value"] == "complete" and got["by"] == "designer"
                (cli.cwd / "mockup.html").write_text("<html/>")
                await call(designer, "artifact_upload", path=str(cli.cwd / "mockup.html"),
                           step="design")
                await call(designer, "complete", step="design", note="done")
                done = data(await call(developer, "wait_for", steps=["design"], timeout=10))
                assert done["complete"]["design"]["note"] == "done"
                status = data(await call(developer, "step_status", step="design"))
                assert status["status"] == "complete" and status["note"] == "done"
                assert data(await call(developer, "claim", step="implementation"))["holder"] == \
                    "developer"
                listed = data(await call(developer, "artifact_list"))["artifacts"]
                assert [a["name"] for a in listed] == ["mockup.html"]
                dest = cli.cwd / "dl"
                dest.mkdir()
                await call(developer, "artifact_download", name="mockup.html", step="design",
                           dest=str(dest))
                assert (dest / "mockup.html").read_text() == "<html/>"
                agents = {a["agent"] for a in data(await call(designer, "agents"))["agents"]}
                assert {"designer", "developer"} <= agents
                overview = data(await call(designer, "status"))
                assert {s["step"]: s["status"] for s in overview["steps"]} == \
                    {"design": "complete", "implementation": "in_progress"}
                bad = await call(designer, "memory_set", key="a..b", value=1)
                assert bad.is_error and "empty segment" in bad.content[0].text
    anyio.run(scenario)


def test_status_shows_every_state(cli):
    import time
    cli.ok("claim", "short", "--ttl", "1")
    claimed = time.monotonic()
    cli.ok("claim", "working")
    cli.ok("claim", "done")
    cli.ok("complete", "done", "--note", "all good")
    cli.ok("claim", "broken")
    cli.ok("complete", "broken", "--status", "failed", "--note", "red")
    cli.ok("claim", "stuck")
    cli.ok("complete", "stuck", "--status", "blocked")
    cli.ok("claim", "given-back")
    cli.ok("release", "given-back")
    cli.ok("send", "bob", "hello")
    cli.ok("memory", "set", "k", "1")
    time.sleep(max(0, 2.2 - (time.monotonic() - claimed)))   # S3 stamps whole seconds
    info = json.loads(cli.ok("status", "--json"))
    assert set(info) == {"project", "agents", "steps", "counts", "handoffs", "blocked",
                         "memory_keys"}
    states = {s["step"]: s["status"] for s in info["steps"]}
    assert states == {"working": "in_progress", "short": "expired", "done": "complete",
                      "broken": "failed", "stuck": "blocked", "given-back": "pending"}
    for step in info["steps"]:
        assert set(step) == {"step", "status", "holder", "generation", "ttl", "lease_left",
                             "claimed_at", "ended_by", "ended_at", "forced", "note", "handoff"}
    assert info["memory_keys"] == 1
    assert [h["step"] for h in info["handoffs"]][:2] in (["broken", "done"], ["done", "broken"])
    human = cli.ok("status")
    for word in ("AGENTS", "STEPS", "in_progress", "expired", "failed", "blocked", "RECENT HANDOFFS",
                 "all good", "MEMORY  1 keys"):
        assert word in human


def test_prompt_mentions_only_commands_that_exist(cli):
    text = cli.ok("prompt", "--agent", "reviewer")
    assert "reviewer" in text and "proj" in text
    commands = set()
    for line in text.splitlines():
        for chunk in line.split("`")[1::2]:
            if chunk.startswith("tracecraft "):
                words = chunk.split()
                sub = words[1:3] if words[1] in ("memory", "artifact") else words[1:2]
                commands.add(tuple(sub))
    assert len(commands) >= 10
    for sub in commands:
        assert cli("--help").returncode == 0
        result = cli(*sub, "--help")
        assert result.returncode == 0, (sub, result.stderr)


def test_status_watch_reuses_what_did_not_change(client_factory):
    from fakes import CountingStore
    alice = client_factory("alice")
    alice.heartbeat(renew=False)
    alice.claim("a")
    alice.claim("b")
    alice.complete("b", note="done")
    alice.store = counting = CountingStore(alice.store)
    cache = {}
    first = alice.status(cache)
    cost_first = counting.calls
    second = alice.status(cache)
    cost_second = counting.calls - cost_first
    assert cost_second == cost_first - 3          # two leases and one agent record reused
    assert [s["status"] for s in second["steps"]] == [s["status"] for s in first["steps"]]
    lease_a = {s["step"]: s for s in second["steps"]}["a"]
    assert 0 < lease_a["lease_left"] <= {s["step"]: s for s in first["steps"]}["a"]["lease_left"]
    alice.store = counting.store
    alice.complete("a")
    assert {s["step"]: s["status"] for s in alice.status(cache)["steps"]}["a"] == "complete"


def test_plan_tools(local_cli):
    """Issue 15's tools: plan_add, plan_show, ready, next, complete with a handoff, reopen."""
    async def scenario():
        async with stdio_client(server(local_cli, "ci")) as (r, w):
            async with ClientSession(r, w) as ci:
                await ci.initialize()
                await call(ci, "plan_add", step="lint", note="ruff only")
                added = data(await call(ci, "plan_add", step="test", after=["lint"],
                                        labels=["py"], priority=3))
                assert added == {"added": ["test"], "unchanged": [], "ready": []}
                bad = await call(ci, "plan_add", step="x", after=["nowhere"])
                assert bad.is_error and "nowhere" in bad.content[0].text
                assert [r["step"] for r in data(await call(ci, "ready"))["ready"]] == ["lint"]
                got = data(await call(ci, "next"))
                assert got["step"] == "lint" and got["note"] == "ruff only" and not got["ended"]
                empty = await call(ci, "next")
                assert empty.is_error and "nothing is ready" in empty.content[0].text
                await call(ci, "complete", step="lint", status="failed", note="red")
                shown = data(await call(ci, "plan_show"))["steps"]
                assert [s["state"] for s in shown] == ["failed", "blocked"]
                assert data(await call(ci, "reopen", step="lint"))["status"] == "pending"
                assert data(await call(ci, "next", wait=5))["step"] == "lint"
                done = data(await call(ci, "complete", step="lint", to="reviewer",
                                       next_action="look", needs_review=True,
                                       changed_files=["a.py"]))
                assert done["handoff"] == {"next_agent": "reviewer", "next_action": "look",
                                           "changed_files": ["a.py"], "needs_review": True}
                nxt = data(await call(ci, "next", label="py"))
                assert nxt["step"] == "test" and nxt["handoffs"][0]["next_action"] == "look"
                await call(ci, "complete", step="test")
                ended = data(await call(ci, "next", wait=5))
                assert ended["step"] is None and ended["ended"] is True and ended["lease"] is None
                wrong = await call(ci, "plan_add", step="y", priority=1.5)
                assert wrong.is_error and "priority" in wrong.content[0].text
    anyio.run(scenario)


def test_readme_shows_the_prompt_as_printed():
    import tracecraft
    from conftest import REPO
    assert tracecraft.agent_prompt("myproject", "designer") in (REPO / "README.md").read_text()


# -- issue 11: the server is a session: concurrent, cancellable, strict about its arguments ---------

class RawSession:
    """`tracecraft mcp` driven line by line, JSON-RPC as it is on the wire."""

    def __init__(self, cli, agent="designer"):
        import subprocess
        self.proc = subprocess.Popen([*COMMAND, "mcp"], cwd=cli.cwd,
                                     env=dict(cli.env, TRACECRAFT_AGENT=agent),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.send({"jsonrpc": "2.0", "id": 0, "method": "initialize",
                   "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                              "clientInfo": {"name": "raw", "version": "0"}}})
        self.initialized = self.receive()

    def send(self, message):
        self.proc.stdin.write((message if isinstance(message, str) else json.dumps(message)) + "\n")
        self.proc.stdin.flush()

    def receive(self, timeout=15):
        import select
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "no answer within the time"
        return json.loads(self.proc.stdout.readline())

    def call(self, request_id, tool, **arguments):
        self.send({"jsonrpc": "2.0", "id": request_id, "method": "tools/call",
                   "params": {"name": tool, "arguments": arguments}})

    def close(self):
        self.proc.stdin.close()
        code = self.proc.wait(timeout=15)
        return code, self.proc.stderr.read()


def test_a_long_call_does_not_block_the_session_and_can_be_cancelled(local_cli):
    import time
    session = RawSession(local_cli)
    session.call(1, "wait_for", steps=["never"], timeout=60)
    started = time.monotonic()
    session.send({"jsonrpc": "2.0", "id": 2, "method": "ping"})
    assert session.receive() == {"jsonrpc": "2.0", "id": 2, "result": {}}
    session.call(3, "memory_set", key="k", value=1)
    assert session.receive()["id"] == 3
    assert time.monotonic() - started < 5                  # not 60 s behind the wait
    session.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                  "params": {"requestId": 1, "reason": "user"}})
    session.call(4, "inbox", wait=1)                       # 1 == True once meant: forever
    answer = session.receive(timeout=10)
    assert answer["id"] == 4 and answer["result"]["isError"]
    assert "no new message" in answer["result"]["content"][0]["text"]
    started = time.monotonic()
    code, err = session.close()                            # the cancelled call never answers
    assert code == 0 and "Traceback" not in err and time.monotonic() - started < 10


DEEP = []
for _ in range(100):
    DEEP = [DEEP]


def test_bad_calls_are_named_errors_and_the_server_lives_on(local_cli):
    session = RawSession(local_cli)
    assert "claim" in session.initialized["result"]["instructions"]
    instructions = session.initialized["result"]["instructions"]
    assert "shell" not in instructions and "wait_for" in instructions
    session.call(1, "no_such_tool")
    unknown = session.receive()
    assert unknown["error"]["code"] == -32602 and "no_such_tool" in unknown["error"]["message"]
    cases = [("claim", {}, "needs the argument 'step'"),
             ("claim", {"step": "s", "ttl": "inf"}, "'ttl' must be a finite number"),
             ("claim", {"step": "s", "ttl": 0}, "'ttl' must be"),
             ("claim", {"step": "s", "stpe": "x"}, "has no argument 'stpe'"),
             ("send", {"to": "bob", "text": 42}, "'text' must be text"),
             ("complete", {"step": "s", "note": ["x"]}, "'note' must be text"),
             ("complete", {"step": "s", "status": "done"}, "must be one of"),
             ("wait_for", {"steps": "s"}, "'steps' must be a list"),
             ("wait_for", {"steps": [1]}, "has an item that must be text"),
             ("memory_incr", {"key": "k", "by": True}, "'by' must be a finite number"),
             ("memory_set", {"key": "k", "value": DEEP}, "nested"),
             ("inbox", {"delete": True, "all": True}, "combined with --peek, --all"),
             ("complete", {"step": "unclaimed"}, "tracecraft claim unclaimed")]
    for n, (tool, arguments, words) in enumerate(cases, start=2):
        session.call(n, tool, **arguments)
        answer = session.receive()
        assert answer["id"] == n and answer["result"]["isError"], (tool, answer)
        assert words in answer["result"]["content"][0]["text"], (tool, answer)
    session.send('{"jsonrpc": "2.0", "id": 50, "method": "tools/call", "params": {"name": '
                 '"claim", "arguments": {"step": "s", "ttl": 1e999}}}')
    infinite = session.receive()
    assert infinite["result"]["isError"] and "finite" in infinite["result"]["content"][0]["text"]
    session.send('{"jsonrpc": "2.0", "id": 51, "method": "tools/call", "params": {"name": '
                 '"claim", "arguments": {"step": "s", "ttl": NaN}}}')
    assert session.receive()["error"]["code"] == -32700
    session.call(52, "claim", step="s", ttl=60)
    claimed = session.receive()["result"]["structuredContent"]
    assert claimed["holder"] == "designer" and claimed["ttl"] == 60
    session.send({"jsonrpc": "2.0", "id": 53, "method": "tools/list"})
    tools = {t["name"]: t for t in session.receive()["result"]["tools"]}
    assert {"heartbeat", "memory_delete", "memory_history"} <= set(tools)
    assert tools["wait_for"]["inputSchema"]["properties"]["steps"]["items"] == {"type": "string"}
    assert tools["complete"]["inputSchema"]["properties"]["status"]["enum"] == \
        ["complete", "failed", "blocked"]
    code, err = session.close()
    assert code == 0 and "Traceback" not in err
    info = json.loads(local_cli("step-status", "s", "--json").stdout)
    assert info["ttl"] == 60 and 0 < info["lease_left"] <= 60   # no lease that never ends


def test_more_long_calls_than_workers_never_block_the_reader(local_cli):
    import time
    from tracecraft import MCP_WORKERS
    session = RawSession(local_cli)
    for n in range(MCP_WORKERS + 2):
        session.call(n + 1, "wait_for", steps=["never"], timeout=30)
    started = time.monotonic()
    session.send({"jsonrpc": "2.0", "id": 100, "method": "ping"})
    assert session.receive(timeout=5)["id"] == 100 and time.monotonic() - started < 3
    for n in range(MCP_WORKERS + 2):
        session.send({"jsonrpc": "2.0", "method": "notifications/cancelled",
                      "params": {"requestId": n + 1}})
    session.send('{"jsonrpc": "2.0", "id": 1e999, "method": "ping"}')   # not an id
    assert session.receive()["error"]["code"] == -32600
    session.call(101, "memory_set", key="k", value="after all that")
    answer = session.receive(timeout=10)
    assert answer["id"] == 101 and not answer["result"]["isError"]   # the cancelled said nothing
    started = time.monotonic()
    code, err = session.close()
    assert code == 0 and "Traceback" not in err and time.monotonic() - started < 8

"""Section 8: the MCP server, driven by the official MCP Python SDK as the client over stdio."""
import json
import sys

import anyio
import pytest

from conftest import CLI, TRACECRAFT, clean_env, init_args

mcp = pytest.importorskip("mcp")
from mcp import ClientSession, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402


def server(cli, agent):
    return StdioServerParameters(command=sys.executable, args=[TRACECRAFT, "mcp"],
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
    cli.ok("claim", "working")
    cli.ok("claim", "short", "--ttl", "1")
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
    import time
    time.sleep(2.2)
    info = json.loads(cli.ok("status", "--json"))
    assert set(info) == {"project", "agents", "steps", "handoffs", "memory_keys"}
    states = {s["step"]: s["status"] for s in info["steps"]}
    assert states == {"working": "in_progress", "short": "expired", "done": "complete",
                      "broken": "failed", "stuck": "blocked", "given-back": "pending"}
    for step in info["steps"]:
        assert set(step) == {"step", "status", "holder", "generation", "ttl", "lease_left",
                             "claimed_at", "ended_by", "ended_at", "forced", "note"}
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


def test_readme_shows_the_prompt_as_printed():
    import tracecraft
    from conftest import REPO
    assert tracecraft.agent_prompt("myproject", "designer") in (REPO / "README.md").read_text()

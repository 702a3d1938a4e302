"""MCP at /mcp, in-process: the same API keys as /v1 (401 problem without one), the tools and
their flat job schema, tenant isolation. tests/e2e/test_mcp.py drives it with the SDK."""

import json
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import ALICE, BOB, assert_problem

# Streamable HTTP: the client takes a JSON or an event-stream answer.
ACCEPT = {"Accept": "application/json, text/event-stream"}


def rpc(client: TestClient, headers: dict[str, str], method: str, **params: Any) -> dict:
    """One JSON-RPC request to /mcp; its result (the answer comes as one SSE event)."""
    body = {"jsonrpc": "2.0", "id": 1, "method": method, "params": params}
    response = client.post("/mcp", json=body, headers=headers | ACCEPT)
    assert response.status_code == 200, response.text
    (data,) = [line[5:] for line in response.text.splitlines() if line.startswith("data:")]
    return json.loads(data)["result"]


def test_mcp_needs_a_valid_key_like_v1(locked: TestClient) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    for headers in ({}, {"Authorization": "Bearer nope"}):
        response = locked.post("/mcp", json=body, headers=headers | ACCEPT)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert "/mcp" not in locked.get("/openapi.json").json()["paths"]


def test_tools_take_the_job_fields_flat(locked: TestClient) -> None:
    tools = {tool["name"]: tool for tool in rpc(locked, ALICE, "tools/list")["tools"]}
    assert set(tools) == {"generate_image", "start_job", "get_job", "cancel_job", "list_models"}
    schema = tools["generate_image"]["inputSchema"]
    assert schema["required"] == ["prompt"] and schema["additionalProperties"] is False
    assert {"prompt", "width", "height", "num_inference_steps", "seed", "model"} <= set(
        schema["properties"]
    )
    assert tools["start_job"]["inputSchema"] == schema
    assert tools["get_job"]["annotations"]["readOnlyHint"] is True


def test_tools_act_for_the_keys_tenant(locked: TestClient) -> None:
    started = rpc(locked, ALICE, "tools/call", name="start_job", arguments={"prompt": "a"})
    job = started["structuredContent"]
    assert job["status"] == "queued" and not started.get("isError")
    assert locked.get(f"/v1/jobs/{job['id']}", headers=ALICE).json()["id"] == job["id"]
    for name in ("get_job", "cancel_job"):
        refused = rpc(locked, BOB, "tools/call", name=name, arguments={"job_id": job["id"]})
        assert refused["isError"] and "no job" in refused["content"][0]["text"]
    canceled = rpc(locked, ALICE, "tools/call", name="cancel_job", arguments={"job_id": job["id"]})
    assert canceled["structuredContent"]["status"] == "canceled"
    again = rpc(locked, ALICE, "tools/call", name="cancel_job", arguments={"job_id": job["id"]})
    assert again["isError"] and "already canceled" in again["content"][0]["text"]


def test_bad_requests_are_tool_errors_with_the_services_message(locked: TestClient) -> None:
    for arguments, words in [
        ({"prompt": "a", "model": "nope"}, "model"),
        ({"prompt": "a", "width": 65}, "multiple of 8"),
        ({"prompt": "a", "num_inference_steps": 10_000}, "num_inference_steps"),
    ]:
        result = rpc(locked, ALICE, "tools/call", name="start_job", arguments=arguments)
        text = result["content"][0]["text"]
        assert result["isError"] and words in text and "Traceback" not in text, text

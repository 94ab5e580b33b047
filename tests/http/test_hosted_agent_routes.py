"""A hosted agent's messages and configuration (issue 18: EmpirioLabs' ``/v1/hosted-agents/instances/
{id}/message``, ``/integrations``, ``/model``, ``/access``, ``/skills``, ``/mcp``): a message is metered
exactly as a chat completion by the agent's model, its usage recorded with ``source: hosted_agents``
and the agent named in its metadata; the configuration routes are unmetered, stored as events and shown
in the instance's GET. A chat saved as a Playground conversation records ``source: playground``."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from schemas.events import PlanEnded
from schemas.ids import new_id
from schemas.moments import utc_now
from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from tests.reference import reference_validator

message_schema = reference_validator("/v1/hosted-agents/instances/{instance_id}/message", "post")
behavior_schema = reference_validator("/v1/hosted-agents/instances/{instance_id}/integrations/{kind}/behavior", "post")
skills_schema = reference_validator("/v1/hosted-agents/instances/{instance_id}/skills")
instance_schema = reference_validator("/v1/hosted-agents/instances/{instance_id}")


def _agent(account: Account, agent_type: str = "hermes", **extra: Any) -> str:
    created = account.gw.call(
        "POST", "/v1/hosted-agents/instances", account.key, json={"agent_type": agent_type, **extra}
    )
    assert created.status_code == 201, created.text
    return str(created.json()["instance"]["id"])


def _message(account: Account, agent_id: str, content: str = "What can you do?", **headers: str) -> Any:
    body = {"messages": [{"role": "user", "content": content}]}
    return account.gw.call(
        "POST", f"/v1/hosted-agents/instances/{agent_id}/message", account.key, json=body, headers=headers
    )


def _usage_event(account: Account, source: str, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        body = account.gw.call("GET", f"/v1/account/usage?source={source}", account.key).json()
        for event in body["data"]:
            if event["request_id"] == request_id:
                return dict(event)
        time.sleep(0.05)
    raise AssertionError(f"no {source} usage event for {request_id}")


def _source_of_row(account: Account, request_id: str) -> tuple[str, str]:
    account.usage_row(request_id)  # waits for the projector
    sql = "SELECT source, source_id FROM usage_events FINAL WHERE org_id = {org:String} AND request_id = {rid:String}"
    ((source, source_id),) = account.gw.store.query(sql, {"org": account.org, "rid": request_id})
    return str(source), str(source_id)


def test_a_message_is_charged_as_a_chat_by_the_agents_model_and_recorded_as_hosted_agents(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner, name="My Assistant")
    before = owner.balance_micros()
    answer = _message(owner, agent_id)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    message_schema.validate(json.loads(answer.text))
    assert body["status"] == "completed" and body["content"] and body["request_id"] == answer.headers["x-request-id"]
    assert body["model"] == "qwen3-7-plus" == answer.headers["x-model-used"]  # the runtime's default model
    charged = reconciles(owner, before, body["request_id"], body["usage"], answer.headers["x-credits-used"])
    assert charged > 0 and body["usage"]["prompt_tokens"] > 0 and body["usage"]["completion_tokens"] > 0
    assert _source_of_row(owner, body["request_id"]) == ("hosted_agents", agent_id)
    event = _usage_event(owner, "hosted_agents", body["request_id"])
    assert (event["source"], event["model"], event["endpoint"]) == (
        "hosted_agents",
        "qwen3-7-plus",
        "/v1/chat/completions",
    )
    assert event["cost"]["amount_micros"] == charged and event["tokens"]["output"] == body["usage"]["completion_tokens"]
    metadata = event["metadata"]
    assert (metadata["category"], metadata["agent_type"], metadata["agent_name"], metadata["agent_instance_id"]) == (
        "agents",
        "hermes",
        "My Assistant",
        agent_id,
    )
    assert metadata["worker_usage"]["cost_usd"] == body["usage"]["cost_usd"]
    usage = gw.call("GET", "/v1/account/usage?source=hosted_agents", owner.key).json()
    assert round(usage["spend"]["hosted_agents"] * 1_000_000) == 15_000_000 + charged  # the month and the message
    assert usage["spend"]["model"] == 0
    card = gw.call("GET", f"/v1/hosted-agents/instances/{agent_id}", owner.key).json()["instance"]
    assert card["messages_used_current_period"] == 1 and card["model"] == "qwen3-7-plus"


def test_a_message_retried_with_its_idempotency_key_is_charged_once(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    before = owner.balance_micros()
    first = _message(owner, agent_id, **{"Idempotency-Key": "msg-1"})
    again = _message(owner, agent_id, **{"Idempotency-Key": "msg-1"})
    assert first.status_code == again.status_code == 200 and again.content == first.content
    reconciles(owner, before, first.json()["request_id"], first.json()["usage"], first.headers["x-credits-used"])


def test_the_model_set_by_model_answers_and_prices_the_messages(gw: Gateway) -> None:
    owner = Account(gw, credits="40")  # two agents' months
    agent_id = _agent(owner, agent_type="openclaw")
    path = f"/v1/hosted-agents/instances/{agent_id}/model"
    changed = gw.call("POST", path, owner.key, json={"provider": "empirio", "model": "qwen3-max"})
    assert changed.status_code == 200, changed.text
    card = changed.json()["instance"]
    assert (card["model"], card["default_provider"]) == ("qwen3-max", "empirio")
    before = owner.balance_micros()
    answer = _message(owner, agent_id)
    assert answer.status_code == 200, answer.text
    assert answer.json()["model"] == "qwen3-max" == answer.headers["x-model-used"]
    reconciles(owner, before, answer.json()["request_id"], answer.json()["usage"], answer.headers["x-credits-used"])
    assert _usage_event(owner, "hosted_agents", answer.json()["request_id"])["model"] == "qwen3-max"
    # Not a chat model, not one at all: refused, the model left as it was.
    for model in ("sim-embed-small", "gpt-9"):
        refused = gw.call("POST", path, owner.key, json={"provider": "empirio", "model": model})
        assert refused.status_code == 404 and refused.json()["error"]["param"] == "model", refused.text
    # A model given at creation is the agent's from the start.
    other = _agent(owner, default_model="qwen3-max")
    assert gw.call("GET", f"/v1/hosted-agents/instances/{other}", owner.key).json()["instance"]["model"] == "qwen3-max"
    bad = gw.call(
        "POST", "/v1/hosted-agents/instances", owner.key, json={"agent_type": "hermes", "default_model": "gpt-9"}
    )
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "default_model"


def test_a_custom_or_poe_provider_is_kept_without_its_key_and_its_messages_are_refused(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    path = f"/v1/hosted-agents/instances/{agent_id}/model"
    custom = {"base_url": "https://llm.example.com/v1", "api_key": "sk-very-secret-1234", "protocol": "openai"}
    for body, status, param in (
        ({"provider": "custom", "model": "m"}, 400, "custom_provider"),
        (
            {"provider": "custom", "model": "m", "custom_provider": {**custom, "base_url": "http://x.example.com"}},
            400,
            None,
        ),
        (
            {"provider": "custom", "model": "m", "custom_provider": {**custom, "base_url": "https://10.0.0.7/v1"}},
            400,
            None,
        ),
        (
            {"provider": "custom", "model": "m", "custom_provider": {**custom, "base_url": "https://localhost/v1"}},
            400,
            None,
        ),
        ({"provider": "empirio", "model": "qwen3-max", "custom_provider": custom}, 400, "custom_provider"),
        ({"provider": "openrouter", "model": "m"}, 400, None),
        ({"model": "m"}, 400, None),
    ):
        refused = gw.call("POST", path, owner.key, json=body)
        assert refused.status_code == status, (body, refused.text)
        if param is not None:
            assert refused.json()["error"]["param"] == param
    changed = gw.call("POST", path, owner.key, json={"provider": "custom", "model": "m", "custom_provider": custom})
    assert changed.status_code == 200, changed.text
    assert "sk-very-secret" not in changed.text
    card = changed.json()["instance"]
    assert card["default_provider"] == "custom" and card["custom_provider"]["host"] == "llm.example.com"
    assert card["custom_provider"]["api_key_hint"] == "...1234"
    before = owner.balance_micros()
    refused = _message(owner, agent_id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "provider_not_served", refused.text
    assert owner.balance_micros() == before
    poe = gw.call("POST", path, owner.key, json={"provider": "poe", "model": "Claude-Sonnet"})
    assert poe.status_code == 200 and poe.json()["instance"]["custom_provider"] is None
    assert _message(owner, agent_id).status_code == 409


def test_a_stopped_agent_refuses_messages_and_a_started_one_answers(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    path = f"/v1/hosted-agents/instances/{agent_id}"
    assert gw.call("POST", f"{path}/stop", owner.key).status_code == 200
    before = owner.balance_micros()
    refused = _message(owner, agent_id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "agent_stopped", refused.text
    assert owner.balance_micros() == before
    assert gw.call("POST", f"{path}/start", owner.key).status_code == 200
    assert _message(owner, agent_id).status_code == 200


def test_a_message_the_balance_cannot_cover_is_402_and_charges_nothing(gw: Gateway) -> None:
    owner = Account(gw, credits="15")  # the month, and nothing left for a message's hold
    agent_id = _agent(owner)
    assert owner.balance_micros() == 0
    refused = _message(owner, agent_id)
    assert refused.status_code == 402, refused.text
    assert refused.json()["error"]["code"] == "insufficient_credits"
    assert owner.balance_micros() == 0


def test_another_organizations_agent_is_404_on_every_sub_route(gw: Gateway) -> None:
    owner, stranger = Account(gw, credits="20"), Account(gw)
    agent_id = _agent(owner)
    path = f"/v1/hosted-agents/instances/{agent_id}"
    for method, sub, body in (
        ("POST", "/message", {"messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/integrations", None),
        ("POST", "/integrations", {"kind": "telegram", "secret": "123:abc-token"}),
        ("DELETE", "/integrations/telegram", None),
        ("POST", "/integrations/telegram/behavior", {"behavior": {"typing": False}}),
        ("POST", "/model", {"provider": "empirio", "model": "qwen3-max"}),
        ("POST", "/access", {"mode": "open"}),
        ("GET", "/skills", None),
        ("POST", "/skills", {"slug": "hermes:web-search"}),
        ("DELETE", "/skills?slug=hermes:web-search", None),
        ("GET", "/mcp", None),
        ("POST", "/mcp", {"name": "docs", "url": "https://mcp.example.com/mcp"}),
        ("DELETE", "/mcp?name=docs", None),
    ):
        answer = gw.call(method, f"{path}{sub}", stranger.key, json=body)
        assert answer.status_code == 404, (method, sub, answer.text)
        assert answer.json()["error"]["code"] == "instance_not_found"
    assert gw.call("GET", f"{path}/integrations", owner.key).json()["integrations"] == []


def test_the_sub_routes_need_their_scopes(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    path = f"/v1/hosted-agents/instances/{agent_id}"
    reader, _ = gw.key(owner.org, ["user:read"])
    assert (
        gw.call("POST", f"{path}/message", reader, json={"messages": [{"role": "user", "content": "x"}]}).status_code
        == 403
    )
    assert gw.call("POST", f"{path}/skills", reader, json={"slug": "hermes:x"}).status_code == 403
    assert gw.call("DELETE", f"{path}/mcp?name=x", reader).status_code == 403
    assert gw.call("GET", f"{path}/skills", reader).status_code == 200
    assert gw.call("GET", f"{path}/mcp").status_code == 401


def test_integrations_are_saved_without_their_secret_and_their_behavior_set(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    path = f"/v1/hosted-agents/instances/{agent_id}"
    before = owner.balance_micros()
    saved = gw.call(
        "POST",
        f"{path}/integrations",
        owner.key,
        json={"kind": "telegram", "secret": "123456:AAE-telegram-bot-token-9876", "config": {"dm_policy": "pairing"}},
    )
    assert saved.status_code == 201, saved.text
    assert "telegram-bot-token" not in saved.text
    integration = saved.json()["integration"]
    assert (integration["kind"], integration["connected"], integration["secret_hint"]) == ("telegram", True, "...9876")
    assert integration["config"] == {"dm_policy": "pairing"}
    assert integration["channel_behavior"] == {
        "reactions": True,
        "reaction_level": "minimal",
        "typing": True,
        "read_receipts": False,
        "streaming": False,
    }
    poe = gw.call("POST", f"{path}/integrations", owner.key, json={"kind": "poe_api_key", "secret": "poe-key-abcd"})
    assert poe.status_code == 201 and poe.json()["integration"]["kind"] == "poe"
    listed = gw.call("GET", f"{path}/integrations", owner.key).json()["integrations"]
    assert [i["kind"] for i in listed] == ["poe", "telegram"] and "token" not in json.dumps(listed)
    behavior = gw.call(
        "POST", f"{path}/integrations/telegram/behavior", owner.key, json={"behavior": {"typing": False}}
    )
    assert behavior.status_code == 200, behavior.text
    behavior_schema.validate(json.loads(behavior.text))
    assert behavior.json()["channel_behavior"]["typing"] is False
    later = gw.call(
        "POST", f"{path}/integrations/telegram/behavior", owner.key, json={"behavior": {"reaction_level": "ack"}}
    )
    assert later.json()["channel_behavior"] == {
        "reactions": True,
        "reaction_level": "ack",
        "typing": False,  # kept from the change before
        "read_receipts": False,
        "streaming": False,
    }
    card = gw.call("GET", path, owner.key)
    instance_schema.validate(json.loads(card.text))
    assert card.json()["instance"]["integrations"] == ["poe", "telegram"]
    for method, sub, body, status in (
        ("POST", "/integrations", {"kind": "mattermost", "secret": "abcdefghij"}, 400),  # OpenClaw only
        ("POST", "/integrations", {"kind": "whatsapp", "secret": "abcdefghij"}, 400),  # paired from a dashboard
        ("POST", "/integrations", {"kind": "slack"}, 400),
        ("POST", "/integrations/slack/behavior", {"behavior": {"typing": True}}, 404),  # not connected
        ("POST", "/integrations/telegram/behavior", {"behavior": {"reaction_level": "loud"}}, 400),
        ("POST", "/integrations/sms/behavior", {"behavior": {}}, 400),
        ("DELETE", "/integrations/sms", None, 400),
        ("DELETE", "/integrations/discord", None, 404),
    ):
        answer = gw.call(method, f"{path}{sub}", owner.key, json=body)
        assert answer.status_code == status, (sub, body, answer.text)
    removed = gw.call("DELETE", f"{path}/integrations/telegram", owner.key)
    assert removed.status_code == 200 and removed.json() == {"ok": True, "kind": "telegram", "connected": False}
    assert [i["kind"] for i in gw.call("GET", f"{path}/integrations", owner.key).json()["integrations"]] == ["poe"]
    assert owner.balance_micros() == before  # configuration is covered by the plan


def test_access_is_set_for_the_agent_or_a_connected_channel(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner, agent_type="openclaw")
    path = f"/v1/hosted-agents/instances/{agent_id}"
    restricted = gw.call(
        "POST", f"{path}/access", owner.key, json={"mode": "restricted", "allow": {"telegram": ["123456"]}}
    )
    assert restricted.status_code == 200, restricted.text
    assert restricted.json()["access"] == {"mode": "restricted", "allow": {"telegram": ["123456"]}, "channels": {}}
    assert gw.call("POST", f"{path}/access", owner.key, json={"mode": "open", "kind": "slack"}).status_code == 404
    gw.call("POST", f"{path}/integrations", owner.key, json={"kind": "msteams", "secret": "teams-webhook-xyz1"})
    channel = gw.call("POST", f"{path}/access", owner.key, json={"mode": "open", "kind": "msteams"})
    assert channel.status_code == 200, channel.text
    assert channel.json()["access"]["channels"] == {"msteams": {"mode": "open", "allow": {"msteams": []}}}
    for body in (
        {"mode": "closed"},
        {},
        {"mode": "open", "allow": {"sms": ["1"]}},
        {"mode": "open", "allow": {"telegram": "1"}},
    ):
        assert gw.call("POST", f"{path}/access", owner.key, json=body).status_code == 400, body
    card = gw.call("GET", path, owner.key).json()["instance"]
    assert card["access"]["mode"] == "restricted"


def test_skills_are_added_from_the_agents_registry_or_pasted_and_removed(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)  # hermes
    path = f"/v1/hosted-agents/instances/{agent_id}/skills"
    empty = gw.call("GET", path, owner.key)
    skills_schema.validate(json.loads(empty.text))
    assert empty.json() == {"installed": [], "customSkills": {}}
    for slug in ("hermes:web-search", "ocgit:acme/skills", "url:https://skills.example.com/SKILL.md"):
        added = gw.call("POST", path, owner.key, json={"slug": slug})
        assert added.status_code == 200, added.text
    custom = {"name": "triage", "body": "# Triage\nSort the inbox by urgency."}
    added = gw.call("POST", path, owner.key, json={"custom": custom})
    assert added.status_code == 200, added.text
    assert added.json()["installed"] == [
        "hermes:web-search",
        "ocgit:acme/skills",
        "url:https://skills.example.com/SKILL.md",
        "custom:triage",
    ]
    assert added.json()["customSkills"] == {"triage": custom}
    skills_schema.validate(json.loads(gw.call("GET", path, owner.key).text))
    for body in (
        {"slug": "clawhub:github"},  # OpenClaw's registry
        {"slug": "npm:left-pad"},
        {"slug": "url:http://skills.example.com/SKILL.md"},
        {},
        {"slug": "hermes:x", "custom": custom},
        {"custom": {"name": "../etc", "body": "x"}},
    ):
        assert gw.call("POST", path, owner.key, json=body).status_code == 400, body
    removed = gw.call("DELETE", f"{path}?slug=custom:triage", owner.key)
    assert removed.status_code == 200, removed.text
    assert removed.json()["customSkills"] == {} and "custom:triage" not in removed.json()["installed"]
    assert gw.call("DELETE", f"{path}?slug=hermes:nope", owner.key).status_code == 404
    assert gw.call("DELETE", path, owner.key).status_code == 400
    card = gw.call("GET", f"/v1/hosted-agents/instances/{agent_id}", owner.key).json()["instance"]
    assert card["skills"] == ["hermes:web-search", "ocgit:acme/skills", "url:https://skills.example.com/SKILL.md"]


def test_mcp_connectors_are_kept_by_host_and_never_return_their_credential(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    path = f"/v1/hosted-agents/instances/{agent_id}/mcp"
    connector = {
        "name": "docs",
        "url": "https://mcp.example.com/v1/sse?team=7",
        "transport": "sse",
        "header_name": "Authorization",
        "header_value": "Bearer mcp-secret-value",
        "tool_include": ["search"],
    }
    added = gw.call("POST", path, owner.key, json=connector)
    assert added.status_code == 200, added.text
    listed = gw.call("GET", path, owner.key)
    assert "mcp-secret-value" not in added.text + listed.text and "team=7" not in listed.text
    (shown,) = listed.json()["connectors"]
    assert (shown["name"], shown["host"], shown["transport"], shown["has_credential"], shown["tool_include"]) == (
        "docs",
        "mcp.example.com",
        "sse",
        True,
        ["search"],
    )
    for body in (
        {"name": "x", "url": "http://mcp.example.com"},
        {"name": "x", "url": "https://127.0.0.1/mcp"},
        {"name": "x", "url": "https://[::1]/mcp"},
        {"name": "x", "url": "https://intranet/mcp"},
        {"name": "x", "url": "https://mcp.example.com", "transport": "stdio"},
        {"name": "x", "url": "https://mcp.example.com", "header_name": "X-Key"},
        {"url": "https://mcp.example.com"},
    ):
        assert gw.call("POST", path, owner.key, json=body).status_code == 400, body
    assert gw.call("GET", f"/v1/hosted-agents/instances/{agent_id}", owner.key).json()["instance"][
        "mcp_connectors"
    ] == ["docs"]
    assert gw.call("DELETE", f"{path}?name=nope", owner.key).status_code == 404
    removed = gw.call("DELETE", f"{path}?name=docs", owner.key)
    assert removed.status_code == 200 and removed.json() == {"ok": True, "connectors": []}


def test_an_agent_whose_plan_was_destroyed_is_404_on_its_sub_routes(gw: Gateway) -> None:
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    assert gw.call("DELETE", f"/v1/hosted-agents/instances/{agent_id}", owner.key).status_code == 200
    assert _message(owner, agent_id).status_code == 404
    assert gw.call("GET", f"/v1/hosted-agents/instances/{agent_id}/skills", owner.key).status_code == 404


@pytest.mark.parametrize("saved", [True, False])
def test_a_chat_saved_as_a_playground_conversation_records_source_playground(gw: Gateway, saved: bool) -> None:
    owner = Account(gw)
    headers = {"X-Playground-Conversation": "trip"} if saved else {}
    body = {"model": "sim-chat-small", "messages": [{"role": "user", "content": "Plan a weekend"}]}
    before = owner.balance_micros()
    answer = gw.call("POST", "/v1/chat/completions", owner.key, json=body, headers=headers)
    assert answer.status_code == 200, answer.text
    rid = answer.headers["x-request-id"]
    reconciles(owner, before, rid, answer.json()["usage"], answer.headers["x-credits-used"])
    source = "playground" if saved else "api"
    assert _source_of_row(owner, rid) == (source, "trip" if saved else "")
    event = _usage_event(owner, source, rid)
    assert event["metadata"]["source"] == source
    assert event["metadata"].get("conversation_id") == ("trip" if saved else None)
    spend = gw.call("GET", "/v1/account/usage", owner.key).json()["spend"]
    assert spend["model"] == event["cost"]["amount"] and spend["hosted_agents"] == 0


def test_an_agent_whose_plan_ended_refuses_messages_and_changes(gw: Gateway) -> None:
    """The ledger ends a plan whose renewal the balance cannot cover (``PlanEnded``, ledger/resources.py,
    decided a month on): folded here as the gateway folds it from the ledger topic."""
    owner = Account(gw, credits="20")
    agent_id = _agent(owner)
    ended = PlanEnded(
        event_id=new_id("evt"),
        occurred_at=utc_now(),
        org_id=owner.org,
        correlation_id=agent_id,
        subscription_id=agent_id,
        reason="insufficient_credits",
    )
    gw.core.balances.apply(ended)
    before = owner.balance_micros()
    refused = _message(owner, agent_id)
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "plan_ended", refused.text
    path = f"/v1/hosted-agents/instances/{agent_id}"
    assert gw.call("POST", f"{path}/skills", owner.key, json={"slug": "hermes:x"}).status_code == 409
    assert gw.call("GET", f"{path}/skills", owner.key).status_code == 200  # still readable
    assert gw.call("GET", path, owner.key).json()["instance"]["billing_status"] == "past_due"
    assert owner.balance_micros() == before

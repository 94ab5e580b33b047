"""Saved Playground conversations: a chat completion sent with ``X-Playground-Conversation`` is
charged as any other and its exchange saved; ``GET /v1/playground/conversations`` (and ``/{id}``)
lists them read only in EmpirioLabs' shapes, most recently updated first, per organization."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.harness import Gateway
from tests.http.dialects import Account, reconciles
from tests.reference import reference_validator

list_schema = reference_validator("/v1/playground/conversations")
one_schema = reference_validator("/v1/playground/conversations/{conversation_id}")


def chat(account: Account, content: str, headers: dict[str, str], model: str = "sim-chat-small", **extra: Any) -> Any:
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    return account.gw.call("POST", "/v1/chat/completions", account.key, json=body, headers=headers)


def listed(account: Account, query: str = "") -> dict[str, Any]:
    answer = account.gw.call("GET", f"/v1/playground/conversations{query}", account.key)
    assert answer.status_code == 200, answer.text
    list_schema.validate(json.loads(answer.text))
    body: dict[str, Any] = answer.json()
    return body


def test_an_organization_without_saves_lists_none(gw: Gateway) -> None:
    assert listed(Account(gw)) == {"object": "list", "data": [], "has_more": False, "next_cursor": None}


def test_a_saved_exchange_is_charged_as_a_chat_and_listed_with_its_messages(gw: Gateway) -> None:
    account = Account(gw)
    before = account.balance_micros()
    answer = chat(account, "Plan a weekend in Lisbon", {"X-Playground-Conversation": "trip"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-playground-saved"] == "true" and answer.headers["x-playground-conversation"] == "trip"
    reconciles(
        account, before, answer.headers["x-request-id"], answer.json()["usage"], answer.headers["x-credits-used"]
    )
    [summary] = listed(account)["data"]
    assert summary["id"] == "trip" and summary["object"] == "playground_conversation"
    assert (summary["model"], summary["title"], summary["message_count"]) == (
        "sim-chat-small",
        "Plan a weekend in Lisbon",
        2,
    )
    one = gw.call("GET", "/v1/playground/conversations/trip", account.key)
    assert one.status_code == 200, one.text
    one_schema.validate(json.loads(one.text))
    saved = one.json()
    assert saved["messages"][0] == {"role": "user", "content": "Plan a weekend in Lisbon"}
    assert saved["messages"][1] == answer.json()["choices"][0]["message"]
    # The client sends the whole conversation again with its next turn; the save holds all of it.
    turns = [*saved["messages"], {"role": "user", "content": "And on Sunday?"}]
    again = gw.call(
        "POST",
        "/v1/chat/completions",
        account.key,
        json={"model": "sim-chat-small", "messages": turns},
        headers={"X-Playground-Conversation": "trip", "X-Playground-Title": "Lisbon"},
    )
    assert again.status_code == 200, again.text
    [updated] = listed(account)["data"]
    assert (updated["title"], updated["message_count"]) == ("Lisbon", 4)
    assert updated["created_at"] == summary["created_at"] and updated["updated_at"] >= summary["updated_at"]


def test_pages_filters_and_other_organizations(gw: Gateway) -> None:
    account = Account(gw)
    for name, model in (("a", "sim-chat-small"), ("b", "sim-chat-large"), ("c", "sim-chat-small")):
        assert chat(account, f"chat {name}", {"X-Playground-Conversation": name}, model).status_code == 200
    assert chat(account, "not saved", {}).status_code == 200
    assert [c["id"] for c in listed(account)["data"]] == ["c", "b", "a"]
    first = listed(account, "?limit=2")
    assert [c["id"] for c in first["data"]] == ["c", "b"] and first["has_more"] is True
    rest = listed(account, f"?limit=2&before={first['next_cursor']}")
    assert [c["id"] for c in rest["data"]] == ["a"] and rest["has_more"] is False and rest["next_cursor"] is None
    assert [c["id"] for c in listed(account, "?model=sim-chat-large")["data"]] == ["b"]
    for query in ("?limit=0", "?limit=101", "?before=yesterday"):
        assert gw.call("GET", f"/v1/playground/conversations{query}", account.key).status_code == 400
    other = Account(gw)
    assert listed(other)["data"] == []
    missing = gw.call("GET", "/v1/playground/conversations/a", other.key)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "conversation_id"


@pytest.mark.parametrize(
    ("headers", "extra", "param"),
    [
        ({"X-Playground-Conversation": "has space"}, {}, "x-playground-conversation"),
        ({"X-Playground-Conversation": "x" * 65}, {}, "x-playground-conversation"),
        ({"X-Playground-Conversation": "ok", "X-Playground-Title": "t" * 201}, {}, "x-playground-title"),
        ({"X-Playground-Conversation": "ok"}, {"stream": True}, "stream"),
        ({"X-Playground-Conversation": "ok"}, {"async": True}, "async"),
    ],
)
def test_a_bad_save_is_a_400_before_anything_runs(
    gw: Gateway, headers: dict[str, str], extra: dict[str, Any], param: str
) -> None:
    account = Account(gw)
    before = account.balance_micros()
    refused = chat(account, "hi", headers, **extra)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == param, refused.text
    assert account.balance_micros() == before and listed(account)["data"] == []

"""`tollgate dev` as a user runs it: one process, embedded backends, the official openai SDK as client."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any, TypedDict, Unpack

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.support import Dev, usage

admin_token = "tga_test_admin"


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    data_dir = tmp_path_factory.mktemp("dev-data")
    server = Dev(data_dir, data_dir)
    yield server
    server.role.stop()


class ChatOptions(TypedDict, total=False):
    """The request options the tests set, as the SDK types them."""

    max_tokens: int


def chat(
    client: openai.OpenAI, content: str = "Hello!", **options: Unpack[ChatOptions]
) -> tuple[dict[str, Any], Mapping[str, str]]:
    """The response body as JSON (decimals kept exact) and its headers (case-insensitive, as the SDK's)."""
    raw = client.chat.completions.with_raw_response.create(
        model="sim-chat-small",
        messages=[{"role": "user", "content": content}],
        **options,
    )
    completion = raw.parse()
    assert completion.choices[0].message.content
    return json.loads(raw.http_response.text, parse_float=Decimal), raw.headers


def test_demo_key_gets_a_completion_from_the_openai_sdk(dev: Dev) -> None:
    body, headers = chat(dev.client(dev.demo["api_key"]))
    assert headers["x-request-id"].startswith("req_")
    assert body["object"] == "chat.completion"


def test_credits_used_equals_cost_equals_balance_drop(dev: Dev) -> None:
    org = dev.admin.organization()
    dev.admin.grant(org, "1.5")
    key = dev.admin.token(org)
    before = usage(dev.base_url, key)["balance"]["amount_micros"]
    assert before == 1_500_000
    body, headers = chat(dev.client(key), "Count the micro-credits, exactly.")
    cost = body["usage"]["cost_usd"]
    assert isinstance(cost, Decimal)
    assert Decimal(headers["x-credits-used"]) == cost
    assert body["usage"]["cost_micros"] == int(cost * 1_000_000) > 0
    after = usage(dev.base_url, key)["balance"]
    assert before - after["amount_micros"] == int(cost * 1_000_000)
    assert after["held_micros"] == 0


def test_a_request_the_balance_cannot_cover_gets_402_and_changes_nothing(dev: Dev) -> None:
    org = dev.admin.organization()
    dev.admin.grant(org, "0.00001")  # 10 micros: less than any worst case
    key = dev.admin.token(org)
    before = usage(dev.base_url, key)
    with pytest.raises(openai.APIStatusError) as caught:
        chat(dev.client(key))
    assert caught.value.status_code == 402
    error = caught.value.response.json()["error"]
    assert error["code"] == "insufficient_credits" and "credits" in error["message"]
    after = usage(dev.base_url, key)
    assert after["balance"] == before["balance"]
    assert after["summary"]["total_cost_micros"] == 0


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "sim-chat-small", "messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"model": "sim-chat-small", "messages": []}, "messages"),
        ({"model": "sim-chat-small", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),  # missing: named too
        ({"model": "sim-chat-small", "messages": [{"content": "x"}]}, "messages[0].role"),
        ({"model": "sim-chat-small", "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        (
            {"model": "sim-chat-small", "messages": [{"role": "user", "content": "x"}], "max_tokens": 10**6},
            "max_tokens",
        ),
        ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, "model"),
    ],
)
def test_invalid_bodies_get_a_clear_error_naming_the_field(dev: Dev, body: dict[str, object], param: str) -> None:
    response = httpx.post(
        f"{dev.base_url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {dev.demo['api_key']}"}
    )
    assert response.status_code in (400, 404), response.text
    error = response.json()["error"]
    assert error["type"] in ("invalid_request_error", "not_found_error")
    if param is not None:
        assert error["param"] == param
    assert "x-request-id" in response.headers


def test_malformed_json_is_a_400(dev: Dev) -> None:
    response = httpx.post(
        f"{dev.base_url}/v1/chat/completions",
        content=b"{not json",
        headers={"Authorization": f"Bearer {dev.demo['api_key']}"},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


def test_an_unknown_key_gets_401(dev: Dev) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(dev.client("tg_not_a_key"))
    assert caught.value.response.json()["error"]["code"] == "invalid_api_key"


def test_admin_endpoints_need_the_admin_token(dev: Dev) -> None:
    response = httpx.post(
        f"{dev.base_url}/v1/organizations",
        json={"name": "x"},
        headers={"Authorization": f"Bearer {dev.demo['api_key']}"},
    )
    assert response.status_code == 403
    response = httpx.post(f"{dev.base_url}/v1/organizations", json={"name": "x"})
    assert response.status_code == 401


def test_models_list_shows_prices(dev: Dev) -> None:
    models = dev.client(dev.demo["api_key"]).models.list()
    ids = {m.id for m in models.data}
    assert "sim-chat-small" in ids
    raw = httpx.get(f"{dev.base_url}/v1/models", headers={"Authorization": f"Bearer {dev.demo['api_key']}"})
    card = next(m for m in raw.json()["data"] if m["id"] == "sim-chat-small")
    assert card["type"] == "multimodal" and card["category"] == "text" and card["price_version"]


def test_many_requests_agree_to_the_micro_credit(dev: Dev) -> None:
    org = dev.admin.organization()
    dev.admin.grant(org, 5)
    key = dev.admin.token(org)
    client = dev.client(key)
    prompts = [f"request number {i} " + "word " * (i % 17) for i in range(60)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: chat(client, p), prompts))
    charged = sum(int(Decimal(headers["x-credits-used"]) * 1_000_000) for _, headers in results)
    assert charged == sum(body["usage"]["cost_micros"] for body, _ in results)
    report = usage(dev.base_url, key, limit=200)
    assert report["balance"]["amount_micros"] == 5_000_000 - charged
    assert report["balance"]["held_micros"] == 0
    # ClickHouse rows land within the projector's flush wait. One response reads the events page, then
    # the summary: a flush between the two shows the summary complete and the page not yet.
    import time

    deadline = time.monotonic() + 10
    while (report["summary"]["requests"] < 60 or len(report["data"]) < 60) and time.monotonic() < deadline:
        time.sleep(0.2)
        report = usage(dev.base_url, key, limit=200)
    assert report["summary"]["requests"] == 60
    assert report["summary"]["total_cost_micros"] == charged
    assert sum(event["cost"]["amount_micros"] for event in report["data"]) == charged


def test_restart_with_the_same_data_directory_loses_nothing(tmp_path: Path) -> None:
    first = Dev(tmp_path, tmp_path)
    client = first.client(first.demo["api_key"])
    for i in range(5):
        chat(client, f"before restart {i}")
    import time

    time.sleep(1)  # past the projector's flush wait
    before = usage(first.base_url, first.demo["api_key"])
    first.role.stop()
    second = Dev(tmp_path, tmp_path)
    try:
        assert second.demo == first.demo
        after = usage(second.base_url, second.demo["api_key"])
        # The stopped gateway gave its slice back on the way out (a slice return is a ledger event).
        assert before["balance"]["reserved_by_gateways_micros"] > 0
        assert after["balance"]["reserved_by_gateways_micros"] == 0
        returned = ("reserved_by_gateways_micros", "updated_at")
        assert {k: v for k, v in after["balance"].items() if k not in returned} == {
            k: v for k, v in before["balance"].items() if k not in returned
        }
        assert after["summary"] == before["summary"]
        assert [e["id"] for e in after["data"]] == [e["id"] for e in before["data"]]
        chat(second.client(second.demo["api_key"]), "after restart")
    finally:
        second.role.stop()


def test_an_oversized_body_is_refused_with_413(dev: Dev) -> None:
    body = (
        b'{"model": "sim-chat-small", "messages": [{"role": "user", "content": "' + b"x" * (5 * 1024 * 1024) + b'"}]}'
    )
    response = httpx.post(
        f"{dev.base_url}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {dev.demo['api_key']}", "Content-Type": "application/json"},
    )
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "invalid_request_error"


def test_unknown_routes_answer_in_the_error_envelope(dev: Dev) -> None:
    response = httpx.get(f"{dev.base_url}/v1/nothing-here")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "x-request-id" in response.headers


def test_grants_limits_refunds_and_adjustments_through_the_admin_api(dev: Dev) -> None:
    admin = dev.admin.client
    org = dev.admin.organization()
    dev.admin.grant(org, "0.0001")  # 100 micros paid
    promo = admin.post(
        f"/v1/organizations/{org}/credits",
        json={"amount": "0.00005", "kind": "promo", "expires_at": "2099-01-01T00:00:00Z"},
    )
    assert promo.status_code == 201, promo.text
    key = dev.admin.token(org)
    balance = usage(dev.base_url, key)["balance"]
    assert balance["amount_micros"] == 150
    assert [g["kind"] for g in balance["grants"]] == ["promo", "paid"], "promo burns first"

    # With no credit limit, a worst case above 150 micros is refused; with one, it runs.
    with pytest.raises(openai.APIStatusError) as caught:
        chat(dev.client(key), "needs the credit line", max_tokens=1000)
    assert caught.value.status_code == 402
    response = admin.post(f"/v1/organizations/{org}/credit-limit", json={"amount": "0.01"})
    assert response.status_code == 200, response.text
    body, headers = chat(dev.client(key), "needs the credit line", max_tokens=1000)
    cost = int(body["usage"]["cost_micros"])
    balance = usage(dev.base_url, key)["balance"]
    assert balance["amount_micros"] == 150 - cost
    assert balance["spendable_micros"] == 150 - cost + 10_000

    # A refund names the request it corrects; more than was charged is refused.
    request_id = headers["x-request-id"]
    too_much = admin.post(
        f"/v1/organizations/{org}/refunds",
        json={"amount": str(Decimal(cost + 1) / 1_000_000), "reason": "x", "reference": request_id},
    )
    assert too_much.status_code == 400 and too_much.json()["error"]["code"] == "refund_exceeds_charge"
    unknown = admin.post(
        f"/v1/organizations/{org}/refunds", json={"amount": "0.000001", "reason": "x", "reference": "req_nope"}
    )
    assert unknown.status_code == 404
    refund = admin.post(
        f"/v1/organizations/{org}/refunds",
        json={"amount": str(Decimal(cost) / 1_000_000), "reason": "bad answer", "reference": request_id},
    )
    assert refund.status_code == 201, refund.text
    assert refund.json()["balance"]["amount_micros"] == 150

    adjustment = admin.post(f"/v1/organizations/{org}/adjustments", json={"amount": "-0.00005", "reason": "fix"})
    assert adjustment.status_code == 201, adjustment.text
    assert adjustment.json()["balance"]["amount_micros"] == 100

    # The postings in ClickHouse explain the balance exactly.
    import time

    deadline = time.monotonic() + 10
    while True:
        entries = admin.get(f"/v1/organizations/{org}/ledger", params={"limit": 200}).json()["data"]
        wallet = f"{org}/wallet"
        total = sum(e["amount_micros"] for e in entries if e["credit"] == wallet) - sum(
            e["amount_micros"] for e in entries if e["debit"] == wallet
        )
        # The paid grant alone makes 100 too: wait for the last event's postings, the adjustment's.
        adjusted = any(e["kind"] == "credits.adjusted.v1" for e in entries)
        if (total == 100 and adjusted) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert total == 100 and adjusted
    page = admin.get(f"/v1/organizations/{org}/ledger", params={"limit": 2}).json()
    assert len(page["data"]) == 2 and page["next_cursor"]
    rest = admin.get(f"/v1/organizations/{org}/ledger", params={"limit": 200, "cursor": page["next_cursor"]}).json()
    assert len(rest["data"]) == len(entries) - 2
    assert admin.get(f"/v1/organizations/{org}/ledger", params={"cursor": "junk"}).status_code == 400


def test_idempotency_key_returns_the_first_answer_and_charges_once(dev: Dev) -> None:
    org = dev.admin.organization()
    dev.admin.grant(org, 1)
    key = dev.admin.token(org)
    client = dev.client(key)
    headers = {"Idempotency-Key": "order-42"}
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "charge me once"}]
    first = client.chat.completions.with_raw_response.create(
        model="sim-chat-small",
        messages=messages,
        extra_headers=headers,
    )
    second = client.chat.completions.with_raw_response.create(
        model="sim-chat-small",
        messages=messages,
        extra_headers=headers,
    )
    assert second.http_response.text == first.http_response.text
    assert second.headers["idempotent-replayed"] == "true"
    assert second.headers["x-credits-used"] == first.headers["x-credits-used"]
    cost = int(Decimal(first.headers["x-credits-used"]) * 1_000_000)
    assert usage(dev.base_url, key)["balance"]["amount_micros"] == 1_000_000 - cost

    with pytest.raises(openai.ConflictError) as caught:
        client.chat.completions.create(
            model="sim-chat-small",
            messages=[{"role": "user", "content": "a different body"}],
            extra_headers=headers,
        )
    assert caught.value.response.json()["error"]["code"] == "idempotency_key_reused"
    # Another organization's identical key is its own.
    other = dev.admin.organization()
    dev.admin.grant(other, 1)
    other_client = dev.client(dev.admin.token(other))
    other_client.chat.completions.create(model="sim-chat-small", messages=messages, extra_headers=headers)

    grant = {"amount": "2", "kind": "paid"}
    replies = [
        dev.admin.client.post(f"/v1/organizations/{org}/credits", json=grant, headers={"Idempotency-Key": "g-1"})
        for _ in range(2)
    ]
    assert [r.status_code for r in replies] == [201, 201]
    assert replies[0].json()["id"] == replies[1].json()["id"]
    assert usage(dev.base_url, key)["balance"]["amount_micros"] == 3_000_000 - cost


def test_auto_topup_through_the_api_fires_once(dev: Dev) -> None:
    org = dev.admin.organization()
    dev.admin.grant(org, "0.01")
    key = dev.admin.token(org)
    response = dev.admin.client.post(
        f"/v1/organizations/{org}/auto-topup", json={"threshold": "0.009999", "amount": "0.000001"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["balance"]["auto_topup_enabled"] is True
    bad = dev.admin.client.post(f"/v1/organizations/{org}/auto-topup", json={"threshold": "1"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_auto_topup"
    client = dev.client(key)
    costs = [int(chat(client, f"spend {i}")[0]["usage"]["cost_micros"]) for i in range(3)]
    balance = usage(dev.base_url, key)["balance"]
    topups = [g for g in balance["grants"] if g["id"].startswith("topup_")]
    assert len(topups) == 1, "one crossing of the threshold, one top-up"
    assert balance["amount_micros"] == 10_000 + 1 - sum(costs)


def test_price_books_are_versioned_and_each_charge_names_its_version(dev: Dev) -> None:
    key = dev.demo["api_key"]
    model = dev.client(key).models.retrieve("sim-chat-small")
    assert model.id == "sim-chat-small"
    missing = httpx.get(f"{dev.base_url}/v1/models/nope", headers={"Authorization": f"Bearer {key}"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"

    books = dev.admin.client.get("/v1/price-books").json()
    current = books["data"][0]
    before, _ = chat(dev.client(key), "priced by the first book")
    assert before["usage"]["price_version"] == current["version"]

    dearer = {**current, "version": "2026-12-01"}
    dearer["models"] = {
        **current["models"],
        "sim-chat-small": {**current["models"]["sim-chat-small"], "output_token_rate": 6_000_000},
    }
    published = dev.admin.client.post("/v1/price-books", json=dearer)
    assert published.status_code == 201, published.text
    again = dev.admin.client.post("/v1/price-books", json=dearer)
    assert again.status_code == 409
    after, _ = chat(dev.client(key), "priced by the first book")
    assert after["usage"]["price_version"] == "2026-12-01"
    assert after["usage"]["completion_tokens"] == before["usage"]["completion_tokens"]
    assert after["usage"]["cost_micros"] > before["usage"]["cost_micros"]
    card = httpx.get(f"{dev.base_url}/v1/models/sim-chat-small", headers={"Authorization": f"Bearer {key}"}).json()
    assert card["price_version"] == "2026-12-01" and card["pricing"]["completion"] == "0.000006"

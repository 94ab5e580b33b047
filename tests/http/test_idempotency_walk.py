"""Every POST route of the app is idempotent by construction: with one Idempotency-Key, the same
body gets the first answer again and changes nothing the second time (money above all: one charge,
one grant), and another body is a 409. The routes come from the app itself: a new POST route fails
this test until it has a sample body here, or says in its ``opt`` why it cannot be idempotent."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.harness import Gateway
from workers import media

Sample = Callable[["Context", str], dict[str, Any]]  # (context, variant) -> request kwargs


class Context:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        lots = {"requests": 10_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
        self.org = gw.organization("enterprise", limits=lots, credits="100")
        self.key, self.token_id = gw.key(self.org, ["user:read", "user:write", "admin:read", "admin:write"])
        charge = gw.call("POST", "/v1/embeddings", self.key, json={"model": "sim-embed-small", "input": "refund me"})
        assert charge.status_code == 200, charge.text
        self.charged_request = charge.headers["x-request-id"]
        self.unique = uuid.uuid4().hex[:8]
        self.models = gw.admin("GET", "/v1/price-books").json()["data"][0]["models"]
        self._batch_files: dict[str, str] = {}

    def batch_file(self, url: str = "/v1/chat/completions") -> str:
        """A batch input file of this context's organization: 200 short chat requests (uploaded once per url);
        with another url, none of them can run (a batch of it ends at once, moving no money)."""
        if url in self._batch_files:
            return self._batch_files[url]
        lines = b"".join(
            b'{"custom_id": "r%d", "method": "POST", "url": "%s", "body": '
            b'{"model": "sim-chat-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}}\n'
            % (i, url.encode())
            for i in range(200)
        )
        files = {"file": ("b.jsonl", lines)}
        uploaded = self.gw.call("POST", "/v1/files", self.key, files=files, data={"purpose": "batch"})
        assert uploaded.status_code == 200, uploaded.text
        self._batch_files[url] = str(uploaded.json()["id"])
        return self._batch_files[url]

    def batch(self) -> str:
        """A running batch of this context's organization (its 200 lines take a few seconds)."""
        body = {"input_file_id": self.batch_file(), "endpoint": "/v1/chat/completions", "completion_window": "24h"}
        created = self.gw.call("POST", "/v1/batches", self.key, json=body)
        assert created.status_code == 200, created.text
        return str(created.json()["id"])

    def balance(self) -> tuple[int, int]:
        body = self.gw.admin("GET", f"/v1/organizations/{self.org}/balance").json()
        return int(body["amount_micros"]), int(body["held_micros"])


def _chat(context: Context, variant: str) -> dict[str, Any]:
    return {"json": {"model": "sim-chat-small", "messages": [{"role": "user", "content": f"hello {variant}"}]}}


def _transcription(context: Context, variant: str) -> dict[str, Any]:
    audio = media.wav_audio(1500 if variant == "a" else 2500, b"seed")
    return {"data": {"model": "sim-whisper"}, "files": {"file": ("a.wav", audio, "audio/wav")}}


empty_map_dag = {
    "nodes": {
        "m": {
            "type": "map",
            "items": "${input.prompts}",
            "node": {"model_id": "flux", "task": "fal/text-to-image", "payload": {"prompt": "${item}"}},
        }
    }
}
samples: dict[str, Sample] = {
    "/v1/organizations": lambda c, v: {"json": {"name": f"org {v}", "plan": "free"}},
    "/v1/organizations/{org_id}/credits": lambda c, v: {"json": {"amount": "1.5" if v == "a" else "2", "kind": "paid"}},
    "/v1/organizations/{org_id}/credit-limit": lambda c, v: {"json": {"amount": "2" if v == "a" else "3"}},
    "/v1/organizations/{org_id}/auto-topup": lambda c, v: {
        "json": {"enabled": True, "threshold": "1", "amount": "5" if v == "a" else "6"}
    },
    "/v1/organizations/{org_id}/refunds": lambda c, v: {
        "json": {"amount": "0.000001", "reason": f"reason {v}", "reference": c.charged_request}
    },
    "/v1/organizations/{org_id}/adjustments": lambda c, v: {
        "json": {"amount": "1" if v == "a" else "2", "reason": "r"}
    },
    "/v1/organizations/{org_id}/limits": lambda c, v: {
        "json": {"requests": 10_000_000 if v == "a" else 9_000_000, "jobs": 10_000_000, "tokens": 100_000_000}
    },
    "/v1/organizations/{org_id}/plan": lambda c, v: {"json": {"plan": "enterprise" if v == "a" else "pro"}},
    "/api/organizations/{org_id}/content-filter-policy": lambda c, v: {
        "json": {"action": "flag" if v == "a" else "log"}
    },
    "/api/prompt-rewrite": lambda c, v: {"json": {"prompt": f"a cat {v}"}},
    "/v1/organizations/{org_id}/tokens/{token_id}/limits": lambda c, v: {"json": {"requests": 100 if v == "a" else 99}},
    "/v1/price-books": lambda c, v: {"json": {"version": f"walk-{c.unique}-{v}", "models": c.models}},
    "/v1/chat/completions": _chat,
    "/v1/completions": lambda c, v: {"json": {"model": "sim-chat-small", "prompt": f"say {v}"}},
    "/v1/embeddings": lambda c, v: {"json": {"model": "sim-embed-small", "input": f"text {v}"}},
    "/v1/images/generations": lambda c, v: {"json": {"model": "sim-image", "prompt": f"a {v}"}},
    "/v1/images/edits": lambda c, v: {
        "data": {"model": "sim-image", "prompt": f"edit {v}"},
        "files": {"image": ("a.png", media.png_image(8, 8, b"edit"), "image/png")},
    },
    "/v1/audio/speech": lambda c, v: {"json": {"model": "sim-tts", "input": f"speak {v}"}},
    "/v1/audio/generations": lambda c, v: {"json": {"model": "stable-audio-2-5", "prompt": f"m {v}", "duration": 2}},
    "/v1/music/generations": lambda c, v: {"json": {"model": "stable-audio-2-5", "prompt": f"m {v}", "duration": 2}},
    "/v1/audio/speech:stream": lambda c, v: {"json": {"model": "tts-1-5-mini", "input": f"stream {v}"}},
    "/v1/audio/transcriptions": _transcription,
    "/v1/audio/translations": _transcription,
    "/v1/videos/generations": lambda c, v: {"json": {"model": "sim-video", "prompt": f"clip {v}", "duration": 1}},
    "/v1/3d/generations": lambda c, v: {
        "json": {"model": "trellis-2-4b", "image_url": f"https://example.com/{v}.png", "resolution": "512"}
    },
    "/v1/responses": lambda c, v: {"json": {"model": "sim-chat-small", "input": f"hello {v}"}},
    "/v1/messages": lambda c, v: {
        "json": {"model": "sim-chat-small", "max_tokens": 64, "messages": [{"role": "user", "content": f"hi {v}"}]}
    },
    "/v1/rerank": lambda c, v: {"json": {"model": "qwen3-0.6b-fp8-score", "query": f"q {v}", "documents": ["a", "b"]}},
    "/v1/reranks": lambda c, v: {"json": {"model": "qwen3-rerank", "query": f"q {v}", "documents": ["a", "b"]}},
    "/v1/score": lambda c, v: {"json": {"model": "qwen3-rerank", "text_1": f"q {v}", "text_2": ["a", "b"]}},
    "/v1/search": lambda c, v: {"json": {"model": "tavily-search", "query": f"q {v}"}},
    "/v1/research": lambda c, v: {"json": {"model": "tavily-research", "query": f"q {v}", "async": False}},
    "/v1/answer": lambda c, v: {"json": {"model": "exa-answer", "query": f"q {v}"}},
    "/v1/detect": lambda c, v: {"json": {"model": "gptzero", "input": f"text {v}."}},
    "/v1/images/analysis": lambda c, v: {
        "json": {"model": "janus-pro-deepseek", "image_url": "https://example.com/a.png", "question": f"q {v}"}
    },
    "/v1/pii": lambda c, v: {"json": {"input": f"mail {v}@example.com"}},
    "/v1/gpu/instances": lambda c, v: {"json": {"gpu_slug": "rtx-4090", "name": f"walk {v}"}},
    "/v1/gpu/instances/{instance_id}/{action}": lambda c, v: {"json": {"variant": v}},  # the body is not read
    "/v1/gpu/connect/{instance_id}/{path}": lambda c, v: {"json": {"messages": [{"role": "user", "content": v}]}},
    "/v1/hosted-agents/instances": lambda c, v: {"json": {"agent_type": "hermes", "name": f"walk {v}"}},
    "/v1/hosted-agents/instances/{instance_id}/{action}": lambda c, v: {"json": {"variant": v}},  # not read
    # A hosted agent's message (charged as a chat) and configuration (its telegram connected first).
    "/v1/hosted-agents/instances/{instance_id}/message": lambda c, v: {
        "json": {"messages": [{"role": "user", "content": f"hi {v}"}]}
    },
    "/v1/hosted-agents/instances/{instance_id}/integrations": lambda c, v: {
        "json": {"kind": "discord", "secret": f"discord-token-{v}"}
    },
    "/v1/hosted-agents/instances/{instance_id}/integrations/{kind}/behavior": lambda c, v: {
        "json": {"behavior": {"typing": v == "a"}}
    },
    "/v1/hosted-agents/instances/{instance_id}/model": lambda c, v: {
        "json": {"provider": "empirio", "model": "qwen3-max" if v == "a" else "qwen3-7-plus"}
    },
    "/v1/hosted-agents/instances/{instance_id}/access": lambda c, v: {
        "json": {"mode": "open", "allow": {"slack": [v]}}
    },
    "/v1/hosted-agents/instances/{instance_id}/skills": lambda c, v: {"json": {"slug": f"hermes:skill-{v}"}},
    "/v1/hosted-agents/instances/{instance_id}/mcp": lambda c, v: {
        "json": {"name": v, "url": "https://mcp.example.com"}
    },
    "/fal/{slug}": lambda c, v: {"json": {"prompt": f"a {v}", "sync_mode": v == "a"}},
    "/fal/requests/batch": lambda c, v: {"json": {"request_ids": [f"job_{v}"]}},
    "/api/jobs": lambda c, v: {
        "json": {"model_id": "sim-embed-small", "task": "openai/embedding", "payload": {"input": f"text {v}"}}
    },
    "/v1/batches": lambda c, v: {
        "json": {
            "input_file_id": c.batch_file("/v1/embeddings"),
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"v": v},
        }
    },
    "/v1/batches/{batch_id}/cancel": lambda c, v: {"json": {"v": v}},
    "/v1/files": lambda c, v: {"data": {"purpose": "user_data"}, "files": {"file": ("a.txt", f"content {v}".encode())}},
    # Blocking (stream false): the answer comes once the task has ended and been charged.
    "/v1/agents/run": lambda c, v: {"json": {"model": "manus", "input": f"walk {v}", "stream": False}},
    "/api/agents": lambda c, v: {"json": {"name": f"walk {v}", "dag": empty_map_dag}},
    # An empty map: the run is held nothing and ends at once (its idempotency, not its money, is tested).
    "/api/agents/{agent_id}/run": lambda c, v: {"json": {"input_params": {"prompts": [], "v": v}}},
}
# Routes that use the organization's key rather than the platform admin token.
with_key = {
    "/v1/gpu/instances",
    "/v1/gpu/instances/{instance_id}/{action}",
    "/v1/gpu/connect/{instance_id}/{path}",
    "/v1/hosted-agents/instances",
    "/v1/hosted-agents/instances/{instance_id}/{action}",
    "/v1/hosted-agents/instances/{instance_id}/message",
    "/v1/hosted-agents/instances/{instance_id}/integrations",
    "/v1/hosted-agents/instances/{instance_id}/integrations/{kind}/behavior",
    "/v1/hosted-agents/instances/{instance_id}/model",
    "/v1/hosted-agents/instances/{instance_id}/access",
    "/v1/hosted-agents/instances/{instance_id}/skills",
    "/v1/hosted-agents/instances/{instance_id}/mcp",
    "/fal/{slug}",
    "/fal/requests/batch",
    "/api/jobs",
    "/api/prompt-rewrite",
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/audio/speech",
    "/v1/audio/speech:stream",
    "/v1/audio/generations",
    "/v1/music/generations",
    "/v1/audio/transcriptions",
    "/v1/audio/translations",
    "/v1/videos/generations",
    "/v1/3d/generations",
    "/v1/responses",
    "/v1/messages",
    "/v1/rerank",
    "/v1/reranks",
    "/v1/score",
    "/v1/search",
    "/v1/research",
    "/v1/answer",
    "/v1/detect",
    "/v1/images/analysis",
    "/v1/pii",
    "/v1/files",
    "/v1/batches",
    "/v1/batches/{batch_id}/cancel",
    "/v1/agents/run",
    "/api/agents",
    "/api/agents/{agent_id}/run",
}


# Routes whose answer is an event stream (gateway/idempotency.py keeps no streams to replay).
streamed = {"/v1/audio/speech:stream"}


def _timeless(content: bytes) -> bytes:
    """An answer without the streamed speech's ``elapsed_ms`` (when each chunk went out: a replay's
    own time, the rest of each event is the first attempt's)."""
    return re.sub(rb'"elapsed_ms":\d+', b'"elapsed_ms":0', content)


def post_routes(gw: Gateway) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for route in gw.app.routes:
        for handler in getattr(route, "route_handlers", []):
            if "POST" in handler.http_methods:
                path = route.path_format.replace("{org_id:str}", "{org_id}").replace("{token_id:str}", "{token_id}")
                path = path.replace("{batch_id:str}", "{batch_id}")
                found.append((path, dict(handler.opt)))
    return found


def test_every_post_route_is_idempotent_or_says_why_not(gw: Gateway) -> None:
    routes = post_routes(gw)
    assert len(routes) >= 18
    exempt = {path: opt["idempotent"] for path, opt in routes if opt.get("idempotent", True) is not True}
    assert all(isinstance(reason, str) and len(reason) > 20 for reason in exempt.values()), exempt
    assert set(exempt) == {
        "/v1/organizations/{org_id}/tokens",
        "/api/organizations/{org_id}/tokens",
        "/api/jobs/{job_id}/cancel",
        "/api/library/items/{item_id}/share",
        "/dashboard/login",
        "/dashboard/logout",
        "/v1/agents/{task_id}/stop",
    }
    missing = {path for path, _ in routes if path not in samples and path not in exempt}
    assert missing == set(), f"POST routes without a sample body in this test: {missing}"


@pytest.mark.parametrize("path", sorted(samples))
def test_the_same_key_and_body_answer_once_and_another_body_is_a_409(gw: Gateway, path: str) -> None:
    context = Context(gw)
    url = path.replace("{org_id}", context.org).replace("{token_id}", context.token_id)
    if "{instance_id}" in url:  # a GPU instance or a hosted agent to act on
        agents = url.startswith("/v1/hosted-agents")
        made = (
            gw.call("POST", "/v1/hosted-agents/instances", context.key, json={"agent_type": "hermes"})
            if agents
            else gw.call("POST", "/v1/gpu/instances", context.key, json={"gpu_slug": "rtx-4090"})
        )
        assert made.status_code in (200, 201), made.text
        action = "stop" if agents else "refresh"
        url = url.replace("{instance_id}", made.json()["instance"]["id"]).replace("{action}", action)
        if "{kind}" in url:  # a channel's behavior: the channel connected first
            channel = url.split("/integrations/")[0] + "/integrations"
            connected = gw.call("POST", channel, context.key, json={"kind": "telegram", "secret": "telegram-token"})
            assert connected.status_code == 201, connected.text
            url = url.replace("{kind}", "telegram")
        url = url.replace("{path}", "v1/chat/completions")
    url = url.replace("{slug}", "fal-ai/flux1-schnell-nunchaku")
    if "{agent_id}" in url:  # a Casola agent to run
        made = gw.call("POST", "/api/agents", context.key, json={"name": "walk", "dag": empty_map_dag})
        assert made.status_code == 201, made.text
        url = url.replace("{agent_id}", made.json()["agent"]["id"])
    if "{batch_id}" in url:
        url = url.replace("{batch_id}", context.batch())
    key = context.key if path in with_key else None
    call: Callable[..., Any] = (lambda method, target, **k: gw.call(method, target, key, **k)) if key else gw.admin
    headers = {"Idempotency-Key": f"walk-{uuid.uuid4().hex}"}
    sample = samples[path](context, "a")
    first = call("POST", url, headers=headers, **sample)
    assert 200 <= first.status_code < 300, (path, first.status_code, first.text)
    if first.status_code == 202:  # an async job: its charge lands after the answer, replayed or not
        deadline = time.monotonic() + 10
        while context.balance()[1] and time.monotonic() < deadline:
            time.sleep(0.02)
    after_first = context.balance()
    again = call("POST", url, headers=headers, **samples[path](context, "a"))
    assert again.status_code == first.status_code, again.text
    assert _timeless(again.content) == _timeless(first.content)
    # A stream is not kept by the middleware; its retry is answered again from its first attempt's outcome.
    assert again.headers.get("idempotent-replayed") == (None if path in streamed else "true")
    assert again.headers["x-request-id"] == first.headers["x-request-id"]
    assert again.headers.get("content-type") == first.headers.get("content-type")
    assert again.headers.get("x-credits-used") == first.headers.get("x-credits-used")
    assert context.balance() == after_first, "a replay changed the balance"
    other = call("POST", url, headers=headers, **samples[path](context, "b"))
    assert other.status_code == 409, other.text
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert context.balance() == after_first


def test_token_creation_ignores_the_key_and_never_replays_a_secret(gw: Gateway) -> None:
    context = Context(gw)
    headers = {"Idempotency-Key": "same"}
    body = {"name": "k", "scopes": ["user:read"]}
    first = gw.admin("POST", f"/v1/organizations/{context.org}/tokens", headers=headers, json=body)
    second = gw.admin("POST", f"/v1/organizations/{context.org}/tokens", headers=headers, json=body)
    assert first.status_code == second.status_code == 201
    assert first.json()["secret"] != second.json()["secret"]

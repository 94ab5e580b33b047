"""A fast fake OpenAI-compatible upstream for benchmarks: a raw asyncio HTTP/1.1 keep-alive server.

Standard library only (uses uvloop when importable), so any Python 3.11 runs it:

    python bench/fake_upstream.py --port 9000 [--reply-ms 0] [--token-ms 0] [--tokens 16]

Routes:

- ``POST /v1/chat/completions``: a fixed ``chat.completion`` with ``usage``; with ``"stream": true``,
  server-sent events (a role chunk at once, then one content chunk per token, each after
  ``token_ms``, a ``finish_reason`` chunk, a usage chunk when ``stream_options.include_usage`` is
  true, then ``data: [DONE]``), sent with chunked transfer encoding.
- ``POST /v1/completions``: the same for text completions.
- ``POST /v1/embeddings``: one small vector per input, ``usage`` with ``prompt_tokens``.
- ``POST /v1/images/generations`` (``n`` tiny images), ``/v1/images/edits`` (one tiny image),
  ``/v1/audio/speech`` (a WAV header), ``/v1/audio/transcriptions`` and ``/v1/audio/translations`` (a
  ``verbose_json`` transcript with its ``duration``).
- ``"logprobs"`` in a stream's request lists each token in its chunk; ``--no-stream-usage`` (or
  ``_control`` ``stream_usage``) sends streams without a usage chunk, as llama.cpp's server does.
- ``POST /v1/rerank`` (llama.cpp's shape: every document's ``relevance_score`` in the documents' order,
  ``top_n`` ignored, ``usage`` with ``prompt_tokens``) and ``POST /v1/score`` (vLLM's: ``data[]`` of
  ``score`` objects); ``rerank_usage`` false (``_control``) answers both without ``usage``.
- ``GET /v1/models``, ``GET /healthz``.
- ``GET /_control`` shows and ``POST /_control`` ``{"reply_ms"?, "token_ms"?, "tokens"?}`` changes the
  delays at run time (a benchmark switches one running upstream between scenarios).

``reply_ms`` delays every reply (before its first byte); a non-streamed completion also waits
``tokens * token_ms`` (it generates the same tokens a stream would). Requests on one connection are
answered in order; a request's body is read only by its ``Content-Length`` (no chunked uploads).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
from dataclasses import dataclass
from typing import Any, cast

header_bytes_max = 64 * 1024
body_bytes_max = 8 * 1024 * 1024
embedding_dims = 16
model_ids = ("sim-chat-small", "sim-chat-large", "sim-embed-small")


@dataclass
class Config:
    reply_ms: float = 0.0
    token_ms: float = 0.0
    tokens: int = 16
    requests: int = 0
    # Like llama.cpp: streams never carry a usage chunk, even when stream_options asks for one.
    stream_usage: bool = True
    rerank_usage: bool = True  # false: rerank and score answers carry no usage


config = Config()
_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_status_text = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 413: "Too Large"}
_reply_cache: dict[tuple[str, str, int, int], bytes] = {}


def _head(status: int, content_type: str, length: int | None, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_status_text.get(status, 'Error')}", f"content-type: {content_type}"]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _json_response(status: int, payload: Any, keep_alive: bool) -> bytes:
    body = _json(payload).encode()
    return _head(status, "application/json", len(body), keep_alive) + body


def _error(status: int, message: str, keep_alive: bool) -> bytes:
    return _json_response(status, {"error": {"message": message, "type": "invalid_request_error"}}, keep_alive)


def _prompt_tokens(body: dict[str, Any]) -> int:
    """A cheap, deterministic stand-in for a tokenizer: about four characters a token."""
    chars = 0
    for message in body.get("messages") or ():
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            chars += len(content)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        chars += len(prompt)
    elif isinstance(prompt, list):
        chars += sum(len(p) for p in prompt if isinstance(p, str))
    return 4 + chars // 4


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _completion_tokens(body: dict[str, Any]) -> int:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if isinstance(limit, int) and limit > 0:
        return min(config.tokens, limit)
    return config.tokens


def _text(tokens: int) -> str:
    return "".join(f" tok{i}" for i in range(tokens))


def _chat_reply(model: str, prompt: int, tokens: int, keep_alive: bool) -> bytes:
    key = ("chat", model, prompt, tokens * 2 + int(keep_alive))
    cached = _reply_cache.get(key)
    if cached is None:
        payload = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _text(tokens)},
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": _usage(prompt, tokens),
        }
        cached = _json_response(200, payload, keep_alive)
        if len(_reply_cache) < 10_000:
            _reply_cache[key] = cached
    return cached


def _text_reply(model: str, prompt: int, tokens: int, keep_alive: bool) -> bytes:
    payload = {
        "id": "cmpl-fake",
        "object": "text_completion",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "text": _text(tokens), "logprobs": None, "finish_reason": "stop"}],
        "usage": _usage(prompt, tokens),
    }
    return _json_response(200, payload, keep_alive)


def _embeddings_reply(body: dict[str, Any], keep_alive: bool) -> bytes:
    raw = body.get("input", "")
    inputs: list[Any] = raw if isinstance(raw, list) and raw and not isinstance(raw[0], int) else [raw]
    requested = body.get("dimensions")
    dims = requested if isinstance(requested, int) and 0 < requested <= 4096 else embedding_dims
    data = [
        {"object": "embedding", "index": i, "embedding": [round(0.001 * ((i + d) % 97), 6) for d in range(dims)]}
        for i in range(len(inputs))
    ]
    prompt = sum(max(1, len(x) // 4) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in inputs)
    payload = {
        "object": "list",
        "data": data,
        "model": body.get("model", "sim-embed-small"),
        "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
    }
    return _json_response(200, payload, keep_alive)


def _relevance(query: Any, document: Any) -> float:
    """A fixed stand-in score: the share of the query's characters found in the document."""
    asked, offered = str(query or "").lower(), set(str(document or "").lower())
    return round(sum(c in offered for c in asked) / max(len(asked), 1), 4)


def _rerank_reply(body: dict[str, Any], keep_alive: bool) -> bytes:
    documents = body.get("documents") or []
    query = body.get("query", "")
    results = [{"index": i, "relevance_score": _relevance(query, d)} for i, d in enumerate(documents)]
    prompt = sum(2 + (len(str(query)) + len(str(d))) // 4 for d in documents)
    payload: dict[str, Any] = {"model": body.get("model"), "object": "list", "results": results}
    if config.rerank_usage:
        payload["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return _json_response(200, payload, keep_alive)


def _score_reply(body: dict[str, Any], keep_alive: bool) -> bytes:
    first, second = body.get("text_1", ""), body.get("text_2", "")
    firsts = first if isinstance(first, list) else [first]
    seconds = second if isinstance(second, list) else [second]
    pairs = [(firsts[0], s) for s in seconds] if len(firsts) == 1 else list(zip(firsts, seconds, strict=False))
    data = [{"index": i, "object": "score", "score": _relevance(a, b)} for i, (a, b) in enumerate(pairs)]
    prompt = sum(2 + (len(str(a)) + len(str(b))) // 4 for a, b in pairs)
    payload: dict[str, Any] = {"id": "score-fake", "object": "list", "model": body.get("model"), "data": data}
    if config.rerank_usage:
        payload["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0}
    return _json_response(200, payload, keep_alive)


def _models_reply(keep_alive: bool) -> bytes:
    data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "fake-upstream"} for m in model_ids]
    return _json_response(200, {"object": "list", "data": data}, keep_alive)


def _sse(payload: Any) -> bytes:
    event = b"data: " + (payload if isinstance(payload, bytes) else _json(payload).encode()) + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(event), event)


def _stream_events(
    chat: bool, model: str, prompt: int, tokens: int, include_usage: bool, logprobs: bool = False
) -> list[bytes]:
    """Every SSE frame of a stream, already chunk-encoded: [first, token 1..n, finish + usage + done].
    With ``logprobs``, each token's chunk lists it (one entry per token, as real servers do)."""
    created = 1_700_000_000
    if chat:
        base: dict[str, Any] = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created}
        base["model"] = model

        def chunk(delta: dict[str, Any], finish: str | None, token: str = "") -> bytes:
            listed = {"content": [{"token": token, "logprob": -0.5, "top_logprobs": []}]} if token else None
            choice = {"index": 0, "delta": delta, "logprobs": listed, "finish_reason": finish}
            return _sse({**base, "choices": [choice]})

        first = chunk({"role": "assistant", "content": ""}, None)
        body = [chunk({"content": f" tok{i}"}, None, f" tok{i}" if logprobs else "") for i in range(tokens)]
        finish = chunk({}, "stop")
    else:
        base = {"id": "cmpl-fake", "object": "text_completion", "created": created, "model": model}

        def text_chunk(text: str, finish: str | None, token: str = "") -> bytes:
            listed = {"tokens": [token], "token_logprobs": [-0.5]} if token else None
            return _sse({**base, "choices": [{"index": 0, "text": text, "logprobs": listed, "finish_reason": finish}]})

        first = b""
        body = [text_chunk(f" tok{i}", None, f" tok{i}" if logprobs else "") for i in range(tokens)]
        finish = text_chunk("", "stop")
    tail = finish
    if include_usage and config.stream_usage:
        tail += _sse({**base, "choices": [], "usage": _usage(prompt, tokens)})
    tail += _sse(b"[DONE]") + b"0\r\n\r\n"
    return [first, *body, tail]


_wav_header = (
    b"RIFF\x24\x00\x00\x00WAVEfmt \x10\x00\x00\x00\x01\x00\x01\x00\x40\x1f\x00\x00"
    b"\x80\x3e\x00\x00\x02\x00\x10\x00data\x00\x00\x00\x00"
)


def _binary_response(status: int, content_type: str, body: bytes, keep_alive: bool) -> bytes:
    return _head(status, content_type, len(body), keep_alive) + body


class UpstreamProtocol(asyncio.Protocol):
    """One connection: parses requests as they arrive and answers them strictly in order."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not subclasses of asyncio.Transport, only alike).
        self.transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._process()

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def _close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()
        self.closed = True

    def _process(self) -> None:
        """Answers every complete request in the buffer until one needs to wait."""
        while not self.busy and not self.closed:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > header_bytes_max:
                    self._write(_error(413, "headers too large", False))
                    self._close()
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._write(_error(400, "bad request line", False))
                self._close()
                return
            length = 0
            keep_alive = version == "HTTP/1.1"
            for line in lines[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value.strip() or 0)
                elif name == "connection":
                    token = value.strip().lower()
                    keep_alive = token == "keep-alive" or (keep_alive and token != "close")
            if length > body_bytes_max:
                self._write(_error(413, "body too large", False))
                self._close()
                return
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            config.requests += 1
            self._handle(method, target.split("?", 1)[0], body, keep_alive)

    def _finish(self, keep_alive: bool) -> None:
        self.busy = False
        if not keep_alive:
            self._close()
        elif self.buffer:
            self._process()

    def _reply(self, data: bytes, keep_alive: bool, delay_s: float) -> None:
        if delay_s <= 0:
            self._write(data)
            self._finish(keep_alive)
            return
        self.busy = True

        def later() -> None:
            self._write(data)
            self._finish(keep_alive)

        asyncio.get_running_loop().call_later(delay_s, later)

    def _handle(self, method: str, path: str, raw: bytes, keep_alive: bool) -> None:
        reply_s = config.reply_ms / 1000
        if method == "GET":
            if path == "/v1/models":
                self._reply(_models_reply(keep_alive), keep_alive, reply_s)
            elif path in ("/healthz", "/health"):
                self._reply(_json_response(200, {"status": "ok"}, keep_alive), keep_alive, 0)
            elif path == "/_control":
                self._reply(_json_response(200, _control_state(), keep_alive), keep_alive, 0)
            else:
                self._reply(_error(404, f"no route {path}", keep_alive), keep_alive, 0)
            return
        if method != "POST":
            self._reply(_error(405, f"{method} not allowed", keep_alive), keep_alive, 0)
            return
        if path in ("/v1/audio/transcriptions", "/v1/audio/translations"):  # multipart: the audio is not read
            transcript = {"text": "a fake transcript", "language": "english", "duration": 2.5}
            self._reply(_json_response(200, transcript, keep_alive), keep_alive, reply_s)
            return
        if path == "/v1/images/edits":  # multipart: answered with one image, whatever it asks
            edited = {"created": 1_700_000_000, "data": [{"b64_json": "iVBORw0KGgo="}]}
            self._reply(_json_response(200, edited, keep_alive), keep_alive, reply_s)
            return
        try:
            body = json.loads(raw) if raw else {}
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as error:
            self._reply(_error(400, f"invalid JSON: {error}", keep_alive), keep_alive, 0)
            return
        if path == "/_control":
            for name in ("reply_ms", "token_ms"):
                if name in body:
                    setattr(config, name, float(body[name]))
            if "tokens" in body:
                config.tokens = int(body["tokens"])
            for flag in ("stream_usage", "rerank_usage"):
                if flag in body:
                    setattr(config, flag, bool(body[flag]))
            self._reply(_json_response(200, _control_state(), keep_alive), keep_alive, 0)
            return
        model = str(body.get("model") or "sim-chat-small")
        if path in ("/v1/chat/completions", "/v1/completions"):
            chat = path == "/v1/chat/completions"
            prompt = _prompt_tokens(body)
            tokens = _completion_tokens(body)
            if body.get("stream"):
                options = body.get("stream_options")
                include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
                listed = bool(body.get("logprobs"))
                events = _stream_events(chat, model, prompt, tokens, include_usage, listed)
                self.busy = True
                asyncio.get_running_loop().create_task(self._stream(events, keep_alive, reply_s))
                return
            reply = (_chat_reply if chat else _text_reply)(model, prompt, tokens, keep_alive)
            self._reply(reply, keep_alive, reply_s + tokens * config.token_ms / 1000)
        elif path == "/v1/images/generations":
            count = int(body.get("n") or 1)
            images = {"created": 1_700_000_000, "data": [{"b64_json": "iVBORw0KGgo="} for _ in range(count)]}
            self._reply(_json_response(200, images, keep_alive), keep_alive, reply_s)
        elif path == "/v1/audio/speech":
            self._reply(_binary_response(200, "audio/wav", _wav_header, keep_alive), keep_alive, reply_s)
        elif path == "/v1/embeddings":
            self._reply(_embeddings_reply(body, keep_alive), keep_alive, reply_s)
        elif path == "/v1/rerank":
            self._reply(_rerank_reply(body, keep_alive), keep_alive, reply_s)
        elif path == "/v1/score":
            self._reply(_score_reply(body, keep_alive), keep_alive, reply_s)
        else:
            self._reply(_error(404, f"no route {path}", keep_alive), keep_alive, 0)

    async def _stream(self, events: list[bytes], keep_alive: bool, reply_s: float) -> None:
        try:
            if reply_s > 0:
                await asyncio.sleep(reply_s)
            token_s = config.token_ms / 1000
            self._write(_head(200, "text/event-stream", None, keep_alive) + events[0])
            for event in events[1:-1]:
                if token_s > 0:
                    await asyncio.sleep(token_s)
                if self.closed:
                    return
                self._write(event)
            self._write(events[-1])
        finally:
            self._finish(keep_alive)


def _control_state() -> dict[str, Any]:
    return {
        "reply_ms": config.reply_ms,
        "token_ms": config.token_ms,
        "tokens": config.tokens,
        "requests": config.requests,
        "stream_usage": config.stream_usage,
        "rerank_usage": config.rerank_usage,
    }


async def serve(host: str, port: int, ready_file: str | None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(UpstreamProtocol, host, port, backlog=1024, reuse_address=True)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    bound = server.sockets[0].getsockname()[1]
    line = f"fake upstream listening on http://{host}:{bound}"
    print(line, flush=True)
    if ready_file:
        with open(ready_file, "w") as handle:
            handle.write(f"{bound}\n")
    async with server:
        await stop.wait()
    print(f"fake upstream stopped after {config.requests} requests", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed, and in --ready-file)")
    parser.add_argument("--reply-ms", type=float, default=0.0, help="fixed delay before every reply")
    parser.add_argument("--token-ms", type=float, default=0.0, help="delay per generated token")
    parser.add_argument("--tokens", type=int, default=16, help="completion tokens per reply (capped by max_tokens)")
    parser.add_argument(
        "--no-stream-usage", action="store_true", help="streams carry no usage chunk (as llama.cpp's server)"
    )
    parser.add_argument("--ready-file", help="write the bound port here once listening")
    args = parser.parse_args(argv)
    config.reply_ms, config.token_ms, config.tokens = args.reply_ms, args.token_ms, args.tokens
    config.stream_usage = not args.no_stream_usage
    try:
        import uvloop  # type: ignore[import-not-found,unused-ignore]

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    with contextlib.suppress(KeyboardInterrupt):
        runner(serve(args.host, args.port, args.ready_file))


if __name__ == "__main__":
    main()

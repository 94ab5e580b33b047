"""The Files API through the official OpenAI SDK (``client.files``), unchanged: upload, list (the
SDK's cursor pages), retrieve, download, delete; the storage headers; another organization's file is
a 404; an upload past the organization's storage limit is refused; a chat message may name a file."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from gateway.routes.files import store_file
from tests.harness import Gateway
from tests.http.dialects import Account


@pytest.fixture
def account(gw: Gateway) -> Account:
    return Account(gw)


def test_upload_list_retrieve_download_delete_with_the_sdk(account: Account) -> None:
    client = account.openai()
    data = b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {}}\n'
    created = client.files.create(file=("input.jsonl", io.BytesIO(data)), purpose="batch")
    assert created.id.startswith("file-")
    assert (created.object, created.bytes, created.filename, created.purpose) == (
        "file",
        len(data),
        "input.jsonl",
        "batch",
    )
    assert created.status == "processed"

    assert client.files.retrieve(created.id).bytes == len(data)
    assert client.files.content(created.id).read() == data
    listed = [f.id for f in client.files.list()]
    assert listed == [created.id]

    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.deleted) == (created.id, True)
    assert [f.id for f in client.files.list()] == []
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(created.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(created.id)


def test_the_sdk_pages_through_every_file(account: Account) -> None:
    client = account.openai()
    ids = [
        client.files.create(file=(f"f{i}.txt", io.BytesIO(b"x" * (i + 1))), purpose="user_data").id for i in range(5)
    ]
    page = client.files.list(limit=2, order="asc")
    assert [f.id for f in page.data] == ids[:2] and page.has_more
    assert [f.id for f in page] == ids  # the SDK follows `after` to the end
    assert [f.id for f in client.files.list(limit=2)] == ids[::-1]  # newest first by default
    assert [f.id for f in client.files.list(purpose="batch")] == []


def test_storage_headers_count_what_is_stored(account: Account) -> None:
    gw = account.gw
    first = gw.call(
        "POST", "/v1/files", account.key, files={"file": ("a.txt", b"a" * 100)}, data={"purpose": "user_data"}
    )
    assert first.status_code == 200, first.text
    assert first.headers["x-storage-used-bytes"] == "100"
    assert int(first.headers["x-storage-limit-bytes"]) == gw.settings.storage_bytes_max
    second = gw.call(
        "POST", "/v1/files", account.key, files={"file": ("b.txt", b"b" * 50)}, data={"purpose": "user_data"}
    )
    assert second.headers["x-storage-used-bytes"] == "150"
    listed = gw.call("GET", "/v1/files", account.key)
    assert listed.headers["x-storage-used-bytes"] == "150"
    gone = gw.call("DELETE", f"/v1/files/{first.json()['id']}", account.key)
    assert gone.status_code == 200 and gone.headers["x-storage-used-bytes"] == "50"


def test_another_organizations_file_is_not_found(account: Account) -> None:
    gw = account.gw
    other = Account(gw)
    created = gw.call(
        "POST", "/v1/files", account.key, files={"file": ("a.txt", b"secret")}, data={"purpose": "user_data"}
    )
    file_id = created.json()["id"]
    for method, path in (
        ("GET", f"/v1/files/{file_id}"),
        ("GET", f"/v1/files/{file_id}/content"),
        ("DELETE", f"/v1/files/{file_id}"),
    ):
        answer = gw.call(method, path, other.key)
        assert answer.status_code == 404, (method, path, answer.text)
        assert answer.json()["error"]["code"] == "file_not_found"
    assert gw.call("GET", "/v1/files", other.key).json()["data"] == []
    assert gw.call("GET", f"/v1/files/{file_id}/content", account.key).content == b"secret"


@pytest.mark.parametrize(
    ("files", "data", "param"),
    [
        ({}, {"purpose": "batch"}, "file"),
        ({"file": ("a.txt", b"x")}, {}, "purpose"),
        ({"file": ("a.txt", b"x")}, {"purpose": "nonsense"}, "purpose"),
        ({"file": ("a.txt", b"")}, {"purpose": "batch"}, "file"),
    ],
)
def test_bad_uploads_are_a_400_naming_the_field(
    account: Account, files: dict[str, tuple[str, bytes]], data: dict[str, str], param: str
) -> None:
    answer = account.gw.call("POST", "/v1/files", account.key, files=files or {"other": ("x", b"x")}, data=data)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["param"] == param


def test_a_json_body_is_a_400(account: Account) -> None:
    answer = account.gw.call("POST", "/v1/files", account.key, json={"purpose": "batch"})
    assert answer.status_code == 400
    assert answer.json()["error"]["param"] == "file"


def test_a_chat_message_may_name_an_uploaded_file(account: Account) -> None:
    client = account.openai()
    created = client.files.create(file=("notes.txt", io.BytesIO(b"The meeting is on Tuesday.")), purpose="user_data")
    answer = client.chat.completions.create(
        model="sim-chat-large",
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "When?"}, {"type": "file", "file": {"file_id": created.id}}],
            }
        ],
        max_tokens=8,
    )
    assert answer.usage is not None and answer.usage.prompt_tokens > 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_chat_too_large_to_record_with_its_named_file_is_a_413(account: Account, stream: bool) -> None:
    """Each part fits its own limit (a body of under 4 MiB, a file of under 4 MiB) and the prompt is
    a few tokens, but with the file inlined the request's hold is over the log's limit for one record:
    the client's request is too large (413, in the OpenAI envelope), and nothing is held or charged."""
    client = account.openai()
    stored = b"x" * 3_900_000  # one token: a file's text is metered by its words
    created = client.files.create(file=("big.txt", io.BytesIO(stored)), purpose="user_data")
    inline = base64.b64encode(b"y" * 2_500_000).decode()  # 5.2 MB and 3.3 MB in base64: over 8 MiB
    balance = account.balance_micros()
    with pytest.raises(openai.APIStatusError) as refused:
        client.chat.completions.create(
            model="sim-chat-large",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "file", "file": {"filename": "inline.txt", "file_data": inline}},
                        {"type": "file", "file": {"file_id": created.id}},
                    ],
                }
            ],
            max_tokens=8,
            stream=stream,
        )
    assert refused.value.status_code == 413
    assert isinstance(refused.value.body, dict) and refused.value.body["code"] == "request_too_large"
    assert account.balance_micros() == balance


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(Path(tmp_path_factory.mktemp("files-small")), storage_bytes_max=1_000)
    yield gateway
    gateway.close()


@pytest.mark.heavy  # a gateway of its own (a storage limit of 1,000 bytes)
def test_an_upload_past_the_storage_limit_is_refused(small: Gateway) -> None:
    account = Account(small)
    client = account.openai()
    kept = client.files.create(file=("a.bin", io.BytesIO(b"a" * 600)), purpose="user_data")
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("b.bin", io.BytesIO(b"b" * 500)), purpose="user_data")
    assert refused.value.status_code == 413
    error = refused.value.response.json()["error"]
    assert error["code"] == "storage_limit_exceeded" and "600 of 1000 bytes" in error["message"]
    assert refused.value.response.headers["x-storage-used-bytes"] == "600"
    assert refused.value.response.headers["x-storage-limit-bytes"] == "1000"
    assert [f.id for f in client.files.list()] == [kept.id]
    assert list((small.root / "files" / account.org).iterdir()) == [small.root / "files" / account.org / kept.id]
    client.files.delete(kept.id)
    assert client.files.create(file=("b.bin", io.BytesIO(b"b" * 500)), purpose="user_data").bytes == 500


@pytest.mark.heavy  # a gateway of its own
def test_the_ledger_refuses_uploads_racing_past_the_limit(small: Gateway) -> None:
    """The gateway's own count is checked first; the ledger, one writer per organization, decides."""
    account = Account(small)
    core = small.core

    async def race() -> list[object]:
        uploads = [
            store_file(core, account.org, "", f"file-race{i}", "r.bin", "user_data", b"r" * 400) for i in range(4)
        ]
        return list(await asyncio.gather(*uploads, return_exceptions=True))

    outcomes = asyncio.run(race())
    stored = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(stored) == 2, outcomes
    assert core.stored_files.used_bytes(account.org) == 800


@pytest.mark.parametrize("base", ["/openai/v1", ""])
def test_files_at_casolas_base_url_and_the_root(account: Account, base: str) -> None:
    """Casola's SDK base_url ends in /openai/v1; EmpirioLabs' is the server root."""
    client = account.openai(base)
    created = client.files.create(file=("a.txt", io.BytesIO(b"hello")), purpose="user_data")
    assert [f.id for f in client.files.list()] == [created.id]
    assert client.files.content(created.id).read() == b"hello"
    assert client.files.delete(created.id).deleted


@pytest.mark.heavy  # a gateway of its own, and a batch to wait for
def test_a_batchs_output_files_are_kept_past_the_storage_limit(small: Gateway) -> None:
    """They hold answers already charged: they are stored, and count toward the limit afterwards."""
    client = Account(small).openai()
    line = {
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "sim-chat-small", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32},
    }
    data = b"".join(json.dumps({"custom_id": f"r{i}", **line}).encode() + b"\n" for i in range(3))
    uploaded = client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.monotonic() + 60
    while batch.status not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.output_file_id is not None
    output = client.files.with_raw_response.retrieve(batch.output_file_id)
    assert output.parse().bytes + len(data) > 1_000
    assert int(output.headers["x-storage-used-bytes"]) > int(output.headers["x-storage-limit-bytes"])
    with pytest.raises(openai.APIStatusError) as refused:
        client.files.create(file=("more.txt", io.BytesIO(b"x")), purpose="user_data")
    assert refused.value.status_code == 413

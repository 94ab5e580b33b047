"""Batches (OpenAI's Batch API): a JSONL file of requests, each line run as a metered job at the
price book's batch rate, its answers collected into an output file and its failures into an error
file, both downloadable through ``/v1/files``.

Each line is one request to the batch's endpoint (chat completions, responses, completions or
embeddings) with ``"service_tier": "flex"`` written into its body, so its hold and charge are those of
any request at batch prices (``Units.batch``: the model's batch discount), and it is parsed, bounded
and refused by the same parser as the synchronous endpoint (``gateway/requests.py``). A line that cannot run (bad
JSON, another endpoint, a body the endpoint refuses) goes to the error file at once; a line whose
request is refused or fails (402, a failed job) goes there when it ends. Nothing in a line is a 500.

The batch runs on the gateway instance that accepted it, as a task of its event loop, at most
``lines_in_flight_max`` lines at once; its state is on ``tollgate.jobs`` (``BatchCreated``,
``BatchProgressed``, ``BatchCancelRequested``, ``BatchEnded``), so every instance shows it and
cancels it. A cancel stops lines from starting; the lines already running finish and are charged,
the others are never held: a cancelled batch is charged exactly for its finished lines.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import msgspec

from eventlog import Outgoing, topics
from gateway.errors import ApiError
from gateway.metering import Attempt, AttemptForgotten, MeteredRequest, OrganizationBusy, Overloaded
from gateway.requests import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    RESPONSES,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_response,
)
from gateway.results import charge_of_job, refusal, shape_result
from projections.views import ApiToken
from schemas.codec import encode
from schemas.commands import ReturnSlice
from schemas.events import BatchEnded, BatchProgressed, Event
from schemas.ids import new_id
from schemas.moments import utc_now

logger = logging.getLogger(__name__)

endpoints = (CHAT, RESPONSES, COMPLETIONS, EMBEDDINGS)
completion_windows = ("24h",)
prompt_params = {CHAT: "messages", RESPONSES: "input", COMPLETIONS: "prompt"}  # named by a too-long prompt's 400
lines_max = 50_000  # OpenAI's bound on a batch's requests
lines_in_flight_max = 16  # lines of one batch running at once on this gateway
progress_interval_s = 0.25  # BatchProgressed at most this often per batch
busy_retry_s = 0.2  # a line the gateway cannot take now (in-flight bounds) is retried after this


@dataclass(frozen=True, slots=True)
class Line:
    """One input line: the request it runs, or why it cannot run."""

    index: int
    custom_id: str
    metered: MeteredRequest | None = None
    error_code: str = ""
    error_message: str = ""


def line_request_id(batch_id: str, index: int) -> str:
    """Each line's request (and job) id derives from the batch and its position, so that its job and
    its usage row name the batch."""
    return f"req_{batch_id}_{index:06d}"


def _line(index: int, raw: bytes, endpoint: str, core_parse: Any, seen_ids: set[str], sim_knobs: bool) -> Line:
    try:
        item = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return Line(index, "", error_code="invalid_json", error_message=f"Line {index + 1} is not JSON.")
    if not isinstance(item, dict):
        return Line(index, "", error_code="invalid_request", error_message=f"Line {index + 1} is not an object.")
    custom_id = item.get("custom_id")
    if not isinstance(custom_id, str) or not custom_id:
        return Line(index, "", error_code="missing_custom_id", error_message="Each line needs a custom_id string.")
    if custom_id in seen_ids:
        return Line(index, custom_id, error_code="duplicate_custom_id", error_message="custom_id must be unique.")
    seen_ids.add(custom_id)
    if item.get("method", "POST") != "POST":
        return Line(index, custom_id, error_code="invalid_method", error_message="method must be POST.")
    if item.get("url") != endpoint:
        return Line(
            index, custom_id, error_code="invalid_url", error_message=f"url must be the batch's endpoint, {endpoint}."
        )
    body = item.get("body")
    if not isinstance(body, dict):
        return Line(index, custom_id, error_code="invalid_body", error_message="body must be a JSON object.")
    if "sim" in body and not sim_knobs:
        return Line(
            index,
            custom_id,
            error_code="unsupported_parameter",
            error_message="The 'sim' field drives the simulated backend in fault tests; it is not open to API keys.",
        )
    if body.get("stream") or body.get("async"):
        return Line(
            index, custom_id, error_code="invalid_body", error_message="A batch line is neither streamed nor async."
        )
    try:
        metered = core_parse(msgspec.json.encode({**body, "service_tier": "flex"}))
    except ApiError as error:
        return Line(index, custom_id, error_code=error.code or "invalid_request", error_message=error.message)
    return Line(index, custom_id, metered=metered)


def parse_lines(data: bytes, endpoint: str, parse: Any, sim_knobs: bool = False) -> list[Line]:
    """Every line of a batch's input file (blank lines skipped), each parsed or refused; a 400 for a
    file past ``lines_max`` lines or with none."""
    raws = [raw for raw in data.split(b"\n") if raw.strip()]
    if not raws:
        raise ApiError(400, "The input file has no requests.", code="invalid_file", param="input_file_id")
    if len(raws) > lines_max:
        raise ApiError(
            400, f"A batch may hold at most {lines_max} requests.", code="too_many_requests", param="input_file_id"
        )
    seen: set[str] = set()
    return [_line(index, raw, endpoint, parse, seen, sim_knobs) for index, raw in enumerate(raws)]


def parser_for(endpoint: str, org_id: str, core: Any) -> Any:
    book = core.prices.current
    if endpoint == CHAT:
        return lambda body: parse_chat(body, book, org_id, core.files)
    if endpoint == RESPONSES:
        return lambda body: parse_response(body, book)
    if endpoint == COMPLETIONS:
        return lambda body: parse_completion(body, book)
    return lambda body: parse_embedding(body, book)


def error_record(
    batch_id: str, line: Line, status: int | None, code: str, message: str, rid: str = ""
) -> dict[str, Any]:
    response = None
    if status is not None:
        response = {"status_code": status, "request_id": rid, "body": {"error": {"message": message, "code": code}}}
    return {
        "id": f"batch_req_{batch_id.removeprefix('batch_')}_{line.index:06d}",
        "custom_id": line.custom_id,
        "response": response,
        "error": {"code": code, "message": message},
    }


class BatchRunner:
    """Runs this gateway's batches as tasks of its event loop."""

    def __init__(self, core: Any) -> None:
        self._core = core
        self._tasks: set[asyncio.Task[None]] = set()

    def start(self, token: ApiToken, batch_id: str, endpoint: str, lines: list[Line], reserved: str) -> None:
        """Run the batch's lines, their holds carved from its reservation (the slice ``reserved``)."""
        task = asyncio.get_running_loop().create_task(self._run(token, batch_id, endpoint, lines, reserved))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def resume(self) -> None:
        """Run again the batches this instance was running when it stopped (its instance id): each
        line's earlier attempt, if any, answers it, the rest run now. A batch whose input file or key
        is gone fails."""
        settings = self._core.settings
        for batch in list(self._core.batches.batches.values()):
            if batch.ended_at is not None or batch.instance_id != settings.instance_id:
                continue
            token = self._core.tenants.tokens_by_id.get(batch.token_id)
            record = self._core.stored_files.get(batch.org_id, batch.input_file_id)
            data = await asyncio.to_thread(self._core.blobs.get, record.blob_key) if record is not None else None
            counts = {"completed": batch.completed, "failed": batch.failed}
            if token is None or data is None:
                self._ended(
                    batch.org_id,
                    batch.batch_id,
                    "failed",
                    counts,
                    "",
                    "",
                    "batch_lost",
                    "Its key or input file is gone.",
                )
                continue
            try:
                parse = parser_for(batch.endpoint, batch.org_id, self._core)
                lines = parse_lines(data, batch.endpoint, parse, settings.sim_knobs)
            except ApiError as error:
                self._ended(
                    batch.org_id, batch.batch_id, "failed", counts, "", "", error.code or "invalid_file", error.message
                )
                continue
            logger.info("resuming batch %s (%d lines)", batch.batch_id, len(lines))
            self.start(token, batch.batch_id, batch.endpoint, lines, batch.reserved)

    def _append(self, event: Event) -> None:
        self._core.send([Outgoing(topics.JOBS, event.org_id, encode(event))])

    def _cancelled(self, org_id: str, batch_id: str) -> bool:
        batch = self._core.batches.get(org_id, batch_id)
        return batch is not None and batch.cancelling_at is not None

    def _expired(self, org_id: str, batch_id: str) -> bool:
        batch = self._core.batches.get(org_id, batch_id)
        return batch is not None and utc_now() >= batch.expires_at

    async def _run(self, token: ApiToken, batch_id: str, endpoint: str, lines: list[Line], reserved: str) -> None:
        results: dict[int, dict[str, Any]] = {}
        errors: dict[int, dict[str, Any]] = {}
        for line in lines:
            if line.metered is None:
                errors[line.index] = error_record(batch_id, line, None, line.error_code, line.error_message)
        counts = {"completed": 0, "failed": len(errors)}
        last_progress = 0.0

        def progress() -> None:
            nonlocal last_progress
            if time.monotonic() - last_progress >= progress_interval_s:
                last_progress = time.monotonic()
                self._append(
                    BatchProgressed(
                        event_id=new_id("evt"),
                        occurred_at=utc_now(),
                        org_id=token.org_id,
                        batch_id=batch_id,
                        completed=counts["completed"],
                        failed=counts["failed"],
                    )
                )

        slots = asyncio.Semaphore(lines_in_flight_max)
        running: list[asyncio.Task[None]] = []

        async def run_line(line: Line) -> None:
            try:
                try:
                    ok, record = await self._run_line(token, batch_id, endpoint, line, reserved)
                except Exception:  # a bug: the line is reported failed, never lost
                    logger.exception("batch %s line %d failed", batch_id, line.index)
                    ok, record = False, error_record(batch_id, line, None, "line_failed", "The line could not be run.")
                (results if ok else errors)[line.index] = record
                counts["completed" if ok else "failed"] += 1
                progress()
            finally:
                slots.release()

        status = "completed"
        try:
            for position, line in enumerate(lines):
                if line.metered is None:
                    continue
                await slots.acquire()
                if self._cancelled(token.org_id, batch_id):
                    slots.release()
                    status = "cancelled"
                    break
                if self._expired(token.org_id, batch_id):
                    slots.release()
                    status = "expired"  # past its completion window: what did not start never runs
                    for unstarted in lines[position:]:
                        if unstarted.metered is not None:
                            message = "The batch's completion window ended before this request ran."
                            errors[unstarted.index] = error_record(batch_id, unstarted, None, "batch_expired", message)
                            counts["failed"] += 1
                    break
                running.append(asyncio.create_task(run_line(line)))
            await asyncio.gather(*running, return_exceptions=True)
            if status == "completed" and self._cancelled(token.org_id, batch_id):
                status = "cancelled"
            self._return(token.org_id, batch_id, reserved)
            await self._finish(token, batch_id, status, counts, results, errors)
        except Exception as error:  # a bug or the file store: the batch fails, never silently hangs
            logger.exception("batch %s failed", batch_id)
            self._return(token.org_id, batch_id, reserved)
            self._ended(token.org_id, batch_id, "failed", counts, "", "", "batch_failed", str(error)[:200])

    def _return(self, org_id: str, batch_id: str, reserved: str) -> None:
        """What the finished lines did not use of the reservation goes back to the wallet."""
        if reserved:
            command = ReturnSlice(
                command_id=f"return:{reserved}",
                org_id=org_id,
                issued_at=utc_now(),
                correlation_id=batch_id,
                slice_id=reserved,
            )
            self._core.send([Outgoing(topics.COMMANDS, org_id, encode(command))])

    async def _run_line(
        self, token: ApiToken, batch_id: str, endpoint: str, line: Line, reserved: str
    ) -> tuple[bool, dict[str, Any]]:
        """(True, the output record) for a charged line, (False, the error record) otherwise."""
        metered = line.metered
        assert metered is not None
        rid = line_request_id(batch_id, line.index)
        while True:
            try:
                # Keyed: a line an earlier run of this batch placed (before a restart) is answered from
                # its events, never placed twice.
                placement, seen = await self._core.metering.run(
                    token, rid, metered, attempt=Attempt(keyed=True), carve_from=reserved
                )
                break
            except AttemptForgotten:
                return False, error_record(
                    batch_id,
                    line,
                    None,
                    "result_expired",
                    "The line ran before a restart; its answer is no longer kept.",
                )
            except (Overloaded, OrganizationBusy):
                await asyncio.sleep(busy_retry_s)  # the gateway's bounds: wait for a slot, as a client would
            except TimeoutError:
                return False, error_record(batch_id, line, 504, "timeout", "The job did not finish in time.", rid)
        error = refusal(seen, metered.model, prompt_params.get(endpoint, "input"))
        if error is not None:
            return False, error_record(batch_id, line, error.status_code, error.code or "failed", error.message, rid)
        charge, completed = charge_of_job(self._core.pending, token.org_id, metered, placement, seen)
        body = shape_result(
            endpoint, rid, msgspec.json.decode(completed.result), charge, metered.price_of(charge.model)
        )
        return True, {
            "id": f"batch_req_{batch_id.removeprefix('batch_')}_{line.index:06d}",
            "custom_id": line.custom_id,
            "response": {"status_code": 200, "request_id": rid, "body": body},
            "error": None,
        }

    async def _finish(
        self,
        token: ApiToken,
        batch_id: str,
        status: str,
        counts: dict[str, int],
        results: dict[int, dict[str, Any]],
        errors: dict[int, dict[str, Any]],
    ) -> None:
        from gateway.routes.files import store_file  # the files API stores them, and counts them as storage

        output_id = error_id = ""
        if results:
            output_id = new_id("file").replace("file_", "file-", 1)
            data = b"".join(msgspec.json.encode(results[i]) + b"\n" for i in sorted(results))
            await store_file(
                self._core,
                token.org_id,
                token.token_id,
                output_id,
                f"{batch_id}_output.jsonl",
                "batch_output",
                data,
                over_limit_allowed=True,
            )
        if errors:
            error_id = new_id("file").replace("file_", "file-", 1)
            data = b"".join(msgspec.json.encode(errors[i]) + b"\n" for i in sorted(errors))
            await store_file(
                self._core,
                token.org_id,
                token.token_id,
                error_id,
                f"{batch_id}_error.jsonl",
                "batch_output",
                data,
                over_limit_allowed=True,
            )
        self._ended(token.org_id, batch_id, status, counts, output_id, error_id)

    def _ended(
        self,
        org_id: str,
        batch_id: str,
        status: str,
        counts: dict[str, int],
        output_id: str,
        error_id: str,
        code: str = "",
        message: str = "",
    ) -> None:
        self._append(
            BatchEnded(
                event_id=new_id("evt"),
                occurred_at=utc_now(),
                org_id=org_id,
                batch_id=batch_id,
                status=status,  # type: ignore[arg-type]
                completed=counts["completed"],
                failed=counts["failed"],
                output_file_id=output_id,
                error_file_id=error_id,
                error_code=code,
                error_message=message,
            )
        )


def batch_body(batch: Any) -> dict[str, Any]:
    """OpenAI's batch object."""

    def seconds(moment: datetime | None) -> int | None:
        return int(moment.timestamp()) if moment is not None else None

    ended = batch.ended_at
    status = batch.status
    errors = None
    if batch.error_code:
        errors = {"object": "list", "data": [{"code": batch.error_code, "message": batch.error_message, "line": None}]}
    return {
        "id": batch.batch_id,
        "object": "batch",
        "endpoint": batch.endpoint,
        "errors": errors,
        "input_file_id": batch.input_file_id,
        "completion_window": batch.completion_window,
        "status": status,
        "output_file_id": batch.output_file_id or None,
        "error_file_id": batch.error_file_id or None,
        "created_at": seconds(batch.created_at),
        "in_progress_at": seconds(batch.created_at),
        "expires_at": seconds(batch.expires_at),
        "finalizing_at": seconds(ended) if status == "completed" else None,
        "completed_at": seconds(ended) if status == "completed" else None,
        "failed_at": seconds(ended) if status == "failed" else None,
        "expired_at": seconds(ended) if status == "expired" else None,
        "cancelling_at": seconds(batch.cancelling_at),
        "cancelled_at": seconds(ended) if status == "cancelled" else None,
        "request_counts": {"total": batch.total, "completed": batch.completed, "failed": batch.failed},
        "metadata": batch.metadata or None,
    }

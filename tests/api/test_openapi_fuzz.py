"""Schemathesis over the whole OpenAPI document (/schema/openapi.json), against the app on the
in-process stack: positive cases (valid bodies, which run as metered jobs) and negative ones (bodies
that break the document, which must be refused with a 4xx). Every answer is checked: no 5xx, the
status, media type, headers and body each as the document says (the error envelope included).

Slow (a minute or two): it generates a few hundred requests, many of which run jobs."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from tests.harness import Gateway, admin_token

pytestmark = [pytest.mark.slow]

examples_per_operation = 12
# Operations whose valid bodies depend on more than a schema can say: a price book's keys must equal
# their models' ids (and every rate is checked for monotonicity), a transcription's file must be WAV
# or MP3 audio, an edit's image an image. Their generated "valid" bodies may be refused with a 400; every
# other check still applies.
semantic_validation = {"publishPriceBook", "createTranscription", "createTranslation", "createImageEdit"}
# Amounts have bounds a schema does not state (a grant is positive, a refund names a charge and at most
# what it charged), and moments must be within what ClickHouse stores.
semantic_validation |= {"grantCredits", "setCreditLimit", "configureAutoTopUp", "refundCharge", "adjustCredits"}
semantic_validation |= {"retrieveStatement", "getOrganizationBalanceAt", "listOrganizationUsage"}
semantic_validation |= {"retrieveAccountUsage", "listOrganizationUsageByToken"}
# A cursor must be one the API returned; a key's expires_at must be a moment (msgspec's schema for an
# optional datetime states its format, which the generator does not always follow).
semantic_validation |= {"listLedgerEntries", "createToken", "createCasolaToken"}
semantic_validation |= {"listCasolaUsage", "listCasolaUsageByToken"}
# A Fal slug must name an image or video model of the book (its body is that model's), and a Casola
# job's payload must be its task's request body: more than a schema says.
semantic_validation |= {"submitFalRequest", "createCasolaJob"}
# A GPU deploy names a GPU class of the catalog, a hosted agent a plan of it (a random slug is a 404).
semantic_validation |= {"deployGpuInstance", "createHostedAgentInstance"}
# Positive cases name a model of the default book (a random name is a 404 before anything is metered);
# whether the rest of a valid body fits that model (its output limit, its context) is again more than
# a schema says, so these operations' valid bodies may be a 400 too.
models = {
    "createChatCompletion": "sim-chat-small",
    "createCompletion": "sim-chat-small",
    "createEmbedding": "sim-embed-small",
    "createImage": "sim-image",
    "createImageEdit": "sim-image",
    "createSpeech": "sim-tts",
    "createSpeechStream": "sim-tts",
    "createAudioGeneration": "stable-audio-2-5",
    "createMusic": "stable-audio-2-5",
    "createTranscription": "sim-whisper",
    "createTranslation": "sim-whisper",
    "createVideo": "sim-video",
    "createResponse": "sim-chat-small",
    "createMessage": "deepseek-v4-pro",
    "createRerank": "qwen3-0.6b-fp8-score",
    "createReranks": "qwen3-rerank",
    "createScore": "qwen3-rerank",
    # A 3D generation needs one of image and image_url (the schema requires neither); a prompt rewrite's
    # chat model is the one of the default book.
    "create3DGeneration": "trellis-2-4b",
    "rewriteCasolaPrompt": "sim-chat-small",
    "createSearch": "tavily-search",
    "createResearch": "tavily-research",
    "createAnswer": "exa-answer",
    "createDetection": "gptzero",
    "analyzeImage": "janus-pro-deepseek",
    "createPiiDetection": "pii-redact",
}
semantic_validation |= set(models)
# Any bytes are a valid file, but schemathesis (4.32) counts some values of a multipart `format: binary`
# field as schema violations (its issues #3777 and #3801): an accepted upload is no failure there.
binary_uploads = {"createFile"}


def integral(value: Any) -> Any:
    """JSON Schema counts 2.0 as an integer; the gateway decodes integer fields strictly (msgspec), so
    2.0 where an integer goes is a 400. Positive cases send such numbers as the integers they are."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    if isinstance(value, dict):
        return {key: integral(item) for key, item in value.items()}
    if isinstance(value, list):
        return [integral(item) for item in value]
    return value


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gateway = Gateway(Path(tmp_path_factory.mktemp("openapi")), with_usage=True)
    yield gateway
    gateway.close()


@pytest.fixture(scope="module")
def credentials(gw: Gateway) -> dict[str, str]:
    org = gw.organization("enterprise", limits={"requests": 100_000, "jobs": 100_000, "tokens": 100_000_000})
    gw.admin("POST", f"/v1/organizations/{org}/credits", json={"amount": "100000"})
    key, _ = gw.key(org, ["user:read", "user:write", "admin:read", "admin:write"])
    return {"org": org, "key": key}


@pytest.fixture(scope="module")
def api_schema(gw: Gateway) -> Any:
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", gw.app)
    schema.config.generation.update(
        modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE],
        max_examples=examples_per_operation,
        deterministic=True,
    )
    return schema


def credential_for(path: str, credentials: dict[str, str]) -> str:
    """The platform token for the platform's routes, the organization's key for the rest."""
    platform = path.startswith(("/v1/organizations", "/v1/price-books", "/v1/ledger"))
    return admin_token if platform else credentials["key"]


def failures_of(
    operation: Any, mode: GenerationMode, credentials: dict[str, str], statuses: Counter[tuple[str, int]]
) -> list[str]:
    """Run the operation's generated cases of one mode; the first failure of each kind, described."""
    found: dict[str, str] = {}
    strategy = operation.as_strategy(generation_mode=mode)
    op_id = operation.definition.raw.get("operationId")
    excluded = [positive_data_acceptance] if op_id in semantic_validation else []
    if mode == GenerationMode.POSITIVE:
        # A positive case is valid by construction: "schema-violating request accepted" does not apply.
        # (schemathesis flags some valid multipart cases so: an image edit with a generated image it
        # accepted, 200, reported as negative data.)
        excluded.append(negative_data_rejection)
    if op_id in binary_uploads:
        excluded.append(negative_data_rejection)

    @hypothesis.settings(
        max_examples=examples_per_operation,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
    )
    @hypothesis.given(case=strategy)
    def run(case: Any) -> None:
        headers = {"Authorization": f"Bearer {credential_for(case.path, credentials)}"}
        if mode == GenerationMode.POSITIVE:
            if case.path_parameters and "org_id" in case.path_parameters:
                case.path_parameters["org_id"] = credentials["org"]  # a real one, not only 404s
            if isinstance(case.body, dict):
                case.body = integral(case.body)
                if op_id in models:
                    case.body["model"] = models[op_id]
        try:
            response = case.call(headers=headers)
            statuses[(operation.label, response.status_code)] += 1
            case.validate_response(response, excluded_checks=excluded)
        except (Exception, BaseExceptionGroup) as error:  # every kind of failure, reported together below
            kind = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            found.setdefault(kind[:200], f"{operation.label} [{mode.value}] {str(error)[:1500]}")

    with contextlib.suppress(hypothesis.errors.Unsatisfiable):  # nothing of this mode to generate
        run()
    return list(found.values())


def test_every_operation_answers_as_documented(api_schema: Any, credentials: dict[str, str]) -> None:
    failures: list[str] = []
    statuses: Counter[tuple[str, int]] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    # A published price book becomes the one requests are priced at: fuzz it last.
    operations.sort(key=lambda operation: operation.definition.raw.get("operationId") == "publishPriceBook")
    assert len(operations) >= 39, "the document lists every operation"
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            failures += failures_of(operation, mode, credentials, statuses)
    # The documented examples ran: each generation operation was metered and answered at least once.
    generated = {label for (label, status), _ in statuses.items() if 200 <= status < 300}
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/images/generations"):
        assert f"POST {path}" in generated, f"no 2xx for POST {path}: {sorted(statuses.items())}"
    for path in ("/v1/audio/speech", "/v1/videos/generations", "/v1/responses", "/v1/messages", "/v1/reranks"):
        assert f"POST {path}" in generated, f"no 2xx for POST {path}: {sorted(statuses.items())}"
    assert not failures, f"{len(failures)} failures:\n\n" + "\n\n".join(failures)

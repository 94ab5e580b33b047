"""Results answered as URLs (``response_format=url``): the media bytes kept in the blob store for
about an hour, and the signed, expiring URL that serves them without an Authorization header (as
OpenAI's and EmpirioLabs' result URLs work: a browser or a plain HTTP client follows them).

A URL is ``/v1/media/<org_id>/<name>?expires=<unix s>&signature=<HMAC>``: the HMAC-SHA256 of the
blob key and the expiry, under a key the gateway derives from its admin secret (every instance with
the same secret verifies every other's URLs). ``name`` is 128 random bits and the content type's
extension, so a key is not guessable, and the signature covers the organization and the name: a URL
of one organization changed to another's (or to another name, or a later expiry) is refused.

The bytes live under ``media-<org_id>/`` in the files' blob store. This instance sweeps the ones it
wrote once their URL expired, a bounded number per sweep (each write sweeps), from an in-memory,
bounded index; what a restart forgets is left to the store's lifecycle rule (production: an object
store with a rule that expires ``media-*`` objects after the URL's lifetime).
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

from gateway.blobs import BlobStore

content_types = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
    "mp4": "video/mp4",
    "webm": "video/webm",
    "avi": "video/x-msvideo",
    "wav": "audio/wav",
    "mp3": "audio/mpeg",
    "pcm": "audio/pcm",
    "glb": "model/gltf-binary",
    "bin": "application/octet-stream",
}
_extensions = {content_type: extension for extension, content_type in content_types.items()}
sweep_max = 32  # blobs one sweep deletes at most: a write never waits on a long cleanup
index_max = 100_000  # media this instance remembers to sweep; past it the oldest goes early


def extension_of(content_type: str) -> str:
    return _extensions.get(content_type.split(";")[0].strip().lower(), "bin")


@dataclass(frozen=True, slots=True)
class Media:
    data: bytes
    content_type: str


class MediaStore:
    def __init__(self, blobs: BlobStore, secret: bytes, ttl_s: int) -> None:
        self._blobs = blobs
        self._key = hmac.new(secret, b"tollgate media urls v1", hashlib.sha256).digest()
        self.ttl_s = ttl_s
        self._expiring: collections.deque[tuple[int, str]] = collections.deque()
        self._seeded: collections.OrderedDict[tuple[str, str], tuple[int, str]] = collections.OrderedDict()

    def _sign(self, key: str, expires: int) -> str:
        mac = hmac.new(self._key, f"{key}\n{expires}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def _url(self, key: str, expires: int) -> str:
        return f"/v1/media/{key.removeprefix('media-')}?expires={expires}&signature={self._sign(key, expires)}"

    def put(self, org_id: str, data: bytes, content_type: str, seed: str = "", now: float | None = None) -> str:
        """Keep ``data`` for the URL's lifetime; the path and query of its signed URL. With a ``seed``
        (a job's result read again: a poll), the copy kept for the same seed is reused while more
        than half its lifetime is left, so polling a finished job does not copy its media each time."""
        moment = time.time() if now is None else now
        self.sweep(moment)
        if seed:
            kept = self._seeded.get((org_id, seed))
            if kept is not None and kept[0] - moment > self.ttl_s / 2:
                return self._url(kept[1], kept[0])
        key = f"media-{org_id}/{secrets.token_hex(16)}-{extension_of(content_type)}"
        self._blobs.put(key, data)
        expires = int(moment) + self.ttl_s
        if len(self._expiring) >= index_max:
            _, oldest = self._expiring.popleft()
            self._blobs.delete(oldest)
        self._expiring.append((expires, key))
        if seed:
            self._seeded[(org_id, seed)] = (expires, key)
            self._seeded.move_to_end((org_id, seed))
            while len(self._seeded) > index_max:
                self._seeded.popitem(last=False)
        return self._url(key, expires)

    def get(self, org_id: str, name: str, expires: str, signature: str, now: float | None = None) -> Media | None:
        """The media a signed URL names, or None: a bad or expired signature, or bytes already gone."""
        key = f"media-{org_id}/{name}"
        if not expires.isdigit() or len(expires) > 12:
            return None
        try:
            given = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
        except (binascii.Error, ValueError):
            return None
        expected = base64.urlsafe_b64decode(self._sign(key, int(expires)) + "=")
        if not hmac.compare_digest(given, expected):
            return None
        if int(expires) <= (time.time() if now is None else now):
            return None
        try:
            data = self._blobs.get(key)
        except ValueError:  # not a key the store takes
            return None
        if data is None:
            return None
        return Media(data, content_types.get(name.rpartition("-")[2], "application/octet-stream"))

    def sweep(self, now: float | None = None) -> int:
        """Delete up to ``sweep_max`` media whose URL has expired; how many went."""
        moment = time.time() if now is None else now
        swept = 0
        while self._expiring and swept < sweep_max and self._expiring[0][0] <= moment:
            _, key = self._expiring.popleft()
            self._blobs.delete(key)
            swept += 1
        return swept

"""Where uploaded files' bytes live: a small interface, and the directory that implements it for
``tollgate dev``, the tests and a single host.

The log holds each file's metadata (``FileStored``, ``FileDeleted``); the bytes stay out of it (a
record is bounded, a file is not). The gateway writes the bytes first and then asks the ledger to
record the file, so a recorded file always has its bytes; a refused or failed record deletes them.
A crash between the two leaves bytes no file names (garbage, never a file without bytes).

Production: an object store every gateway instance reaches (S3, GCS, Azure Blob, MinIO or Ceph's
S3 gateway), keyed the same way (``<org_id>/<file_id>``), with server-side encryption and a lifecycle
rule that removes objects no ``FileStored`` names; a directory works only where every instance
mounts the same one (one host, or a shared filesystem).
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

_key_pattern = re.compile(r"[A-Za-z0-9_-]{1,128}/[A-Za-z0-9_-]{1,128}")


class BlobStore(Protocol):
    def put(self, key: str, data: bytes) -> None: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...


class DirectoryBlobStore:
    """Blobs as files under one directory: written to a temporary name and renamed, so a reader
    never sees half a blob."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        if not _key_pattern.fullmatch(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

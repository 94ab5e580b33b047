"""Files as the gateway knows them (``/v1/files``): folded from the ledger's ``FileStored`` and
``FileDeleted``, so every instance lists the same files and a replay of the log rebuilds them."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas.events import Event, FileDeleted, FileStored


@dataclass(frozen=True, slots=True)
class FileRecord:
    file_id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int  # unix seconds, as OpenAI's file object says
    blob_key: str
    sha256: str


@dataclass(slots=True)
class OrgFiles:
    files: dict[str, FileRecord] = field(default_factory=dict)  # in upload order
    used_bytes: int = 0


class FilesView:
    def __init__(self) -> None:
        self._orgs: dict[str, OrgFiles] = {}

    def apply(self, event: Event) -> None:
        if isinstance(event, FileStored):
            org = self._orgs.setdefault(event.org_id, OrgFiles())
            if event.file_id not in org.files:
                org.files[event.file_id] = FileRecord(
                    file_id=event.file_id,
                    filename=event.filename,
                    purpose=event.purpose,
                    bytes=event.bytes,
                    created_at=int(event.occurred_at.timestamp()),
                    blob_key=event.blob_key,
                    sha256=event.sha256,
                )
                org.used_bytes += event.bytes
        elif isinstance(event, FileDeleted):
            found = self._orgs.get(event.org_id)
            gone = found.files.pop(event.file_id, None) if found is not None else None
            if found is not None and gone is not None:
                found.used_bytes -= gone.bytes

    def get(self, org_id: str, file_id: str) -> FileRecord | None:
        org = self._orgs.get(org_id)
        return org.files.get(file_id) if org is not None else None

    def used_bytes(self, org_id: str) -> int:
        org = self._orgs.get(org_id)
        return org.used_bytes if org is not None else 0

    def page(
        self, org_id: str, limit: int, after: str | None, newest_first: bool, purpose: str | None
    ) -> tuple[list[FileRecord], bool]:
        """One page of the organization's files after the file ``after`` (cursor pagination, as
        OpenAI's), and whether more follow."""
        org = self._orgs.get(org_id)
        if org is None:
            return [], False
        ordered = list(org.files.values())
        if newest_first:
            ordered.reverse()
        if after is not None:
            ids = [record.file_id for record in ordered]
            ordered = ordered[ids.index(after) + 1 :] if after in ids else []
        if purpose is not None:
            ordered = [record for record in ordered if record.purpose == purpose]
        return ordered[:limit], len(ordered) > limit

"""Ids made without a uuid.UUID object (a sixth of the cost, several per request) are the ids uuid
makes: job-output ids already on the log must come out the same, or a job run again would be charged
twice."""

from __future__ import annotations

import re
import uuid

from schemas.ids import _job_id_namespace, job_output_id, new_id


def test_a_job_output_id_is_the_uuid5_it_always_was() -> None:
    for index in range(2000):
        job_id = f"job_{uuid.UUID(int=index * 7919).hex}"
        for kind in ("completed", "capture", "usage", "cancelled"):
            assert job_output_id(job_id, kind) == str(uuid.uuid5(_job_id_namespace, f"{job_id}/{kind}"))


def test_a_random_id_is_a_version_4_uuid_in_hex() -> None:
    seen = set()
    for _ in range(2000):
        made = new_id("req")
        digits = made.removeprefix("req_")
        assert re.fullmatch(r"[0-9a-f]{32}", digits)
        parsed = uuid.UUID(hex=digits)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        seen.add(made)
    assert len(seen) == 2000

"""What `tollgate dev` turns on for its one-machine demo unless the environment says otherwise: the
simulated backend's knobs, and transcription file_url fetches from private addresses (127.0.0.1)."""

from __future__ import annotations

import pytest

from eventlog.settings import Settings
from tollgate import cli


def _dev_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name in ("TOLLGATE_SIM_KNOBS", "TOLLGATE_FILE_URL_PRIVATE_ALLOWED"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return cli.settings_for(cli.build_parser().parse_args(["dev"]))


def test_dev_may_fetch_file_urls_from_this_machine_unless_told_not_to(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _dev_settings(monkeypatch).file_url_private_allowed is True
    assert _dev_settings(monkeypatch, TOLLGATE_FILE_URL_PRIVATE_ALLOWED="0").file_url_private_allowed is False

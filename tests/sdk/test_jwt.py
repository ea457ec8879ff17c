"""JWTs as the OpenAI SDKs' `api_key` (issue 15): tokens minted here with PyJWT, an MPilot-style
HS256 virtual-key token and admin token, a TrueFoundry-style RS256 token (its JWKS a file the
harness wrote), through the unmodified OpenAI Python SDK and the OpenAI Node SDK; stale and
forged tokens are 401s whose code says why.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import jwt
import openai
import pytest
from openai import OpenAI

from harness import JWT_AUDIENCE, JWT_SECRET, MOCK_PROVIDER_KEY, MPILOT_ISSUER, TFY_ISSUER

NODE_DIR = Path(__file__).resolve().parent / "node"


def hs_token(**claims) -> str:
    body = {"iss": MPILOT_ISSUER, "aud": JWT_AUDIENCE, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, JWT_SECRET, algorithm="HS256")


def rs_token(gateway, **claims) -> str:
    body = {"iss": TFY_ISSUER, "aud": JWT_AUDIENCE, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(body, gateway.jwt_rsa_key, algorithm="RS256", headers={"kid": "sdk-1"})


def sdk(gateway, token: str) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/v1", api_key=token, max_retries=0, timeout=30)


def test_virtual_key_jwt_works_through_the_python_sdk(gateway, files):
    with sdk(gateway, hs_token(vk="test", sub="alice")) as c, open(files["input"], "rb") as f:
        resp = c.images.edit(model="demo/sim-image-1", image=f, prompt="paint it")
    assert len(resp.data) == 1 and resp.data[0].b64_json


def test_rs256_jwt_from_a_jwks_works_through_the_python_sdk(gateway, mock, input_png):
    token = rs_token(gateway, sub="test")
    with sdk(gateway, token) as c:
        resp = c.images.edit(model="mock/gpt-image-1", image=("a.png", input_png), prompt="p")
    assert len(resp.data) == 1
    [rec] = mock.take()
    # the provider gets its own key, never the client's token
    assert rec.headers["authorization"] == f"Bearer {MOCK_PROVIDER_KEY}"
    assert not any(token in v for v in rec.headers.values())


def test_admin_jwt_uses_any_provider(gateway, mock, input_png):
    with sdk(gateway, hs_token(role="admin", sub="ops")) as c:
        resp = c.images.edit(model="mock/gpt-image-1", image=("a.png", input_png), prompt="p")
    assert len(resp.data) == 1
    assert len(mock.take()) == 1


@pytest.mark.parametrize(
    "make, code",
    [
        (lambda gw: hs_token(vk="test", exp=int(time.time()) - 600), "token_expired"),
        (lambda gw: hs_token(vk="test", nbf=int(time.time()) + 600), "token_not_yet_valid"),
        (lambda gw: hs_token(vk="test", aud="someone-else"), "token_wrong_audience"),
        (lambda gw: hs_token(vk="test", iss="https://evil.test"), "token_unknown_issuer"),
        (lambda gw: hs_token(vk="nobody"), "virtual_key_not_found"),
        (
            lambda gw: jwt.encode({"iss": MPILOT_ISSUER, "aud": JWT_AUDIENCE, "vk": "test", "exp": int(time.time()) + 600},
                                  "a-different-secret-0123456789abcdef-xyz", algorithm="HS256"),
            "token_bad_signature",
        ),
        (
            lambda gw: jwt.encode({"iss": MPILOT_ISSUER, "aud": JWT_AUDIENCE, "vk": "test", "exp": int(time.time()) + 600},
                                  None, algorithm="none"),
            "token_algorithm_not_allowed",
        ),
        (
            lambda gw: jwt.encode({"iss": TFY_ISSUER, "aud": JWT_AUDIENCE, "sub": "test", "exp": int(time.time()) + 600},
                                  gw.jwt_rsa_key, algorithm="RS256", headers={"kid": "rotated-away"}),
            "token_unknown_key",
        ),
    ],
)
def test_stale_and_forged_tokens_are_401_with_a_reason(gateway, mock, input_png, make, code):
    token = make(gateway)
    with sdk(gateway, token) as c:
        with pytest.raises(openai.AuthenticationError) as ei:
            c.images.edit(model="mock/gpt-image-1", image=("a.png", input_png), prompt="p")
    doc = ei.value.body if isinstance(ei.value.body, dict) else {}
    error = doc.get("error", doc)
    assert error.get("code") == code, ei.value.body
    assert token not in json.dumps(ei.value.body)
    assert mock.take() == []


def test_node_sdk_takes_a_jwt_as_api_key(gateway, mock):
    node = shutil.which("node")
    assert node, "node is not installed: run .ci/deps"
    assert (NODE_DIR / "node_modules" / "openai" / "package.json").is_file(), "run .ci/deps (npm ci in tests/sdk/node)"
    cases = {
        "vk token": (hs_token(vk="test"), 200),
        "admin token": (hs_token(role="admin"), 200),
        "rs256 token": (rs_token(gateway, sub="test"), 200),
        "expired token": (hs_token(vk="test", exp=int(time.time()) - 600), 401),
    }
    spec = {
        "cases": [
            {"name": name, "baseURL": f"{gateway.base_url}/v1", "apiKey": token, "model": "mock/gpt-image-1",
             "imageBytes": 200, "tries": 2}
            for name, (token, _) in cases.items()
        ]
    }
    # early_answers.mjs sends each case's requests through the Node SDK and reports the statuses.
    run = subprocess.run([node, "early_answers.mjs", json.dumps(spec)], cwd=NODE_DIR, capture_output=True,
                         text=True, timeout=120)
    assert run.returncode == 0, f"node failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    for name, (_, status) in cases.items():
        assert report[name]["statuses"] == {str(status): 2}, (name, report[name])
    assert len(mock.take()) == 6

"""The OpenAI Python SDK under every OpenAI-shaped base URL the gateway serves (issue 18 items
3, 4, 5, 7): Bifrost's `<gateway>/openai` (no `/v1`), the framework prefixes `/litellm`,
`/langchain` and `/pydanticai`, `client.models.list()` / `retrieve()`, and `AzureOpenAI` pointed
at the gateway, its deployment naming the model.
"""

from __future__ import annotations

import time

import jwt
import openai
import pytest
from openai import AzureOpenAI, OpenAI

from harness import JWT_AUDIENCE, JWT_SECRET, MPILOT_ISSUER, VIRTUAL_KEY, decode_png

MODEL = "demo/sim-image-1"
BASES = ["/openai", "/openai/v1", "/litellm", "/litellm/v1", "/langchain", "/langchain/v1", "/pydanticai", "/pydanticai/v1"]


def sdk(gateway, base: str, key: str = VIRTUAL_KEY) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}{base}", api_key=key, max_retries=0, timeout=30)


@pytest.mark.parametrize("base", BASES)
def test_edit_under_every_base(gateway, files, input_image, base):
    with sdk(gateway, base) as c, open(files["input"], "rb") as f:
        resp = c.images.edit(model=MODEL, image=f, prompt="under a prefix")
    assert decode_png(resp.data[0].b64_json).size == input_image.size
    assert resp.model_extra["extra_fields"]["provider"] == "demo"


@pytest.mark.parametrize("base", BASES)
def test_stream_under_every_base(gateway, files, input_image, base):
    """OpenAI's framing (a final `data: [DONE]`) lets the SDK's iterator end cleanly."""
    with sdk(gateway, base) as c, open(files["input"], "rb") as f:
        events = list(c.images.edit(model=MODEL, image=f, prompt="stream", stream=True, partial_images=1))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    assert decode_png(events[-1].b64_json).size == input_image.size


@pytest.mark.parametrize("base", ["/litellm", "/pydanticai/v1"])
def test_mid_stream_error_raises_under_a_framework_prefix(gateway, files, base):
    with sdk(gateway, base) as c, open(files["input"], "rb") as f:
        stream = c.images.edit(model=MODEL, image=f, prompt="simulate-stream-error:1", stream=True, partial_images=2)
        with pytest.raises(openai.APIError, match="simulated mid-stream error"):
            for _ in stream:
                pass


@pytest.mark.parametrize("base", ["/v1", "/openai", "/litellm/v1", "/langchain", "/pydanticai"])
def test_models_list(gateway, base):
    """The models the key may use: the ones the config names (sim-azure's deployment alias, the
    `down` provider's fallback target), never a provider the key may not use."""
    with sdk(gateway, base) as c:
        ids = [m.id for m in c.models.list()]
    assert "sim-azure/sim-image-1" in ids and "demo/sim-image-1" in ids, ids
    assert len(ids) == len(set(ids))
    allowed = {"down", "demo", "mock", "sim-azure", "sim-gemini", "sim-vertex", "sim-stability", "sim-hf",
               "sim-xai", "sim-bfl", "sim-fireworks", "sim-replicate", "sim-bedrock"}
    assert all(i.split("/", 1)[0] in allowed for i in ids), ids


def test_models_list_follows_a_tokens_narrowing(gateway):
    """A JWT's `models` claim narrows the list as it narrows edits."""
    token = jwt.encode(
        {"iss": MPILOT_ISSUER, "aud": JWT_AUDIENCE, "exp": int(time.time()) + 600, "vk": "test",
         "models": ["sim-azure/*"]},
        JWT_SECRET,
        algorithm="HS256",
    )
    with sdk(gateway, "/v1", token) as c:
        assert [m.id for m in c.models.list()] == ["sim-azure/sim-image-1"]


def test_models_retrieve_and_refusals(gateway):
    with sdk(gateway, "/openai") as c:
        m = c.models.retrieve("demo/sim-image-1")
        assert (m.id, m.object, m.owned_by) == ("demo/sim-image-1", "model", "demo")
        with pytest.raises(openai.NotFoundError):
            c.models.retrieve("nowhere/x")
    with sdk(gateway, "/v1", "sk-bf-not-a-key") as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()


@pytest.mark.parametrize("endpoint", ["", "/openai"])
@pytest.mark.parametrize("deployment", ["sim-image-deploy", "sim-image-1", "demo/sim-image-1"])
def test_azure_openai_client(gateway, files, input_image, endpoint, deployment):
    """`AzureOpenAI(azure_endpoint=<gateway>)` (or Bifrost's `<gateway>/openai`): the key goes in
    `api-key`, the deployment (an alias of sim-azure's `deployments`, its model, or a URL-encoded
    `provider/model`) names the model."""
    with AzureOpenAI(
        azure_endpoint=f"{gateway.base_url}{endpoint}",
        api_key=VIRTUAL_KEY,
        api_version="2025-04-01-preview",
        max_retries=0,
        timeout=30,
    ) as c, open(files["input"], "rb") as f:
        resp = c.images.edit(model=deployment, image=f, prompt="through azure")
    assert decode_png(resp.data[0].b64_json).size == input_image.size
    provider = "demo" if "/" in deployment else "sim-azure"
    assert resp.model_extra["extra_fields"]["provider"] == provider


def test_azure_openai_client_unknown_deployment_is_404(gateway, files):
    with AzureOpenAI(
        azure_endpoint=gateway.base_url, api_key=VIRTUAL_KEY, api_version="2025-04-01-preview", max_retries=0
    ) as c, open(files["input"], "rb") as f:
        with pytest.raises(openai.NotFoundError) as info:
            c.images.edit(model="no-such-deployment", image=f, prompt="p")
    assert info.value.response.json()["error"]["code"] == "deployment_not_found"

"""Every provider kind through the real OpenAI Python SDK: the same client code, only the
`model` prefix changes, and the answer is the same shape whichever provider serves it.

Each provider points at the built-in simulator speaking that provider's wire format (Azure's
deployment paths and `api-key` header; Gemini's `generateContent` JSON with inline base64 and
its `alt=sse` stream; Imagen's `:predict`; Vertex's OAuth token from a service account), which checks what it receives and really edits
the image, so the pixels can be compared with the OpenAI-dialect answer for the same prompt.
"""

from __future__ import annotations

import base64
import io

import pytest
from openai import APIStatusError, OpenAI
from PIL import Image

from harness import VIRTUAL_KEY, decode_png, http_get

# (model, streams partial images natively)
PROVIDER_MODELS = [
    ("sim-azure/sim-image-1", True),
    ("sim-gemini/gemini-2.5-flash-image", False),
    ("sim-gemini/imagen-3.0-capability-001", False),
    ("sim-vertex/imagen-3.0-capability-001", False),
    ("sim-vertex/gemini-2.5-flash-image", False),
    ("sim-hf/timbrooks/instruct-pix2pix", False),
    ("sim-hf/fal-ai/flux-kontext/dev", False),
    ("sim-xai/grok-imagine-image", False),
    ("sim-bfl/flux-kontext-pro", False),
    ("sim-fireworks/flux-kontext-pro", False),
    ("sim-replicate/black-forest-labs/flux-kontext-pro", False),
    ("sim-bedrock/amazon.nova-canvas-v1:0", False),
    ("sim-bedrock/amazon.titan-image-generator-v2:0", False),
]


@pytest.fixture(params=["/v1", "/openai/v1"])
def any_route_client(request, gateway):
    with OpenAI(base_url=f"{gateway.base_url}{request.param}", api_key=VIRTUAL_KEY, max_retries=0, timeout=30) as c:
        yield c


def rgba(b64: str) -> bytes:
    return decode_png(b64).convert("RGBA").tobytes()


@pytest.mark.parametrize("model,_partials", PROVIDER_MODELS)
def test_edit_matches_the_openai_dialect(client: OpenAI, files, input_image, model, _partials):
    """A plain edit: one image of the input's size, the same pixels as through kind openai."""
    prompt = f"same pixels via {model}"
    with open(files["input"], "rb") as f:
        got = client.images.edit(model=model, image=f, prompt=prompt)
    with open(files["input"], "rb") as f:
        reference = client.images.edit(model="demo/sim-image-1", image=f, prompt=prompt)
    assert len(got.data) == 1
    assert decode_png(got.data[0].b64_json).size == input_image.size
    assert rgba(got.data[0].b64_json) == rgba(reference.data[0].b64_json)
    assert got.model_extra["extra_fields"]["provider"] == model.split("/")[0]


# Kinds that answer URLs of their own (the simulator's); the others are rehosted by the gateway.
OWN_URL_KINDS = ("sim-azure", "sim-xai", "sim-bfl", "sim-fireworks", "sim-replicate")


@pytest.mark.parametrize("model,_partials", PROVIDER_MODELS)
def test_url_response_format_on_every_kind(client: OpenAI, gateway, files, input_image, model, _partials):
    """response_format="url": a URL that fetches the edited image, the gateway's own signed file
    URL for kinds that cannot answer URLs."""
    with open(files["input"], "rb") as f:
        got = client.images.edit(model=model, image=f, prompt="as a url", response_format="url")
    assert len(got.data) == 1 and got.data[0].b64_json is None
    url = got.data[0].url
    provider = model.split("/")[0]
    # Hugging Face's fal-ai endpoints answer fal's URLs; its hf-inference models answer bytes.
    own_urls = provider in OWN_URL_KINDS or model.startswith("sim-hf/fal-ai/")
    if url.startswith("data:"):
        assert own_urls, url[:80]
        png = base64.b64decode(url.split(",", 1)[1])
    else:
        if not own_urls:
            assert url.startswith(f"{gateway.base_url}/v1/images/files/"), url
        status, png = http_get(url)
        assert status == 200, png[:200]
    assert Image.open(io.BytesIO(png)).size == input_image.size


@pytest.mark.parametrize("model,partials", PROVIDER_MODELS)
def test_stream_ends_with_the_completed_image(any_route_client: OpenAI, files, input_image, model, partials):
    """stream=True: partial images where the provider sends them, then the completed image,
    numbered from 0, on both routes."""
    with open(files["input"], "rb") as f:
        events = list(any_route_client.images.edit(model=model, image=f, prompt="stream", stream=True, partial_images=2))
    kinds = [e.type for e in events]
    assert kinds[-1] == "image_edit.completed"
    assert kinds.count("image_edit.partial_image") == (2 if partials else 0)
    for i, e in enumerate(events):
        assert e.model_extra["sequence_number"] == i
    assert decode_png(events[-1].b64_json).size == input_image.size


# Models that take a mask (the unified one: transparent = edit, converted for each provider).
MASK_MODELS = [
    "sim-azure/sim-image-1",
    "sim-gemini/imagen-3.0-capability-001",
    "sim-vertex/imagen-3.0-capability-001",
    "sim-stability/stable-image-inpaint",
    "sim-bfl/flux-pro-1.0-fill",
    "sim-bedrock/amazon.nova-canvas-v1:0",
    "sim-bedrock/stability.stable-image-inpaint-v1:0",
]


@pytest.mark.parametrize("model", MASK_MODELS)
def test_masked_edit_matches_the_openai_dialect(client: OpenAI, files, model):
    """An inpainting edit with the OpenAI-convention mask: each provider receives the mask in
    its own convention, and the edited pixels equal the OpenAI dialect's."""
    prompt = f"masked via {model}"
    with open(files["input"], "rb") as f, open(files["mask"], "rb") as m:
        got = client.images.edit(model=model, image=f, mask=m, prompt=prompt, extra_body={"type": "inpainting"})
    with open(files["input"], "rb") as f, open(files["mask"], "rb") as m:
        reference = client.images.edit(model="demo/sim-image-1", image=f, mask=m, prompt=prompt)
    assert rgba(got.data[0].b64_json) == rgba(reference.data[0].b64_json)


# Providers that make one image per call: n > 1 is served by n calls, merged in call order.
N_BY_CALLS_MODELS = [
    ("sim-stability/stable-image-inpaint", True),
    ("sim-bedrock/stability.stable-image-inpaint-v1:0", True),
    ("sim-bfl/flux-kontext-pro", False),
    ("sim-fireworks/flux-kontext-pro", False),
]


@pytest.mark.parametrize("model,masked", N_BY_CALLS_MODELS)
def test_n_from_a_provider_that_makes_one_image_per_call(client: OpenAI, files, input_image, model, masked):
    """n=2 where the provider makes one image per call: two calls (seeds 7 and 8), two images
    numbered 0 and 1, each the edit the OpenAI dialect makes (the simulator's edit does not
    depend on the seed)."""
    prompt = f"two via {model}"
    extra = {"seed": 7, "type": "inpainting"} if masked else {"seed": 7}
    with open(files["input"], "rb") as f, open(files["mask"], "rb") as m:
        mask = {"mask": m} if masked else {}
        got = client.images.edit(model=model, image=f, prompt=prompt, n=2, extra_body=extra, **mask)
    with open(files["input"], "rb") as f, open(files["mask"], "rb") as m:
        mask = {"mask": m} if masked else {}
        reference = client.images.edit(model="demo/sim-image-1", image=f, prompt=prompt, **mask)
    assert len(got.data) == 2
    for i, image in enumerate(got.data):
        assert image.model_extra["index"] == i
        assert decode_png(image.b64_json).size == input_image.size
        assert rgba(image.b64_json) == rgba(reference.data[0].b64_json)
    assert got.model_extra["extra_fields"]["provider"] == model.split("/")[0]


@pytest.mark.parametrize(
    "fallbacks",
    [
        ["demo/sim-image-1"],  # the SDK sends a list of strings as repeated fallbacks[] parts
        [{"provider": "demo", "model": "sim-image-1"}],  # and dicts as fallbacks[][provider] parts
    ],
    ids=["strings", "objects"],
)
def test_fallback_serves_when_the_primary_is_down(client: OpenAI, files, fallbacks):
    """The primary refuses connections: the fallback from `extra_body` serves, and the answer
    says so."""
    with open(files["input"], "rb") as f:
        got = client.images.edit(model="down/gpt-image-1", image=f, prompt="fall back", extra_body={"fallbacks": fallbacks})
    extra = got.model_extra["extra_fields"]
    assert extra["provider"] == "demo"
    assert extra["fallback_index"] == 1
    assert decode_png(got.data[0].b64_json).size[0] > 0


def test_configured_chain_serves_an_unmodified_request_when_the_primary_is_down(client: OpenAI, files):
    """The primary refuses connections and the request names no fallbacks: the model's chain
    from the config (`model_rules[].fallbacks`) serves it; a model without a chain gets the
    connect error."""
    with open(files["input"], "rb") as f:
        got = client.images.edit(model="down/chained-image-1", image=f, prompt="fall back")
    extra = got.model_extra["extra_fields"]
    assert extra["provider"] == "demo"
    assert extra["fallback_index"] == 1
    assert decode_png(got.data[0].b64_json).size[0] > 0
    with open(files["input"], "rb") as f, pytest.raises(APIStatusError) as err:
        client.images.edit(model="down/gpt-image-1", image=f, prompt="no chain")
    assert err.value.status_code == 502
    assert err.value.code == "upstream_connect_error"

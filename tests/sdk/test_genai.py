"""The google-genai Python SDK pointed at the gateway (issue 18 item 1): `generate_content` with
an image part on the Gemini API route, and `edit_image` in Vertex mode (Imagen `:predict`), both
served by the simulator through `demo/sim-image-1` (`.ci/deps` installs google-genai).
"""

from __future__ import annotations

import pytest

from harness import VIRTUAL_KEY, decode_png

from google import genai  # noqa: E402  (.ci/deps installs it: a missing SDK fails, never skips)
from google.genai import types  # noqa: E402

MODEL = "demo/sim-image-1"


def test_generate_content_with_an_image(gateway, input_png, input_image):
    client = genai.Client(api_key=VIRTUAL_KEY, http_options={"base_url": f"{gateway.base_url}/genai"})
    resp = client.models.generate_content(
        model=MODEL,
        contents=[types.Part.from_bytes(data=input_png, mime_type="image/png"), "paint it"],
        config=types.GenerateContentConfig(response_modalities=["IMAGE"]),
    )
    images = [p.inline_data for p in resp.candidates[0].content.parts if p.inline_data]
    assert len(images) == 1
    assert images[0].mime_type == "image/png"
    import base64

    assert decode_png(base64.b64encode(images[0].data).decode()).size == input_image.size
    assert resp.candidates[0].finish_reason == types.FinishReason.STOP


def test_generate_content_stream(gateway, input_png):
    client = genai.Client(api_key=VIRTUAL_KEY, http_options={"base_url": f"{gateway.base_url}/genai"})
    chunks = list(
        client.models.generate_content_stream(
            model=MODEL,
            contents=[types.Part.from_bytes(data=input_png, mime_type="image/png"), "paint it"],
        )
    )
    parts = [p for c in chunks for p in c.candidates[0].content.parts if p.inline_data]
    assert len(parts) == 1


def test_generate_content_error_is_a_client_error(gateway, input_png):
    client = genai.Client(api_key="sk-bf-not-a-key", http_options={"base_url": f"{gateway.base_url}/genai"})
    with pytest.raises(genai.errors.ClientError) as e:
        client.models.generate_content(
            model=MODEL, contents=[types.Part.from_bytes(data=input_png, mime_type="image/png"), "p"]
        )
    assert e.value.code == 401


def test_edit_image_in_vertex_mode(gateway, input_png, mask_png, input_image):
    """Vertex mode with the virtual key as the bearer token (google-genai takes credentials; a
    static token is enough). The SDK sends `demo/sim-image-1` as publisher `demo`."""
    from google.oauth2.credentials import Credentials

    client = genai.Client(
        vertexai=True,
        project="p",
        location="us-central1",
        credentials=Credentials(token=VIRTUAL_KEY),
        http_options={"base_url": f"{gateway.base_url}/genai"},
    )
    resp = client.models.edit_image(
        model=MODEL,
        prompt="paint it",
        reference_images=[
            types.RawReferenceImage(reference_id=1, reference_image=types.Image(image_bytes=input_png)),
            types.MaskReferenceImage(
                reference_id=2,
                reference_image=types.Image(image_bytes=mask_png),
                config=types.MaskReferenceConfig(mask_mode="MASK_MODE_USER_PROVIDED", mask_dilation=0.0),
            ),
        ],
        config=types.EditImageConfig(edit_mode="EDIT_MODE_INPAINT_INSERTION", number_of_images=1),
    )
    assert len(resp.generated_images) == 1
    import base64

    out = resp.generated_images[0].image.image_bytes
    assert decode_png(base64.b64encode(out).decode()).size == input_image.size

"""OpenAI's JSON form of images/edits through the OpenAI Python SDK (issue 18 item 6).

The installed SDK's `images.edit` sends multipart only, so the JSON body goes through the SDK's
own transport, `client.post(..., body=..., cast_to=ImagesResponse)`: its headers, auth, error
mapping and response parsing, as a newer SDK or an API client sending the JSON form would.
"""

from __future__ import annotations

import base64

import openai
import pytest
from openai import OpenAI
from openai.types import ImagesResponse

from harness import VIRTUAL_KEY, decode_png, paint_colour


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def json_edit(client: OpenAI, body: dict, path: str = "/images/edits") -> ImagesResponse:
    return client.post(path, body=body, cast_to=ImagesResponse)


def test_json_edit_with_a_mask_through_the_simulator(client: OpenAI, input_png, mask_png, input_image):
    prompt = "paint the left half (json)"
    resp = json_edit(
        client,
        {
            "model": "demo/sim-image-1",
            "prompt": prompt,
            "images": [{"image_url": data_url(input_png)}],
            "mask": {"image_url": data_url(mask_png)},
        },
    )
    out = decode_png(resp.data[0].b64_json).convert("RGBA")
    w, h = input_image.size
    assert out.size == (w, h)
    src = input_image.convert("RGBA")
    colour = paint_colour(prompt, 0)
    for y in range(h):
        for x in range(w):
            want = colour if x < w // 2 else src.getpixel((x, y))
            assert out.getpixel((x, y)) == want, (x, y)
    assert resp.model_extra["extra_fields"]["provider"] == "demo"


def test_json_edit_reaches_the_provider_byte_for_byte(client: OpenAI, mock, input_png, second_png):
    resp = json_edit(
        client,
        {
            "model": "mock/gpt-image-1",
            "prompt": "combine them",
            "images": [{"image_url": data_url(input_png)}, {"image_url": data_url(second_png)}],
            "n": 1,
            "quality": "high",
        },
    )
    assert len(resp.data) == 1
    [rec] = mock.take()
    assert rec.parse_error is None, rec.parse_error
    assert [p.data for p in rec.fields("image[]")] == [input_png, second_png]
    assert rec.field_text("model") == "gpt-image-1"
    assert rec.field_text("quality") == "high"
    assert VIRTUAL_KEY.encode() not in rec.body


@pytest.mark.parametrize("base", ["/openai", "/litellm/v1"])
def test_json_edit_under_a_base(gateway, input_png, input_image, base):
    with OpenAI(base_url=f"{gateway.base_url}{base}", api_key=VIRTUAL_KEY, max_retries=0, timeout=30) as c:
        resp = json_edit(c, {"model": "demo/sim-image-1", "prompt": "p", "images": [{"image_url": data_url(input_png)}]})
    assert decode_png(resp.data[0].b64_json).size == input_image.size


def test_file_ids_and_urls_are_refused_with_the_sdk_error(client: OpenAI, mock):
    for image, param, text in [
        ({"file_id": "file-abc"}, "images[0]", "file_id is not supported"),
        ({"image_url": "https://images.example/a.png"}, "images[0].image_url", "not fetched by this gateway"),
    ]:
        with pytest.raises(openai.BadRequestError) as err:
            json_edit(client, {"model": "mock/gpt-image-1", "prompt": "p", "images": [image]})
        doc = err.value.response.json()
        assert doc["is_bifrost_error"] is True, doc
        assert doc["error"]["param"] == param, doc
        assert text in doc["error"]["message"], doc
    assert mock.take() == []

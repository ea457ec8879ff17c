"""The real OpenAI Python SDK against a running refract.

`demo/...` goes to the built-in simulator (a real, deterministic edit, see src/imaging.rs);
`mock/...` goes to harness.MockUpstream, which records exactly what the gateway sent upstream.
"""

from __future__ import annotations

import io
import os

import openai
import pytest
from openai import OpenAI
from PIL import Image

from harness import MOCK_PROVIDER_KEY, SIM_PROVIDER_KEY, VIRTUAL_KEY, assert_left_half_painted, decode_png, paint_colour


decode = decode_png


def assert_bifrost_error(e: openai.APIStatusError, status: int, *, is_bifrost: bool, param: str | None = None) -> dict:
    doc = e.response.json()
    assert doc["is_bifrost_error"] is is_bifrost, doc
    assert doc["status_code"] == status, doc
    assert e.status_code == status
    assert isinstance(doc["error"], dict) and doc["error"].get("message"), doc
    assert doc["extra_fields"]["request_type"] == "image_edit", doc
    if param is not None:
        assert doc["error"]["param"] == param, doc
        # The SDK exposes the inner `error` object as e.body and its fields as attributes.
        assert isinstance(e.body, dict) and e.body["param"] == param
        assert e.param == param
    return doc


# --- the simulator: real edits -----------------------------------------------------------------


def test_edit_one_image_without_mask_blends_every_pixel(client: OpenAI, files, input_image):
    prompt = "make it warmer"
    with open(files["input"], "rb") as f:
        resp = client.images.edit(model="demo/sim-image-1", image=f, prompt=prompt)
    assert len(resp.data) == 1
    out = decode(resp.data[0].b64_json)
    assert out.size == input_image.size
    out = out.convert("RGBA")
    c = paint_colour(prompt, 0)
    src = input_image.convert("RGBA").tobytes()
    got = out.tobytes()
    expected = bytes(v if i % 4 == 3 else (v + c[i % 4]) // 2 for i, v in enumerate(src))
    assert got == expected
    assert got != src
    # Bifrost additions on a success.
    extra = resp.model_extra or {}
    assert extra.get("extra_fields", {}).get("provider") == "demo"
    assert extra["extra_fields"]["model_requested"] == "sim-image-1"


def test_edit_with_mask_paints_the_transparent_half_only(client: OpenAI, files, input_image):
    prompt = "paint the left half"
    with open(files["input"], "rb") as f, open(files["mask"], "rb") as m:
        resp = client.images.edit(model="demo/sim-image-1", image=f, mask=m, prompt=prompt, size="1024x1024")
    assert_left_half_painted(decode(resp.data[0].b64_json), input_image, prompt)


def test_n_2_returns_two_different_images(client: OpenAI, files, mask_png, input_image):
    prompt = "two of them"
    with open(files["input"], "rb") as f:
        resp = client.images.edit(
            model="demo/sim-image-1", image=f, mask=("mask.png", mask_png, "image/png"), prompt=prompt, n=2
        )
    assert len(resp.data) == 2
    imgs = [decode(d.b64_json).convert("RGBA") for d in resp.data]
    for i, img in enumerate(imgs):
        assert img.size == input_image.size
        assert img.getpixel((0, 0)) == paint_colour(prompt, i)
    assert imgs[0].tobytes() != imgs[1].tobytes()


def test_path_without_v1(gateway, files, input_image):
    with OpenAI(base_url=gateway.base_url, api_key=VIRTUAL_KEY, max_retries=0, timeout=30) as c:
        with open(files["input"], "rb") as f:
            resp = c.images.edit(model="demo/sim-image-1", image=f, prompt="no v1")
    assert decode(resp.data[0].b64_json).size == input_image.size


def test_url_response_format(client: OpenAI, files):
    with open(files["input"], "rb") as f:
        resp = client.images.edit(model="demo/sim-image-1", image=f, prompt="as url", response_format="url")
    assert resp.data[0].url and resp.data[0].url.startswith("data:image/png;base64,")


# --- the mock upstream: what the gateway forwards ----------------------------------------------


def test_several_images_are_forwarded_as_image_array(client: OpenAI, mock, files, input_png, second_png):
    with open(files["input"], "rb") as f1, open(files["second"], "rb") as f2:
        resp = client.images.edit(model="mock/gpt-image-1", image=[f1, f2], prompt="combine them")
    assert len(resp.data) == 1
    assert decode(resp.data[0].b64_json).size == (1, 1)
    [rec] = mock.take()
    assert rec.parse_error is None, rec.parse_error
    assert rec.method == "POST" and rec.path == "/v1/images/edits"
    images = rec.fields("image[]")
    assert [p.data for p in images] == [input_png, second_png]
    assert all(p.content_type == "image/png" and p.filename for p in images)
    assert rec.fields("image") == []
    assert rec.field_text("model") == "gpt-image-1"
    assert rec.field_text("prompt") == "combine them"
    # The provider key from the config, never the caller's virtual key.
    assert rec.headers["authorization"] == f"Bearer {MOCK_PROVIDER_KEY}"
    assert VIRTUAL_KEY.encode() not in rec.body
    assert all(VIRTUAL_KEY not in v for v in rec.headers.values())
    assert SIM_PROVIDER_KEY not in rec.headers["authorization"]


def test_mock_n_2_and_optional_fields_forwarded(client: OpenAI, mock, files):
    with open(files["input"], "rb") as f, open(files["mask"], "rb") as m:
        resp = client.images.edit(
            model="mock/gpt-image-1",
            image=f,
            mask=m,
            prompt="p",
            n=2,
            size="1024x1024",
            quality="low",
            background="opaque",
            input_fidelity="high",
            output_format="png",
            user="u1",
        )
    assert len(resp.data) == 2
    [rec] = mock.take()
    assert rec.field_text("n") == "2"
    for name, value in [("size", "1024x1024"), ("quality", "low"), ("background", "opaque"),
                        ("input_fidelity", "high"), ("output_format", "png"), ("user", "u1")]:
        assert rec.field_text(name) == value, name
    assert len(rec.fields("image")) == 1 and len(rec.fields("mask")) == 1


def test_gateway_only_extra_body_is_accepted_and_not_forwarded(client: OpenAI, mock, files, input_png):
    with open(files["input"], "rb") as f:
        resp = client.images.edit(
            model="mock/gpt-image-1",
            image=f,
            prompt="inpaint",
            extra_body={"seed": 5, "type": "inpainting", "negative_prompt": "blurry", "num_inference_steps": 20},
        )
    assert len(resp.data) == 1
    [rec] = mock.take()
    for name in ("seed", "type", "negative_prompt", "num_inference_steps"):
        assert name not in rec.names, name
    assert [p.data for p in rec.fields("image")] == [input_png]


@pytest.mark.parametrize(
    "make_image",
    [
        # The SDK guesses image/png from the name here...
        pytest.param(lambda raw: ("x.png", raw), id="tuple-without-type"),
        # ...and sends application/octet-stream for all of these.
        pytest.param(lambda raw: ("blob", raw), id="tuple-no-extension"),
        pytest.param(lambda raw: ("x.png", raw, "application/octet-stream"), id="tuple-octet-stream"),
        pytest.param(lambda raw: raw, id="bare-bytes"),
        pytest.param(lambda raw: io.BytesIO(raw), id="bytesio"),
    ],
)
def test_image_without_a_useful_content_type(client: OpenAI, mock, input_png, make_image):
    resp = client.images.edit(model="mock/gpt-image-1", image=make_image(input_png), prompt="typed by magic")
    assert len(resp.data) == 1
    [rec] = mock.take()
    [img] = rec.fields("image")
    assert img.data == input_png
    assert img.content_type == "image/png"  # re-typed from the magic bytes


def test_octet_stream_image_through_the_simulator(client: OpenAI, input_png, input_image):
    resp = client.images.edit(
        model="demo/sim-image-1", image=("x", input_png, "application/octet-stream"), prompt="octet"
    )
    assert decode(resp.data[0].b64_json).size == input_image.size


def test_large_image_is_forwarded_byte_for_byte(client: OpenAI, mock):
    """A ~3 MB incompressible PNG: past the spool's 1 MiB in-memory budget, so it spills to disk."""
    noise = Image.frombytes("RGB", (1024, 1024), os.urandom(1024 * 1024 * 3))
    buf = io.BytesIO()
    noise.save(buf, format="PNG", compress_level=1)
    raw = buf.getvalue()
    assert len(raw) > 3 * 1024 * 1024
    resp = client.images.edit(model="mock/gpt-image-1", image=("big.png", raw), prompt="big")
    assert len(resp.data) == 1
    [rec] = mock.take()
    [img] = rec.fields("image")
    assert len(img.data) == len(raw) and img.data == raw


# --- errors ------------------------------------------------------------------------------------


def test_n_out_of_range_is_a_bad_request(client: OpenAI, mock, input_png):
    with pytest.raises(openai.BadRequestError) as ei:
        client.images.edit(model="mock/gpt-image-1", image=("a.png", input_png), prompt="p", extra_body={"n": 11})
    assert_bifrost_error(ei.value, 400, is_bifrost=True, param="n")
    assert mock.take() == []  # refused before anything went upstream


def test_bad_size_is_a_bad_request(client: OpenAI, mock, input_png):
    with pytest.raises(openai.BadRequestError) as ei:
        client.images.edit(model="mock/gpt-image-1", image=("a.png", input_png), prompt="p", size="13x13")
    assert_bifrost_error(ei.value, 400, is_bifrost=True, param="size")
    assert mock.take() == []


def test_model_without_provider_is_a_bad_request(client: OpenAI, input_png):
    with pytest.raises(openai.BadRequestError) as ei:
        client.images.edit(model="gpt-image-1", image=("a.png", input_png), prompt="p")
    assert_bifrost_error(ei.value, 400, is_bifrost=True, param="model")


@pytest.mark.parametrize("key", ["sk-bf-wrong", "sk-not-a-virtual-key"])
def test_wrong_key_is_an_authentication_error(gateway, mock, input_png, key):
    with OpenAI(base_url=f"{gateway.base_url}/v1", api_key=key, max_retries=0, timeout=30) as c:
        with pytest.raises(openai.AuthenticationError) as ei:
            c.images.edit(model="mock/gpt-image-1", image=("a.png", input_png), prompt="p")
    doc = assert_bifrost_error(ei.value, 401, is_bifrost=True)
    assert doc["error"]["type"] == "authentication_error"
    assert mock.take() == []


def test_provider_429_is_a_rate_limit_error(client: OpenAI, input_png):
    with pytest.raises(openai.RateLimitError) as ei:
        client.images.edit(model="demo/sim-image-1", image=("a.png", input_png), prompt="simulate-error:429")
    doc = assert_bifrost_error(ei.value, 429, is_bifrost=False)
    assert doc["error"]["code"] == "simulated"
    assert doc["extra_fields"]["provider"] == "demo"


def test_provider_500_is_an_internal_server_error(client: OpenAI, input_png):
    with pytest.raises(openai.InternalServerError) as ei:
        client.images.edit(model="demo/sim-image-1", image=("a.png", input_png), prompt="simulate-error:503")
    assert_bifrost_error(ei.value, 503, is_bifrost=False)


def test_connection_still_usable_after_errors(client: OpenAI, files, input_png):
    """Errors and successes alternate on the SDK's keep-alive pool."""
    for i in range(3):
        with pytest.raises(openai.BadRequestError):
            client.images.edit(model="demo/sim-image-1", image=("a.png", input_png), prompt="p", n=11)
        with open(files["input"], "rb") as f:
            resp = client.images.edit(model="demo/sim-image-1", image=f, prompt=f"ok {i}")
        assert len(resp.data) == 1

"""Masks in the client's convention (issue 18 item 8), through the OpenAI SDK set up as Bifrost's
docs say (`base_url=<gateway>/openai`): an opaque mask whose white pixels mark the area to edit
(Imagen's, Stability's, FLUX's convention) edits the same area as OpenAI's alpha mask. The
OpenAI-compatible provider receives it converted to OpenAI's convention (alpha 0 = edit).
"""

from __future__ import annotations

import io

from openai import OpenAI
from PIL import Image

from harness import VIRTUAL_KEY, assert_left_half_painted, decode_png


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def bifrost_client(gateway) -> OpenAI:
    return OpenAI(base_url=f"{gateway.base_url}/openai", api_key=VIRTUAL_KEY, max_retries=0, timeout=30)


def white_edit_mask(size: tuple[int, int]) -> bytes:
    """Opaque greyscale, same size as the input: left half white (edit), right half black (keep)."""
    w, h = size
    mask = Image.new("L", (w, h), 0)
    mask.paste(255, (0, 0, w // 2, h))
    return png_bytes(mask)


def test_white_edit_mask_paints_the_white_half_only(gateway, input_png, input_image):
    prompt = "paint the white half"
    with bifrost_client(gateway) as c:
        resp = c.images.edit(
            model="demo/sim-image-1",
            image=("in.png", input_png, "image/png"),
            mask=("mask.png", white_edit_mask(input_image.size), "image/png"),
            prompt=prompt,
        )
    assert_left_half_painted(decode_png(resp.data[0].b64_json), input_image, prompt)


def test_the_provider_receives_the_alpha_mask(gateway, mock, input_png, input_image, mask_png):
    with bifrost_client(gateway) as c:
        c.images.edit(
            model="mock/gpt-image-1",
            image=("in.png", input_png, "image/png"),
            mask=("mask.png", white_edit_mask(input_image.size), "image/png"),
            prompt="p",
        )
        [rec] = mock.take()
        [part] = rec.fields("mask")
        assert (part.filename, part.content_type) == ("mask.png", "image/png")
        got = Image.open(io.BytesIO(part.data))
        assert got.mode == "RGBA" and got.size == input_image.size
        w, h = input_image.size
        for y in range(h):
            for x in range(w):
                assert got.getpixel((x, y))[3] == (0 if x < w // 2 else 255), (x, y)
        # OpenAI's own alpha mask goes as uploaded, byte for byte.
        c.images.edit(model="mock/gpt-image-1", image=("in.png", input_png, "image/png"),
                      mask=("mask.png", mask_png, "image/png"), prompt="p")
        [rec] = mock.take()
        assert rec.fields("mask")[0].data == mask_png

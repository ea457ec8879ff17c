"""Fixtures for the OpenAI-SDK tests: one refract process for the session (see harness.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from harness import VIRTUAL_KEY, Gateway


@pytest.fixture(scope="session")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    gw = Gateway(tmp_path_factory.mktemp("refract"))
    gw.start()
    try:
        yield gw
    finally:
        gw.stop()
        if os.environ.get("REFRACT_SHOW_LOG"):
            print(gw.log())


@pytest.fixture
def mock(gateway: Gateway):
    """The mock upstream, emptied before each test."""
    gateway.mock.clear()
    return gateway.mock


@pytest.fixture
def client(gateway: Gateway):
    from openai import OpenAI

    with OpenAI(base_url=f"{gateway.base_url}/v1", api_key=VIRTUAL_KEY, max_retries=0, timeout=30) as c:
        yield c


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="session")
def input_image() -> Image.Image:
    """A 32x16 RGB gradient: every pixel distinct enough that an edit shows."""
    w, h = 32, 16
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 8) % 256, (y * 16) % 256, (x * 3 + y * 5) % 256) for y in range(h) for x in range(w)])
    return img


@pytest.fixture(scope="session")
def input_png(input_image: Image.Image) -> bytes:
    return png_bytes(input_image)


@pytest.fixture(scope="session")
def mask_png(input_image: Image.Image) -> bytes:
    """Same size as the input: left half fully transparent (edit), right half opaque (keep)."""
    w, h = input_image.size
    mask = Image.new("RGBA", (w, h), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, w // 2, h))
    return png_bytes(mask)


@pytest.fixture(scope="session")
def second_png() -> bytes:
    return png_bytes(Image.new("RGB", (8, 8), (200, 10, 90)))


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory, input_png: bytes, mask_png: bytes, second_png: bytes) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("images")
    out = {"input": d / "input.png", "mask": d / "mask.png", "second": d / "second.png"}
    out["input"].write_bytes(input_png)
    out["mask"].write_bytes(mask_png)
    out["second"].write_bytes(second_png)
    return out

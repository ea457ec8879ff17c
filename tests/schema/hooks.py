"""Schemathesis hooks for tests/schema/check.py: most generated bodies name no configured
provider and carry arbitrary bytes as images, so they stop at validation. These hooks steer
half of them to real models (every provider kind behind the built-in simulator) with real
images (and a mask of the same size), so that the answers of the whole pipeline, successes
included, are checked against the seed schema too. The other half go through unchanged.
Loaded through SCHEMATHESIS_HOOKS=hooks (with this directory on PYTHONPATH)."""

from __future__ import annotations

import io
import random

import schemathesis
from PIL import Image

# The providers check.py configures, by kind.
MODELS = [
    "openai/sim-image-1",
    "azure/sim-image-1",
    "gemini/gemini-2.5-flash-image",
    "gemini/imagen-3.0-capability-001",
    "vertex/imagen-3.0-capability-001",
    "vertex/gemini-2.5-flash-image",
    "bedrock/amazon.nova-canvas-v1:0",
    "huggingface/timbrooks/instruct-pix2pix",
    "xai/grok-imagine-image",
    "fireworks/flux-kontext-pro",
    "replicate/black-forest-labs/flux-kontext-pro",
]


def _png(size: int, transparent_left: bool) -> bytes:
    img = Image.new("RGBA", (size, size), (40, 90, 160, 255))
    if transparent_left:
        for x in range(size // 2):
            for y in range(size):
                img.putpixel((x, y), (0, 0, 0, 0))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


IMAGE = _png(16, False)
MASK = _png(16, True)


@schemathesis.hook
def map_case(ctx, case):
    """Schema-valid cases only (a negative case must stay invalid), half of them."""
    meta = getattr(case, "_meta", None)
    mode = getattr(getattr(meta, "generation", None), "mode", None)
    if str(mode) != "positive" or not isinstance(case.body, dict) or random.random() < 0.5:
        return case
    case.body["model"] = random.choice(MODELS)
    case.body["image"] = IMAGE
    if "mask" in case.body:
        case.body["mask"] = MASK
    return case


# The statuses the seed documents for the operation are 200, 400 and 500, but it also requires
# one of its security schemes: a request that carries no valid virtual key must be refused with
# 401, which the seed leaves undocumented. Schemathesis' own `status_code_conformance` (ST103)
# is replaced by this check, which allows exactly that one addition.
DOCUMENTED = {200, 400, 500}
KEY_HEADERS = ("x-bf-vk", "x-api-key", "authorization")


def _carried_the_key(request_headers) -> bool:
    for name in KEY_HEADERS:
        value = request_headers.get(name) or request_headers.get(name.title())
        if value and VIRTUAL_KEY in value:
            return True
    return False


VIRTUAL_KEY = "sk-bf-test"  # tests/sdk/harness.py's VIRTUAL_KEY


@schemathesis.check
def documented_status_or_auth_refusal(ctx, response, case):
    """The status is one the seed documents, or a 401 to a request without the valid key."""
    status = response.status_code
    if status in DOCUMENTED:
        return None
    if case.method.upper() not in ("POST",):
        return None  # other methods: ST204 (unsupported_method) checks the 405 and its Allow
    if status == 401 and not _carried_the_key(response.request.headers):
        return None
    raise AssertionError(f"undocumented status {status} (documented: 200, 400, 500; and 401 without a key)")

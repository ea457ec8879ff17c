"""`stream=True` through the real OpenAI Python SDK, against the built-in simulator.

Both client routes are covered: `base_url=.../v1` (Bifrost framing: `event:` lines, errors as
`event: error`, no `[DONE]`) and `base_url=.../openai/v1` (OpenAI framing: errors as `data:`-only
JSON, a final `data: [DONE]`). The SDK's stream iterator must work unchanged on both.
"""

from __future__ import annotations


import openai
import pytest
from openai import OpenAI

from harness import VIRTUAL_KEY, decode_png

MODEL = "demo/sim-image-1"


@pytest.fixture(params=["/v1", "/openai/v1"])
def stream_client(request, gateway):
    """An SDK client on either route (the test id says which)."""
    with OpenAI(base_url=f"{gateway.base_url}{request.param}", api_key=VIRTUAL_KEY, max_retries=0, timeout=30) as c:
        yield c


png = decode_png


def test_partials_then_completed(stream_client: OpenAI, files, input_image):
    """Two partial events then one completed event whose image has the input's size."""
    with open(files["input"], "rb") as f:
        stream = stream_client.images.edit(model=MODEL, image=f, prompt="stream it", stream=True, partial_images=2)
        events = list(stream)
    assert [e.type for e in events] == ["image_edit.partial_image"] * 2 + ["image_edit.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    for i, e in enumerate(events):
        assert (e.model_extra or {}).get("sequence_number") == i
        assert e.model_extra["extra_fields"]["request_type"] == "image_edit_stream"
        assert png(e.b64_json).size == input_image.size
    done = events[-1]
    assert done.usage.total_tokens > 0
    assert done.usage.input_tokens_details.image_tokens > 0
    assert done.size == f"{input_image.size[0]}x{input_image.size[1]}"


def test_completed_image_equals_the_non_streamed_one(stream_client: OpenAI, files):
    """The completed event's pixels are those of the non-streamed answer."""
    prompt = "same either way"
    with open(files["input"], "rb") as f:
        events = list(stream_client.images.edit(model=MODEL, image=f, prompt=prompt, stream=True, partial_images=1))
    with open(files["input"], "rb") as f:
        whole = stream_client.images.edit(model=MODEL, image=f, prompt=prompt)
    streamed = png(events[-1].b64_json).convert("RGBA").tobytes()
    assert streamed == png(whole.data[0].b64_json).convert("RGBA").tobytes()


def test_n_2_yields_two_completed_events(stream_client: OpenAI, files, input_image):
    """n=2: two completed events (each after its partial), different images."""
    with open(files["input"], "rb") as f:
        events = list(
            stream_client.images.edit(model=MODEL, image=f, prompt="two", n=2, stream=True, partial_images=1)
        )
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"] * 2
    done = [png(e.b64_json) for e in events if e.type == "image_edit.completed"]
    assert all(img.size == input_image.size for img in done)
    assert done[0].convert("RGBA").tobytes() != done[1].convert("RGBA").tobytes()
    assert [e.model_extra["sequence_number"] for e in events] == [0, 1, 2, 3]


def test_mid_stream_error_raises_from_the_iterator(stream_client: OpenAI, files):
    """An error after the first partial surfaces as an openai APIError raised by the iterator."""
    received = []
    with open(files["input"], "rb") as f:
        stream = stream_client.images.edit(
            model=MODEL, image=f, prompt="simulate-stream-error:1", stream=True, partial_images=2
        )
        with pytest.raises(openai.OpenAIError) as info:
            for event in stream:
                received.append(event)
    print(f"{stream_client.base_url}: the iterator raised {type(info.value).__module__}.{type(info.value).__qualname__}")
    assert isinstance(info.value, openai.APIError)
    assert "simulated mid-stream error" in str(info.value)
    assert [e.type for e in received] == ["image_edit.partial_image"]


def test_error_before_the_first_event_is_an_http_error(stream_client: OpenAI, files):
    """An upstream error before any event is an ordinary HTTP error (APIStatusError 502)."""
    with open(files["input"], "rb") as f:
        with pytest.raises(openai.APIStatusError) as info:
            list(
                stream_client.images.edit(
                    model=MODEL, image=f, prompt="simulate-stream-error:0", stream=True, partial_images=2
                )
            )
    assert info.value.status_code == 502
    assert info.value.response.json()["is_bifrost_error"] is False

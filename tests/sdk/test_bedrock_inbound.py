"""boto3's `bedrock-runtime` client pointed at the gateway (issue 18 item 2): `invoke_model` with
`endpoint_url=<gateway>/bedrock`, signed with SigV4 as boto3 does by default (the access key id
is the virtual key's id, `test`; the secret is the virtual key itself), for a Titan INPAINTING
body and a Stability body, served by the simulator through `demo/sim-image-1`; a wrong secret
or an unknown key id is a ClientError with Bedrock's error codes.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from harness import VIRTUAL_KEY, decode_png

import boto3  # noqa: E402  (.ci/deps installs it: a missing SDK fails, never skips)
from botocore.config import Config  # noqa: E402
from botocore.exceptions import ClientError  # noqa: E402

MODEL = "demo/sim-image-1"


def runtime(gateway, key_id: str = "test", secret: str = VIRTUAL_KEY):
    return boto3.client(
        "bedrock-runtime",
        endpoint_url=f"{gateway.base_url}/bedrock",
        region_name="eu-central-1",
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def titan_mask(size) -> bytes:
    """Titan's inpainting convention: opaque, black = edit (the left half)."""
    w, h = size
    mask = Image.new("RGB", (w, h), (255, 255, 255))
    mask.paste((0, 0, 0), (0, 0, w // 2, h))
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def test_titan_inpainting(gateway, input_png, input_image):
    body = {
        "taskType": "INPAINTING",
        "inPaintingParams": {"image": b64(input_png), "maskImage": b64(titan_mask(input_image.size)), "text": "paint it"},
        "imageGenerationConfig": {"numberOfImages": 1, "seed": 3},
    }
    resp = runtime(gateway).invoke_model(
        modelId=MODEL, body=json.dumps(body), contentType="application/json", accept="application/json"
    )
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert resp["contentType"] == "application/json"
    answer = json.loads(resp["body"].read())
    assert answer["error"] is None
    assert len(answer["images"]) == 1
    assert decode_png(answer["images"][0]).size == input_image.size


def test_stability_body(gateway, input_png, input_image):
    body = {"prompt": "paint it", "image": b64(input_png), "seed": 9, "output_format": "png"}
    resp = runtime(gateway).invoke_model(modelId=MODEL, body=json.dumps(body))
    answer = json.loads(resp["body"].read())
    assert answer["seeds"] == [9]
    assert answer["finish_reasons"] == [None]
    assert decode_png(answer["images"][0]).size == input_image.size


def test_a_wrong_secret_is_a_client_error(gateway, input_png):
    body = json.dumps({"prompt": "p", "image": b64(input_png)})
    with pytest.raises(ClientError) as e:
        runtime(gateway, secret="sk-bf-not-the-key").invoke_model(modelId=MODEL, body=body)
    err = e.value.response
    assert err["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert err["Error"]["Code"] == "InvalidSignatureException"
    assert "signature" in err["Error"]["Message"]
    with pytest.raises(ClientError) as e:
        runtime(gateway, key_id="nobody").invoke_model(modelId=MODEL, body=body)
    assert e.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_a_bad_body_is_a_validation_exception(gateway, input_png):
    body = {"taskType": "INPAINTING", "inPaintingParams": {"image": b64(input_png), "maskPrompt": "the cat", "text": "x"}}
    with pytest.raises(ClientError) as e:
        runtime(gateway).invoke_model(modelId=MODEL, body=json.dumps(body))
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert "maskPrompt" in e.value.response["Error"]["Message"]

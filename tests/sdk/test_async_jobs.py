"""Async image edits (`/v1/async/images/edits`) through the OpenAI Python SDK's raw client:
the SDK has no async-jobs resource, so the test posts the multipart form and polls with
`client.post` / `client.get` / `client.delete` and `cast_to=httpx.Response`, as an SDK user
would. The job runs on the built-in simulator, whose edit is deterministic: the job's result
is compared with the synchronous answer to the same request. The Node SDK does the same
through tests/sdk/node/async_jobs.mjs."""

from __future__ import annotations

import base64
import calendar
import json
import shutil
import subprocess
import time
from pathlib import Path

import openai
import pytest
from openai import OpenAI

try:  # the HTTP client the installed SDK is built on (`httpx2` in newer releases)
    import httpx2 as httpx
except ImportError:
    import httpx

from harness import VIRTUAL_KEY
from test_providers import PROVIDER_MODELS, rgba

PROMPT = "make it an async sunset"
NODE_DIR = Path(__file__).resolve().parent / "node"


def submit(client: OpenAI, image: bytes, headers: dict[str, str] | None = None, **fields: str) -> httpx.Response:
    return client.post(
        "/async/images/edits",
        cast_to=httpx.Response,
        body={"model": "demo/sim-image-1", "prompt": PROMPT, **fields},
        files=[("image", ("input.png", image, "image/png"))],
        options={"headers": {"Content-Type": "multipart/form-data", **(headers or {})}},
    )


def wait_done(client: OpenAI, job_id: str, timeout: float = 30.0) -> dict:
    """Polls until the job ends (200); every poll before is a 202 pending/processing."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.get(f"/async/images/edits/{job_id}", cast_to=httpx.Response)
        doc = r.json()
        if r.status_code == 200:
            return doc
        assert r.status_code == 202, doc
        assert doc["status"] in ("pending", "processing"), doc
        assert time.monotonic() < deadline, f"job {job_id} still {doc['status']} after {timeout}s"
        time.sleep(0.05)


def seconds(rfc3339: str) -> int:
    return calendar.timegm(time.strptime(rfc3339, "%Y-%m-%dT%H:%M:%SZ"))


def test_async_edit_submit_poll_result(client: OpenAI, files):
    image = files["input"].read_bytes()
    r = submit(client, image, headers={"x-bf-async-job-result-ttl": "600"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert set(job) == {"id", "status", "created_at"}, job
    assert job["status"] == "pending"
    assert abs(seconds(job["created_at"]) - time.time()) < 120, job

    done = wait_done(client, job["id"])
    assert done["status"] == "completed", done
    assert done["id"] == job["id"]
    assert seconds(done["expires_at"]) - seconds(done["completed_at"]) == 600, done
    result = done["result"]
    assert result["extra_fields"]["provider"] == "demo"
    assert result["extra_fields"]["model_requested"] == "sim-image-1"

    # The synchronous answer to the same request: the same image, byte for byte.
    with open(files["input"], "rb") as f:
        sync = client.images.edit(model="demo/sim-image-1", image=f, prompt=PROMPT)
    assert [base64.b64decode(d["b64_json"]) for d in result["data"]] == [
        base64.b64decode(d.b64_json) for d in sync.data
    ]

    # Finished: a cancel is refused with 409; an unknown id is a 404.
    with pytest.raises(openai.ConflictError) as e:
        client.delete(f"/async/images/edits/{job['id']}", cast_to=httpx.Response)
    assert e.value.response.json()["error"]["code"] == "job_finished"
    with pytest.raises(openai.NotFoundError) as e:
        client.get("/async/images/edits/AAAAAAAAAAAAAAAAAAAAAA", cast_to=httpx.Response)
    assert e.value.response.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize("model", ["demo/sim-image-1"] + [m for m, _ in PROVIDER_MODELS])
def test_async_edit_on_every_kind_matches_the_sync_edit(client: OpenAI, files, model):
    """A job runs the synchronous pipeline: on every provider kind (the simulator speaking its
    wire format, polled for the asynchronous ones) the job's result carries the same pixels as
    the synchronous edit of the same request."""
    image = files["input"].read_bytes()
    prompt = f"async via {model}"
    r = client.post(
        "/async/images/edits",
        cast_to=httpx.Response,
        body={"model": model, "prompt": prompt},
        files=[("image", ("input.png", image, "image/png"))],
        options={"headers": {"Content-Type": "multipart/form-data"}},
    )
    assert r.status_code == 202, r.text
    done = wait_done(client, r.json()["id"])
    assert done["status"] == "completed", done
    result = done["result"]
    assert result["extra_fields"]["provider"] == model.split("/")[0]
    with open(files["input"], "rb") as f:
        sync = client.images.edit(model=model, image=f, prompt=prompt)
    assert [rgba(d["b64_json"]) for d in result["data"]] == [rgba(d.b64_json) for d in sync.data]


def test_async_edit_errors_are_raised_at_submit(client: OpenAI, files):
    image = files["input"].read_bytes()
    with pytest.raises(openai.BadRequestError) as e:
        submit(client, image, stream="true")
    doc = e.value.response.json()
    assert doc["error"]["param"] == "stream", doc
    assert "stream is not supported for async image edits" in doc["error"]["message"], doc



def test_async_edit_with_the_node_sdk(gateway, files):
    """The same lifecycle through the OpenAI Node SDK (tests/sdk/node/async_jobs.mjs)."""
    node = shutil.which("node")
    assert node, "node is not installed: run .ci/deps"
    assert (NODE_DIR / "node_modules" / "openai" / "package.json").is_file(), (
        f"the Node SDK is not installed in {NODE_DIR}: run .ci/deps (npm ci there)"
    )
    spec = {
        "baseURL": f"{gateway.base_url}/v1",
        "apiKey": VIRTUAL_KEY,
        "model": "demo/sim-image-1",
        "prompt": PROMPT,
        "imagePath": str(files["input"]),
    }
    run = subprocess.run(
        [node, "async_jobs.mjs", json.dumps(spec)], cwd=NODE_DIR, capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, f"node failed ({run.returncode}):\n{run.stdout}\n{run.stderr}"
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["submit"]["status"] == 202, report["submit"]
    assert report["submit"]["body"]["status"] == "pending", report["submit"]
    polls = report["polls"]
    assert polls[-1] == 200 and all(s == 202 for s in polls[:-1]), polls
    done = report["done"]
    assert done["status"] == "completed" and done["id"] == report["submit"]["body"]["id"], done
    assert [d["b64_json"] for d in done["result"]["data"]] == report["sync_b64"]

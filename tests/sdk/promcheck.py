"""Starts refract on a temp config (see harness.py), sends a few requests of every outcome,
and prints the /metrics text on stdout (everything else goes to stderr), for
`promtool check metrics`. Exits non-zero if the gateway misbehaves or an expected series is
missing.

    .venv/bin/python tests/sdk/promcheck.py > metrics.txt && promtool check metrics < metrics.txt
"""

from __future__ import annotations

import io
import re
import sys

import openai
from PIL import Image

from harness import VIRTUAL_KEY, Gateway, http_get


def main() -> int:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(buf, format="PNG")
    png = buf.getvalue()
    with Gateway() as gw:
        client = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key=VIRTUAL_KEY, max_retries=0, timeout=30)
        client.images.edit(model="demo/sim-image-1", image=("a.png", png), prompt="ok")
        client.images.edit(model="mock/gpt-image-1", image=[("a.png", png), ("b.png", png)], prompt="ok", n=2)
        expected_errors = [
            (openai.BadRequestError, dict(model="demo/sim-image-1", prompt="p", n=11)),
            (openai.RateLimitError, dict(model="demo/sim-image-1", prompt="simulate-error:429")),
            (openai.BadRequestError, dict(model="nope/model", prompt="p")),
        ]
        for exc, kwargs in expected_errors:
            try:
                client.images.edit(image=("a.png", png), **kwargs)
            except exc:
                pass
            else:
                print(f"promcheck: expected {exc.__name__} for {kwargs}", file=sys.stderr)
                return 1
        bad = openai.OpenAI(base_url=f"{gw.base_url}/v1", api_key="sk-bf-wrong", max_retries=0, timeout=30)
        try:
            bad.images.edit(model="demo/sim-image-1", image=("a.png", png), prompt="p")
        except openai.AuthenticationError:
            pass
        status, _ = http_get(f"{gw.base_url}/v1/nothing-here")
        if status != 404:
            print(f"promcheck: expected 404 for an unknown path, got {status}", file=sys.stderr)
            return 1
        status, body = http_get(gw.metrics_url)
        if status != 200:
            print(f"promcheck: GET /metrics answered {status}", file=sys.stderr)
            return 1
    text = body.decode("utf-8")
    wanted = [
        r'^refract_requests_total\{[^}]*provider="demo"[^}]*status="200"[^}]*\} 1$',
        r'^refract_requests_total\{[^}]*provider="mock"[^}]*status="200"[^}]*\} 1$',
        r'^refract_requests_total\{[^}]*status="429"[^}]*\} 1$',
        r"^refract_rejected_requests_total\{reason=\"invalid_request\"\} 1$",
        r"^refract_rejected_requests_total\{reason=\"virtual_key_not_found\"\} 1$",
        r"^refract_rejected_requests_total\{reason=\"not_found\"\} 1$",
        r"^refract_requests_in_flight 0$",
        r"^refract_request_duration_seconds_bucket\{",
        r"^refract_upstream_duration_seconds_count\{",
    ]
    missing = [w for w in wanted if not re.search(w, text, re.MULTILINE)]
    sys.stdout.write(text)
    if missing:
        print("promcheck: series missing from /metrics:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    print(f"promcheck: /metrics fetched ({len(text.splitlines())} lines), expected series present", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared helpers for the SDK tests (conftest.py) and the promtool check (promcheck.py).

- free_port(): a port nothing listens on (bind port 0, read it, close).
- MockUpstream: an OpenAI-compatible `POST .../images/edits` in a thread, on port 0, that
  records every request (method, path, headers, full body, parsed multipart parts) and answers
  an `ImagesResponse` with `n` tiny PNGs.
- Gateway: writes a temp YAML config (listener, metrics, simulator on free ports; provider
  `demo` -> the built-in simulator, provider `mock` -> a MockUpstream; virtual key
  `sk-bf-test`; optional `limits`), starts `$REFRACT_BIN -c <config>`, waits for /health, stops
  it with SIGINT.
- paint_colour(): the simulator's FNV-1a paint colour (src/imaging.rs), in Python.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import http.server
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

VIRTUAL_KEY = "sk-bf-test"
# Governed keys (issue 16): two requests an hour each; a spent (zero) budget.
LIMITED_PY_KEY = "sk-bf-limited-python"
LIMITED_NODE_KEY = "sk-bf-limited-node"
BROKE_KEY = "sk-bf-no-budget"
SIM_PROVIDER_KEY = "sim-key-for-tests"
MOCK_PROVIDER_KEY = "mock-provider-key-5f1c2a"

# JWT issuers (tests/sdk/test_jwt.py): an MPilot-style HS256 issuer whose secret the gateway
# reads from the environment, and a TrueFoundry-style RS256 issuer whose JWKS is a file the
# harness writes (the RSA key made at start, by `cryptography`).
JWT_SECRET = "sdk-test-hs256-secret-0123456789abcdef-0123"
MPILOT_ISSUER = "https://mpilot.test"
TFY_ISSUER = "https://tfy.test"
JWT_AUDIENCE = "refract"

# A 1x1 opaque PNG, the mock upstream's answer image.
ONE_PIXEL_PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYPj/HwADAgH/eL9GtQAAAABJRU5ErkJggg=="
)


def paint_colour(prompt: str, index: int) -> tuple[int, int, int, int]:
    """src/imaging.rs `paint_colour`: FNV-1a over the prompt's UTF-8 bytes then the index as 4
    little-endian bytes; the top three bytes of the hash are R, G, B; alpha 255."""
    h = 0x811C9DC5
    for b in prompt.encode("utf-8") + index.to_bytes(4, "little"):
        h ^= b
        h = (h * 0x01000193) & 0xFFFFFFFF
    return ((h >> 24) & 0xFF, (h >> 16) & 0xFF, (h >> 8) & 0xFF, 255)


def assert_left_half_painted(out, src, prompt: str) -> None:
    """The simulator's edit of `src` (PIL images) through a left-half mask: the left half
    painted with the prompt's colour, the right half the input's pixels."""
    out, src = out.convert("RGBA"), src.convert("RGBA")
    w, h = src.size
    assert out.size == (w, h)
    colour = paint_colour(prompt, 0)
    for y in range(h):
        for x in range(w):
            if x < w // 2:
                assert out.getpixel((x, y)) == colour, (x, y)
            else:
                assert out.getpixel((x, y)) == src.getpixel((x, y)), (x, y)


_GIVEN_PORTS: set = set()


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A free loopback port for a server started by address (the gateway binds it later): taken
    below the kernel's ephemeral range, so a mock binding port 0 meanwhile can never get the
    same one, and never the same one twice in this process."""
    import random

    low, high = 10000, _ephemeral_low()
    while True:
        if high > low + 2000:
            port = random.randrange(low, high)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        if port in _GIVEN_PORTS:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _GIVEN_PORTS.add(port)
        return port


# --- multipart ---------------------------------------------------------------------------------


@dataclass
class Part:
    """One multipart part as received."""

    name: str | None
    filename: str | None
    content_type: str | None
    data: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.data.decode("utf-8")


def parse_multipart(content_type: str, body: bytes) -> list[Part]:
    """Splits a multipart/form-data body by hand (exact bytes, no line-ending changes); the part
    headers are parsed with the stdlib `email` header parser. Raises ValueError if malformed."""
    header = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(f"Content-Type: {content_type}\r\n\r\n")
    boundary = header.get_param("boundary")
    if not boundary or header.get_content_type() != "multipart/form-data":
        raise ValueError(f"not multipart/form-data with a boundary: {content_type!r}")
    delimiter = b"\r\n--" + boundary.encode("latin-1")
    chunks = (b"\r\n" + body).split(delimiter)
    if len(chunks) < 2:
        raise ValueError("no boundary delimiter in the body")
    parts: list[Part] = []
    closed = False
    for chunk in chunks[1:]:
        if chunk.startswith(b"--"):
            closed = True
            break
        # Transport padding (spaces/tabs) may follow the delimiter, then CRLF.
        chunk = chunk.lstrip(b" \t")
        if not chunk.startswith(b"\r\n"):
            raise ValueError("delimiter not followed by CRLF")
        head, sep, data = chunk[2:].partition(b"\r\n\r\n")
        if not sep:
            if head == b"" and chunk[2:4] == b"\r\n":
                head, data = b"", chunk[4:]
            else:
                raise ValueError("part without a blank line after its headers")
        msg = email.parser.HeaderParser(policy=email.policy.HTTP).parsestr(head.decode("utf-8") + "\r\n\r\n")
        parts.append(
            Part(
                name=msg.get_param("name", header="content-disposition"),
                filename=msg.get_param("filename", header="content-disposition"),
                content_type=msg.get("content-type"),
                data=data,
                headers={k.lower(): str(v) for k, v in msg.items()},
            )
        )
    if not closed:
        raise ValueError("no closing boundary")
    return parts


# --- mock upstream -----------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request the mock upstream received."""

    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    parts: list[Part] = field(default_factory=list)
    parse_error: str | None = None

    def fields(self, name: str) -> list[Part]:
        return [p for p in self.parts if p.name == name]

    def field_text(self, name: str) -> str | None:
        found = self.fields(name)
        return found[0].text if found else None

    @property
    def names(self) -> list[str | None]:
        return [p.name for p in self.parts]


class MockUpstream:
    """An OpenAI-compatible image-edit upstream on 127.0.0.1:<port 0> that records requests."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.lock = threading.Lock()
        mock = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _read_body(self) -> bytes:
                if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                    out = bytearray()
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return bytes(out)
                        out += self.rfile.read(size)
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("Content-Length", "0")))

            def _answer(self, status: int, doc: object) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                body = self._read_body()
                rec = Recorded(
                    method="POST",
                    path=self.path,
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                try:
                    rec.parts = parse_multipart(self.headers.get("Content-Type", ""), body)
                except (ValueError, UnicodeDecodeError) as e:
                    rec.parse_error = str(e)
                with mock.lock:
                    mock.requests.append(rec)
                if rec.parse_error:
                    self._answer(
                        400,
                        {"error": {"message": rec.parse_error, "type": "invalid_request_error", "param": None, "code": "bad_multipart"}},
                    )
                    return
                n = int(rec.field_text("n") or "1")
                b64 = base64.b64encode(ONE_PIXEL_PNG).decode()
                self._answer(
                    200,
                    {
                        "created": int(time.time()),
                        "data": [{"b64_json": b64} for _ in range(n)],
                        "output_format": "png",
                        "size": "1x1",
                        "usage": {
                            "input_tokens": 1,
                            "input_tokens_details": {"text_tokens": 1, "image_tokens": 0},
                            "output_tokens": n,
                            "total_tokens": 1 + n,
                        },
                    },
                )

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, name="mock-upstream", daemon=True)
        self.thread.start()

    def clear(self) -> None:
        with self.lock:
            self.requests.clear()

    def take(self) -> list[Recorded]:
        with self.lock:
            out, self.requests = self.requests, []
        return out

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- the gateway -------------------------------------------------------------------------------


def refract_bin() -> Path:
    p = Path(os.environ.get("REFRACT_BIN", "target/debug/refract"))
    if not p.is_absolute():
        p = REPO / p
    if not p.is_file():
        raise RuntimeError(f"gateway binary {p} not found: run `cargo build --bin refract` or set REFRACT_BIN")
    return p


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Gateway:
    """A refract process on free ports, with the simulator and a mock upstream behind it."""

    def __init__(self, workdir: Path | None = None, limits: dict[str, int] | None = None) -> None:
        # Keys of the config's `limits:` section (absent: the defaults).
        self.limits = limits or {}
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="refract-sdk-")
            workdir = Path(self._tmp.name)
        self.workdir = workdir
        self.mock = MockUpstream()
        self.port = free_port()
        self.metrics_port = free_port()
        self.sim_port = free_port()
        # Nothing listens here: a provider that is down (connections refused).
        self.down_port = free_port()
        self.jwt_rsa_key = None  # set by jwks_file()
        self.config_path = workdir / "refract-test.yaml"
        self.log_path = workdir / "refract.log"
        self.config_path.write_text(self.config_yaml())
        self.proc: subprocess.Popen[bytes] | None = None

    def config_yaml(self) -> str:
        return f"""\
server:
  threads: 2
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 1
  pid_file: {self.workdir}/refract.pid
  upgrade_sock: {self.workdir}/refract_upgrade.sock
listeners:
  - address: 127.0.0.1:{self.port}
metrics:
  address: 127.0.0.1:{self.metrics_port}
auth:
  jwt:
    issuers:
      - {{issuer: "{MPILOT_ISSUER}", audiences: [{JWT_AUDIENCE}], secret: env.REFRACT_TEST_JWT_SECRET, admin_claim: role, admin_value: admin}}
      - {{issuer: "{TFY_ISSUER}", audiences: [{JWT_AUDIENCE}], jwks_file: "{self.jwks_file()}", algorithms: [RS256], virtual_key_claim: sub}}
{self.limits_yaml()}store:
  kind: embedded
  path: {self.workdir}/state
objects:
  kind: fs
  path: {self.workdir}/objects
simulator:
  address: 127.0.0.1:{self.sim_port}
providers:
  - name: demo
    kind: openai
    base_url: http://127.0.0.1:{self.sim_port}/v1
    keys:
      - name: simulator
        value: {SIM_PROVIDER_KEY}
        models: ["*"]
  - name: mock
    kind: openai
    base_url: http://127.0.0.1:{self.mock.port}/v1
    first_byte_timeout_ms: 10000
    keys:
      - name: mockkey
        value: {MOCK_PROVIDER_KEY}
        models: ["*"]
  - name: sim-azure
    kind: azure
    base_url: http://127.0.0.1:{self.sim_port}
    deployments:
      sim-image-1: sim-image-deploy
    keys:
      - name: azkey
        value: {SIM_PROVIDER_KEY}
  - name: sim-gemini
    kind: gemini
    base_url: http://127.0.0.1:{self.sim_port}/v1beta
    keys:
      - name: gkey
        value: {SIM_PROVIDER_KEY}
  - name: sim-vertex
    kind: vertex
    project: refract-test
    location: us-central1
    base_url: http://127.0.0.1:{self.sim_port}/v1
    keys:
      - name: sa
        service_account_file: {self.service_account_file()}
  - name: sim-stability
    kind: stability
    base_url: http://127.0.0.1:{self.sim_port}
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
  - name: sim-hf
    kind: huggingface
    base_url: http://127.0.0.1:{self.sim_port}
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
  - name: sim-xai
    kind: xai
    base_url: http://127.0.0.1:{self.sim_port}/v1
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
  - name: sim-bfl
    kind: bfl
    base_url: http://127.0.0.1:{self.sim_port}/v1
    poll_interval_ms: 20
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
  - name: sim-fireworks
    kind: fireworks
    base_url: http://127.0.0.1:{self.sim_port}/inference/v1
    poll_interval_ms: 20
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
  - name: sim-replicate
    kind: replicate
    base_url: http://127.0.0.1:{self.sim_port}/v1
    poll_interval_ms: 20
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
  - name: sim-bedrock
    kind: bedrock
    region: us-east-1
    base_url: http://127.0.0.1:{self.sim_port}
    keys:
      - name: iam
        aws_access_key_id: AKIDSIMULATOR
        aws_secret_access_key: {SIM_PROVIDER_KEY}
  - name: down
    kind: openai
    base_url: http://127.0.0.1:{self.down_port}/v1
    connect_timeout_ms: 1000
    model_rules:
      - {{match: chained-*, fallbacks: [demo/sim-image-1]}}
    keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]
virtual_keys:
  - id: test
    key: {VIRTUAL_KEY}
    providers: [down, demo, mock, sim-azure, sim-gemini, sim-vertex, sim-stability, sim-hf, sim-xai, sim-bfl, sim-fireworks, sim-replicate, sim-bedrock]
  - {{id: limited-python, key: {LIMITED_PY_KEY}, rate_limit: {{requests: 2, per: 1h}}}}
  - {{id: limited-node, key: {LIMITED_NODE_KEY}, rate_limit: {{requests: 2, per: 1h}}}}
  - {{id: no-budget, key: {BROKE_KEY}, budget: {{max_usd: 0, period: 1d}}}}
"""

    def limits_yaml(self) -> str:
        if not self.limits:
            return ""
        return "limits:\n" + "".join(f"  {k}: {v}\n" for k, v in self.limits.items())

    def jwks_file(self) -> Path:
        """A JWKS holding the public half of a fresh RSA key (kid `sdk-1`), which
        `jwt_rsa_key` keeps for signing."""
        import jwt
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.jwt_rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.jwt_rsa_key.public_key()))
        jwk.update(kid="sdk-1", alg="RS256", use="sig")
        path = self.workdir / "jwks.json"
        path.write_text(json.dumps({"keys": [jwk]}))
        return path

    def service_account_file(self) -> Path:
        """The test service account (tests/fixtures) with its token_uri pointed at the
        simulator's fake OAuth endpoint."""
        key = json.loads((REPO / "tests/fixtures/service-account.json").read_text())
        key["token_uri"] = f"http://127.0.0.1:{self.sim_port}/token"
        path = self.workdir / "service-account.json"
        path.write_text(json.dumps(key))
        return path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.log_path, "wb")
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"), REFRACT_TEST_JWT_SECRET=JWT_SECRET)
        self.proc = subprocess.Popen(
            [str(refract_bin()), "-c", str(self.config_path)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"refract exited with {self.proc.returncode} at startup:\n{self.log()}")
            try:
                status, _ = http_get(f"{self.base_url}/health", timeout=1.0)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"refract did not answer /health within {timeout}s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.mock.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "Gateway":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def decode_png(b64: str):
    """Decodes a base64 PNG answer with Pillow, asserting it really is a PNG."""
    import base64
    import io

    from PIL import Image

    raw = base64.b64decode(b64)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n"), "the answer is not a PNG"
    img = Image.open(io.BytesIO(raw))
    img.load()
    assert img.format == "PNG"
    return img

"""Runs schemathesis (property-based tests from the seed OpenAPI,
/work/shared/spec/bifrost-images-edits.openapi.yaml, copied here as the test's own input) against
a refract process on free ports with the simulator behind every provider kind (the SDK tests'
harness), for SECONDS (default 60), and exits non-zero when it finds anything.

    .venv/bin/python tests/schema/check.py 300     # the 5-minute run of issue 12

Checks: schemathesis' defaults, with two changes:
- `positive_data_acceptance` (ST202: "a schema-valid request must be accepted") is left out:
  the seed schema cannot say what the gateway rightly refuses, e.g. a `model` naming no
  configured provider, an `image` that is not a PNG, JPEG or WebP, or an `n` the model cannot
  make, all of which are schema-valid strings and numbers.
- `status_code_conformance` (ST103) is replaced by hooks.py's `documented_status_or_auth_refusal`:
  the documented 200, 400 and 500, plus the 401 that the seed's own security requirement
  implies for a request without a valid key (the seed documents no 401).
Every other check runs: no 5xx, content types and headers, error bodies that conform to
`BifrostError`, successful answers that conform to the 200 schema, 405 with `Allow` for other
methods, a missing or wrong key refused, schema-invalid requests refused.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "sdk"))

from harness import SIM_PROVIDER_KEY, VIRTUAL_KEY, Gateway  # noqa: E402

SPEC = HERE / "bifrost-images-edits.openapi.yaml"


class SchemaGateway(Gateway):
    """The harness's gateway with one provider of each kind the seed schema's `ModelProvider`
    enum names, each called by its kind (answers carry the provider's configured name in
    `extra_fields.provider`, which the schema restricts to that enum), all in front of the
    simulator. Stability and BFL are not in the enum, so they are left out."""

    def config_yaml(self) -> str:
        sim = f"http://127.0.0.1:{self.sim_port}"
        key = f"keys: [{{name: k, value: {SIM_PROVIDER_KEY}}}]"
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
simulator:
  address: 127.0.0.1:{self.sim_port}
providers:
  - {{name: openai, kind: openai, base_url: {sim}/v1, {key}}}
  - name: azure
    kind: azure
    base_url: {sim}
    deployments: {{sim-image-1: sim-image-deploy}}
    {key}
  - {{name: gemini, kind: gemini, base_url: {sim}/v1beta, {key}}}
  - name: vertex
    kind: vertex
    project: refract-test
    location: us-central1
    base_url: {sim}/v1
    keys: [{{name: sa, service_account_file: {self.service_account_file()}}}]
  - name: bedrock
    kind: bedrock
    region: us-east-1
    base_url: {sim}
    keys: [{{name: iam, aws_access_key_id: AKIDSIMULATOR, aws_secret_access_key: {SIM_PROVIDER_KEY}}}]
  - {{name: huggingface, kind: huggingface, base_url: {sim}, {key}}}
  - {{name: xai, kind: xai, base_url: {sim}/v1, {key}}}
  - {{name: fireworks, kind: fireworks, base_url: {sim}/inference/v1, poll_interval_ms: 20, {key}}}
  - {{name: replicate, kind: replicate, base_url: {sim}/v1, poll_interval_ms: 20, {key}}}
virtual_keys:
  - id: test
    key: {VIRTUAL_KEY}
"""


def main() -> int:
    seconds = sys.argv[1] if len(sys.argv) > 1 else "60"
    schemathesis = Path(sys.executable).parent / "schemathesis"
    env = dict(os.environ, SCHEMATHESIS_HOOKS="hooks", PYTHONPATH=str(HERE))
    with SchemaGateway() as gw:
        # The virtual key as the schema's own VirtualKeyAuth scheme (x-bf-vk), so that the
        # checks that send no or a wrong key can leave it out.
        config = gw.workdir / "schemathesis.toml"
        config.write_text(f'[auth.openapi.VirtualKeyAuth]\napi_key = "{VIRTUAL_KEY}"\n')
        cmd = [
            str(schemathesis),
            "--config-file",
            str(config),
            "run",
            str(SPEC),
            "--url",
            gw.base_url,
            "--max-time",
            seconds,
            "--exclude-checks",
            "positive_data_acceptance,status_code_conformance",
            "--continue-on-failure",
            "--request-timeout",
            "30",
            "--workers",
            "2",
            "--no-color",
        ]
        print("schemacheck:", " ".join(cmd), file=sys.stderr)
        rc = subprocess.run(cmd, env=env, cwd=HERE).returncode
        if gw.proc is not None and gw.proc.poll() is not None:
            print("schemacheck: the gateway exited during the run", file=sys.stderr)
            return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())

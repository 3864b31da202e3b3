"""Attacks by another process on the same host against the session's stack: every one
must be refused without the stack's credentials, and nothing may be lost by trying.

SeaweedFS's own ports are attacked in detail in test_seaweedfs.py; here every listening
port of every stack process gets a request without credentials, and the Prefect and
MLflow attacks measured on the unprotected stack are repeated.
"""

from __future__ import annotations

import base64
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from infra import process
from infra.stack import ALL_SERVICES
from mlsys.settings import Settings

pytestmark = pytest.mark.integration

# What answers without a credential, by design: health probes with an empty body (the
# S3 gateway's /status) and the Prefect UI's static single-page app (its data comes from
# the API, which asks for the credential).
PROBES = {"/status", "/healthz"}


def _basic(user_pass: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_pass.encode()).decode()}


def stack_ports(stack: Settings) -> dict[int, str]:
    """Every TCP port a process of the stack listens on, named by its service."""
    ports: dict[int, str] = {}
    for name in ALL_SERVICES:
        record = process.read_record(stack.stack_dir, name)
        if record is None:
            continue
        for pid in process.family_pids(record):
            try:
                conns = psutil.Process(pid).net_connections(kind="tcp")
            except psutil.Error:
                continue
            for conn in conns:
                if conn.status == psutil.CONN_LISTEN:
                    ports[conn.laddr.port] = name
    return ports


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


def test_every_listening_port_refuses_requests_without_a_credential(
    serving_stack: Settings, client: httpx.Client
) -> None:
    stack = serving_stack
    ports = stack_ports(stack)
    assert {"seaweedfs", "mlflow", "prefect-server", "serve"} <= set(ports.values()), ports
    assert all(stack.host == "127.0.0.1" for _ in ports)
    paths = ["/", "/api/2.0/mlflow/registered-models/search", "/api/deployments/filter",
             f"/buckets/{stack.bucket}/", f"/{stack.bucket}/", "/dir/status",
             "/cluster/status", "/status"]  # fmt: skip
    served: list[str] = []
    for port, service in sorted(ports.items()):
        for path in paths:
            for method, headers in (("GET", {}), ("POST", {}), ("GET", _basic("mlsys:wrong"))):
                try:
                    r = client.request(method, f"http://{stack.host}:{port}{path}", headers=headers)
                except httpx.HTTPError:
                    continue  # not HTTP (gRPC, TLS): serves nothing to this client
                if r.status_code >= 300 or (path in PROBES and not r.content.strip()):
                    continue
                if service == "prefect-server" and not path.startswith("/api"):
                    assert "<html" in r.text.lower(), f"{port}{path}: not the UI's static page"
                    continue
                served.append(f"{service} port {port} {method} {path} -> {r.status_code}")
    assert not served, "answered without a credential:\n" + "\n".join(served)


def test_prefect_api_refuses_a_deployment_without_the_credential(
    stack: Settings, client: httpx.Client
) -> None:
    """The attack that ran a shell command as the worker's user: a deployment created over
    REST on the stack's pool with a ``run_shell_script`` pull step."""
    api = stack.api_url
    flows = client.post(f"{api}/flows/filter", json={})
    assert flows.status_code == 401
    evil = {
        "name": "evil",
        "flow_id": "00000000-0000-0000-0000-000000000000",
        "work_pool_name": stack.work_pool,
        "pull_steps": [
            {"prefect.deployments.steps.run_shell_script": {"script": "touch /tmp/pwned"}}
        ],
    }
    for headers in ({}, _basic("mlsys:wrong"), {"Authorization": "Bearer x"}):
        r = client.post(f"{api}/deployments/", json=evil, headers=headers)
        assert r.status_code == 401, (headers, r.status_code)
        r = client.post(f"{api}/flow_runs/filter", json={}, headers=headers)
        assert r.status_code == 401
    names = client.post(
        f"{api}/deployments/filter", json={}, headers=stack.prefect_headers()
    ).json()
    assert "evil" not in {d["name"] for d in names}
    assert client.get(f"{api}/health").status_code == 200  # the probe stays open


def test_prefect_refuses_a_foreign_host_and_a_foreign_origin(
    stack: Settings, client: httpx.Client
) -> None:
    api = stack.api_url
    rebound = client.get(f"{api}/health", headers={"Host": "attacker.example"})
    assert rebound.status_code == 400
    preflight = {"Access-Control-Request-Method": "POST"}
    foreign = client.options(
        f"{api}/flow_runs/filter", headers={**preflight, "Origin": "http://attacker.example"}
    )
    assert foreign.headers.get("access-control-allow-origin") in (None, "")
    assert foreign.status_code >= 400
    own = client.options(f"{api}/flow_runs/filter", headers={**preflight, "Origin": stack.ui_url})
    assert own.headers.get("access-control-allow-origin") == stack.ui_url


def test_mlflow_refuses_reads_and_deletes_without_the_credential(
    stack: Settings, client: httpx.Client
) -> None:
    from mlflow.tracking import MlflowClient

    auth = stack.mlflow_auth()
    assert auth is not None and auth[1] not in ("password", "password1234", "")
    name = "security-probe-model"
    owner = MlflowClient(tracking_uri=stack.tracking_uri)
    os.environ.update({"MLFLOW_TRACKING_USERNAME": auth[0], "MLFLOW_TRACKING_PASSWORD": auth[1]})
    try:
        owner.create_registered_model(name)
    except Exception as exc:  # left from an earlier attempt in this session
        assert "already exists" in str(exc), exc
    api = f"{stack.tracking_uri}/api/2.0/mlflow"
    for creds in (None, ("admin", "password1234"), (auth[0], "wrong")):
        r = client.request("DELETE", f"{api}/registered-models/delete", json={"name": name},
                           auth=creds)  # fmt: skip
        assert r.status_code in (401, 403), (creds, r.status_code)
        r = client.get(f"{api}/registered-models/search", auth=creds)
        assert r.status_code in (401, 403)
        r = client.get(f"{stack.tracking_uri}/api/2.0/mlflow-artifacts/artifacts", auth=creds)
        assert r.status_code in (401, 403)
    assert client.get(f"{api}/registered-models/get", params={"name": name}, auth=auth).is_success
    rebound = client.get(
        f"{api}/registered-models/search", headers={"Host": "attacker.example"}, auth=auth
    )
    assert rebound.status_code in (400, 403)
    assert client.get(f"{stack.tracking_uri}/health").status_code == 200


def test_no_file_of_the_stack_is_open_to_other_users(stack: Settings) -> None:
    """The stack folder is 0700 (nobody else can even look inside) and what the stack
    writes is its owner's only (umask 077). One exception: SeaweedFS writes its volume
    info files (``*.vif``) with mode 0644 whatever the umask; they stay out of reach
    because every folder above them is private, which is checked here too."""
    root = stack.stack_dir
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    open_to_others = []
    for folder, dirs, files in os.walk(root):
        for entry in [*dirs, *files]:
            path = Path(folder) / entry
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode) or not mode & 0o077:
                continue
            if path.suffix == ".vif" and stat.S_ISREG(mode):
                parents = [p for p in path.parents if p == root or root in p.parents]
                assert all(stat.S_IMODE(p.stat().st_mode) & 0o077 == 0 for p in parents), path
                continue
            open_to_others.append(f"{oct(stat.S_IMODE(mode))} {path.relative_to(root)}")
    assert not open_to_others, "\n".join(open_to_others[:20])
    assert any((root / "seaweedfs").rglob("*")), "the check saw SeaweedFS's files"


def test_model_server_refuses_every_call_without_its_key(
    serving_stack: Settings, client: httpx.Client
) -> None:
    """Scoring, metrics and the reload that swaps models all need the generated key; only
    the probes answer without it."""
    url = serving_stack.serving_url
    assert serving_stack.serve_key is not None
    row = {"dataframe_split": {"columns": ["text"], "data": [["hello"]]}}
    for headers in ({}, {"Authorization": "Bearer wrong"}, _basic("mlsys:wrong")):
        assert client.post(f"{url}/invocations", json=row, headers=headers).status_code == 401
        assert client.post(f"{url}/admin/reload", headers=headers).status_code == 401
        assert client.get(f"{url}/metrics", headers=headers).status_code == 401
    assert client.get(f"{url}/ping").status_code == 200
    key = {"Authorization": f"Bearer {serving_stack.serve_key.get_secret_value()}"}
    assert client.get(f"{url}/metrics", headers=key).status_code == 200

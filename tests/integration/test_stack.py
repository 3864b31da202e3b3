"""The local stack against real services: S3 auth, MLflow artifact proxy, idempotent up."""

from __future__ import annotations

import stat
import uuid

import boto3
import botocore
import httpx
import pytest
from botocore.config import Config
from mlflow.tracking import MlflowClient

from infra import process
from infra.stack import status, up
from mlsys.data.s3 import list_keys
from mlsys.settings import Settings

pytestmark = pytest.mark.integration


def _client(settings: Settings, key: str | None, secret: str | None, unsigned: bool = False):
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    if unsigned:
        config = config.merge(Config(signature_version=botocore.UNSIGNED))
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=config,
    )


def test_bucket_exists_and_keys_work(stack: Settings) -> None:
    s3 = stack.s3_client()
    assert stack.bucket in {b["Name"] for b in s3.list_buckets()["Buckets"]}
    s3.put_object(Bucket=stack.bucket, Key="probe/ok.txt", Body=b"ok")
    assert s3.get_object(Bucket=stack.bucket, Key="probe/ok.txt")["Body"].read() == b"ok"


def test_unsigned_request_is_refused(stack: Settings) -> None:
    stack.s3_client().put_object(Bucket=stack.bucket, Key="probe/secret.txt", Body=b"x")
    anonymous = _client(stack, None, None, unsigned=True)
    with pytest.raises(botocore.exceptions.ClientError) as err:
        anonymous.get_object(Bucket=stack.bucket, Key="probe/secret.txt")
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(botocore.exceptions.ClientError):
        anonymous.put_object(Bucket=stack.bucket, Key="probe/anon.txt", Body=b"x")
    # And plain HTTP without any signature, as curl would send it.
    response = httpx.get(f"{stack.s3_endpoint}/{stack.bucket}/probe/secret.txt")
    assert response.status_code == 403


def test_wrong_key_is_refused(stack: Settings) -> None:
    assert stack.s3_access_key is not None
    wrong = _client(stack, stack.s3_access_key.get_secret_value(), "not-the-secret")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        wrong.list_objects_v2(Bucket=stack.bucket)
    assert err.value.response["Error"]["Code"] in {"SignatureDoesNotMatch", "AccessDenied"}
    unknown = _client(stack, "AKNOBODY", "whatever")
    with pytest.raises(botocore.exceptions.ClientError) as err:
        unknown.list_objects_v2(Bucket=stack.bucket)
    assert err.value.response["Error"]["Code"] in {"InvalidAccessKeyId", "AccessDenied"}


def test_key_files_are_private(stack: Settings) -> None:
    for name in ("credentials.json", "seaweedfs-s3.json", "env"):
        mode = stat.S_IMODE((stack.stack_dir / name).stat().st_mode)
        assert mode == 0o600, f"{name} has mode {oct(mode)}"


def test_mlflow_artifacts_land_in_s3(stack: Settings) -> None:
    client = MlflowClient(tracking_uri=stack.tracking_uri)
    exp = client.create_experiment(f"artifact-probe-{uuid.uuid4().hex[:8]}")
    run = client.create_run(exp)
    client.log_dict(run.info.run_id, {"hello": "s3"}, "probe/hello.json")
    # Every page of the listing: the session's other tests leave more than one page of
    # artifacts there.
    keys = [k for _, k in list_keys(stack.s3_client(), stack.bucket, "mlflow-artifacts/")]
    wanted = f"{run.info.run_id}/artifacts/probe/hello.json"
    assert any(k.endswith(wanted) for k in keys), f"{wanted} not among {len(keys)} keys"


def test_up_is_idempotent(stack: Settings) -> None:
    before = {r.name: r.pid for r in status(stack)}
    assert all(before.values()), before
    up(stack, timeout_s=60, say=lambda line: None)
    after = {r.name: r.pid for r in status(stack)}
    assert after == before
    assert all(r.healthy for r in status(stack))


def test_services_bind_loopback_only(stack: Settings) -> None:
    import psutil

    pids = set()
    for name in ("seaweedfs", "mlflow", "prefect-server"):
        record = process.read_record(stack.stack_dir, name)
        assert record is not None
        leader = psutil.Process(record.pid)
        pids |= {leader.pid, *(c.pid for c in leader.children(recursive=True))}
    listening = [
        c for c in psutil.net_connections("inet") if c.status == "LISTEN" and c.pid in pids
    ]
    assert listening
    assert {c.laddr.ip for c in listening} == {"127.0.0.1"}

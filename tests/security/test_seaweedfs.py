"""The stack's SeaweedFS serves S3 with the stack's keys and nothing to anyone without them.

One SeaweedFS (`weed mini`) on free ports for the module. Every TCP port and Unix
socket the process listens on is found with psutil (so a port nobody told us about is
attacked too) and tried without a credential, with wrong ones and, as a control, with
the stack's own; after each attack the objects are still there, unchanged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import os
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import botocore
import grpc
import httpx
import psutil
import pytest
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

from infra import process
from infra.config import StackSettings
from infra.seaweed import CERT_NAME, GO_MEMORY_LIMIT, JWT_SECTIONS, SeaweedFS
from infra.stack import down, ensure_bucket, ensure_credentials, start_service
from infra.tls import CertKey, ensure_pki
from tests.conftest import stack_settings

pytestmark = pytest.mark.integration

TIMEOUT = 30.0
START_TIMEOUT_S = 180.0
FILER_LOOKUP = "/filer_pb.SeaweedFiler/LookupDirectoryEntry"
# gRPC methods tried on every port without TLS; any of them answering is a finding.
GRPC_PROBES = (
    "/master_pb.Seaweed/GetMasterConfiguration",
    "/filer_pb.SeaweedFiler/GetFilerConfiguration",
    "/volume_server_pb.VolumeServer/VolumeServerStatus",
)


@dataclass
class Weed:
    settings: StackSettings
    service: SeaweedFS
    key: str  # a small object (one chunk) with its bytes
    data: bytes
    big_key: str  # a multipart object
    big_data: bytes
    foreign: CertKey  # a certificate with the right name from another CA

    @property
    def host(self) -> str:
        return self.settings.host

    @property
    def bucket(self) -> str:
        return self.settings.bucket

    @property
    def ca(self) -> Path:
        return self.service.pki().ca

    @property
    def cert(self) -> CertKey:
        return self.service.client_cert()

    def record(self) -> process.ProcessRecord:
        record = process.read_record(self.settings.stack_dir, "seaweedfs")
        assert record is not None and record.alive()
        return record


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Weed]:
    settings = ensure_credentials(stack_settings(tmp_path_factory.mktemp("weed")))
    service = SeaweedFS(settings)
    foreign = ensure_pki(tmp_path_factory.mktemp("foreign-ca"), [CERT_NAME], [settings.host])
    try:
        start_service(service, START_TIMEOUT_S, lambda line: None)
        ensure_bucket(settings)
        s3 = settings.s3_client()
        data = os.urandom(100_000)
        s3.put_object(Bucket=settings.bucket, Key="raw/part-0.parquet", Body=data)
        big = os.urandom(11 * 1024 * 1024)
        s3.upload_fileobj(io.BytesIO(big), settings.bucket, "raw/big.bin", Config=_MULTIPART)
        yield Weed(
            settings,
            service,
            "raw/part-0.parquet",
            data,
            "raw/big.bin",
            big,
            foreign.leaves[CERT_NAME],
        )
    finally:
        down(settings, say=lambda line: None)


_MULTIPART = TransferConfig(
    multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024
)


# ---- helpers ---------------------------------------------------------------------
def _assert_intact(weed: Weed) -> None:
    """Both objects are still there, byte for byte, and nothing else was added."""
    s3 = weed.settings.s3_client()
    assert s3.get_object(Bucket=weed.bucket, Key=weed.key)["Body"].read() == weed.data
    out = io.BytesIO()
    s3.download_fileobj(weed.bucket, weed.big_key, out)
    assert out.getvalue() == weed.big_data
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=weed.bucket, Prefix="raw/")["Contents"]}
    assert keys == {weed.key, weed.big_key}


def _tls(weed: Weed, cert: CertKey | None) -> ssl.SSLContext:
    """A client context trusting the stack's CA, presenting ``cert`` if given."""
    ctx = ssl.create_default_context(cafile=str(weed.ca))
    if cert is not None:
        ctx.load_cert_chain(str(cert.cert), str(cert.key))
    return ctx


def _grpc_creds(weed: Weed, cert: CertKey | None) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(
        root_certificates=weed.ca.read_bytes(),
        private_key=cert.key.read_bytes() if cert else None,
        certificate_chain=cert.cert.read_bytes() if cert else None,
    )


def _grpc_call(
    target: str, method: str, request: bytes = b"", creds: grpc.ChannelCredentials | None = None
) -> bytes:
    channel = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    with channel:
        call = channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        return call(request, timeout=TIMEOUT)  # type: ignore[no-any-return]


def _request(
    method: str, url: str, verify: ssl.SSLContext | bool = True, **kw: Any
) -> httpx.Response | None:
    """The response, or None when the connection or the TLS handshake failed."""
    try:
        return httpx.request(method, url, timeout=TIMEOUT, verify=verify, **kw)
    except httpx.TransportError:
        return None


def _refused_plain(response: httpx.Response | None) -> bool:
    """A plain-HTTP request to a TLS-only port: no answer, or Go's 'use HTTPS' 400 (with
    no body for a HEAD)."""
    if response is None:
        return True
    said = b"HTTP request to an HTTPS server" in response.content
    head = response.request.method == "HEAD" and not response.content
    return response.status_code == 400 and (said or head)


def _tcp_listeners(record: process.ProcessRecord) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    proc = psutil.Process(record.pid)
    for member in [proc, *proc.children(recursive=True)]:
        for conn in member.net_connections(kind="inet"):
            if conn.status == psutil.CONN_LISTEN:
                found.add((conn.laddr.ip, conn.laddr.port))
    return found


def _unix_sockets(record: process.ProcessRecord) -> set[str]:
    found: set[str] = set()
    proc = psutil.Process(record.pid)
    for member in [proc, *proc.children(recursive=True)]:
        for conn in member.net_connections(kind="unix"):
            if isinstance(conn.laddr, str) and conn.laddr and os.path.exists(conn.laddr):
                found.add(conn.laddr)
    return found


def _internal_ports(weed: Weed) -> list[int]:
    """Every TCP port of the process but S3's (at least the ones we configured)."""
    ports = {port for _, port in _tcp_listeners(weed.record())}
    configured = set(weed.service.ports().values())
    assert configured <= ports, f"configured ports not listening: {configured - ports}"
    return sorted(ports - {weed.settings.s3_port})


# -- protobuf, by hand: enough of filer_pb to find an object's chunks ---------------
def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _pb_string(field: int, value: str) -> bytes:
    raw = value.encode()
    return _varint(field << 3 | 2) + _varint(len(raw)) + raw


def _pb_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    fields: list[tuple[int, int | bytes]] = []
    i = 0
    while i < len(data):
        key, i = _read_varint(data, i)
        number, wire = key >> 3, key & 7
        value: int | bytes
        if wire == 0:
            value, i = _read_varint(data, i)
        elif wire == 1:
            value, i = data[i : i + 8], i + 8
        elif wire == 2:
            size, i = _read_varint(data, i)
            value, i = data[i : i + size], i + size
        elif wire == 5:
            value, i = data[i : i + 4], i + 4
        else:
            raise ValueError(f"unexpected protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _file_ids(weed: Weed, key: str) -> list[str]:
    """The volume file ids of an S3 object's chunks, asked of the filer over mTLS gRPC."""
    directory, _, name = f"/buckets/{weed.bucket}/{key}".rpartition("/")
    request = _pb_string(1, directory) + _pb_string(2, name)
    target = f"{weed.host}:{weed.settings.weed_filer_port + weed.settings.weed_grpc_offset}"
    response = _grpc_call(target, FILER_LOOKUP, request, _grpc_creds(weed, weed.cert))
    entry = next(v for n, v in _pb_fields(response) if n == 1)
    assert isinstance(entry, bytes)
    fids = []
    for number, chunk in _pb_fields(entry):
        if number != 3:
            continue
        assert isinstance(chunk, bytes)
        fid = next((v for n, v in _pb_fields(chunk) if n == 1), b"")
        assert isinstance(fid, bytes) and fid, "chunk without a file id"
        fids.append(fid.decode())
    return fids


def _forged_jwt(fid: str) -> str:
    """A volume-server JWT for ``fid`` signed with a key that is not the stack's."""

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"exp": int(time.time()) + 300, "fid": fid}).encode())
    signature = hmac.new(os.urandom(32), header + b"." + claims, hashlib.sha256).digest()
    return (header + b"." + claims + b"." + b64(signature)).decode()


# ---- without a running SeaweedFS ------------------------------------------------------
def test_secrets_are_made_once_private_and_kept(tmp_path: Path) -> None:
    settings = ensure_credentials(stack_settings(tmp_path / "stack"))
    service = SeaweedFS(settings)
    service.prepare()
    folder = service.security_dir
    files = sorted(p for p in folder.iterdir())
    assert {p.name for p in files} >= {"ca.crt", "ca.key", "jwt.json", "security.toml"}
    assert folder.stat().st_mode & 0o777 == 0o700
    for path in [*files, service.s3_config]:
        assert path.stat().st_mode & 0o777 == 0o600, path
    before = {p.name: p.read_bytes() for p in files}
    keys = json.loads((folder / "jwt.json").read_text())
    assert set(keys) == set(JWT_SECTIONS) and len(set(keys.values())) == len(JWT_SECTIONS)

    service.prepare()  # a restart: same keys, same CA, same certificate
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    (folder / f"{CERT_NAME}.key").unlink()  # only what is missing is made again
    service.prepare()
    after = {p.name: p.read_bytes() for p in folder.iterdir()}
    assert after["ca.crt"] == before["ca.crt"] and after["jwt.json"] == before["jwt.json"]
    assert after[f"{CERT_NAME}.crt"] != before[f"{CERT_NAME}.crt"]

    # No secret on the command line or in the environment weed gets.
    secrets = [
        *keys.values(),
        (folder / "ca.key").read_text(),
        (folder / f"{CERT_NAME}.key").read_text(),
    ]
    assert settings.s3_secret_key is not None
    secrets.append(settings.s3_secret_key.get_secret_value())
    exposed = " ".join(service.argv()) + " ".join(f"{k}={v}" for k, v in service.env().items())
    assert not [s for s in secrets if str(s) in exposed]
    assert not [k for k in service.env() if k.startswith(("AWS_", "WEED_", "MLSYS_S3"))]


def test_weed_runs_under_go_s_memory_limit_unless_the_caller_set_one(
    weed: Weed, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = process.read_record(weed.settings.stack_dir, weed.service.name)
    assert record is not None and record.alive()
    assert psutil.Process(record.pid).environ().get("GOMEMLIMIT") == GO_MEMORY_LIMIT
    monkeypatch.setenv("GOMEMLIMIT", "2GiB")
    assert weed.service.env()["GOMEMLIMIT"] == "2GiB"


# ---- S3: the one port for clients -------------------------------------------------------
def _s3(weed: Weed, key: str | None, secret: str | None, unsigned: bool = False) -> Any:
    config = Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1})
    if unsigned:
        config = config.merge(Config(signature_version=botocore.UNSIGNED))
    return boto3.client(
        "s3",
        endpoint_url=weed.settings.s3_endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name=weed.settings.s3_region,
        config=config,
    )


def test_s3_with_the_stack_keys_works(weed: Weed) -> None:
    s3 = weed.settings.s3_client()
    key = f"probe/{uuid.uuid4().hex}.txt"
    s3.put_object(Bucket=weed.bucket, Key=key, Body=b"hello")
    assert s3.get_object(Bucket=weed.bucket, Key=key)["Body"].read() == b"hello"
    listed = {o["Key"] for o in s3.list_objects_v2(Bucket=weed.bucket, Prefix="probe/")["Contents"]}
    assert key in listed
    copy = f"{key}.copy"
    s3.copy_object(Bucket=weed.bucket, Key=copy, CopySource={"Bucket": weed.bucket, "Key": key})
    assert s3.get_object(Bucket=weed.bucket, Key=copy)["Body"].read() == b"hello"
    s3.delete_object(Bucket=weed.bucket, Key=key)
    s3.delete_objects(Bucket=weed.bucket, Delete={"Objects": [{"Key": copy}]})
    assert "Contents" not in s3.list_objects_v2(Bucket=weed.bucket, Prefix="probe/")
    _assert_intact(weed)  # the multipart object too


def test_s3_refuses_unsigned_and_wrongly_signed_requests(weed: Weed) -> None:
    s3_url = f"{weed.settings.s3_endpoint}/{weed.bucket}"
    plain: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"{weed.settings.s3_endpoint}/", {}),
        ("GET", f"{s3_url}?list-type=2", {}),
        ("GET", f"{s3_url}/{weed.key}", {}),
        ("HEAD", f"{s3_url}/{weed.key}", {}),
        ("PUT", f"{s3_url}/{weed.key}", {"content": b"evil"}),
        ("PUT", f"{s3_url}/raw/evil.parquet", {"content": b"evil"}),
        ("DELETE", f"{s3_url}/{weed.key}", {}),
        ("DELETE", f"{s3_url}/{weed.big_key}", {}),
        ("DELETE", s3_url, {}),
        ("POST", f"{s3_url}?delete", {"content": _delete_xml(weed.key)}),
    ]
    for method, url, kw in plain:
        response = httpx.request(method, url, timeout=TIMEOUT, **kw)
        assert response.status_code == 403, (method, url, response.status_code)
        assert weed.data[:64] not in response.content
    assert weed.settings.s3_access_key is not None
    access = weed.settings.s3_access_key.get_secret_value()
    clients = {
        "unsigned": _s3(weed, None, None, unsigned=True),
        "wrong secret": _s3(weed, access, "not-the-secret-" + uuid.uuid4().hex),
        "unknown key": _s3(weed, "MLSYS" + uuid.uuid4().hex[:16].upper(), uuid.uuid4().hex),
    }
    for name, client in clients.items():
        b, key = weed.bucket, weed.key
        calls: list[tuple[str, dict[str, Any]]] = [
            ("list_buckets", {}),
            ("list_objects_v2", {"Bucket": b}),
            ("get_object", {"Bucket": b, "Key": key}),
            ("head_object", {"Bucket": b, "Key": key}),
            ("put_object", {"Bucket": b, "Key": key, "Body": b"evil"}),
            ("put_object", {"Bucket": b, "Key": "raw/evil", "Body": b"evil"}),
            ("delete_object", {"Bucket": b, "Key": key}),
            ("delete_objects", {"Bucket": b, "Delete": {"Objects": [{"Key": weed.big_key}]}}),
            ("delete_bucket", {"Bucket": b}),
            ("create_bucket", {"Bucket": f"evil-{uuid.uuid4().hex[:8]}"}),
        ]
        for operation, params in calls:
            with pytest.raises(botocore.exceptions.ClientError):
                getattr(client, operation)(**params)
                pytest.fail(f"{name} client was served: {operation}")
    # A presigned URL signed with the wrong secret.
    url = clients["wrong secret"].generate_presigned_url(
        "get_object", Params={"Bucket": weed.bucket, "Key": weed.key}, ExpiresIn=300
    )
    assert httpx.get(url, timeout=TIMEOUT).status_code == 403
    assert weed.settings.s3_client().list_buckets()["Buckets"]  # the right keys still work
    _assert_intact(weed)


def _delete_xml(key: str) -> bytes:
    return f"<Delete><Object><Key>{key}</Key></Object></Delete>".encode()


# ---- every other port ---------------------------------------------------------------
def test_listens_only_on_the_stack_host(weed: Weed) -> None:
    listeners = _tcp_listeners(weed.record())
    assert listeners, "psutil found no listening port of the SeaweedFS process"
    assert {ip for ip, _ in listeners} == {weed.host}


def test_every_other_port_needs_the_stack_client_certificate(weed: Weed) -> None:
    """Plain HTTP, plain gRPC (h2c), TLS without a certificate and TLS with a certificate
    of another CA all fail on every port but S3's; the stack's certificate opens each."""
    no_cert, foreign, good = _tls(weed, None), _tls(weed, weed.foreign), _tls(weed, weed.cert)
    grpc_foreign, grpc_good = _grpc_creds(weed, weed.foreign), _grpc_creds(weed, weed.cert)
    findings: list[str] = []
    for port in _internal_ports(weed):
        base = f"{weed.host}:{port}"
        for method in ("GET", "POST", "DELETE"):
            response = _request(method, f"http://{base}/")
            if not _refused_plain(response):
                findings.append(f"{port}: plain {method} / -> {response}")
        for name, ctx in (("no certificate", no_cert), ("foreign certificate", foreign)):
            response = _request("GET", f"https://{base}/", verify=ctx)
            if response is not None:
                findings.append(f"{port}: HTTPS with {name} -> {response.status_code}")
        for probe in GRPC_PROBES:
            for name, creds in (("plaintext", None), ("foreign certificate", grpc_foreign)):
                try:
                    _grpc_call(base, probe, creds=creds)
                    findings.append(f"{port}: gRPC {name} {probe} answered")
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        findings.append(f"{port}: gRPC {name} {probe} -> {err.code()}")
        # Control: the stack's certificate gets through (HTTPS or gRPC), so the
        # refusals above are the certificate's doing, not a dead port.
        if _request("GET", f"https://{base}/", verify=good) is None:
            try:
                _grpc_call(base, "/no.Such/Method", creds=grpc_good)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    findings.append(f"{port}: not even the stack's certificate gets through")
    assert not findings, "\n".join(findings)
    _assert_intact(weed)


def test_filer_refuses_reads_writes_and_deletes_of_real_objects(weed: Weed) -> None:
    filer = f"{weed.host}:{weed.settings.weed_filer_port}"
    paths = [f"/buckets/{weed.bucket}/{weed.key}", f"/buckets/{weed.bucket}/{weed.big_key}"]
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", p, {}) for p in [*paths, f"/buckets/{weed.bucket}/raw/", "/buckets/"]
    ]
    attempts += [("POST", p, {"files": {"file": ("x.parquet", b"evil")}}) for p in paths]
    attempts += [("POST", f"/buckets/{weed.bucket}/raw/evil.parquet", {"files": {"f": b"evil"}})]
    attempts += [("PUT", paths[0], {"content": b"evil"})]
    attempts += [("DELETE", p, {}) for p in paths]
    attempts += [("DELETE", f"/buckets/{weed.bucket}?recursive=true", {})]
    _attack_http(weed, filer, attempts)
    # Even with the stack's certificate the filer has no HTTP API (-disableHttp).
    for method, path, kw in attempts:
        response = _request(method, f"https://{filer}{path}", verify=_tls(weed, weed.cert), **kw)
        assert response is not None and response.status_code == 404, (method, path)
    _assert_intact(weed)


def test_master_refuses_assign_lookup_grow_delete_and_status(weed: Weed) -> None:
    master = f"{weed.host}:{weed.settings.weed_master_port}"
    fid = _file_ids(weed, weed.key)[0]
    volume_id = fid.split(",")[0]
    b = weed.bucket
    commands = [
        "/dir/assign",
        f"/dir/assign?collection={b}",
        f"/dir/lookup?volumeId={volume_id}",
        f"/dir/lookup?fileId={fid}",
        "/vol/grow?count=1",
        f"/vol/grow?count=1&collection={b}",
        f"/col/delete?collection={b}",
        "/col/delete?collection=",
        "/vol/vacuum?garbageThreshold=0.0001",
        "/cluster/status",
        "/cluster/healthz",
        "/dir/status",
        "/vol/status",
        "/",
        f"/{fid}",
    ]
    attempts: list[tuple[str, str, dict[str, Any]]] = [
        (m, c, {}) for c in commands for m in ("GET", "POST")
    ]
    attempts += [("POST", "/submit", {"files": {"file": ("x", b"evil")}})]
    _attack_http(weed, master, attempts)
    # Control: with the certificate the master answers, but runs no command.
    good = _tls(weed, weed.cert)
    response = _request("GET", f"https://{master}/cluster/status", verify=good)
    assert response is not None and response.status_code == 200
    for command in ("/dir/assign", f"/col/delete?collection={b}", "/vol/grow?count=1"):
        response = _request("GET", f"https://{master}{command}", verify=good)
        assert response is not None and response.status_code == 404, command
    _assert_intact(weed)


def test_volume_refuses_real_file_ids_without_certificate_and_jwt(weed: Weed) -> None:
    volume = f"{weed.host}:{weed.settings.weed_volume_port}"
    fids = _file_ids(weed, weed.key) + _file_ids(weed, weed.big_key)
    assert fids
    attempts: list[tuple[str, str, dict[str, Any]]] = []
    for fid in fids[:3]:
        attempts += [("GET", f"/{fid}", {}), ("HEAD", f"/{fid}", {}), ("DELETE", f"/{fid}", {})]
        attempts += [("POST", f"/{fid}", {"files": {"file": ("x", b"evil")}})]
        attempts += [("PUT", f"/{fid}", {"content": b"evil"})]
    attempts += [("GET", p, {}) for p in ("/status", "/healthz", "/metrics", "/ui/index.html")]
    _attack_http(weed, volume, attempts)
    # With the certificate but no JWT, or one signed with another key: still refused.
    good = _tls(weed, weed.cert)
    for fid in fids[:3]:
        for headers in ({}, {"Authorization": f"Bearer {_forged_jwt(fid)}"}):
            for method, kw in (("GET", {}), ("DELETE", {}), ("POST", {"files": {"f": b"evil"}})):
                url = f"https://{volume}/{fid}"
                response = _request(method, url, verify=good, headers=headers, **kw)
                assert response is not None and response.status_code == 401, (method, fid)
                assert weed.data[:64] not in response.content
    _assert_intact(weed)


def _attack_http(weed: Weed, base: str, attempts: list[tuple[str, str, dict[str, Any]]]) -> None:
    """Each request over plain HTTP, TLS without a certificate and TLS with a foreign
    one: none may be answered by the service."""
    no_cert, foreign = _tls(weed, None), _tls(weed, weed.foreign)
    findings = []
    for method, path, kw in attempts:
        response = _request(method, f"http://{base}{path}", **kw)
        if not _refused_plain(response):
            findings.append(f"plain {method} {path} -> {response and response.status_code}")
        for name, ctx in (("no certificate", no_cert), ("foreign certificate", foreign)):
            response = _request(method, f"https://{base}{path}", verify=ctx, **kw)
            if response is not None:
                findings.append(f"{name} {method} {path} -> {response.status_code}")
    assert not findings, f"{base}:\n" + "\n".join(findings)
    _assert_intact(weed)


def test_unix_sockets_serve_nothing_without_a_credential(weed: Weed) -> None:
    """`weed mini` also listens on Unix sockets (/tmp/seaweedfs-*.sock): its gRPC ones
    require the same mutual TLS, its filer one has no API, its S3 one wants signatures."""
    sockets = _unix_sockets(weed.record())
    assert sockets, "psutil found no Unix socket of the SeaweedFS process"
    findings = []
    paths = ["/", f"/buckets/{weed.bucket}/{weed.key}", f"/{weed.bucket}/{weed.key}"]
    for path in sorted(sockets):
        for probe in GRPC_PROBES:
            try:
                _grpc_call(f"unix:{path}", probe)
                findings.append(f"{path}: plaintext gRPC {probe} answered")
            except grpc.RpcError:
                pass
        transport = httpx.HTTPTransport(uds=path)
        with httpx.Client(transport=transport, timeout=TIMEOUT) as client:
            for url_path in paths:
                for method in ("GET", "DELETE"):
                    try:
                        response = client.request(method, f"http://localhost{url_path}")
                    except httpx.TransportError:
                        continue
                    if not 400 <= response.status_code < 500 or (
                        weed.data[:64] in response.content
                    ):
                        findings.append(f"{path}: {method} {url_path} -> {response.status_code}")
    assert not findings, "\n".join(findings)
    _assert_intact(weed)


def test_restart_keeps_keys_certificates_and_data(weed: Weed) -> None:
    folder = weed.service.security_dir
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    record = weed.record()
    process.stop(record)
    process.forget(weed.settings.stack_dir, "seaweedfs")
    start_service(SeaweedFS(weed.settings), START_TIMEOUT_S, lambda line: None)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    _assert_intact(weed)

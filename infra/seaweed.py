"""The stack's SeaweedFS (`weed mini`): S3 with generated keys, and nothing served without them.

Only the S3 port serves clients (boto3, with the stack's keys). Every other port of
the process needs a credential that only the stack folder holds:

- master, volume, filer and admin HTTP ports speak HTTPS only and require a client
  certificate signed by the stack's own CA (mutual TLS); the master's and filer's
  HTTP APIs are switched off as well (``-disableHttp``: S3 uses gRPC and the volume
  servers), so even a holder of the certificate finds no filer or master API there;
- the volume server also requires a JWT signed with the stack's keys for every read
  and write (the master and filer sign them for the S3 gateway over gRPC), and so does
  the filer;
- every gRPC port (master, volume, filer, S3, admin, and their local Unix sockets)
  requires mutual TLS with a certificate of the same CA.

Keys and certificates are made on the first start under ``<stack_dir>/seaweedfs-security``
(mode 0700, files 0600) and kept: later starts reuse them and make only what is
missing. ``weed -config_dir=<that folder> shell -master=…`` reaches the cluster with
them, for maintenance by hand.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from infra.services import Endpoint, Service, _bin, base_env, write_private
from infra.tls import CertKey, Pki, ensure_pki

# JWT keys by security.toml section: the master signs for the volume servers (write
# and read), the S3 gateway for the filer (write and read).
JWT_SECTIONS = ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read")
JWT_EXPIRES_S = 10
# Components whose gRPC server takes a certificate (all of those `weed mini` may run).
GRPC_COMPONENTS = (
    "master",
    "volume",
    "filer",
    "s3",
    "admin",
    "worker",
    "msg_broker",
    "msg_agent",
    "mq",
)
# Components whose HTTP port becomes HTTPS with a required client certificate.
HTTPS_COMPONENTS = ("master", "volume", "filer", "admin")
CERT_NAME = "seaweedfs"
# Environment that would change what weed does: AWS_* keys make `weed mini` add an
# S3 identity of their own, WEED_* override security.toml, S3_* pre-create buckets.
DROPPED_ENV = ("AWS_", "WEED_", "S3_", "MLSYS_", "PREFECT_", "MLFLOW_")
# Go's soft memory limit for weed (a GOMEMLIMIT in the caller's environment wins). Without
# one, weed's heap kept what it had buffered: 60 PUTs and GETs of 25 MB objects left it at
# 676 MB RSS; with 512MiB it peaked at 404 MB, in the same time (15.3 s vs 15.2 s).
GO_MEMORY_LIMIT = "512MiB"
# Objects listed to find one with data to read for the health check.
HEALTH_KEYS = 20


def _toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


class SeaweedFS(Service):
    """SeaweedFS all-in-one (`weed mini`) serving S3, with keys from an identities file."""

    name = "seaweedfs"

    @property
    def s3_config(self) -> Path:
        return self.settings.stack_dir / "seaweedfs-s3.json"

    @property
    def security_dir(self) -> Path:
        """security.toml, the JWT keys, the CA and the certificate (weed's -config_dir)."""
        return self.settings.stack_dir / "seaweedfs-security"

    @property
    def data_dir(self) -> Path:
        return self.settings.stack_dir / "seaweedfs"

    def pki(self) -> Pki:
        """The CA and the one certificate every component serves and dials with."""
        return ensure_pki(self.security_dir, [CERT_NAME], [self.settings.host])

    def client_cert(self) -> CertKey:
        """The certificate (and key) that opens the internal ports, e.g. for tests."""
        return self.pki().leaves[CERT_NAME]

    def prepare(self) -> None:
        """The S3 identities file, then keys, certificates and security.toml (all 0600)."""
        self._write_s3_identities()
        self._write_security_toml(self.pki(), self._jwt_keys())

    def _write_s3_identities(self) -> None:
        s = self.settings
        assert s.s3_access_key is not None and s.s3_secret_key is not None
        identities = {
            "identities": [
                {
                    "name": "mlsys",
                    "credentials": [
                        {
                            "accessKey": s.s3_access_key.get_secret_value(),
                            "secretKey": s.s3_secret_key.get_secret_value(),
                        }
                    ],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        write_private(self.s3_config, json.dumps(identities, indent=2))

    def _jwt_keys(self) -> dict[str, str]:
        """The JWT signing keys, made once; a missing or empty one is made anew."""
        path = self.security_dir / "jwt.json"
        try:
            loaded = json.loads(path.read_text())
            keys = {k: v for k, v in loaded.items() if isinstance(v, str) and v}
        except (OSError, ValueError, AttributeError):
            keys = {}
        missing = [section for section in JWT_SECTIONS if section not in keys]
        for section in missing:
            keys[section] = secrets.token_urlsafe(48)
        if missing or not path.exists():
            write_private(path, json.dumps(keys, indent=2))
        return keys

    def _write_security_toml(self, pki: Pki, keys: dict[str, str]) -> None:
        leaf = pki.leaves[CERT_NAME]
        ca = _toml_str(str(pki.ca.resolve()))
        cert, key = _toml_str(str(leaf.cert.resolve())), _toml_str(str(leaf.key.resolve()))
        lines = ["# Written by mlsys on every start of the stack; edits are lost.", ""]
        for section in JWT_SECTIONS:
            lines += [
                f"[{section}]",
                f"key = {_toml_str(keys[section])}",
                f"expires_after_seconds = {JWT_EXPIRES_S}",
                "",
            ]
        lines += [
            "[access]",
            "ui = false",
            "",
            "[filer.expose_directory_metadata]",
            "enabled = false",
            "",
            "[grpc]",
            f"ca = {ca}",
            "",
        ]
        for component in GRPC_COMPONENTS:
            lines += [
                f"[grpc.{component}]",
                f"cert = {cert}",
                f"key = {key}",
                f"allowed_commonNames = {_toml_str(CERT_NAME)}",
                "",
            ]
        lines += ["[grpc.client]", f"cert = {cert}", f"key = {key}", ""]
        lines += [
            "[https.client]",
            "enabled = true",
            f"cert = {cert}",
            f"key = {key}",
            f"ca = {ca}",
            "",
        ]
        for component in HTTPS_COMPONENTS:
            lines += [f"[https.{component}]", f"cert = {cert}", f"key = {key}", f"ca = {ca}", ""]
        write_private(self.security_dir / "security.toml", "\n".join(lines))

    def env(self) -> dict[str, str]:
        """The caller's environment without the stack's secrets or anything weed reads,
        with Go's memory limit (GO_MEMORY_LIMIT unless the caller set GOMEMLIMIT)."""
        env = {k: v for k, v in base_env(self.settings).items() if not k.startswith(DROPPED_ENV)}
        env.setdefault("GOMEMLIMIT", GO_MEMORY_LIMIT)
        return env

    def ports(self) -> dict[str, int]:
        s, off = self.settings, self.settings.weed_grpc_offset
        http = {
            "s3": s.s3_port,
            "master": s.weed_master_port,
            "volume": s.weed_volume_port,
            "filer": s.weed_filer_port,
            "admin": s.weed_admin_port,
        }
        return {**http, **{f"{k}-grpc": v + off for k, v in http.items()}}

    def argv(self) -> list[str]:
        s = self.settings
        p = self.ports()
        data = self.data_dir.resolve()
        data.mkdir(parents=True, exist_ok=True)
        return [
            _bin("weed"),
            # Before the command: weed's global flags. security.toml from the stack only,
            # and its logs into the service's log file rather than files under /tmp.
            f"-config_dir={self.security_dir.resolve()}",
            "-logtostderr",
            "mini",
            f"-dir={data}",
            f"-ip={s.host}",
            f"-ip.bind={s.host}",
            "-master.telemetry=false",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master-grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume-grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer-grpc']}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3-grpc']}",
            # `weed mini` always runs its admin server (and a maintenance worker); the
            # ports are given so it never picks its defaults, the UI is off.
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin-grpc']}",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-webdav=false",
            # No master or filer HTTP API at all (S3 reaches them over gRPC).
            "-disableHttp",
            f"-s3.config={self.s3_config.resolve()}",
        ]

    def healthy(self) -> bool:
        """S3 answers, and the stack's data can be read: after a restart the gateway
        lists buckets before the volume server has registered with the master, and a
        read then fails with InternalError. So one byte of a stored object is read too
        (none on a stack without data)."""
        try:
            s3 = self.settings.s3_client()
            names = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
            if self.settings.bucket not in names:
                return True
            listed = s3.list_objects_v2(Bucket=self.settings.bucket, MaxKeys=HEALTH_KEYS)
            stored = next((o["Key"] for o in listed.get("Contents", []) if o["Size"] > 0), None)
            if stored is not None:
                s3.get_object(Bucket=self.settings.bucket, Key=stored, Range="bytes=0-0")
            return True
        except Exception:
            return False

    def endpoints(self) -> list[Endpoint]:
        return [Endpoint("S3 endpoint", f"http://{self.settings.host}:{self.settings.s3_port}")]

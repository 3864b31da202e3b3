"""Objects in S3 by URI: parse, put and get bytes, with errors that name the URI."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class S3Error(RuntimeError):
    """An S3 operation failed; the message names the URI.

    ``permanent`` is True when trying again cannot help: the object, bucket or prefix does
    not exist, or the credentials are refused. Network trouble and server errors are not
    permanent; whether an error is an outage worth waiting out is decided from its cause
    (the botocore error) by ``tasks.retry.classify``.
    """

    def __init__(self, message: str, *, permanent: bool | None = None) -> None:
        super().__init__(message)
        self._permanent = permanent

    @property
    def permanent(self) -> bool:
        if self._permanent is not None:
            return self._permanent
        return _error_code(self.__cause__) in _PERMANENT_CODES


def _error_code(exc: BaseException | None) -> str:
    """The S3 error code of a botocore ``ClientError`` (duck-typed), else ""."""
    response = getattr(exc, "response", None)
    return str((response or {}).get("Error", {}).get("Code", ""))


_PERMANENT_CODES = frozenset(
    {
        "NoSuchKey",
        "NoSuchBucket",
        "404",
        "NotFound",
        "403",
        "AccessDenied",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
    }
)


@dataclass(frozen=True)
class S3Uri:
    bucket: str
    key: str

    @classmethod
    def parse(cls, uri: str) -> S3Uri:
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc or not parts.path.strip("/"):
            raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
        return cls(parts.netloc, parts.path.lstrip("/"))

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def put_bytes(client: Any, uri: str, data: bytes, content_type: str | None = None) -> S3Uri:
    """Write ``data`` to ``uri``, overwriting any object there."""
    target = S3Uri.parse(uri)
    extra = {"ContentType": content_type} if content_type else {}
    try:
        client.put_object(Bucket=target.bucket, Key=target.key, Body=data, **extra)
    except Exception as exc:
        raise S3Error(f"cannot write {target}: {exc}") from exc
    return target


def put_file(client: Any, uri: str, path: str, content_type: str | None = None) -> S3Uri:
    """Upload the local file ``path`` to ``uri`` (in parts when large), overwriting."""
    target = S3Uri.parse(uri)
    extra = {"ContentType": content_type} if content_type else {}
    try:
        client.upload_file(path, target.bucket, target.key, ExtraArgs=extra)
    except Exception as exc:
        raise S3Error(f"cannot write {target}: {exc}") from exc
    return target


def object_etag(client: Any, uri: str) -> str | None:
    """The ETag of the object at ``uri`` (it changes when the content does), or None when
    there is no such object."""
    target = S3Uri.parse(uri)
    try:
        head = client.head_object(Bucket=target.bucket, Key=target.key)
    except Exception as exc:
        if _error_code(exc) in _PERMANENT_CODES:
            # A HEAD answer has no body: a missing object without the right to list the
            # bucket reads 403 on AWS, as refused credentials do; the write that follows
            # names a refused credential.
            return None
        raise S3Error(f"cannot look up {target}: {exc}") from exc
    return str(head["ETag"]).strip('"')


def get_bytes(client: Any, uri: str) -> bytes:
    """Read the whole object at ``uri``."""
    source = S3Uri.parse(uri)
    try:
        body = client.get_object(Bucket=source.bucket, Key=source.key)["Body"]
        return bytes(body.read())
    except Exception as exc:
        raise S3Error(f"cannot read {source}: {exc}") from exc


def list_keys(client: Any, bucket: str, prefix: str, suffix: str = "") -> list[tuple[Any, str]]:
    """``(last_modified, key)`` of every object under ``prefix`` ending in ``suffix``,
    newest first."""
    found = [
        (obj["LastModified"], obj["Key"])
        for obj in _objects(client, bucket, prefix)
        if obj["Key"].endswith(suffix)
    ]
    return sorted(found, reverse=True)


def object_sizes(client: Any, bucket: str, prefix: str) -> dict[str, int]:
    """The size in bytes of every object under ``prefix``, by key."""
    return {obj["Key"]: int(obj["Size"]) for obj in _objects(client, bucket, prefix)}


def _objects(client: Any, bucket: str, prefix: str) -> list[dict[str, Any]]:
    """Every object under ``prefix`` as S3 lists it, page after page."""
    found: list[dict[str, Any]] = []
    token: str | None = None
    while True:
        kwargs = {"Bucket": bucket, "Prefix": prefix}
        if token:
            kwargs["ContinuationToken"] = token
        try:
            page = client.list_objects_v2(**kwargs)
        except Exception as exc:
            raise S3Error(f"cannot list s3://{bucket}/{prefix}: {exc}") from exc
        found.extend(page.get("Contents", []))
        token = page.get("NextContinuationToken")
        if not token:
            return found


def delete_prefix(client: Any, bucket: str, prefix: str) -> int:
    """Delete every object under ``prefix``; how many there were.

    Raises:
        S3Error: an object could not be listed or deleted (named).
    """
    keys = [key for _, key in list_keys(client, bucket, prefix)]
    for key in keys:
        try:
            client.delete_object(Bucket=bucket, Key=key)
        except Exception as exc:
            raise S3Error(f"cannot delete s3://{bucket}/{key}: {exc}") from exc
    return len(keys)


def latest_key(client: Any, bucket: str, prefix: str, suffix: str = ".parquet") -> str:
    """The s3:// URI of the newest object under ``prefix`` (by last-modified time)."""
    keys = list_keys(client, bucket, prefix, suffix)
    if not keys:
        raise S3Error(
            f"no {suffix} object under s3://{bucket}/{prefix}; run the ingest flow first",
            permanent=True,
        )
    return f"s3://{bucket}/{keys[0][1]}"

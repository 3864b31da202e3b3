"""S3 URIs: parsing and errors that name the URI."""

from __future__ import annotations

import pytest

from mlsys.data.s3 import S3Error, S3Uri, get_bytes


def test_parse_round_trips() -> None:
    uri = S3Uri.parse("s3://bucket/raw/ds/b1.parquet")
    assert (uri.bucket, uri.key) == ("bucket", "raw/ds/b1.parquet")
    assert str(uri) == "s3://bucket/raw/ds/b1.parquet"


@pytest.mark.parametrize("bad", ["bucket/key", "s3://bucket", "s3:///key", "https://x/y"])
def test_parse_rejects_and_names(bad: str) -> None:
    with pytest.raises(ValueError, match=repr(bad).replace("/", "/")):
        S3Uri.parse(bad)


def test_get_bytes_names_uri_on_failure() -> None:
    class Broken:
        def get_object(self, **kwargs: object) -> None:
            raise ConnectionError("refused")

    with pytest.raises(S3Error, match=r"s3://b/k.parquet: refused"):
        get_bytes(Broken(), "s3://b/k.parquet")


def test_s3_error_is_permanent_for_missing_objects_and_refused_keys() -> None:
    from botocore.exceptions import ClientError

    from mlsys.data.s3 import S3Error

    def error(code: str) -> S3Error:
        try:
            raise ClientError({"Error": {"Code": code, "Message": "x"}}, "GetObject")
        except ClientError as cause:
            try:
                raise S3Error("cannot read s3://b/k") from cause
            except S3Error as exc:
                return exc

    assert error("NoSuchKey").permanent
    assert error("InvalidAccessKeyId").permanent
    assert not error("SlowDown").permanent
    assert not error("InternalError").permanent
    assert not S3Error("connection reset").permanent
    assert S3Error("no object", permanent=True).permanent

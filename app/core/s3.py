"""S3-compatible object storage (AWS S3, MinIO, Cloudflare R2, GCS interop) through boto3."""

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from app.core.storage import ObjectNotFound, check_key

_MISSING = {"NoSuchKey", "404", "NotFound"}


class S3Storage:
    """Objects under `prefix/` in one bucket; image URLs are presigned and expire."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        # Path-style addressing works with every S3-compatible server, virtual hosts do not;
        # SigV4 is what R2 and newer AWS regions accept for presigned URLs.
        # Checksums only where required: several S3-compatible stores refuse the extra headers.
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            retries={"mode": "standard"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )
        # Presigned URLs must name the endpoint clients reach, which may differ from ours.
        self.signer: Any = self.client
        if public_endpoint_url and public_endpoint_url != endpoint_url:
            self.signer = boto3.client(
                "s3", endpoint_url=public_endpoint_url, region_name=region, config=config
            )

    def _key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.client.put_object(
            Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type
        )

    def get(self, key: str) -> bytes:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in _MISSING:
                raise ObjectNotFound(key) from None
            raise
        return response["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix) + "/"):
            objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if objects:
                result = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": objects})
                if result.get("Errors"):  # reported per key, not raised
                    raise OSError(
                        f"could not delete {result['Errors'][0]['Key']}: "
                        f"{result['Errors'][0]['Message']}"
                    )

    def url(self, key: str, ttl: int) -> str | None:
        return self.signer.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=ttl
        )

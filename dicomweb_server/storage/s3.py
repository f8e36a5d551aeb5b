"""The S3 backend (aiobotocore, the only module that imports it): a PUT for small objects,
a multipart upload for large ones; the backend's exceptions leave as StorageError."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import AsyncIterator
from typing import Any

from dicomweb_server.errors import StorageError
from dicomweb_server.settings import S3Settings
from dicomweb_server.storage.base import KEY, READ_CHUNK, StoredObject, check_key

CONTENT_TYPE = "application/dicom"


class S3Store:
    """Objects in one S3 bucket: a PUT for small objects, a multipart upload for large ones."""

    def __init__(self, settings: S3Settings):
        self.settings = settings
        self._stack = contextlib.AsyncExitStack()
        self.client: Any = None

    async def open(self) -> S3Store:
        from aiobotocore.config import AioConfig
        from aiobotocore.session import get_session

        config = AioConfig(
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
            s3={"addressing_style": "path"},
        )
        self.client = await self._stack.enter_async_context(
            get_session().create_client(
                "s3",
                endpoint_url=self.settings.endpoint_url,
                aws_access_key_id=self.settings.access_key,
                aws_secret_access_key=self.settings.secret_key,
                region_name=self.settings.region,
                config=config,
            )
        )
        return self

    def writer(self, key: str) -> _S3Writer:
        check_key(key)
        return _S3Writer(self, key)

    async def read(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        check_key(key)
        extra = {}
        if start or end is not None:
            extra["Range"] = f"bytes={start}-{'' if end is None else end - 1}"
        async with _s3_errors():
            resp = await self.client.get_object(Bucket=self.settings.bucket, Key=key, **extra)
        async with resp["Body"] as body, _s3_errors():
            async for chunk in body.iter_chunks(READ_CHUNK):
                yield chunk

    async def delete(self, key: str) -> None:
        check_key(key)
        async with _s3_errors():
            await self.client.delete_object(Bucket=self.settings.bucket, Key=key)

    async def objects(self) -> AsyncIterator[StoredObject]:
        paginator = self.client.get_paginator("list_objects_v2")
        async with _s3_errors():
            async for page in paginator.paginate(Bucket=self.settings.bucket):
                for obj in page.get("Contents", []):
                    if KEY.fullmatch(obj["Key"]):
                        yield StoredObject(obj["Key"], obj["Size"], obj["LastModified"].timestamp())

    async def remove_stale_uploads(self, older_than: float) -> int:
        removed = 0
        async with _s3_errors():
            resp = await self.client.list_multipart_uploads(Bucket=self.settings.bucket)
            for upload in resp.get("Uploads", []):
                if upload["Initiated"].timestamp() < older_than:
                    await self.client.abort_multipart_upload(
                        Bucket=self.settings.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                    removed += 1
        return removed

    async def ping(self) -> None:
        async with _s3_errors():
            await self.client.head_bucket(Bucket=self.settings.bucket)

    async def close(self) -> None:
        await self._stack.aclose()


class _S3Writer:
    def __init__(self, store: S3Store, key: str):
        self.store = store
        self.key = key
        self.buffer = bytearray()
        self.upload_id: str | None = None
        self.parts: list[dict[str, Any]] = []
        self.sha = hashlib.sha256()

    async def write(self, data: bytes | memoryview) -> None:
        self.buffer += data
        self.sha.update(data)
        size = self.store.settings.part_size
        while len(self.buffer) >= size * 2:  # keep a full part back so the last part is never tiny
            await self._upload_part(bytes(self.buffer[:size]))
            del self.buffer[:size]

    async def _upload_part(self, body: bytes) -> None:
        s3, bucket = self.store.client, self.store.settings.bucket
        async with _s3_errors(self):
            if self.upload_id is None:
                resp = await s3.create_multipart_upload(Bucket=bucket, Key=self.key, ContentType=CONTENT_TYPE)
                self.upload_id = resp["UploadId"]
            number = len(self.parts) + 1
            resp = await s3.upload_part(
                Bucket=bucket, Key=self.key, UploadId=self.upload_id, PartNumber=number, Body=body
            )
            self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    async def commit(self) -> bytes:
        s3, bucket = self.store.client, self.store.settings.bucket
        if self.upload_id is None:
            async with _s3_errors(self):
                await s3.put_object(
                    Bucket=bucket, Key=self.key, Body=bytes(self.buffer), ContentType=CONTENT_TYPE
                )
        else:
            await self._upload_part(bytes(self.buffer))
            async with _s3_errors(self):
                await s3.complete_multipart_upload(
                    Bucket=bucket,
                    Key=self.key,
                    UploadId=self.upload_id,
                    MultipartUpload={"Parts": self.parts},
                )
        self.buffer = bytearray()
        return self.sha.digest()

    async def abort(self) -> None:
        self.buffer = bytearray()
        if self.upload_id is not None:
            upload_id, self.upload_id = self.upload_id, None
            with contextlib.suppress(Exception):
                await self.store.client.abort_multipart_upload(
                    Bucket=self.store.settings.bucket, Key=self.key, UploadId=upload_id
                )


@contextlib.asynccontextmanager
async def _s3_errors(writer: _S3Writer | None = None) -> AsyncIterator[None]:
    """Re-raise botocore/aiohttp failures as StorageError, aborting a multipart upload first."""
    try:
        yield
    except StorageError:
        raise
    except Exception as exc:
        if writer is not None:
            await writer.abort()
        code = getattr(exc, "response", {}).get("Error", {}).get("Code", type(exc).__name__)
        raise StorageError(f"S3 request failed: {code}") from None

"""What every WADO-RS response shares: the resource and the Accept a request names, reads
that check the object against what ingest recorded, and streams that start only once their
first part is ready.

A streamed response commits to its status line before its body: whatever can go wrong
with the first part (an undecodable frame, a damaged object) is found first, in the
handler, so that it becomes a clean status.  Whatever goes wrong later cannot change the
status any more: the stream is aborted (the connection is dropped without the closing
chunk or boundary, so no client takes it for a whole response) and logged at ERROR with
the request id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.requests import Request

from dicomweb_server.db.retrieve import StoredInstance
from dicomweb_server.dicom.resources import Scope
from dicomweb_server.errors import DicomWebError
from dicomweb_server.storage.base import ObjectStore

log = logging.getLogger("dicomweb_server.dicomweb.wado")


def scope_of(request: Request) -> Scope:
    """The study, series or instance the route's path names."""
    return Scope.of(request.path_params)


class DamagedObject(DicomWebError):
    """410: the stored object no longer holds what ingest recorded (fewer bytes, or more).

    Not the client's fault, and retrying will not help; the server log names the object.
    """

    status = 410

    def __init__(self, message: str):
        super().__init__(message, headers={"Cache-Control": "no-store"})


class ResponseAborted(Exception):
    """A response that already sent its status line cannot go on: uvicorn drops the connection."""


READ_AHEAD = 2  # chunks read from storage ahead of the socket


async def aclose(chunks: AsyncIterator[bytes]) -> None:
    """Close an async generator now (its object file with it), not when it is collected: a
    generator left in an ``async for`` that ended by an exception or a disconnect is not closed."""
    close = getattr(chunks, "aclose", None)
    if close is not None:
        await close()


async def read_ahead(chunks: AsyncIterator[bytes], depth: int = READ_AHEAD) -> AsyncIterator[bytes]:
    """Read the next chunks from storage while the current one is being sent.

    Without this, a response alternates between waiting for a file read (in a worker thread)
    and waiting for the socket; with it, both go on at once.  At most ``depth`` chunks wait in
    memory.  When the client goes away the reader is cancelled and its object closed.
    """
    queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(depth)

    async def pump() -> None:
        try:
            async for chunk in chunks:
                await queue.put(chunk)
            await queue.put(None)
        except Exception as exc:  # handed to the consumer, raised there
            await queue.put(exc)
        finally:
            await aclose(chunks)

    task = asyncio.ensure_future(pump())
    try:
        while (item := await queue.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def damaged(inst: StoredInstance, got: int | None = None) -> DamagedObject:
    """The error for an instance whose object does not match the index, logged with its object key."""
    if got is None:
        detail = "its bytes differ from those stored"
    else:
        detail = f"it holds {got} bytes, {inst.size} were stored"
    log.error(
        "stored object damaged",
        extra={"event": "object_damaged", "object_key": inst.object_key, "size": inst.size, "read": got},
    )
    return DamagedObject(f"The stored object of this instance is damaged ({detail}); it cannot be retrieved")


async def read_checked(
    store: ObjectStore, inst: StoredInstance, start: int = 0, end: int | None = None
) -> bytes:
    """Bytes ``start:end`` of an instance's object (all of it by default), all of them or DamagedObject."""
    stop = inst.size if end is None else end
    data = b"".join([chunk async for chunk in store.read(inst.object_key, start, stop)])
    if len(data) != stop - start:
        raise damaged(inst, start + len(data))
    return data


async def stream_checked(
    store: ObjectStore, inst: StoredInstance, start: int = 0, end: int | None = None
) -> AsyncIterator[bytes]:
    """Bytes ``start:end`` of an instance's object (all of it by default), chunk by chunk, checked
    against its recorded size: DamagedObject when the store holds fewer.

    The last chunk is held back until the end is known, so an object that fits in one chunk
    (most do) is known whole, or damaged, before its first byte goes out.
    """
    stop = inst.size if end is None else end
    want = stop - start
    chunks = store.read(inst.object_key, start, stop)
    total, held = 0, None
    try:
        async for chunk in chunks:
            total += len(chunk)
            if total > want:
                raise damaged(inst, start + total)
            if held is not None:
                yield held
            held = chunk
            if total == want:
                break
        if total != want:
            raise damaged(inst, start + total)
        if held is not None:
            yield held
    finally:
        await aclose(chunks)


async def first_chunk(chunks: AsyncIterator[bytes]) -> bytes:
    """The first chunk (``b""`` for none); on an error the stream is closed and the error raised."""
    try:
        return await anext(chunks)
    except StopAsyncIteration:
        return b""
    except BaseException:
        await aclose(chunks)
        raise


async def primed(request: Request, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Produce the first chunk now, before the status line, so that its errors become a status;
    the rest is streamed, and an error there aborts the connection (``guarded``)."""
    return guarded(request, await first_chunk(chunks), chunks)


async def guarded(request: Request, first: bytes, chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    sent = len(first)
    try:
        yield first
        async for chunk in chunks:
            yield chunk
            sent += len(chunk)
    except Exception as exc:
        log.error(
            "response aborted",
            extra={
                "event": "response_aborted",
                "request_id": request.state.request_id,
                "bytes_out": sent,
                "reason": type(exc).__name__,
            },
        )
        raise ResponseAborted(
            f"response aborted after {sent} bytes: {getattr(exc, 'message', type(exc).__name__)}"
        ) from exc
    finally:
        await aclose(chunks)

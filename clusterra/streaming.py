"""Streamed responses that stay streamed under daphne.

Django's ASGI handler cannot iterate a synchronous iterator between sends: it reads it to the end into a
list first (with the warning "StreamingHttpResponse must consume synchronous iterators"), so a 2 GB
recording or a million-row export would sit in memory. `streaming_response` hands an ASGI request an
asynchronous iterator that reads each chunk in Django's sync thread (database cursors stay on their
connection), and a WSGI request (the test client, a WSGI deployment) the plain iterator.
"""

from collections.abc import Iterable, Iterator

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIRequest
from django.http import StreamingHttpResponse

CHUNK_BYTES = 64 * 1024


def batched(pieces: Iterable[bytes], size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """Many small pieces (an export's lines) joined into chunks of about `size` bytes."""
    buffer, length = [], 0
    for piece in pieces:
        buffer.append(piece)
        length += len(piece)
        if length >= size:
            yield b"".join(buffer)
            buffer, length = [], 0
    if buffer:
        yield b"".join(buffer)


def file_chunks(stream, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    """A binary file object read `size` bytes at a time, closed at the end (or when the client goes away)."""
    try:
        while chunk := stream.read(size):
            yield chunk
    finally:
        stream.close()


async def _asynchronous(chunks: Iterator[bytes]):
    step = sync_to_async(next, thread_sensitive=True)
    close = sync_to_async(getattr(chunks, "close", lambda: None), thread_sensitive=True)
    done = object()
    try:
        while (chunk := await step(chunks, done)) is not done:
            yield chunk
    finally:
        await close()


def streaming_response(request, chunks: Iterator[bytes], *, content_type: str, **kwargs) -> StreamingHttpResponse:
    body = _asynchronous(iter(chunks)) if isinstance(request, ASGIRequest) else chunks
    return StreamingHttpResponse(body, content_type=content_type, **kwargs)

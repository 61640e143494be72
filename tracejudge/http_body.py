"""Reading an HTTP request body within a size limit, gzip included, for every aiohttp endpoint tracejudge serves.

aiohttp's own decompression is off on tracejudge's HTTP port, so the limit holds for the decompressed size,
enforced while inflating: a gzip bomb is refused after `limit` bytes, never inflated whole. The errors are
generic; each caller maps them to its own statuses (the OTLP receiver: 413/415/400 as the OTLP spec says;
the control plane: its google.rpc.Status codes).
"""

from __future__ import annotations

import zlib

from aiohttp import web


class BodyError(Exception):
    """A body that cannot be read; the message says why, for the caller's reply."""


class BodyTooLarge(BodyError):
    pass


class UnsupportedEncoding(BodyError):
    pass


class InvalidGzip(BodyError):
    pass


async def read_body(request: web.Request, limit: int) -> bytes:
    """The body, inflated when Content-Encoding is gzip, of at most `limit` bytes either way."""
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", ""):
        raise UnsupportedEncoding(f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"body of {request.content_length} bytes exceeds the limit of {limit}")
    body = await read_limited(request, limit)
    return gunzip_limited(body, limit) if encoding == "gzip" else body


async def read_limited(request: web.Request, limit: int) -> bytes:
    """The raw body; BodyTooLarge as soon as more than `limit` bytes arrived (Content-Length may be absent)."""
    chunks: list[bytes] = []
    size = 0
    while chunk := await request.content.readany():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def gunzip_limited(body: bytes, limit: int) -> bytes:
    """Inflate at most `limit` bytes, so a gzip bomb is refused without being inflated whole."""
    inflater = zlib.decompressobj(wbits=zlib.MAX_WBITS | 16)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidGzip(f"body is not valid gzip: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body exceeds the limit of {limit} bytes")
    if not inflater.eof:
        raise InvalidGzip("body is not valid gzip: truncated stream")
    return data

"""Decoding compressed HTTP bodies without letting a compression bomb fill memory.

httpx decodes each network chunk in one go, so 64 KB of gzip can become 64 MB before anyone
counts it. The reader asks for uncompressed bodies (``Accept-Encoding: identity``) and decodes
what a server sends anyway itself, never producing more than the room left under the byte cap.
"""

from __future__ import annotations

import zlib

__all__ = ["BoundedDecoder", "UnsupportedEncoding", "decoder_for"]


class UnsupportedEncoding(Exception):
    """The body uses a ``Content-Encoding`` the reader does not decode."""


class BoundedDecoder:
    """gzip or deflate, decoded at most ``room`` bytes at a time.

    Args:
        encoding: ``gzip`` (or ``x-gzip``) or ``deflate`` (zlib-wrapped, or raw as some
            servers send it).
    """

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._raw_deflate_tried = encoding != "deflate"
        wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
        self._inflater = zlib.decompressobj(wbits)
        self._pending = b""

    def feed(self, data: bytes, room: int) -> bytes:
        """Decode ``data``; return at most ``room`` (>= 1) bytes.

        Input that would decode to more than ``room`` bytes is kept back; a caller that gets
        exactly ``room`` bytes while its room was the cap plus one knows the body is too large.
        """
        data = self._pending + data
        try:
            out = self._inflater.decompress(data, max(room, 1))
        except zlib.error:
            if self._raw_deflate_tried:
                raise
            self._raw_deflate_tried = True  # a raw deflate stream without the zlib header
            self._inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._inflater.decompress(data, max(room, 1))
        self._raw_deflate_tried = True
        self._pending = self._inflater.unconsumed_tail
        return out

    def flush(self, room: int) -> bytes:
        """What is left once the body has ended, at most ``room`` bytes."""
        out = self.feed(b"", room) if self._pending else b""
        if len(out) < room:
            out += self._inflater.flush()[: room - len(out)]
        return out


def decoder_for(content_encoding: str | None) -> BoundedDecoder | None:
    """The decoder a ``Content-Encoding`` header calls for; ``None`` for an identity body."""
    layers = [e.strip().lower() for e in (content_encoding or "").split(",") if e.strip()]
    layers = [e for e in layers if e != "identity"]
    if not layers:
        return None
    if len(layers) == 1 and layers[0] in ("gzip", "x-gzip", "deflate"):
        return BoundedDecoder("deflate" if layers[0] == "deflate" else "gzip")
    raise UnsupportedEncoding(", ".join(layers))

"""LZF, the compression of PCD's `DATA binary_compressed` (liblzf's format, as PCL and Open3D write it).

The C codec of the `lzf` module (pip install python-neo-lzf, in the `pcd` and `dev` extras) is used where it
imports; otherwise a pure-Python decoder (slower, the same result) and a literal-only encoder (a valid LZF stream
that does not shrink the data). Corrupt input is a ValueError saying what does not add up.

The format: a stream of runs. A control byte c < 32 is followed by c + 1 literal bytes. Otherwise the top three
bits are a length (7: add the next byte) and the low five, with the next byte, an offset back into the output:
copy length + 2 bytes from output[-offset - 1:], overlaps allowed.
"""
from __future__ import annotations

from typing import Optional

try:  # optional: the C codec
    import lzf as _lzf
except ImportError:  # pragma: no cover - exercised where the extra is missing
    _lzf = None

MAX_LITERAL = 32


def have_c_codec() -> bool:
    """Whether the C codec (the lzf module) is in use."""
    return _lzf is not None


def decompress(data: bytes, size: int, use_c: Optional[bool] = None) -> bytes:
    """The size bytes that data decompresses to; a ValueError when the stream is corrupt or of another size."""
    if (have_c_codec() if use_c is None else use_c) and _lzf is not None:
        try:
            out = _lzf.decompress(bytes(data), size) if size else b""
        except Exception as exc:  # the C codec raises ValueError / SystemError on corrupt data
            raise ValueError(f"corrupt LZF data ({exc})") from None
        if out is None or len(out) != size:
            raise ValueError(f"LZF data decompresses to {0 if out is None else len(out)} bytes, {size} expected")
        return out
    return _decompress_python(bytes(data), size)


def _decompress_python(src: bytes, size: int) -> bytes:
    out = bytearray()
    i, n = 0, len(src)
    while i < n:
        ctrl = src[i]
        i += 1
        if ctrl < 32:  # a literal run
            run = ctrl + 1
            if i + run > n:
                raise ValueError(f"corrupt LZF data: a literal run of {run} bytes at byte {i - 1} passes the end")
            out += src[i:i + run]
            i += run
        else:  # a back reference
            length = ctrl >> 5
            if length == 7:
                if i >= n:
                    raise ValueError("corrupt LZF data: a back reference is cut off")
                length += src[i]
                i += 1
            if i >= n:
                raise ValueError("corrupt LZF data: a back reference is cut off")
            start = len(out) - ((ctrl & 0x1F) << 8) - src[i] - 1
            i += 1
            length += 2
            if start < 0:
                raise ValueError(f"corrupt LZF data: a back reference reaches {-start} byte(s) before the output")
            if start + length <= len(out):
                out += out[start:start + length]
            else:  # overlapping: byte by byte (a repeated pattern)
                for k in range(length):
                    out.append(out[start + k])
        if len(out) > size:
            raise ValueError(f"LZF data decompresses to more than the {size} bytes expected")
    if len(out) != size:
        raise ValueError(f"LZF data decompresses to {len(out)} bytes, {size} expected")
    return bytes(out)


def compress(data: bytes, use_c: Optional[bool] = None) -> bytes:
    """An LZF stream of data: the C codec's where it imports (and shrinks the data), else literal runs only."""
    data = bytes(data)
    if (have_c_codec() if use_c is None else use_c) and _lzf is not None and data:
        out = _lzf.compress(data, len(data) + len(data) // MAX_LITERAL + 16)
        if out is not None:
            return out
    chunks = []
    for start in range(0, len(data), MAX_LITERAL):
        piece = data[start:start + MAX_LITERAL]
        chunks.append(bytes([len(piece) - 1]) + piece)
    return b"".join(chunks)

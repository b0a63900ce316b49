"""Compressed sources, read whole: ``.gz`` (stdlib gzip) and ``.zst`` (the optional ``zstandard`` package).

Bytes that do not decompress make a corrupt file, which the caller skips and reports like any
other unreadable format. A ``.zst`` file without ``zstandard`` installed stops the build instead:
skipping it would give a different dataset on a machine that lacks the package, under the same
cache key (which holds the code, config and content, not the installed packages).
"""

from __future__ import annotations

import gzip
import zlib

COMPRESSIONS = ("gz", "zst")


class CorruptCompressed(Exception):
    """The bytes are not a complete stream of the compression their name says."""


class MissingDecompressor(Exception):
    """The package that reads this compression is not installed; the message names it."""


def decompress(data: bytes, compression: str) -> bytes:
    if compression == "gz":
        try:
            return gzip.decompress(data)  # concatenated members too, as `zcat` reads them
        except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError; EOFError: truncated
            raise CorruptCompressed(f"not a complete gzip stream: {e}") from None
    if compression == "zst":
        try:
            import zstandard
        except ImportError:
            raise MissingDecompressor("reading .zst needs the Python package 'zstandard', which is not "
                                      "installed (pip install zstandard), or decompress the file first") from None
        # frame by frame: a decompressobj handles frames that do not record their size (zstd --stream)
        # and says whether the frame ended (stream_reader returns a truncated file's prefix silently)
        out, rest = [], data
        try:
            while rest:
                frame = zstandard.ZstdDecompressor().decompressobj()
                out.append(frame.decompress(rest))
                if not frame.eof:
                    raise CorruptCompressed("not a complete zstd stream: it ends inside a frame")
                rest = frame.unused_data
        except zstandard.ZstdError as e:
            raise CorruptCompressed(f"not a complete zstd stream: {e}") from None
        return b"".join(out)
    raise ValueError(f"unknown compression {compression!r}")

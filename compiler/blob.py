"""A source file's bytes, read in blocks and never held whole (issue 15: bounded memory).

Every reader and every check of a file (its hash, the encoding evidence, the strict decode,
the CSV line accounting) goes through a ``Blob``: a seekable binary file and its size. A
compressed file is first decompressed into a temporary file, block by block, so the checks
can take several passes over the bytes the format reader reads. ``BLOCK`` is the unit of
every pass; a test shrinks it to prove the result does not depend on where blocks end.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

from ftc.errors import FtcError

BLOCK = int(os.environ.get("FTC_READ_BLOCK", 1 << 22))  # bytes per read of every pass over a file


class Blob:
    """Random and sequential access to one file's bytes, ``BLOCK`` at a time."""

    def __init__(self, fh: BinaryIO, size: int, owned: Path | None = None):
        self.fh, self.size, self._owned = fh, size, owned

    @classmethod
    def of_bytes(cls, data: bytes) -> "Blob":
        """Bytes already in memory (``ftc validate``'s file heads)."""
        return cls(io.BytesIO(data), len(data))

    @classmethod
    def open(cls, path: Path) -> "Blob":
        return cls(open(path, "rb"), path.stat().st_size)

    def close(self) -> None:
        self.fh.close()
        if self._owned is not None:
            self._owned.unlink(missing_ok=True)

    def __enter__(self) -> "Blob":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def read(self, start: int, n: int) -> bytes:
        """``n`` bytes from ``start`` (fewer at the end)."""
        self.fh.seek(max(start, 0))
        return self.fh.read(max(n, 0))

    def blocks(self, start: int = 0, end: int | None = None, step: int | None = None) -> Iterator[tuple[int, bytes]]:
        """(offset, bytes) of consecutive blocks from ``start`` up to ``end`` (the file's end)."""
        end = self.size if end is None else min(end, self.size)
        step = step or BLOCK
        at = start
        while at < end:
            chunk = self.read(at, min(step, end - at))
            if not chunk:
                return
            yield at, chunk
            at += len(chunk)

    def startswith(self, prefix: bytes) -> bool:
        return self.read(0, len(prefix)) == prefix

    def endswith(self, suffix: bytes) -> bool:
        return self.size >= len(suffix) and self.read(self.size - len(suffix), len(suffix)) == suffix

    def count(self, sub: bytes, start: int = 0, end: int | None = None) -> int:
        """Occurrences of a one-byte ``sub`` (a newline) in ``[start, end)``."""
        assert len(sub) == 1, "counted block by block: a longer pattern could straddle two blocks"
        return sum(chunk.count(sub) for _, chunk in self.blocks(start, end))

    def sha256(self) -> str:
        h = hashlib.sha256()
        for _, chunk in self.blocks():
            h.update(chunk)
        return h.hexdigest()

    def position(self) -> int:
        """How far into the file the last read reached (a reader's progress; pyarrow's CSV reader
        reads a few blocks ahead of the rows it has given)."""
        return self.fh.tell()

    def stream(self, start: int = 0) -> BinaryIO:
        """The file object, positioned at ``start``, for a reader that pulls bytes itself (pyarrow's CSV)."""
        self.fh.seek(start)
        return self.fh


def spooled(chunks: Iterator[bytes]) -> Blob:
    """A temporary file of the given chunks, as a Blob that deletes it on close."""
    fd, name = tempfile.mkstemp(prefix="ftc-read-", suffix=".bin")
    size = 0
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
    except BaseException:
        os.unlink(name)
        raise
    return Blob(open(name, "rb"), size, Path(name))


def decompressed(raw: Blob, compression: str | None, file: str, source: str) -> Blob:
    """The file's bytes as its format reader reads them: ``raw`` itself, or its decompressed copy
    (a temporary file, written block by block)."""
    if compression is None:
        return raw
    try:
        if compression == "zstd":
            import pyarrow as pa

            src: BinaryIO = pa.CompressedInputStream(pa.PythonFile(raw.stream(0), mode="r"), "zstd")
        else:
            import bz2
            import gzip
            import lzma

            src = {"gzip": gzip.open, "bz2": bz2.open, "xz": lzma.open}[compression](raw.stream(0), "rb")
        with src:
            return spooled(iter(lambda: src.read(BLOCK), b""))
    except Exception as e:  # each codec raises its own class (OSError, EOFError, LZMAError, ArrowInvalid)
        raise FtcError("FTC216", file=file, path=f"sources.{source}.path", compression=compression,
                       reason=(str(e).splitlines() or [type(e).__name__])[0][:200]) from None

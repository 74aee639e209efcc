"""Which codec a text source file is in, decided from evidence that goes into the lock.

``encoding: auto`` means UTF-8 or GB18030, nothing else. Decoding UTF-8 bytes as GB18030
"succeeds" (almost any byte pair is a GB18030 character) and garbles every row, so a file
that fails strict UTF-8 is not GB18030 just because GB18030 decodes it:

1. strict UTF-8 (with or without a BOM) decodes the whole file -> UTF-8.
2. Otherwise count the multi-byte characters that are valid UTF-8 and the bytes that are
   not (over the whole file; a file plainly not UTF-8 over its first 256 KiB only). UTF-8 with a defect (a cp1252 ``\\x92`` pasted in, a last
   character cut short) has many valid ones and a few invalid; GB18030 text has few valid
   ones by chance (measured on the real medical CSV, 1.7 MB: 303,542 valid against 1,056,287
   invalid bytes, 0.29 per invalid byte). As many valid as invalid or more, a BOM, or a sequence cut
   at the very end -> UTF-8 with a defect: refused with the byte offset and line, or, under
   ``encoding_errors: "replace"``, read with U+FFFD in place of the bad bytes, counted.
3. Otherwise GB18030 must decode strictly and look like Chinese text: the share of its
   non-ASCII characters that are in GB2312 (the common 6,763 hanzi and CJK punctuation) is
   0.9999 on the real medical CSV (56 rarer characters in 846,280), 0 for an ASCII file with
   a stray cp1252 byte. Below ``GB_PLAUSIBLE`` the file is refused as neither. (UTF-8 Latin
   text misread as GB18030 does look like GB2312, "café" -> "caf茅": that is why step 2
   comes first.)

A declared list (``["utf-8", "gb18030"]``) keeps its order, with step 2 applied when UTF-8 fails
and a later codec would otherwise take the file.

charset-normalizer 3.4.7 was measured as the alternative: it names the real file gb18030
(0.04 s), but returns no guess for UTF-8 with a ``\\x92`` and picks cp1250 for ASCII with a
``\\x92``; it chooses among ~90 codecs where ftc promises two, and does not report "UTF-8
with a defect", which is the case that corrupts data. So the rule above is ftc's own.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field
from typing import NamedTuple

from ftc.compiler.blob import Blob, spooled
from ftc.errors import FtcError

BLOCK = 1 << 22  # the evidence scan's blocks after the first (its result depends on them: not blob.BLOCK)
FIRST_BLOCK = 1 << 18  # GB18030 shows itself within 256 KiB (every undecodable byte costs an error-handler call)
GB_SAMPLE = 1 << 20  # bytes of a GB18030 candidate checked for plausibility (the reader decodes it all)
NOT_UTF8 = 2  # invalid bytes per valid multi-byte character past which a block is plainly not UTF-8 (GB18030: 3.5)
GB_PLAUSIBLE = 0.8  # share of non-ASCII characters in GB2312 for GB18030 to be believed


@dataclass
class Decoded:
    """The codec a file is read with, and why (``evidence`` goes into the lock's file facts)."""

    encoding: str  # the lock's label: utf-8, utf-8-sig, gb18030, or a declared codec's canonical name
    bom: int  # bytes of BOM to skip
    evidence: dict = field(default_factory=dict)
    replaced: int = 0  # undecodable bytes read as U+FFFD under encoding_errors "replace"
    utf8: Blob | None = None  # the file re-encoded as UTF-8 (a temporary file), when replacement changed it


def line_of(data: Blob, offset: int) -> int:
    """1-based line of a byte offset (every ASCII-compatible codec writes a newline as 0x0A)."""
    return data.count(b"\n", 0, offset) + 1


def _context(data: Blob, offset: int) -> str:
    """The bytes around ``offset`` on its line, undecodable ones written as \\xNN."""
    start = max(offset - 30, 0)
    window = data.read(start, offset + 8 - start)
    start += window.rfind(b"\n", 0, offset - start) + 1
    return '"' + data.read(start, offset + 8 - start).split(b"\n")[0].decode("utf-8", "backslashreplace") + '"'


class Invalid(NamedTuple):
    """Where a strict decode failed: ``start`` counts from the first byte decoded (after a BOM)."""

    start: int
    reason: str


def first_invalid(data: Blob, codec: str, start: int) -> Invalid | None:
    """The first strict ``codec`` failure from byte ``start`` on, decoded block by block (a 1 GB
    file is never held as str), or None. Offsets are exact across block ends: the decoder's
    pending bytes of a character cut by a block end are counted back."""
    dec = codecs.getincrementaldecoder(codec)("strict")
    for at, chunk in data.blocks(start):
        pending = len(dec.getstate()[0])
        try:
            dec.decode(chunk, final=at + len(chunk) >= data.size)
        except UnicodeDecodeError as e:
            return Invalid(at - pending + e.start - start, e.reason)
    return None


def first_invalid_utf8(data: Blob, bom: int) -> Invalid | None:
    """The first strict UTF-8 failure after the BOM (offsets relative to ``data[bom:]``), or None."""
    return first_invalid(data, "utf-8", bom)


def utf8_evidence(data: Blob, bom: int) -> tuple[int, int, int]:
    """(valid multi-byte UTF-8 characters, bytes that are not UTF-8, bytes scanned), at C speed,
    over the bytes after the BOM.

    Undecodable bytes become one lone surrogate each under ``surrogateescape``; a surrogate
    re-encodes to 3 bytes under ``surrogatepass``, a valid character to its own length. The
    scan stops after a block that is plainly not UTF-8 (``NOT_UTF8`` times more invalid bytes
    than valid characters, and at least 64): a 1 GB GB18030 file is not scanned twice."""
    dec = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    valid = invalid = scanned = 0
    size = data.size - bom
    while True:
        block = data.read(bom + scanned, FIRST_BLOCK if not scanned else BLOCK)
        s = dec.decode(block, final=scanned + len(block) >= size)
        bad = (len(s.encode("utf-8", "surrogatepass")) - len(s.encode("utf-8", "surrogateescape"))) // 2
        invalid += bad
        valid += len(s) - len(s.encode("ascii", "ignore")) - bad  # non-ASCII characters that are not surrogates
        scanned += len(block)
        if scanned >= size or (invalid >= 64 and invalid >= NOT_UTF8 * valid):
            return valid, invalid, scanned


def gb2312_share(data: Blob) -> tuple[float, int] | Invalid:
    """Share of the non-ASCII characters of the first GB_SAMPLE bytes (strict GB18030) that GB2312 has."""
    try:
        text = codecs.getincrementaldecoder("gb18030")("strict").decode(data.read(0, GB_SAMPLE),
                                                                        final=data.size <= GB_SAMPLE)
    except UnicodeDecodeError as e:
        return Invalid(e.start, e.reason)
    non_ascii = len(text) - len(text.encode("ascii", "ignore"))
    if not non_ascii:
        return 0.0, 0
    missing = text.encode("gb2312", "replace").count(b"?") - text.count("?")
    return 1 - missing / non_ascii, non_ascii


def replaced(data: Blob, codec: str, bom: int) -> Blob:
    """The file as UTF-8 with each undecodable sequence read as U+FFFD (a temporary file)."""
    dec = codecs.getincrementaldecoder(codec)("replace")
    return spooled(dec.decode(chunk, final=at + len(chunk) >= data.size).encode("utf-8")
                   for at, chunk in data.blocks(bom))


def utf8_first(data: Blob, errors: str, file: str, source: str) -> tuple[Decoded | None, dict]:
    """Steps 1 and 2 of the rule: (how to read the file as UTF-8, or None when it is not UTF-8; the evidence).

    UTF-8 with a defect raises FTC213, or under ``errors="replace"`` reads with U+FFFD."""
    bom = 3 if data.startswith(codecs.BOM_UTF8) else 0
    label = "utf-8-sig" if bom else "utf-8"
    bad = first_invalid_utf8(data, bom)
    if bad is None:
        return Decoded(label, bom, {"rule": "strict UTF-8" + (" after a BOM" if bom else "")}), {}
    offset = bad.start + bom
    valid, invalid, scanned = utf8_evidence(data, bom)
    ev = {"utf8_first_invalid_offset": offset, "utf8_invalid_bytes": invalid, "utf8_multibyte_chars": valid}
    if scanned < data.size - bom:
        ev["utf8_scanned_bytes"] = scanned
    cut = bad.reason == "unexpected end of data"
    if not (bom or cut or (valid and valid >= invalid)):
        return None, ev
    why = "a UTF-8 BOM" if bom else "the last character is cut short" if cut else \
        f"{valid:,} valid multi-byte UTF-8 characters against {invalid:,} bytes that are not"
    if errors != "replace":
        raise FtcError("FTC213", file=file, path=f"sources.{source}.encoding", count=invalid, offset=offset,
                       line=line_of(data, offset), context=_context(data, offset), why=why, source=source)
    ev["rule"] = f"UTF-8 with a defect ({why}); encoding_errors replace"
    return Decoded(label, bom, ev, invalid, replaced(data, "utf-8", bom)), ev


def auto(data: Blob, errors: str, file: str, source: str) -> Decoded:
    """UTF-8, UTF-8 with a defect, or GB18030, by the rule in the module docstring."""
    dec, ev = utf8_first(data, errors, file, source)
    if dec is not None:
        return dec
    label, bom, offset = "utf-8", 0, ev["utf8_first_invalid_offset"]
    valid, invalid = ev["utf8_multibyte_chars"], ev["utf8_invalid_bytes"]
    share = gb2312_share(data)
    if isinstance(share, Invalid):
        if errors == "replace":
            ev["rule"] = f"neither UTF-8 nor GB18030 (invalid at byte {share.start}); encoding_errors replace reads UTF-8"
            return Decoded(label, bom, ev, invalid, replaced(data, "utf-8", bom))
        detail = f"utf-8: invalid byte at offset {offset} (line {line_of(data, offset)}); gb18030: invalid byte at offset {share.start}"
        raise FtcError("FTC201", file=file, detail=detail, source=source)
    ratio, chars = share
    ev.update(gb2312_share=round(ratio, 4), gb18030_sample_chars=chars)
    if ratio < GB_PLAUSIBLE:
        if errors == "replace":
            ev["rule"] = "not UTF-8, and not GB18030 text; encoding_errors replace reads UTF-8"
            return Decoded(label, bom, ev, invalid, replaced(data, "utf-8", bom))
        raise FtcError("FTC214", file=file, path=f"sources.{source}.encoding", offset=offset, line=line_of(data, offset),
                       context=_context(data, offset), share=f"{ratio:.0%}", chars=chars, source=source)
    ev["rule"] = (f"not UTF-8 ({valid:,} valid multi-byte characters against {invalid:,} invalid bytes); "
                  f"GB18030, {ratio:.2%} of its non-ASCII characters in GB2312")
    return Decoded("gb18030", 0, ev)

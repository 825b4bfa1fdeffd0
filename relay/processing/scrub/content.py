"""Text or binary, by content: how an attachment's bytes are read for scrubbing.

The content type an SDK sends says little (`.pem` comes as
`application/pem-certificate-chain`, `.sql` as `application/sql`, crash reports and
logs as anything), so the bytes decide:

1. a byte order mark: UTF-32 or UTF-16 text, decoded and encoded back the same way;
2. a known binary format by its magic number (images, video, archives and compressed
   streams, PDF, executables, minidumps): binary;
3. UTF-16 without a byte order mark (NULs in every other byte): text;
4. anything else is binary when more than 5% of its first 64 KiB (trailing NUL
   padding left out) are control bytes other than tab, line feeds, form feed and
   escape; else it is text, read as UTF-8 with invalid bytes kept as they are
   (`surrogateescape`), so that a Latin-1 byte or a stray NUL neither hides the text
   from the detectors nor changes a byte the scrubber does not replace.

`read_text` gives a `Text` (the decoded string and how to encode it back) or None;
`binary_kind` names the binary format, for the dry run. `Unreadable` is raised by the
readers of structured payloads (replays, MessagePack) for what they cannot read.
"""

from __future__ import annotations

from dataclasses import dataclass

#: How much of the payload the control-byte count reads.
_SAMPLE = 64 * 1024
#: Control bytes that text does not hold (tab, LF, VT, FF, CR and ESC are text).
_CONTROLS = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_TEXT_CONTROLS = "\t\n\v\f\r\x1b"
#: Magic numbers of binary formats, by what they are.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"MDMP", "minidump"),
    (b"PMDM", "minidump"),
    (b"\x89PNG\r\n\x1a\n", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"GIF87a", "GIF image"),
    (b"GIF89a", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"\x00\x00\x01\x00", "icon"),
    (b"\x1a\x45\xdf\xa3", "Matroska/WebM video"),
    (b"OggS", "Ogg media"),
    (b"%PDF-", "PDF document"),
    (b"PK\x03\x04", "zip archive"),
    (b"PK\x05\x06", "zip archive"),
    (b"PK\x07\x08", "zip archive"),
    (b"\x1f\x8b", "gzip data"),
    (b"\xfd7zXZ\x00", "xz data"),
    (b"\x28\xb5\x2f\xfd", "zstd data"),
    (b"7z\xbc\xaf\x27\x1c", "7z archive"),
    (b"Rar!\x1a\x07", "rar archive"),
    (b"\x7fELF", "ELF executable"),
    (b"\xfe\xed\xfa\xce", "Mach-O executable"),
    (b"\xfe\xed\xfa\xcf", "Mach-O executable"),
    (b"\xce\xfa\xed\xfe", "Mach-O executable"),
    (b"\xcf\xfa\xed\xfe", "Mach-O executable"),
    (b"\xca\xfe\xba\xbe", "Mach-O universal binary or Java class"),
    (b"\x00asm", "WebAssembly module"),
    (b"SQLite format 3\x00", "SQLite database"),
)
_MAGIC_PREFIXES = tuple(magic for magic, _ in _MAGIC)
#: RIFF container forms (bytes 8-12): WebP, WAV, AVI, animated cursors, MIDI, CD audio.
_RIFF_FORMS = frozenset({b"WEBP", b"WAVE", b"AVI ", b"ACON", b"RMID", b"CDDA", b"RDIB"})
#: Byte order marks of UTF-32 (checked first: they start like UTF-16's) and UTF-16.
_BOMS: tuple[tuple[bytes, str, int], ...] = (
    (b"\xff\xfe\x00\x00", "utf-32-le", 4),
    (b"\x00\x00\xfe\xff", "utf-32-be", 4),
    (b"\xff\xfe", "utf-16-le", 2),
    (b"\xfe\xff", "utf-16-be", 2),
)


class Unreadable(ValueError):
    """A payload that cannot be read, and so cannot be scrubbed; the message says why."""


@dataclass(frozen=True, slots=True)
class Text:
    """Decoded text and how to encode it back to the same kind of bytes."""

    text: str
    codec: str = "utf-8"
    #: The byte order mark the payload started with (kept on encoding).
    bom: bytes = b""
    #: Bytes after the last whole code unit of UTF-16/32 (kept on encoding).
    tail: bytes = b""

    def encode(self, text: str) -> bytes:
        """`text` (the scrubbed `self.text`) as bytes: untouched bytes come out as they were."""
        errors = "surrogateescape" if self.codec == "utf-8" else "surrogatepass"
        return self.bom + text.encode(self.codec, errors) + self.tail


def binary_kind(payload: bytes) -> str | None:
    """What binary format `payload` is (its magic number, else "binary data"), or None
    when it reads as text."""
    for magic, kind in _MAGIC:
        if payload.startswith(magic):
            return kind
    if _is_media(payload):
        return "media or compressed data"
    if read_text(payload) is None:
        return "binary data"
    return None


def read_text(payload: bytes) -> Text | None:
    """`payload` as text (see the module docstring), or None when it is binary."""
    for bom, codec, unit in _BOMS:
        if payload.startswith(bom):
            text = _decode_wide(payload[len(bom) :], codec, unit, bom)
            if text is not None or unit == 2:
                return text
            # `FF FE 00 00` is also UTF-16 text whose first character is U+0000.
    if _has_magic(payload):
        return None
    wide = _bomless_utf16(payload)
    if wide is not None:
        return _decode_wide(payload, wide, 2, b"")
    if _mostly_controls(payload):
        return None
    return Text(payload.decode("utf-8", "surrogateescape"))


def _has_magic(payload: bytes) -> bool:
    return payload.startswith(_MAGIC_PREFIXES) or _is_media(payload)


def _is_media(payload: bytes) -> bool:
    """Formats whose magic is not a plain prefix: RIFF containers (WebP, WAV, AVI), ISO
    media (MP4, MOV, HEIC), BMP images and bzip2 data."""
    if payload[:4] == b"RIFF" and payload[8:12] in _RIFF_FORMS:
        return True
    if payload[4:8] == b"ftyp":
        return True
    if payload[:3] == b"BZh" and payload[4:10] == b"1AY&SY":
        return True
    return payload[:2] == b"BM" and payload[6:10] == b"\x00\x00\x00\x00"


def _mostly_controls(data: bytes) -> bool:
    """More than 5% of the sample are control bytes text does not hold (uniformly
    random bytes, as compressed or encrypted data, have about 10.5%; text has next to
    none, whatever its encoding)."""
    sample = data[:_SAMPLE].rstrip(b"\x00")
    if not sample:
        return True
    controls = len(sample) - len(sample.translate(None, _CONTROLS))
    return controls * 20 > len(sample)


def _bomless_utf16(data: bytes) -> str | None:
    """The UTF-16 codec of text without a byte order mark: NULs in most odd (LE) or
    even (BE) bytes and hardly any in the others, as ASCII-range text gives."""
    sample = data[:_SAMPLE]
    half = len(sample) // 2
    if half < 4:
        return None
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if odd * 10 >= half * 7 and even * 20 < half:
        return "utf-16-le"
    if even * 10 >= half * 7 and odd * 20 < half:
        return "utf-16-be"
    return None


def _decode_wide(body: bytes, codec: str, unit: int, bom: bytes) -> Text | None:
    """UTF-16/32 `body` as text; lone surrogates are kept (`surrogatepass`), an odd
    trailing byte is carried along. None when it does not decode or is not text."""
    cut = len(body) - len(body) % unit
    try:
        text = body[:cut].decode(codec, "surrogatepass")
    except UnicodeDecodeError:
        return None
    sample = text[:_SAMPLE].rstrip("\x00")
    controls = sum(1 for ch in sample if (ch < " " and ch not in _TEXT_CONTROLS) or ch == "\x7f")
    if sample and controls * 20 > len(sample):
        return None
    return Text(text, codec, bom, body[cut:])

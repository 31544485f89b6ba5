"""Container-level byte code, no decoding: PNG text chunks, the GIF comment extension, WebP RIFF chunks and
their EXIF tags, a WebP header probe, and frame folders (numbered frames, the fps tag of the first PNG).

Metadata (``dict[str, str]``) lives in:
- png folder: tEXt/iTXt chunks in the first frame (as ComfyUI's PNGs), plus the fps.
- webp: EXIF ASCII tags holding ``"key:value"`` (ComfyUI's animated-webp convention).
- gif: one comment extension holding the whole dict as JSON.
"""
from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np

from . import backends
from .formats import _IMAGE_SUFFIXES, DEFAULT_FOLDER_FPS, FPS_KEY


# ---------------------------------------------------------------------------------------------
# PNG bytes (text chunks spliced in after IHDR)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png_text_chunk(key: str, value: str) -> bytes:
    try:
        return _png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # iTXt: uncompressed UTF-8, no language tag
        return _png_chunk(b"iTXt", key.encode("utf-8") + b"\0\0\0\0\0" + value.encode("utf-8"))


def _encode_png(rgb: np.ndarray, text: dict[str, str]) -> bytes:
    cv2 = backends.cv2
    if cv2 is not None:
        ok, buffer = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 4])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a PNG frame")
        png = buffer.tobytes()
    else:  # plain zlib PNG: filter type 0 on every row
        height, width = rgb.shape[:2]
        raw = np.concatenate([np.zeros((height, 1), np.uint8), rgb.reshape(height, width * 3)], axis=1)
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
        png = (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr)
               + _png_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + _png_chunk(b"IEND", b""))
    end_of_ihdr = 8 + 8 + 13 + 4
    return png[:end_of_ihdr] + b"".join(_png_text_chunk(k, v) for k, v in text.items()) + png[end_of_ihdr:]


def _png_text(data: bytes) -> dict[str, str]:
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("not a PNG file")
    text, pos = {}, 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        pos += 12 + length
        if kind == b"tEXt":
            key, _, value = body.partition(b"\0")
            text[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = body.partition(b"\0")
            text[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            text[key.decode("utf-8")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind in (b"IDAT", b"IEND"):
            break
    return text


def encode_png(rgb: np.ndarray, text: dict[str, str] | None = None) -> bytes:
    """uint8 RGB [H, W, 3] as PNG bytes, with ``text`` (key -> value) as tEXt/iTXt chunks after IHDR."""
    return _encode_png(rgb, text or {})


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks (tEXt, zTXt, iTXt) of PNG bytes."""
    return _png_text(data)


# ---------------------------------------------------------------------------------------------
# GIF comment extension


def _gif_blocks_end(data: bytes, pos: int) -> int:
    """Position after a chain of GIF data sub-blocks starting at ``pos``."""
    while data[pos]:
        pos += data[pos] + 1
    return pos + 1


def _gif_add_comment(data: bytes, comment: str) -> bytes:
    if not data.endswith(b";"):
        raise ValueError("GIF has no trailer; cannot add a comment")
    payload = comment.encode("utf-8")
    blocks = b"".join(bytes([len(part)]) + part for part in (payload[i:i + 255] for i in range(0, len(payload), 255)))
    return data[:-1] + b"\x21\xfe" + blocks + b"\x00;"


def _gif_comments(data: bytes) -> list[str]:
    if data[:6] not in (b"GIF87a", b"GIF89a"):
        raise ValueError("not a GIF file")
    flags = data[10]
    pos = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
    comments = []
    while pos < len(data) and data[pos] != 0x3B:
        if data[pos] == 0x21:  # extension: label, sub-blocks
            label, start = data[pos + 1], pos + 2
            pos = _gif_blocks_end(data, start)
            if label == 0xFE:
                chunks, p = [], start
                while data[p]:
                    chunks.append(data[p + 1:p + 1 + data[p]])
                    p += data[p] + 1
                comments.append(b"".join(chunks).decode("utf-8", errors="replace"))
        elif data[pos] == 0x2C:  # image: descriptor, optional local table, LZW size, sub-blocks
            local = data[pos + 9]
            pos += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
            pos = _gif_blocks_end(data, pos + 1)
        else:
            break
    return comments


# ---------------------------------------------------------------------------------------------
# WebP RIFF chunks and EXIF chunk (TIFF IFD0 of ASCII tags "key:value")

_EXIF_PROMPT_TAG = 0x0110  # ComfyUI puts "prompt:<json>" here and other keys at 0x010F, 0x010E, ...


def _exif_from_metadata(meta: dict[str, str]) -> bytes:
    entries, next_tag = {}, 0x010F
    for key, value in meta.items():
        if key == "prompt":
            tag = _EXIF_PROMPT_TAG
        else:
            tag, next_tag = next_tag, next_tag - 1
        entries[tag] = f"{key}:{value}".encode("utf-8") + b"\0"
    ifd_size = 2 + 12 * len(entries) + 4
    offset = 8 + ifd_size
    table, heap = [], b""
    for tag in sorted(entries):
        value = entries[tag]
        if len(value) <= 4:
            table.append(struct.pack("<HHI4s", tag, 2, len(value), value.ljust(4, b"\0")))
        else:
            table.append(struct.pack("<HHII", tag, 2, len(value), offset + len(heap)))
            heap += value + (b"\0" if len(value) % 2 else b"")
    return b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)) + b"".join(table) + b"\0\0\0\0" + heap


def _metadata_from_exif(tiff: bytes) -> dict[str, str]:
    if tiff.startswith(b"Exif\0\0"):
        tiff = tiff[6:]
    order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
    if order is None:
        return {}
    (ifd,) = struct.unpack(order + "I", tiff[4:8])
    (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
    meta = {}
    for i in range(count):
        tag, kind, n, raw = struct.unpack(order + "HHI4s", tiff[ifd + 2 + 12 * i: ifd + 14 + 12 * i])
        if kind != 2:
            continue
        value = raw[:n] if n <= 4 else tiff[struct.unpack(order + "I", raw)[0]:][:n]
        text = value.rstrip(b"\0").decode("utf-8", errors="replace")
        key, sep, rest = text.partition(":")
        if sep and key:
            meta[key] = rest
    return meta


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + (b"\0" if len(data) & 1 else b"")


def _riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file")
    chunks, pos = [], 12
    while pos + 8 <= len(data):
        kind, size = data[pos:pos + 4], struct.unpack("<I", data[pos + 4:pos + 8])[0]
        chunks.append((kind, data[pos + 8:pos + 8 + size]))
        pos += 8 + size + (size & 1)
    return chunks


def _webp_add_exif(data: bytes, exif: bytes, width: int, height: int) -> bytes:
    chunks = [c for c in _riff_chunks(data) if c[0] != b"EXIF"]
    if chunks[0][0] != b"VP8X":  # simple file: wrap in an extended header
        vp8x = struct.pack("<B3x", 0) + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        chunks.insert(0, (b"VP8X", vp8x))
    header = bytearray(chunks[0][1])
    header[0] |= 0x08  # EXIF present
    chunks[0] = (b"VP8X", bytes(header))
    chunks.append((b"EXIF", exif))
    body = b"".join(kind + struct.pack("<I", len(c)) + c + (b"\0" if len(c) & 1 else b"") for kind, c in chunks)
    return b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WEBP" + body


def _probe_webp(path: Path) -> dict:
    """Frame count (ANMF chunks), canvas size and mean frame rate from the RIFF chunk headers."""
    frames, width, height, durations = 0, 0, 0, []
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WEBP":
            raise ValueError(f"{str(path)!r} is not a WebP file")
        while True:
            header = f.read(8)
            if len(header) < 8:
                break
            kind, size = header[:4], struct.unpack("<I", header[4:])[0]
            if kind == b"VP8X":
                data = f.read(size)
                width = int.from_bytes(data[4:7], "little") + 1
                height = int.from_bytes(data[7:10], "little") + 1
                f.seek(size & 1, os.SEEK_CUR)
                continue
            if kind == b"ANMF":
                data = f.read(16)
                frames += 1
                durations.append(int.from_bytes(data[12:15], "little"))
                f.seek(size - 16 + (size & 1), os.SEEK_CUR)
                continue
            if kind in (b"VP8 ", b"VP8L") and frames == 0:
                frames = 1
            f.seek(size + (size & 1), os.SEEK_CUR)
    fps = _webp_fps(durations)
    if not width and backends.cv2 is not None:
        still = backends.cv2.imread(str(path))
        if still is not None:
            height, width = still.shape[:2]
    return {"frames": frames, "height": height, "width": width, "fps": fps}


def _webp_fps(durations: list[int]) -> float:
    """Frames per second from WebP frame delays (ms); they may alternate (167, 166, ...), so average them."""
    positive = [d for d in durations if d > 0]
    return 1000.0 * len(positive) / sum(positive) if positive else DEFAULT_FOLDER_FPS


# ---------------------------------------------------------------------------------------------
# frame folders


def _numbered_frames(folder: Path) -> list[Path]:
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES]
    natural = lambda p: [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", p.name)]
    return sorted(files, key=natural)


def _folder_fps(files: list[Path]) -> float:
    """The fps tag of a frame folder's first frame (a PNG written by write_video), else DEFAULT_FOLDER_FPS."""
    if files and files[0].suffix.lower() == ".png":
        return float(_png_text(files[0].read_bytes()).get(FPS_KEY, DEFAULT_FOLDER_FPS))
    return DEFAULT_FOLDER_FPS

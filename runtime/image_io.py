"""Robust image decoding: any file in, an RGB image or a clear ImageError out.

Every input a user can throw at the pipeline ends in one of two ways: an 8-bit RGB
`PIL.Image` (plus an ImageInfo saying what was converted), or an ImageError whose message is
"<file name>: <the problem>". Never a traceback, a hang or unbounded memory:

- zero-byte, missing or over-large files are refused before decoding;
- non-images are refused and named from their first bytes ("looks like a PDF document");
- only the formats a phone or a desktop photo comes in are decoded (ALLOWED_FORMATS); exotic
  Pillow plugins (EPS runs Ghostscript, for one) are never reached;
- the pixel count is read from the header (Image.open is lazy) and checked BEFORE decoding
  (decompression bombs); Pillow's own bomb warning is turned into an error;
- truncated files are errors: Pillow's ImageFile.LOAD_TRUNCATED_IMAGES stays False, so it
  raises instead of padding the image with grey;
- policy decisions, each documented on ImageLimits and in _to_rgb: images under 32 px on a side
  or with an aspect ratio over 8:1 are refused (no face in them can be matched); multi-frame
  files (animated GIF/WebP/PNG, multi-page TIFF, MPO) use the first frame; EXIF orientation is
  applied; 16-bit is scaled to 8-bit; transparency is composited on WHITE; CMYK, palette and
  grayscale become RGB.
"""
from __future__ import annotations

import dataclasses
import io
import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError
# Register exactly the decoders of ALLOWED_FORMATS (instead of Image.init() loading all of them).
from PIL import BmpImagePlugin, GifImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin  # noqa: F401

from glassfinder_runtime.errors import ImageError

# Pillow format names decoded here: what cameras, phones and browsers produce. The JPEG decoder
# also opens multi-picture phone JPEGs, which then report the format "MPO".
ALLOWED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
# Modes holding more than 8 bits per sample that are rescaled to 8 bits (not clipped).
_HIGH_BIT_MODES = ("I", "I;16", "I;16L", "I;16B", "I;16N")
# Modes with an alpha channel (premultiplied "La"/"RGBa" included).
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class ImageLimits:
    """What load_image accepts; every limit is checked from the header, before any pixel is decoded."""

    # Decompression-bomb guard: 50 MP is above every phone camera's default output (48 MP
    # sensors bin to 12 MP) and about 150 MB as RGB; a crafted 100000x100000 PNG is a few bytes.
    max_pixels: int = 50_000_000
    # Below this many pixels on the shorter side no face in the image gives a usable glasses crop
    # (the 128x64 crop would be upscaled 4x or more): refused with "too small" rather than
    # letting the detector report "no face", which would blame the photo's content.
    min_side: int = 32
    # Longer side / shorter side above this (a banner, a strip) is refused: letterboxed into the
    # square detector input, the image would be a thin line.
    max_aspect: float = 8.0
    # Files larger than this are refused without being read (50 MP stored uncompressed as RGB is 150 MB).
    max_file_bytes: int = 200 * 1024 * 1024


DEFAULT_LIMITS = ImageLimits()


@dataclass(frozen=True)
class ImageInfo:
    """What the file was and what load_image did to it."""

    name: str  # file name (or the name given for bytes) used in messages
    format: str  # Pillow format name, e.g. "JPEG"
    mode: str  # Pillow mode as stored, e.g. "CMYK", "I;16", "P"
    stored_size: tuple[int, int]  # (width, height) as stored in the file
    size: tuple[int, int]  # (width, height) of the returned image, after EXIF orientation
    orientation: int  # EXIF orientation tag that was applied (1 = none)
    multi_frame: bool  # the file holds several frames/pages; the first one was used
    notes: tuple[str, ...]  # human-readable conversions applied, e.g. "16-bit scaled to 8-bit"


# First bytes -> what the file looks like, for "not an image" messages. Checked in order.
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive (or an Office document)"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"Rar!", "a RAR archive"),
    (b"%!PS", "a PostScript file"),
    (b"\x7fELF", "an executable program"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"8BPS", "a Photoshop document"),
    (b"\x00\x00\x00\x0cjP  ", "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", "a JPEG 2000 image"),
    (b"ID3", "an MP3 audio file"),
    (b"OggS", "an Ogg audio/video file"),
    (b"\x00\x00\x01\x00", "a Windows icon"),
)
# ISO media "ftyp" brands (bytes 8..12).
_FTYP_BRANDS = {b"heic": "a HEIC photo", b"heix": "a HEIC photo", b"hevc": "a HEIC photo", b"mif1": "a HEIF photo",
                b"msf1": "a HEIF photo", b"avif": "an AVIF image", b"avis": "an AVIF image"}
# What a detected format becomes in messages when Pillow could not open it anyway.
_SNIFF_TO_FORMAT = {"a JPEG image": "JPEG", "a PNG image": "PNG", "a GIF image": "GIF", "a TIFF image": "TIFF",
                    "a WebP image": "WEBP", "a BMP image": "BMP"}
_UNSUPPORTED_IMAGES = ("a HEIC photo", "a HEIF photo", "an AVIF image", "a JPEG 2000 image", "a Photoshop document",
                       "an SVG drawing", "a Windows icon")


def sniff(head: bytes) -> str:
    """What the first bytes of a file look like, e.g. "a PDF document" or "a text file"; "" if unknown."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if head[:4] == b"RIFF":
        return {b"WEBP": "a WebP image", b"WAVE": "a WAV audio file", b"AVI ": "an AVI video"}.get(head[8:12], "a RIFF media file")
    if head[4:8] == b"ftyp":
        return _FTYP_BRANDS.get(head[8:12], "an MP4/QuickTime video")
    if head[:2] == b"BM" and len(head) >= 14:
        return "a BMP image"
    if head[:2] == b"MZ":
        return "a Windows executable"
    try:
        text = head.decode("utf-8").lstrip("\ufeff")
    except UnicodeDecodeError:
        try:  # a multi-byte character may be cut at the end of `head`
            text = head[:-3].decode("utf-8").lstrip("\ufeff")
        except UnicodeDecodeError:
            return ""
    if text and all(c.isprintable() or c in "\r\n\t\f" for c in text):
        lower = text.lstrip().lower()
        if lower.startswith("<svg") or (lower.startswith("<?xml") and "<svg" in lower):
            return "an SVG drawing"
        if lower.startswith(("<!doctype html", "<html")):
            return "an HTML page"
        if lower.startswith(("{", "[")):
            return "a JSON or other text file"
        return "a text file"
    return ""


def _error(name: str, problem: str) -> ImageError:
    return ImageError(f"{name}: {problem}")


def _detail(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text[:200]


def _open_source(source: str | os.PathLike | bytes | bytearray | memoryview, name: str | None,
                 limits: ImageLimits) -> tuple[BinaryIO, str, int]:
    """(file object, display name, size in bytes); refuses missing, empty and oversized files."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return io.BytesIO(data), name or "<image bytes>", len(data)
    path = Path(source)
    name = name or str(path)
    try:
        if path.is_dir():
            raise _error(name, "is a folder, not an image file")
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # a pipe or a device could block forever
            raise _error(name, "not a regular file")
        size = st.st_size
        if size > limits.max_file_bytes:
            raise _error(name, f"file is too large ({size / 2**20:.0f} MiB; limit {limits.max_file_bytes / 2**20:.0f} MiB)")
        return open(path, "rb"), name, size
    except FileNotFoundError:
        raise _error(name, "no such file") from None
    except PermissionError:
        raise _error(name, "permission denied") from None
    except OSError as exc:
        raise _error(name, f"cannot read the file ({exc.strerror or _detail(exc)})") from None


def _check_header(name: str, fmt: str, size: tuple[int, int], limits: ImageLimits) -> None:
    """Refuse by dimensions alone (the pixels are not decoded yet)."""
    w, h = size
    if w < 1 or h < 1:
        raise _error(name, f"corrupt {fmt}: the header says {w}x{h} pixels")
    if w * h > limits.max_pixels:
        raise _error(name, f"image too large: {w}x{h} = {w * h / 1e6:.0f} megapixels is over the "
                           f"{limits.max_pixels / 1e6:.0f} MP limit (decompression bomb guard)")
    if min(w, h) < limits.min_side:
        raise _error(name, f"image too small: {w}x{h} pixels; a face needs at least {limits.min_side} pixels on each side")
    if max(w, h) / min(w, h) > limits.max_aspect:
        raise _error(name, f"extreme aspect ratio: {w}x{h} pixels is over {limits.max_aspect:g}:1; crop it around the face")


def _scale_high_bit(im: Image.Image) -> Image.Image:
    """16-bit (or 32-bit integer) grayscale -> 8-bit "L" by rescaling 0..65535 to 0..255.

    Pillow's own convert("L") clips everything above 255 to white, which would turn a normal
    16-bit photo into a white sheet.
    """
    a = np.asarray(im, dtype=np.int64)
    a = np.clip(a, 0, 65535)
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), mode="L")


def _to_rgb(im: Image.Image) -> tuple[Image.Image, list[str]]:
    """Any supported mode -> 8-bit RGB, and notes saying what was done.

    Transparency is composited on white: transparent-background PNGs (avatars, product shots)
    are made to be seen on white pages, and black would merge dark frames and hair into the
    background.
    """
    notes: list[str] = []
    mode = im.mode
    if mode == "RGB":
        return im, notes
    if mode in _HIGH_BIT_MODES:
        notes.append(f"{mode} high bit depth scaled to 8-bit")
        return _scale_high_bit(im).convert("RGB"), notes
    if mode == "F":
        raise ValueError("32-bit floating-point images are not supported (no standard pixel range)")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in _ALPHA_MODES:
        rgba = im.convert("RGBA")
        alpha = rgba.getchannel("A")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba.convert("RGB"), mask=alpha)
        if alpha.getextrema()[0] < 255:
            notes.append("transparency composited on white")
        return out, notes
    if mode == "CMYK":
        notes.append("CMYK converted to RGB (no colour profile applied)")
    elif mode in ("L", "1"):
        notes.append("grayscale converted to RGB")
    elif mode == "P":
        notes.append("palette converted to RGB")
    return im.convert("RGB"), notes


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ExifTags.Base.Orientation, 1)
    except Exception:  # unreadable EXIF: the photo itself may be fine
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def decode_image(source: str | os.PathLike | bytes | bytearray | memoryview, limits: ImageLimits = DEFAULT_LIMITS,
                 *, name: str | None = None) -> tuple[Image.Image, ImageInfo]:
    """Decode a file path or encoded bytes into (8-bit RGB image, ImageInfo).

    `name` is the file name used in messages (defaults to the path, or "<image bytes>").
    Raises ImageError "<name>: <problem>" for every input it cannot turn into a usable photo.
    """
    fp, name, size = _open_source(source, name, limits)
    with fp, warnings.catch_warnings(record=True) as caught:
        # Pillow warns about corrupt EXIF and the like: kept as notes instead of printed to stderr.
        warnings.simplefilter("always")
        # Pillow warns (DecompressionBombWarning) between MAX_IMAGE_PIXELS and twice that: an error here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image, info = _decode(fp, name, size, limits)
    extra = tuple(dict.fromkeys(f"decoder warning: {str(w.message).strip()[:120]}" for w in caught))
    return image, dataclasses.replace(info, notes=info.notes + extra)


def _decode(fp: BinaryIO, name: str, size: int, limits: ImageLimits) -> tuple[Image.Image, ImageInfo]:
    if size == 0:
        raise _error(name, "empty file (0 bytes)")
    looks = sniff(fp.read(64))
    fp.seek(0)
    try:
        im = Image.open(fp, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _error(name, f"image too large (decompression bomb guard): {_detail(exc)}") from None
    except UnidentifiedImageError:
        raise _unidentified(name, looks, size) from None
    except Exception as exc:  # a broken header makes plugins raise all sorts of things
        fmt = _SNIFF_TO_FORMAT.get(looks, "image")
        raise _error(name, f"corrupt or truncated {fmt}: the header cannot be read ({_detail(exc)})") from None
    with im:
        fmt = im.format or "image"
        _check_header(name, fmt, im.size, limits)
        try:
            multi_frame = bool(getattr(im, "is_animated", False))
            if multi_frame:
                im.seek(0)
            im.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise _error(name, f"image too large (decompression bomb guard): {_detail(exc)}") from None
        except Exception as exc:  # OSError, SyntaxError, EOFError, ValueError... from the decoders
            raise _decode_failure(name, fmt, exc) from None
        _check_header(name, fmt, im.size, limits)  # the first frame may differ from the header
        return _finish(im, name, fmt, multi_frame)


def _finish(im: Image.Image, name: str, fmt: str, multi_frame: bool) -> tuple[Image.Image, ImageInfo]:
    """Orientation and colour conversion of a loaded first frame."""
    stored_size, mode = im.size, im.mode
    orientation = _orientation(im)
    notes: list[str] = []
    try:
        oriented = ImageOps.exif_transpose(im)  # always a new image, so the file can be closed
    except Exception as exc:
        orientation, oriented = 1, im.copy()
        notes.append(f"EXIF orientation unreadable, ignored ({_detail(exc)})")
    if orientation != 1:
        notes.append(f"EXIF orientation {orientation} applied")
    if multi_frame:
        notes.append(f"multi-frame {fmt}: the first frame was used")
    try:
        rgb, mode_notes = _to_rgb(oriented)
    except ValueError as exc:
        raise _error(name, f"unsupported pixel format {mode} in {fmt}: {_detail(exc)}") from None
    info = ImageInfo(name=name, format=fmt, mode=mode, stored_size=stored_size, size=rgb.size,
                     orientation=orientation, multi_frame=multi_frame, notes=tuple(notes + mode_notes))
    return rgb, info


def _unidentified(name: str, looks: str, size: int) -> ImageError:
    if looks in _SNIFF_TO_FORMAT:
        return _error(name, f"corrupt or truncated {_SNIFF_TO_FORMAT[looks]}: the header cannot be read ({size} bytes)")
    if looks in _UNSUPPORTED_IMAGES:
        return _error(name, f"unsupported image format: {looks}; save it as JPEG or PNG")
    if looks:
        return _error(name, f"not an image: it looks like {looks}")
    return _error(name, "not an image: unrecognised content")


def _decode_failure(name: str, fmt: str, exc: BaseException) -> ImageError:
    detail = _detail(exc)
    if "truncated" in detail.lower() or isinstance(exc, EOFError):
        return _error(name, f"truncated {fmt}: the file ends before the image data does ({detail})")
    return _error(name, f"corrupt {fmt}: the image data cannot be decoded ({detail})")


def load_image(source: str | os.PathLike | bytes | bytearray | memoryview, limits: ImageLimits = DEFAULT_LIMITS,
               *, name: str | None = None) -> Image.Image:
    """decode_image without the ImageInfo: an 8-bit RGB image, or ImageError."""
    return decode_image(source, limits, name=name)[0]


def list_image_files(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The files batch mode processes: each file given, and every non-hidden file of each folder given.

    Folders are not searched recursively; their files are taken whatever their extension, so a
    stray document is reported as "not an image" instead of being silently skipped. A path that
    does not exist is kept (decoding reports it). Raises ImageError for a folder with no files.
    """
    items = [folder_or_files] if isinstance(folder_or_files, (str, os.PathLike)) else list(folder_or_files)
    files: list[Path] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (p.is_file() or not p.exists()))
            if not found:
                raise ImageError(f"{path}: the folder has no files")
            files.extend(found)
        else:
            files.append(path)
    return files


def iter_images(folder_or_files: str | os.PathLike | Iterable[str | os.PathLike], limits: ImageLimits = DEFAULT_LIMITS,
                ) -> Iterator[tuple[Path, Image.Image | ImageError]]:
    """Batch mode: (path, RGB image) for each good file and (path, ImageError) for each bad one.

    Every file is attempted; one bad file never stops the batch. See list_image_files for which
    files are taken.
    """
    for path in list_image_files(folder_or_files):
        try:
            yield path, load_image(path, limits)
        except ImageError as exc:
            yield path, exc

"""Hostile and unusual images: each gives a correct RGB image or an ImageError naming the file and the problem.

Every image is generated here (nothing from ../shared), written to tmp_path under a name that
the error message must repeat.
"""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from glassfinder_runtime.errors import ImageError
from glassfinder_runtime.image_io import (
    ImageLimits,
    decode_image,
    iter_images,
    list_image_files,
    load_image,
    sniff,
)

# JPEG is lossy: colours of a flat patch come back within this many levels.
JPEG_TOLERANCE = 12


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def photo(w: int = 96, h: int = 64) -> Image.Image:
    """A smooth RGB test picture (gradients compress well and survive JPEG)."""
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None]
    a = np.stack([np.broadcast_to(x, (h, w)), np.broadcast_to(y, (h, w)), np.full((h, w), 90.0)], axis=-1)
    return Image.fromarray(a.astype(np.uint8), "RGB")


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(w: int, h: int) -> bytes:
    """A tiny, well-formed PNG start that claims w x h RGB pixels (a decompression bomb when big)."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + png_chunk(b"IEND", b""))


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def expect_error(path: Path, *fragments: str) -> str:
    with pytest.raises(ImageError) as info:
        load_image(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}: "), msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


def test_truncated_images_are_never_padded():
    # Pillow would silently fill a truncated image with grey if this were True.
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    ("name", "make", "fragments"),
    [
        ("empty.jpg", lambda: b"", ("empty file",)),
        ("notes.jpg", lambda: b"shopping list\nmilk, eggs\n", ("not an image", "text file")),
        ("page.html.png", lambda: b"<!DOCTYPE html><html><body>hi</body></html>", ("not an image", "HTML page")),
        ("report.png", lambda: b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", ("not an image", "PDF document")),
        ("archive.png", lambda: b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(40), ("not an image", "ZIP archive")),
        ("program.jpg", lambda: b"\x7fELF\x02\x01\x01" + bytes(60), ("not an image", "executable")),
        ("noise.jpg", lambda: bytes(np.random.default_rng(1).integers(128, 256, 300, dtype=np.uint8)),
         ("not an image", "unrecognised")),
        ("iphone.jpg", lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(40),
         ("unsupported image format", "HEIC")),
        ("drawing.png", lambda: b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>',
         ("unsupported image format", "SVG")),
        ("postscript.jpg", lambda: b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n", ("not an image", "PostScript")),
        ("cut.jpg", lambda: (lambda b: b[: len(b) // 2])(encode(photo(), "JPEG")), ("truncated JPEG",)),
        ("cut.png", lambda: (lambda b: b[: len(b) // 2])(encode(photo(), "PNG")), ("truncated PNG",)),
        ("header_only.jpg", lambda: encode(photo(), "JPEG")[:20], ("corrupt or truncated JPEG",)),
        ("header_only.png", lambda: encode(photo(), "PNG")[:30], ("corrupt or truncated PNG",)),
        ("tiny.png", lambda: encode(photo(8, 8), "PNG"), ("too small", "8x8")),
        ("strip.png", lambda: encode(photo(2000, 10), "PNG"), ("too small", "2000x10")),
        ("banner.png", lambda: encode(photo(2000, 100), "PNG"), ("aspect ratio", "2000x100")),
    ],
)
def test_hostile_files_give_a_clear_error(tmp_path, name, make, fragments):
    expect_error(write(tmp_path, name, make()), *fragments)


def test_corrupt_png_data(tmp_path):
    data = bytearray(encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)), "PNG"))
    start = data.find(b"IDAT") + 40
    data[start:start + 20] = bytes(b ^ 0xFF for b in data[start:start + 20])
    expect_error(write(tmp_path, "flipped.png", bytes(data)), "corrupt PNG")


def test_missing_file_and_folder(tmp_path):
    expect_error(tmp_path / "nope.jpg", "no such file")
    (tmp_path / "dir.jpg").mkdir()
    expect_error(tmp_path / "dir.jpg", "folder")
    os.mkfifo(tmp_path / "pipe.jpg")  # opening it for reading would block forever
    expect_error(tmp_path / "pipe.jpg", "not a regular file")


@pytest.mark.parametrize(("w", "h"), [(100_000, 100_000), (8_000, 7_500)])
def test_decompression_bomb_refused_from_the_header(tmp_path, monkeypatch, w, h):
    """10 GP is over Pillow's own limit; 60 MP passes Pillow but not ours. Neither is decoded."""
    data = png_header_only(w, h)
    assert len(data) < 100  # the whole "bomb" is a few bytes
    decoded = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: decoded.append(self) or pytest.fail("decoded"))
    expect_error(write(tmp_path, "bomb.png", data), "image too large", "decompression bomb")
    assert decoded == []


def test_pixel_limit_is_configurable(tmp_path):
    path = write(tmp_path, "photo.png", encode(photo(96, 64), "PNG"))
    with pytest.raises(ImageError, match="over the 0 MP limit"):
        load_image(path, ImageLimits(max_pixels=96 * 64 - 1))
    assert load_image(path, ImageLimits(max_pixels=96 * 64)).size == (96, 64)
    assert load_image(write(tmp_path, "tiny.png", encode(photo(8, 8), "PNG")), ImageLimits(min_side=8)).size == (8, 8)


def test_good_png_and_jpeg_round_trip(tmp_path):
    src = photo()
    im, info = decode_image(write(tmp_path, "a.png", encode(src, "PNG")))
    assert (im.mode, im.size, info.format, info.notes) == ("RGB", (96, 64), "PNG", ())
    np.testing.assert_array_equal(np.asarray(im), np.asarray(src))
    im = load_image(encode(src, "JPEG", quality=95))
    assert np.abs(np.asarray(im, np.int16) - np.asarray(src, np.int16)).max() <= JPEG_TOLERANCE


def test_bytes_input_uses_the_given_name():
    with pytest.raises(ImageError, match=r"^upload\.jpg: empty file"):
        load_image(b"", name="upload.jpg")
    with pytest.raises(ImageError, match=r"^<image bytes>: not an image"):
        load_image(b"hello")


def test_grayscale(tmp_path):
    gray = photo().convert("L")
    im, info = decode_image(write(tmp_path, "g.png", encode(gray, "PNG")))
    a = np.asarray(im)
    assert info.mode == "L" and im.mode == "RGB"
    np.testing.assert_array_equal(a[..., 0], np.asarray(gray))
    np.testing.assert_array_equal(a[..., 0], a[..., 2])


def test_cmyk_jpeg(tmp_path):
    src = Image.new("RGB", (64, 64), (200, 30, 40))
    im, info = decode_image(write(tmp_path, "cmyk.jpg", encode(src.convert("CMYK"), "JPEG", quality=95)))
    assert info.mode == "CMYK" and im.mode == "RGB"
    assert np.abs(np.asarray(im, np.int16)[32, 32] - (200, 30, 40)).max() <= JPEG_TOLERANCE


def test_palette_and_palette_transparency(tmp_path):
    src = photo().convert("P")
    im, info = decode_image(write(tmp_path, "p.png", encode(src, "PNG")))
    assert info.mode == "P"
    np.testing.assert_array_equal(np.asarray(im), np.asarray(src.convert("RGB")))
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    pal.paste(0, (0, 0, 20, 40))  # left half: index 0, which is transparent
    im = load_image(write(tmp_path, "pt.png", encode(pal, "PNG", transparency=0)))
    assert tuple(np.asarray(im)[20, 5]) == (255, 255, 255)  # composited on white, not black
    assert tuple(np.asarray(im)[20, 30]) == (10, 200, 10)


def test_sixteen_bit_is_rescaled_not_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 64 * 64).round().astype(np.uint16).reshape(64, 64)
    im, info = decode_image(write(tmp_path, "deep.png", encode(Image.fromarray(ramp), "PNG")))
    assert info.mode.startswith("I")
    a = np.asarray(im)[..., 0].astype(np.int32)
    expected = np.round(ramp.astype(np.float64) * 255 / 65535)
    assert np.abs(a - expected).max() <= 1
    assert a.min() == 0 and a.max() == 255 and 120 <= int(np.median(a)) <= 135  # not a white sheet


def test_rgba_composited_on_white(tmp_path):
    a = np.zeros((40, 40, 4), np.uint8)
    a[..., :3] = (20, 40, 60)
    a[:, 20:, 3] = 255  # right half opaque, left half fully transparent
    a[:, 10:20, 3] = 128  # a half-transparent band
    im, info = decode_image(write(tmp_path, "rgba.png", encode(Image.fromarray(a, "RGBA"), "PNG")))
    out = np.asarray(im).astype(np.int32)
    assert tuple(out[5, 5]) == (255, 255, 255)
    assert tuple(out[5, 30]) == (20, 40, 60)
    assert np.abs(out[5, 15] - (255 + np.array([20, 40, 60])) / 2).max() <= 2
    assert "transparency composited on white" in info.notes


def test_exif_orientation_is_applied(tmp_path):
    src = Image.new("RGB", (80, 48), (0, 0, 200))
    src.paste((255, 0, 0), (0, 0, 16, 16))  # red marker in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    im, info = decode_image(write(tmp_path, "phone.jpg", encode(src, "JPEG", quality=95, exif=exif.tobytes())))
    assert info.stored_size == (80, 48) and im.size == (48, 80) and info.orientation == 6
    out = np.asarray(im, np.int16)
    assert np.abs(out[4, 44] - (255, 0, 0)).max() <= JPEG_TOLERANCE  # marker moved to the top-right
    assert np.abs(out[4, 4] - (0, 0, 200)).max() <= JPEG_TOLERANCE


def test_animated_gif_uses_the_first_frame(tmp_path):
    red, blue = Image.new("RGB", (48, 48), (255, 0, 0)), Image.new("RGB", (48, 48), (0, 0, 255))
    data = encode(red, "GIF", save_all=True, append_images=[blue, blue], duration=100, loop=0)
    im, info = decode_image(write(tmp_path, "anim.gif", data))
    assert info.multi_frame and any("first frame" in n for n in info.notes)
    assert tuple(np.asarray(im)[24, 24]) == (255, 0, 0)


def test_multi_page_tiff_and_webp_decode(tmp_path):
    pages = [Image.new("RGB", (40, 40), c) for c in ((0, 200, 0), (9, 9, 9))]
    im, info = decode_image(write(tmp_path, "pages.tif", encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])))
    assert info.multi_frame and tuple(np.asarray(im)[20, 20]) == (0, 200, 0)
    assert load_image(write(tmp_path, "w.webp", encode(photo(), "WEBP", lossless=True))).size == (96, 64)


def test_sniff_names_common_formats():
    assert sniff(b"%PDF-1.4") == "a PDF document"
    assert sniff(b"RIFF\0\0\0\0WEBPVP8 ") == "a WebP image"
    assert sniff(b"\x00\x00\x00\x20ftypisom") == "an MP4/QuickTime video"
    assert sniff(bytes([0xC3, 0x28, 0xFF, 0x00])) == ""


def test_batch_processes_every_good_file_and_reports_every_bad_one(tmp_path):
    write(tmp_path, "a_good.jpg", encode(photo(), "JPEG"))
    write(tmp_path, "b_empty.jpg", b"")
    write(tmp_path, "c_good.png", encode(photo(), "PNG"))
    write(tmp_path, "d_text.png", b"not really a png")
    write(tmp_path, ".DS_Store", b"\0\0\0\1Bud1")  # hidden files are not photos
    (tmp_path / "sub").mkdir()
    results = list(iter_images(tmp_path))
    assert [p.name for p, _ in results] == ["a_good.jpg", "b_empty.jpg", "c_good.png", "d_text.png"]
    kinds = [type(r) for _, r in results]
    assert kinds == [Image.Image, ImageError, Image.Image, ImageError]
    assert "empty file" in str(results[1][1]) and "text file" in str(results[3][1])
    # Explicit lists keep their order, and a missing file is reported, not skipped.
    listed = list(iter_images([tmp_path / "c_good.png", tmp_path / "missing.jpg"]))
    assert isinstance(listed[0][1], Image.Image) and "no such file" in str(listed[1][1])


def test_empty_folder_is_an_error(tmp_path):
    with pytest.raises(ImageError, match="has no files"):
        list_image_files(tmp_path)

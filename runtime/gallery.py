"""PQ gallery: the spec, the binary file reader/writer and the asymmetric-distance search.

This module is the executable spec of the phone code (Kotlin/Swift stubs do the same steps):
pure numpy, no torch, no faiss. Training the codebooks lives in `glassfinder_export.gallery`.

- `PQSpec` / `parse_spec("PQ16x8,IP")`: M sub-quantizers of `nbits` bits, metric explicit
  (faiss's "PQ16" leaves it out). Optional "OPQ16," prefix: a learned d x d rotation first.
  Optional ",Refine(SQ8)" suffix: an int8 code per dimension re-ranks the PQ shortlist.
- `read_gallery` / `write_gallery`: the `.gfpq` format, byte by byte in docs/gallery_format.md.
- `pq_search(gallery, xq, k) -> (D, I)`: ADC with lookup tables, faiss's numpy contract
  (`D (nq, k)` float32, `I (nq, k)` int64, -1 where fewer than k results). With refine, the
  ADC top `shortlist` rows are re-scored with their SQ8 codes (faiss's IndexRefine).
- `exact_search` is the float reference; `encode` is one-shot enrollment with existing codebooks.

Ids are non-negative int64 SKU indices; the SKU id strings live in the bundle metadata, mapped
by index.
"""
from __future__ import annotations

import enum
import hashlib
import os
import re
import struct
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt

from glassfinder_runtime.errors import GalleryError

FORMAT_MAGIC = b"GFPQ"
# Highest version this writer writes, and the highest `min_reader_version` this reader
# understands. A file without refine is written as version 1 (byte-identical to what version-1
# writers wrote, so version-1 phone readers keep reading it); refine needs version 2.
FORMAT_VERSION = 2
READER_VERSION = 2
_PLAIN_VERSION = 1
HEADER_SIZE = 64
# magic, version, min_reader_version, header_size, d, M, nbits, metric, flags, n, shortlist
# (0 without refine; reserved bytes in version 1); 20 reserved bytes.
_HEADER = struct.Struct("<4sHHIIIIIIQI20x")
FLAG_OPQ = 1  # a (d, d) float32 rotation follows the codebooks
FLAG_REFINE_SQ8 = 2  # (d,) float32 scales and (n, d) int8 codes follow the ids
_KNOWN_FLAGS = FLAG_OPQ | FLAG_REFINE_SQ8
MIN_NBITS, MAX_NBITS = 4, 8  # codes are one byte per sub-quantizer (not bit-packed)
# Refine codes known to this reader: "SQ8" = symmetric per-dimension int8 (scale_j * code_ij).
REFINE_KINDS = ("SQ8",)
SQ8_MAX = 127  # codes are -127..127: symmetric, so -128 is never written
# Rows of the PQ (ADC) ranking re-scored with the refine codes, by default. 64 of 3,200 keeps
# the refine cost at 64 * d multiply-adds per query; raised to k when k is larger, cut to n.
DEFAULT_SHORTLIST = 64

# Galleries at least this large are searched one query at a time with pair lookup tables
# (two sub-codes -> one 16-bit index into a ksub*ksub table): half the gathers, which is what
# makes 1M codes fit in 30 ms on one thread. Smaller galleries batch the queries instead.
PAIR_GATHER_MIN_N = 16384
# Codes scored per chunk by the pair path (the accumulator stays in cache).
_SCORE_CHUNK = 65536
# Scores materialised at once when batching queries (float32 elements, about 64 MB).
_MAX_BATCH_SCORES = 1 << 24
# Rows encoded at once; the (rows, ksub) distance table stays a few MB.
_ENCODE_CHUNK = 16384


class Metric(enum.Enum):
    """Similarity of the search. Values are faiss's MetricType numbers (stored in the file)."""

    IP = 0  # inner product, higher is better (cosine for L2-normalised embeddings)
    L2 = 1  # squared Euclidean distance, lower is better


_SPEC_RE = re.compile(r"^(?:OPQ(\d+),)?PQ(\d+)x(\d+),([A-Z0-9]+)(?:,Refine\(([^()]*)\))?$")


@dataclass(frozen=True)
class PQSpec:
    """A product quantizer: `M` sub-quantizers of `2**nbits` centroids, and the search metric."""

    M: int  # sub-quantizers; must divide d; code size is M bytes
    nbits: int  # bits per sub-code, 4..8 (ksub = 2**nbits centroids per sub-space)
    metric: Metric  # explicit: IP for L2-normalised embeddings
    opq: bool = False  # a learned orthogonal d x d rotation is applied before the PQ
    refine: str | None = None  # "SQ8": the PQ shortlist is re-ranked with per-dimension int8 codes

    def __post_init__(self) -> None:
        if not isinstance(self.metric, Metric):
            raise GalleryError(f"PQ spec metric must be a Metric, got {self.metric!r}")
        if self.refine is not None and self.refine not in REFINE_KINDS:
            raise GalleryError(f"PQ spec refine kind {self.refine!r} is not supported: use "
                               f"{', '.join(f'Refine({k})' for k in REFINE_KINDS)} or no refine")
        if self.M < 1:
            raise GalleryError(f"PQ spec needs M >= 1 sub-quantizers, got M={self.M}")
        if not MIN_NBITS <= self.nbits <= MAX_NBITS:
            raise GalleryError(
                f"PQ spec nbits={self.nbits} is not supported: the reader stores one byte per "
                f"sub-code, nbits must be in {MIN_NBITS}..{MAX_NBITS}")

    @property
    def ksub(self) -> int:
        """Centroids per sub-quantizer."""
        return 1 << self.nbits

    @property
    def code_size(self) -> int:
        """Bytes of the PQ code of one vector (one byte per sub-code; the manifest's code_size)."""
        return self.M

    def refine_code_size(self, d: int) -> int:
        """Bytes of the refine code of one d-dimensional vector (SQ8: one byte per dimension)."""
        return d if self.refine == "SQ8" else 0

    def bytes_per_vector(self, d: int) -> int:
        """All code bytes of one vector: the PQ code plus the refine code."""
        return self.code_size + self.refine_code_size(d)

    def without_refine(self) -> PQSpec:
        """The same PQ without the refine stage."""
        return PQSpec(M=self.M, nbits=self.nbits, metric=self.metric, opq=self.opq)

    def dsub(self, d: int) -> int:
        """Sub-vector length for vectors of dimension d (M must divide d)."""
        if d < 1 or d % self.M:
            raise GalleryError(f"PQ spec {self}: M={self.M} must divide the vector dimension d={d}")
        return d // self.M

    def __str__(self) -> str:
        prefix = f"OPQ{self.M}," if self.opq else ""
        suffix = f",Refine({self.refine})" if self.refine else ""
        return f"{prefix}PQ{self.M}x{self.nbits},{self.metric.name}{suffix}"


def parse_spec(text: str) -> PQSpec:
    """Parse "PQ16x8,IP" / "OPQ16,PQ16x8,L2,Refine(SQ8)" into a PQSpec; `str(parse_spec(s)) == s`."""
    match = _SPEC_RE.match(text.strip())
    if match is None:
        raise GalleryError(
            f"PQ spec {text!r} is invalid: write it as [OPQ<M>,]PQ<M>x<nbits>,<metric>[,Refine(SQ8)] "
            f"with the metric explicit, e.g. 'PQ16x8,IP' or 'OPQ16,PQ16x8,IP,Refine(SQ8)'")
    opq_m, m, nbits, metric, refine = match.groups()
    if refine is not None and refine not in REFINE_KINDS:
        raise GalleryError(f"PQ spec {text!r}: unknown refine kind {refine!r}, supported: "
                           f"{', '.join(f'Refine({k})' for k in REFINE_KINDS)}")
    if metric not in Metric.__members__:
        raise GalleryError(f"PQ spec {text!r}: unknown metric {metric!r}, use IP or L2")
    if opq_m is not None and int(opq_m) != int(m):
        raise GalleryError(f"PQ spec {text!r}: OPQ{opq_m} must match the PQ's M={m}")
    return PQSpec(M=int(m), nbits=int(nbits), metric=Metric[metric], opq=opq_m is not None,
                  refine=refine)


@dataclass(frozen=True, eq=False)
class Gallery:
    """A PQ-compressed gallery: codebooks, one code per vector, and the vector ids.

    codebooks: (M, ksub, dsub) float32; codes: (n, M) uint8; ids: (n,) int64, unique, >= 0;
    rotation: (d, d) float32 or None (OPQ: vectors are rotated as `x @ rotation.T` first).
    Refine (spec.refine == "SQ8"): refine_scales (d,) float32 > 0 and refine_codes (n, d) int8
    in the ORIGINAL (unrotated) space, x_ij ~ scale_j * code_ij; `shortlist` ADC rows are
    re-scored per query. Without refine both are None.
    Treat the arrays as immutable: search caches a transposed copy of the codes.
    """

    spec: PQSpec
    d: int
    codebooks: npt.NDArray[np.float32]
    codes: npt.NDArray[np.uint8]
    ids: npt.NDArray[np.int64]
    rotation: npt.NDArray[np.float32] | None = None
    refine_scales: npt.NDArray[np.float32] | None = None
    refine_codes: npt.NDArray[np.int8] | None = None
    shortlist: int = DEFAULT_SHORTLIST

    def __post_init__(self) -> None:
        _check_arrays(self.spec, self.d, self.codebooks, self.codes, self.ids, self.rotation)
        _check_refine(self.spec, self.d, self.codes.shape[0], self.refine_scales, self.refine_codes,
                      self.shortlist)

    @property
    def n(self) -> int:
        return int(self.codes.shape[0])

    @cached_property
    def _codes_t(self) -> npt.NDArray[np.uint8]:
        """(M, n) codes, one contiguous row per sub-quantizer (the gather reads rows)."""
        return np.ascontiguousarray(self.codes.T)

    @cached_property
    def _pair_codes_t(self) -> npt.NDArray[np.uint16]:
        """(M // 2, n) pair indices `codes[:, 2j] + ksub * codes[:, 2j + 1]`."""
        c = self._codes_t
        even = c[0:self.spec.M - 1:2].astype(np.uint16)
        odd = c[1::2].astype(np.uint16)
        return np.ascontiguousarray(even + odd * np.uint16(self.spec.ksub))

    @cached_property
    def _centroid_norms(self) -> npt.NDArray[np.float32]:
        """(M, ksub) squared norms of the centroids (the L2 lookup tables need them)."""
        return np.einsum("mkj,mkj->mk", self.codebooks, self.codebooks)


def _check_arrays(spec: PQSpec, d: int, codebooks: np.ndarray, codes: np.ndarray, ids: np.ndarray,
                  rotation: np.ndarray | None) -> None:
    """Raise GalleryError if the arrays do not form a valid gallery for `spec`."""
    dsub = spec.dsub(d)
    n = codes.shape[0] if codes.ndim else -1
    expected = {"codebooks": ((spec.M, spec.ksub, dsub), np.float32),
                "codes": ((n, spec.M), np.uint8), "ids": ((n,), np.int64)}
    for name, arr in (("codebooks", codebooks), ("codes", codes), ("ids", ids)):
        shape, dtype = expected[name]
        if arr.ndim != len(shape) or arr.shape != shape or arr.dtype != dtype:
            raise GalleryError(f"{name} must be {np.dtype(dtype).name} of shape {shape}, "
                               f"got {arr.dtype.name} {arr.shape}")
    if spec.opq != (rotation is not None):
        raise GalleryError(f"spec {spec} {'needs' if spec.opq else 'has no'} OPQ rotation, "
                           f"but one is {'missing' if spec.opq else 'present'}")
    if rotation is not None and (rotation.shape != (d, d) or rotation.dtype != np.float32):
        raise GalleryError(f"rotation must be float32 of shape {(d, d)}, got "
                           f"{rotation.dtype.name} {rotation.shape}")
    if not np.isfinite(codebooks).all() or (rotation is not None and not np.isfinite(rotation).all()):
        raise GalleryError("codebooks or rotation contain NaN or infinity")
    if spec.nbits < 8 and codes.size and int(codes.max()) >= spec.ksub:
        raise GalleryError(f"codes out of range: a sub-code is {int(codes.max())}, "
                           f"but nbits={spec.nbits} allows 0..{spec.ksub - 1}")
    if ids.size:
        if int(ids.min()) < 0:
            bad = int(np.flatnonzero(ids < 0)[0])
            raise GalleryError(f"ids out of range: ids[{bad}] = {int(ids[bad])}, ids must be >= 0 "
                               f"(-1 means 'no result' in search output)")
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            raise GalleryError(f"duplicate ids: {dup[:5].tolist()} appear more than once "
                               f"({dup.size} duplicated)")


def _check_refine(spec: PQSpec, d: int, n: int, scales: np.ndarray | None, codes: np.ndarray | None,
                  shortlist: int) -> None:
    """Raise GalleryError if the refine arrays do not match `spec` (present iff spec.refine)."""
    if spec.refine is None:
        if scales is not None or codes is not None:
            raise GalleryError(f"spec {spec} has no refine stage, but refine scales/codes are present")
        return
    if scales is None or codes is None:
        raise GalleryError(f"spec {spec} needs refine scales and codes, but they are missing")
    if scales.shape != (d,) or scales.dtype != np.float32:
        raise GalleryError(f"refine scales must be float32 of shape {(d,)}, got "
                           f"{scales.dtype.name} {scales.shape}")
    if codes.shape != (n, d) or codes.dtype != np.int8:
        raise GalleryError(f"refine codes must be int8 of shape {(n, d)}, got "
                           f"{codes.dtype.name} {codes.shape}")
    if not (np.isfinite(scales).all() and (scales > 0).all()):
        raise GalleryError("refine scales must be finite and > 0")
    if codes.size and int(codes.min()) < -SQ8_MAX:
        raise GalleryError(f"refine codes out of range: SQ8 codes are -{SQ8_MAX}..{SQ8_MAX}, "
                           f"got {int(codes.min())}")
    if isinstance(shortlist, bool) or not isinstance(shortlist, (int, np.integer)) or shortlist < 1:
        raise GalleryError(f"refine shortlist must be an integer >= 1, got {shortlist!r}")


# ---------------------------------------------------------------------------------------------
# File format (docs/gallery_format.md)


def _flags(spec: PQSpec) -> int:
    return (FLAG_OPQ if spec.opq else 0) | (FLAG_REFINE_SQ8 if spec.refine == "SQ8" else 0)


def _layout(d: int, spec: PQSpec, n: int, header_size: int = HEADER_SIZE) -> list[tuple[str, int, int]]:
    """Sections of a file as (name, offset, size) in file order, checksum last."""
    sizes = [("codebooks", spec.M * spec.ksub * spec.dsub(d) * 4),
             ("rotation", d * d * 4 if spec.opq else 0),
             ("codes", n * spec.M)]
    out, offset = [], header_size
    for name, size in sizes:
        out.append((name, offset, size))
        offset += size
    pad = -offset % 8  # ids are 8-byte aligned so that the file can be memory-mapped
    out.append(("padding", offset, pad))
    offset += pad
    # Version 2: the refine section after the ids (scales stay 4-byte aligned: ids end at 8k).
    for name, size in (("ids", n * 8), ("refine_scales", d * 4 if spec.refine else 0),
                       ("refine_codes", n * spec.refine_code_size(d)), ("checksum", 4)):
        out.append((name, offset, size))
        offset += size
    return out


def gallery_to_bytes(gallery: Gallery) -> bytes:
    """The `.gfpq` encoding of `gallery` (deterministic: same gallery, same bytes).

    Without refine the bytes are exactly those of a version-1 writer (version 1, readable by
    version-1 readers); with refine the file is version 2.
    """
    spec = gallery.spec
    version = FORMAT_VERSION if spec.refine else _PLAIN_VERSION
    header = _HEADER.pack(FORMAT_MAGIC, version, version, HEADER_SIZE, gallery.d,
                          spec.M, spec.nbits, spec.metric.value, _flags(spec), gallery.n,
                          gallery.shortlist if spec.refine else 0)
    parts = [header, gallery.codebooks.astype("<f4").tobytes()]
    if gallery.rotation is not None:
        parts.append(gallery.rotation.astype("<f4").tobytes())
    parts.append(np.ascontiguousarray(gallery.codes).tobytes())
    pad = dict((name, size) for name, _, size in _layout(gallery.d, spec, gallery.n))["padding"]
    parts.append(b"\0" * pad)
    parts.append(gallery.ids.astype("<i8").tobytes())
    if spec.refine:
        parts.append(gallery.refine_scales.astype("<f4").tobytes())
        parts.append(np.ascontiguousarray(gallery.refine_codes).tobytes())
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def write_gallery(gallery: Gallery, path: str | os.PathLike) -> Path:
    """Write `gallery` to `path` atomically (a temporary file renamed over it)."""
    path = Path(path)
    data = gallery_to_bytes(gallery)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return path


def read_gallery(path: str | os.PathLike) -> Gallery:
    """Read and validate a `.gfpq` file; every problem raises GalleryError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GalleryError(f"{path}: cannot read the gallery file ({exc.strerror or exc})") from None
    try:
        return gallery_from_bytes(data)
    except GalleryError as exc:
        raise GalleryError(f"{path}: {exc}") from None


def gallery_from_bytes(data: bytes) -> Gallery:
    """Parse and validate the bytes of a `.gfpq` file (errors do not name a file)."""
    if len(data) < len(FORMAT_MAGIC) or data[:4] != FORMAT_MAGIC:
        raise GalleryError(f"bad magic {data[:4]!r}: not a glassfinder PQ gallery "
                           f"(expected {FORMAT_MAGIC!r})")
    if len(data) < HEADER_SIZE:
        raise GalleryError(f"truncated header: file is {len(data)} bytes, the header alone is "
                           f"{HEADER_SIZE}")
    (_, version, min_reader, header_size, d, M, nbits, metric, flags, n,
     shortlist) = _HEADER.unpack_from(data)
    if min_reader > READER_VERSION:
        raise GalleryError(f"unsupported version: file version {version} needs a reader of "
                           f"version >= {min_reader}, this reader is version {READER_VERSION}")
    if header_size < HEADER_SIZE or header_size % 8:
        # A later version may append header fields (readers skip them), never remove any.
        raise GalleryError(f"header size {header_size} is invalid: at least {HEADER_SIZE} and a "
                           f"multiple of 8")
    if flags & ~_KNOWN_FLAGS:
        raise GalleryError(f"unknown header flags 0x{flags:x} (this reader knows 0x{_KNOWN_FLAGS:x})")
    if metric not in {m.value for m in Metric}:
        raise GalleryError(f"unknown metric code {metric} in the header (0 = IP, 1 = L2)")
    refine = "SQ8" if flags & FLAG_REFINE_SQ8 else None
    if refine is not None and shortlist < 1:
        raise GalleryError(f"refine shortlist {shortlist} in the header is invalid: it must be >= 1")
    spec = PQSpec(M=M, nbits=nbits, metric=Metric(metric), opq=bool(flags & FLAG_OPQ),
                  refine=refine)
    spec.dsub(d)
    layout = _layout(d, spec, n, header_size)
    expected_size = layout[-1][1] + layout[-1][2]
    if len(data) < expected_size:
        name, offset, _ = next(s for s in layout if s[1] + s[2] > len(data))
        raise GalleryError(
            f"truncated in the {name} section (starts at byte {offset}): file is {len(data)} "
            f"bytes, the header (d={d}, {spec}, n={n}) needs {expected_size}")
    if len(data) > expected_size:
        raise GalleryError(f"{len(data) - expected_size} unexpected trailing bytes after the "
                           f"checksum (header says d={d}, {spec}, n={n}: {expected_size} bytes)")
    stored_crc = struct.unpack_from("<I", data, expected_size - 4)[0]
    actual_crc = zlib.crc32(memoryview(data)[:expected_size - 4])
    if stored_crc != actual_crc:
        raise GalleryError(f"checksum mismatch: stored CRC32 0x{stored_crc:08x}, computed "
                           f"0x{actual_crc:08x} (the file is corrupt or was modified)")
    sections = {name: (offset, size) for name, offset, size in layout}
    if any(data[slice(sections["padding"][0], sum(sections["padding"]))]):
        raise GalleryError("non-zero padding bytes before the ids section")

    def section(name: str, dtype: str, shape: tuple[int, ...]) -> np.ndarray:
        offset, size = sections[name]
        return np.frombuffer(data, dtype=dtype, count=size // np.dtype(dtype).itemsize,
                             offset=offset).reshape(shape).astype(dtype[1:])

    return Gallery(
        spec=spec, d=d,
        codebooks=section("codebooks", "<f4", (M, spec.ksub, d // M)),
        codes=section("codes", "|u1", (n, M)),
        ids=section("ids", "<i8", (n,)),
        rotation=section("rotation", "<f4", (d, d)) if spec.opq else None,
        refine_scales=section("refine_scales", "<f4", (d,)) if refine else None,
        refine_codes=section("refine_codes", "|i1", (n, d)) if refine else None,
        # Version-1 files may carry anything in this (then reserved) field: only read with refine.
        shortlist=shortlist if refine else DEFAULT_SHORTLIST,
    )


def inspect_gallery(path: str | os.PathLike) -> dict:
    """Summary of a gallery file for `glassfinder gallery info` and the bundle manifest."""
    path = Path(path)
    gallery = read_gallery(path)
    data = path.read_bytes()
    n, spec, d = gallery.n, gallery.spec, gallery.d
    per_vector = spec.bytes_per_vector(d)
    header_size = struct.unpack_from("<I", data, 8)[0]
    return {
        "path": str(path), "spec": str(spec), "metric": spec.metric.name, "d": d, "n": n,
        "M": spec.M, "nbits": spec.nbits, "opq": spec.opq, "refine": spec.refine,
        "shortlist": gallery.shortlist if spec.refine else None,
        "format_version": struct.unpack_from("<H", data, 4)[0],
        "code_size": spec.code_size, "refine_code_size": spec.refine_code_size(d),
        "file_bytes": len(data),
        "section_bytes": {"header": header_size,
                          **{name: size for name, _, size in _layout(d, spec, n, header_size)}},
        # Per SKU: the codes alone (what grows with the gallery: PQ + refine), and the whole
        # file amortised.
        "bytes_per_sku": per_vector,
        "file_bytes_per_sku": len(data) / n if n else float("nan"),
        "compression_ratio": 4 * d / per_vector,
        "crc32": f"{struct.unpack_from('<I', data, len(data) - 4)[0]:08x}",
        "sha256": hashlib.sha256(data).hexdigest(),
    }


# ---------------------------------------------------------------------------------------------
# Encoding and search


def check_vectors(x: npt.ArrayLike, d: int, what: str) -> npt.NDArray[np.float32]:
    """The numpy edge: (n, d) contiguous float32, or GalleryError."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != d:
        raise GalleryError(f"{what} must have shape (n, {d}), got {x.shape}")
    if not np.isfinite(x).all():
        raise GalleryError(f"{what} contain NaN or infinity")
    return x


def encode(codebooks: npt.NDArray[np.float32], x: npt.ArrayLike,
           rotation: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.uint8]:
    """PQ codes of x: for each sub-vector, the index of the nearest centroid (L2).

    codebooks: (M, ksub, dsub) float32; x: (n, d) with d = M * dsub; rotation: (d, d) or None.
    Returns (n, M) uint8. This is one-shot enrollment: existing codebooks, no training.
    """
    M, ksub, dsub = codebooks.shape
    if ksub > 1 << MAX_NBITS:
        raise GalleryError(f"{ksub} centroids per sub-quantizer do not fit one-byte codes")
    x = check_vectors(x, M * dsub, "vectors to encode")
    if rotation is not None:
        x = x @ rotation.T
    codes = np.empty((x.shape[0], M), dtype=np.uint8)
    half_norms = 0.5 * np.einsum("mkj,mkj->mk", codebooks, codebooks)
    for start in range(0, x.shape[0], _ENCODE_CHUNK):
        xs = x[start:start + _ENCODE_CHUNK]
        for m in range(M):
            # argmin ||x - c||^2 = argmax x.c - ||c||^2 / 2 (||x||^2 is constant per row).
            table = xs[:, m * dsub:(m + 1) * dsub] @ codebooks[m].T
            table -= half_norms[m]
            codes[start:start + len(xs), m] = np.argmax(table, axis=1)
    return codes


def decode(codebooks: npt.NDArray[np.float32], codes: npt.NDArray[np.uint8],
           rotation: npt.NDArray[np.float32] | None = None) -> npt.NDArray[np.float32]:
    """Reconstruct (n, d) float32 vectors from (n, M) codes (undoing the rotation if any)."""
    M = codebooks.shape[0]
    x = np.concatenate([codebooks[m][codes[:, m]] for m in range(M)], axis=1)
    return x @ rotation if rotation is not None else x


def sq8_scales(x: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """(d,) float32 SQ8 scales of (n, d) build vectors: max_i |x_ij| / 127 per dimension.

    Symmetric (no offset), in the original (unrotated) space. A dimension that is zero in every
    build vector gets the scale of a unit range (1 / 127), right for unit-norm embeddings.
    """
    shape = np.shape(x)
    if len(shape) != 2 or shape[0] < 1:
        raise GalleryError(f"SQ8 scales need a non-empty (n, d) array of vectors, got shape {shape}")
    x = check_vectors(x, shape[1], "vectors for the SQ8 scales")
    max_abs = np.abs(x).max(axis=0)
    return np.where(max_abs > 0, max_abs, np.float32(1.0)).astype(np.float32) / np.float32(SQ8_MAX)


def sq8_encode(scales: npt.NDArray[np.float32], x: npt.ArrayLike) -> npt.NDArray[np.int8]:
    """(n, d) int8 SQ8 codes: clip(round(x / scale), -127, 127), rounding half to even.

    x / scale is a float32 division and the rounding is numpy's (ties to even): the phone code
    does the same (Kotlin Math.rint, Swift .toNearestOrEven). Values beyond the build range
    (SKUs added later) clip to +-127.
    """
    scales = np.asarray(scales, dtype=np.float32)
    x = check_vectors(x, scales.shape[0], "vectors to SQ8-encode")
    return np.clip(np.round(x / scales), -SQ8_MAX, SQ8_MAX).astype(np.int8)


def sq8_decode(scales: npt.NDArray[np.float32], codes: npt.NDArray[np.int8]) -> npt.NDArray[np.float32]:
    """(n, d) float32 reconstructions scale_j * code_ij of (n, d) SQ8 codes."""
    return codes.astype(np.float32) * scales


def _lookup_tables(gallery: Gallery, xq: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(nq, M, ksub) float32 scores per sub-code, HIGHER IS BETTER for both metrics.

    IP: <xq_m, c>. L2: -||xq_m - c||^2 (negated so that one top-k serves both metrics).
    """
    M, _, dsub = gallery.codebooks.shape
    xs = xq.reshape(len(xq), M, dsub)
    # einsum, not matmul: no BLAS threads on the timed path (the benchmark is single-thread).
    ip = np.einsum("mkj,qmj->qmk", gallery.codebooks, xs)
    if gallery.spec.metric is Metric.IP:
        return ip
    q_norms = np.einsum("qmj,qmj->qm", xs, xs)[:, :, None]
    return 2.0 * ip - gallery._centroid_norms[None] - q_norms


def _scores_pairs(gallery: Gallery, lut: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(n,) scores of one query from its (M, ksub) table, gathering two sub-codes at a time."""
    M, ksub = lut.shape
    pair_lut = (lut[1:M:2, :, None] + lut[0:M - 1:2, None, :]).reshape(M // 2, ksub * ksub)
    pairs, n = gallery._pair_codes_t, gallery.n
    scores = np.empty(n, dtype=np.float32)
    tmp = np.empty(min(n, _SCORE_CHUNK), dtype=np.float32)
    # Chunks keep the running sum in cache: 2x faster than whole-array passes at 1M.
    # mode="clip" skips numpy's per-index bounds error path (25% faster); the indices are in
    # range by construction (codes < ksub is checked when the gallery is made).
    for start in range(0, n, _SCORE_CHUNK):
        stop = min(n, start + _SCORE_CHUNK)
        acc, part = scores[start:stop], tmp[:stop - start]
        np.take(pair_lut[0], pairs[0, start:stop], out=acc, mode="clip")
        for j in range(1, M // 2):
            np.add(acc, np.take(pair_lut[j], pairs[j, start:stop], out=part, mode="clip"), out=acc)
        if M % 2:
            np.add(acc, np.take(lut[M - 1], gallery._codes_t[M - 1, start:stop], out=part, mode="clip"),
                   out=acc)
    return scores


def _scores_batch(gallery: Gallery, lut: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """(nq, n) scores of a batch of queries from their (nq, M, ksub) tables."""
    codes_t = gallery._codes_t
    scores = np.take(lut[:, 0], codes_t[0], axis=1)
    for m in range(1, lut.shape[1]):
        scores += np.take(lut[:, m], codes_t[m], axis=1)
    return scores


def _top_k(scores: npt.NDArray[np.float32], k: int) -> npt.NDArray[np.int64]:
    """Positions of the k highest scores (k <= n), best first; ties go to the lower position.

    Exact, and faster than argpartition over all n: the k-th largest of the per-block maxima
    is a threshold that at least k scores reach, so the top k are among the scores >= it.
    """
    n, block = scores.shape[0], 64
    candidates = None
    if n >= 4 * block * k:
        nb = n // block
        block_max = scores[:nb * block].reshape(nb, block).max(axis=1)
        threshold = np.partition(block_max, nb - k)[nb - k]
        candidates = np.flatnonzero(scores >= threshold)
    cand_scores = scores if candidates is None else scores[candidates]
    if cand_scores.shape[0] > k:
        kth = np.partition(cand_scores, cand_scores.shape[0] - k)[cand_scores.shape[0] - k]
        keep = np.flatnonzero(cand_scores >= kth)
    else:
        keep = np.arange(cand_scores.shape[0])
    pos = keep if candidates is None else candidates[keep]
    order = np.lexsort((pos, -scores[pos]))[:k]
    return pos[order].astype(np.int64)


def _finish(scores: npt.NDArray[np.float32], k: int, metric: Metric,
            ids: npt.NDArray[np.int64] | None) -> tuple[np.ndarray, np.ndarray]:
    """(k,) distances and ids of the best k of one query's scores, padded faiss-style."""
    D = np.full(k, -np.inf if metric is Metric.IP else np.inf, dtype=np.float32)
    I = np.full(k, -1, dtype=np.int64)
    pos = _top_k(scores, min(k, scores.shape[0]))
    D[:len(pos)] = scores[pos] if metric is Metric.IP else -scores[pos]
    I[:len(pos)] = pos if ids is None else ids[pos]
    return D, I


def _refined(gallery: Gallery, scores: npt.NDArray[np.float32], q: npt.NDArray[np.float32],
             k: int) -> tuple[np.ndarray, np.ndarray]:
    """(k,) distances and ids of one query after re-ranking its ADC shortlist with the SQ8 codes.

    scores: (n,) ADC scores (higher is better); q: (d,) the UNROTATED query. The shortlist is the
    top max(k, shortlist) rows (at most n) by the ADC tie rule, taken in gallery order, so that
    ties of the refined scores also go to the lower gallery position.
    """
    r = min(scores.shape[0], max(k, gallery.shortlist))
    rows = np.sort(_top_k(scores, r))
    x_hat = sq8_decode(gallery.refine_scales, gallery.refine_codes[rows])  # (r, d)
    if gallery.spec.metric is Metric.IP:
        refined = np.einsum("rj,j->r", x_hat, q)
    else:
        diff = x_hat - q
        refined = -np.einsum("rj,rj->r", diff, diff)  # higher is better, as in the ADC tables
    return _finish(refined, k, gallery.spec.metric, gallery.ids[rows])


def _rank(gallery: Gallery, scores: npt.NDArray[np.float32], q: npt.NDArray[np.float32],
          k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k results of one query from its (n,) ADC scores (re-ranked if the spec refines)."""
    if gallery.spec.refine is None:
        return _finish(scores, k, gallery.spec.metric, gallery.ids)
    return _refined(gallery, scores, q, k)


def _check_k(k: int) -> int:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise GalleryError(f"k must be a positive integer, got {k!r}")
    return int(k)


def pq_search(gallery: Gallery, xq: npt.ArrayLike, k: int
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Asymmetric distance search: the k best gallery vectors for each query.

    xq: (nq, d) float32 (cast if needed). Returns D (nq, k) float32 and I (nq, k) int64 gallery
    ids. IP: D is the inner product with the reconstructed vector, sorted descending. L2: D is
    the squared distance, ascending. When k > n, the tail is padded with I = -1 and
    D = -inf (IP) / +inf (L2). Ties are broken by position in the gallery.
    With refine (spec "...,Refine(SQ8)"): the top max(k, shortlist) ADC rows are re-scored
    with their SQ8 reconstructions x_hat (IP <q, x_hat>, L2 ||q - x_hat||^2) and D, I are the
    best k of those; without refine the result is the ADC ranking itself.
    """
    k = _check_k(k)
    xq = check_vectors(xq, gallery.d, "query vectors")
    x_orig = xq  # the refine codes live in the unrotated space
    if gallery.rotation is not None:
        xq = xq @ gallery.rotation.T
    nq, metric = xq.shape[0], gallery.spec.metric
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    if gallery.n == 0:
        D.fill(-np.inf if metric is Metric.IP else np.inf)
        I.fill(-1)
        return D, I
    if gallery.n >= PAIR_GATHER_MIN_N and gallery.spec.M >= 2:
        for q in range(nq):
            lut = _lookup_tables(gallery, xq[q:q + 1])[0]
            D[q], I[q] = _rank(gallery, _scores_pairs(gallery, lut), x_orig[q], k)
        return D, I
    step = max(1, _MAX_BATCH_SCORES // gallery.n)
    for start in range(0, nq, step):
        scores = _scores_batch(gallery, _lookup_tables(gallery, xq[start:start + step]))
        for row, q in enumerate(range(start, start + len(scores))):
            D[q], I[q] = _rank(gallery, scores[row], x_orig[q], k)
    return D, I


def exact_search(xb: npt.ArrayLike, xq: npt.ArrayLike, k: int, metric: Metric | str
                 ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """Brute-force float search, the reference PQ is measured against.

    xb: (n, d), xq: (nq, d), both cast to float32. Returns D (nq, k) float32 and I (nq, k)
    int64 POSITIONS in xb, same conventions and padding as `pq_search`.
    """
    metric = metric if isinstance(metric, Metric) else Metric[str(metric)]
    k = _check_k(k)
    xb = np.ascontiguousarray(xb, dtype=np.float32)
    if xb.ndim != 2:
        raise GalleryError(f"database vectors must have shape (n, d), got {xb.shape}")
    xq = check_vectors(xq, xb.shape[1], "query vectors")
    nq = xq.shape[0]
    D = np.empty((nq, k), dtype=np.float32)
    I = np.empty((nq, k), dtype=np.int64)
    xb_norms = np.einsum("ij,ij->i", xb, xb) if metric is Metric.L2 else None
    step = max(1, _MAX_BATCH_SCORES // max(1, xb.shape[0]))
    for start in range(0, nq, step):
        xs = xq[start:start + step]
        scores = xs @ xb.T
        if metric is Metric.L2:
            scores = 2.0 * scores - xb_norms[None] - np.einsum("ij,ij->i", xs, xs)[:, None]
        for row in range(len(xs)):
            D[start + row], I[start + row] = _finish(scores[row], k, metric, None)
    return D, I

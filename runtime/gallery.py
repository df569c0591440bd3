"""PQ gallery: the spec, the binary file reader/writer and the asymmetric-distance search.

This module is the executable spec of the phone code (Kotlin/Swift stubs do the same steps):
pure numpy, no torch, no faiss. Training the codebooks lives in `glassfinder_export.gallery`.

- `PQSpec` / `parse_spec("PQ16x8,IP")`: M sub-quantizers of `nbits` bits, metric explicit
  (faiss's "PQ16" leaves it out). Optional "OPQ16," prefix: a learned d x d rotation first.
- `read_gallery` / `write_gallery`: the `.gfpq` format, byte by byte in docs/gallery_format.md.
- `pq_search(gallery, xq, k) -> (D, I)`: ADC with lookup tables, faiss's numpy contract
  (`D (nq, k)` float32, `I (nq, k)` int64, -1 where fewer than k results).
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
# Version this writer writes, and the highest `min_reader_version` this reader understands.
FORMAT_VERSION = 1
READER_VERSION = 1
HEADER_SIZE = 64
# magic, version, min_reader_version, header_size, d, M, nbits, metric, flags, n; 24 reserved bytes.
_HEADER = struct.Struct("<4sHHIIIIIIQ24x")
FLAG_OPQ = 1  # a (d, d) float32 rotation follows the codebooks
_KNOWN_FLAGS = FLAG_OPQ
MIN_NBITS, MAX_NBITS = 4, 8  # codes are one byte per sub-quantizer (not bit-packed)

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


_SPEC_RE = re.compile(r"^(?:OPQ(\d+),)?PQ(\d+)x(\d+),([A-Z0-9]+)$")


@dataclass(frozen=True)
class PQSpec:
    """A product quantizer: `M` sub-quantizers of `2**nbits` centroids, and the search metric."""

    M: int  # sub-quantizers; must divide d; code size is M bytes
    nbits: int  # bits per sub-code, 4..8 (ksub = 2**nbits centroids per sub-space)
    metric: Metric  # explicit: IP for L2-normalised embeddings
    opq: bool = False  # a learned orthogonal d x d rotation is applied before the PQ

    def __post_init__(self) -> None:
        if not isinstance(self.metric, Metric):
            raise GalleryError(f"PQ spec metric must be a Metric, got {self.metric!r}")
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
        """Bytes per encoded vector (one byte per sub-code)."""
        return self.M

    def dsub(self, d: int) -> int:
        """Sub-vector length for vectors of dimension d (M must divide d)."""
        if d < 1 or d % self.M:
            raise GalleryError(f"PQ spec {self}: M={self.M} must divide the vector dimension d={d}")
        return d // self.M

    def __str__(self) -> str:
        prefix = f"OPQ{self.M}," if self.opq else ""
        return f"{prefix}PQ{self.M}x{self.nbits},{self.metric.name}"


def parse_spec(text: str) -> PQSpec:
    """Parse "PQ16x8,IP" / "OPQ16,PQ16x8,L2" into a PQSpec; `str(parse_spec(s)) == s`."""
    match = _SPEC_RE.match(text.strip())
    if match is None:
        raise GalleryError(
            f"PQ spec {text!r} is invalid: write it as PQ<M>x<nbits>,<metric> with the metric "
            f"explicit, e.g. 'PQ16x8,IP' or 'OPQ16,PQ16x8,L2'")
    opq_m, m, nbits, metric = match.groups()
    if metric not in Metric.__members__:
        raise GalleryError(f"PQ spec {text!r}: unknown metric {metric!r}, use IP or L2")
    if opq_m is not None and int(opq_m) != int(m):
        raise GalleryError(f"PQ spec {text!r}: OPQ{opq_m} must match the PQ's M={m}")
    return PQSpec(M=int(m), nbits=int(nbits), metric=Metric[metric], opq=opq_m is not None)


@dataclass(frozen=True, eq=False)
class Gallery:
    """A PQ-compressed gallery: codebooks, one code per vector, and the vector ids.

    codebooks: (M, ksub, dsub) float32; codes: (n, M) uint8; ids: (n,) int64, unique, >= 0;
    rotation: (d, d) float32 or None (OPQ: vectors are rotated as `x @ rotation.T` first).
    Treat the arrays as immutable: search caches a transposed copy of the codes.
    """

    spec: PQSpec
    d: int
    codebooks: npt.NDArray[np.float32]
    codes: npt.NDArray[np.uint8]
    ids: npt.NDArray[np.int64]
    rotation: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        _check_arrays(self.spec, self.d, self.codebooks, self.codes, self.ids, self.rotation)

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


# ---------------------------------------------------------------------------------------------
# File format (docs/gallery_format.md)


def _layout(d: int, spec: PQSpec, n: int, header_size: int = HEADER_SIZE) -> list[tuple[str, int, int]]:
    """Sections of a v1 file as (name, offset, size) in file order, checksum last."""
    sizes = [("codebooks", spec.M * spec.ksub * spec.dsub(d) * 4),
             ("rotation", d * d * 4 if spec.opq else 0),
             ("codes", n * spec.M)]
    out, offset = [], header_size
    for name, size in sizes:
        out.append((name, offset, size))
        offset += size
    pad = -offset % 8  # ids are 8-byte aligned so that the file can be memory-mapped
    out.append(("padding", offset, pad))
    out.append(("ids", offset + pad, n * 8))
    out.append(("checksum", offset + pad + n * 8, 4))
    return out


def gallery_to_bytes(gallery: Gallery) -> bytes:
    """The `.gfpq` v1 encoding of `gallery` (deterministic: same gallery, same bytes)."""
    spec = gallery.spec
    header = _HEADER.pack(FORMAT_MAGIC, FORMAT_VERSION, READER_VERSION, HEADER_SIZE, gallery.d,
                          spec.M, spec.nbits, spec.metric.value, FLAG_OPQ if spec.opq else 0,
                          gallery.n)
    parts = [header, gallery.codebooks.astype("<f4").tobytes()]
    if gallery.rotation is not None:
        parts.append(gallery.rotation.astype("<f4").tobytes())
    parts.append(np.ascontiguousarray(gallery.codes).tobytes())
    pad = dict((name, size) for name, _, size in _layout(gallery.d, spec, gallery.n))["padding"]
    parts.append(b"\0" * pad)
    parts.append(gallery.ids.astype("<i8").tobytes())
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
    _, version, min_reader, header_size, d, M, nbits, metric, flags, n = _HEADER.unpack_from(data)
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
    spec = PQSpec(M=M, nbits=nbits, metric=Metric(metric), opq=bool(flags & FLAG_OPQ))
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
    )


def inspect_gallery(path: str | os.PathLike) -> dict:
    """Summary of a gallery file for `glassfinder gallery info` and the bundle manifest."""
    path = Path(path)
    gallery = read_gallery(path)
    data = path.read_bytes()
    n, spec = gallery.n, gallery.spec
    return {
        "path": str(path), "spec": str(spec), "metric": spec.metric.name, "d": gallery.d, "n": n,
        "M": spec.M, "nbits": spec.nbits, "opq": spec.opq, "format_version": FORMAT_VERSION,
        "code_size": spec.code_size, "file_bytes": len(data),
        # Per SKU: the code alone (what grows with the gallery), and the whole file amortised.
        "bytes_per_sku": spec.code_size,
        "file_bytes_per_sku": len(data) / n if n else float("nan"),
        "compression_ratio": 4 * gallery.d / spec.code_size,
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
    """
    k = _check_k(k)
    xq = check_vectors(xq, gallery.d, "query vectors")
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
            D[q], I[q] = _finish(_scores_pairs(gallery, lut), k, metric, gallery.ids)
        return D, I
    step = max(1, _MAX_BATCH_SCORES // gallery.n)
    for start in range(0, nq, step):
        scores = _scores_batch(gallery, _lookup_tables(gallery, xq[start:start + step]))
        for row, q in enumerate(range(start, start + len(scores))):
            D[q], I[q] = _finish(scores[row], k, metric, gallery.ids)
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

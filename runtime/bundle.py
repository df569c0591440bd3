"""Open a bundle folder safely, and write its manifest last.

open_bundle() order, so that nothing unverified is ever loaded or executed:
1. read manifest.json (refuse a folder without one: no guessing the config from file names);
2. parse and validate it (schema and reader versions, every field);
3. hash every listed file and compare with the manifest;
4. only then load each .tflite model (from the very bytes that were hashed) in a child process
   that also allocates and invokes it once (LiteRT can crash on a damaged file: see
   probe_tflite), and check its real input/output names, shapes, dtypes and quantization
   against the manifest;
5. parse the PQ gallery (runtime/gallery.py) from its hashed bytes and check its header against
   the manifest.

Interpreters are built from the verified bytes kept in memory, so a file swapped on disk after
open_bundle() is never run.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ai_edge_litert.interpreter import Interpreter

from glassfinder_runtime.errors import BundleError, ConfigError, GalleryError
from glassfinder_runtime.gallery import Gallery, gallery_from_bytes
from glassfinder_runtime.manifest import (
    MANIFEST_NAME,
    PENDING_SHA256,
    DType,
    FileRef,
    GalleryEntry,
    Manifest,
    ModelEntry,
    ModelFormat,
    ModelRole,
    Quantization,
    TensorSpec,
    manifest_to_json,
    parse_manifest,
)

# A manifest is a few kB (anchors are a config, golden vectors live in their own file); anything
# much bigger is not a manifest and is refused before it is read into memory.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
# The FlatBuffers file identifier of a .tflite model, at byte offset 4.
_TFLITE_IDENTIFIER = b"TFL3"
_CHUNK = 1 << 20
# A quantization scale written to JSON may have gone through float32 on the way: equal within this.
QUANT_SCALE_RTOL = 1e-6


def sha256_path(path: Path) -> str:
    """sha256 of a file's bytes; for a folder (.mlpackage), of its sorted file list and their hashes.

    Folder hash: sha256 over one line "relative/posix/path\\0<sha256 of the file>\\n" per file, in
    sorted path order. Symbolic links are refused (they could point outside the bundle).
    """
    if path.is_symlink():
        raise BundleError(f"{path}: symbolic links are not allowed in a bundle")
    if path.is_dir():
        h = hashlib.sha256()
        for sub in sorted(path.rglob("*"), key=lambda p: p.relative_to(path).as_posix()):
            if sub.is_symlink():
                raise BundleError(f"{sub}: symbolic links are not allowed in a bundle")
            if sub.is_file():
                h.update(f"{sub.relative_to(path).as_posix()}\0{sha256_path(sub)}\n".encode())
        return h.hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _resolve(root: Path, ref: FileRef, label: str) -> Path:
    """The path of a listed file, checked to exist and to stay inside the bundle."""
    path = root / ref.file
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"{path}: missing file (listed in {MANIFEST_NAME} as {label})")
    if not path.resolve().is_relative_to(root.resolve()):
        raise BundleError(f"{path}: points outside the bundle folder {root}")
    return path


def _read_manifest_json(manifest_path: Path) -> Any:
    size = manifest_path.stat().st_size
    if size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{manifest_path}: {size} bytes is too large for a manifest (limit {MAX_MANIFEST_BYTES})")
    raw = manifest_path.read_bytes()
    if not raw.strip():
        raise BundleError(f"{manifest_path}: the manifest is empty (an interrupted export?)")

    def no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
        out: dict = {}
        for k, v in pairs:
            if k in out:
                raise BundleError(f"{manifest_path}: duplicate key {k[:100]!r} in a JSON object")
            out[k] = v
        return out

    def no_constants(name: str) -> Any:
        raise BundleError(f"{manifest_path}: {name} is not valid JSON (numbers must be finite)")

    try:
        return json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates, parse_constant=no_constants)
    except UnicodeDecodeError as exc:
        raise BundleError(f"{manifest_path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # e.g. an integer literal of thousands of digits
        raise BundleError(f"{manifest_path}: invalid JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise BundleError(f"{manifest_path}: JSON nested too deeply") from None


def _describe(details: dict) -> str:
    text = f"{details['name']!r} shape {details['shape']} {details['dtype']}"
    scale, zero_point = details["quantization"]
    return text + (f" (scale {scale:g}, zero point {zero_point})" if scale else "")


def _spec_text(spec: TensorSpec) -> str:
    text = f"{spec.name!r} shape {list(spec.shape)} {spec.dtype.value}"
    return text + (f" (scale {spec.scale:g}, zero point {spec.zero_point})" if spec.scale is not None else "")


def _matches(details: dict, spec: TensorSpec) -> bool:
    """Name, shape, dtype, and the quantization parameters when the manifest records them."""
    scale, zero_point = details["quantization"]
    quant_ok = spec.scale is None or (math.isclose(scale, spec.scale, rel_tol=QUANT_SCALE_RTOL)
                                      and zero_point == spec.zero_point)
    return (details["name"] == spec.name and tuple(details["shape"]) == spec.shape
            and details["dtype"] == spec.dtype.value and quant_ok)


def _check_quantization(path: Path, entry: ModelEntry, tensor_dtypes: set[str]) -> None:
    """The quantization the manifest claims must be visible in the file's tensor types."""
    has_int8 = bool(tensor_dtypes & {DType.INT8.value, DType.UINT8.value})
    has_fp16 = DType.FLOAT16.value in tensor_dtypes
    q = entry.quantization
    ok = {
        Quantization.FLOAT32: not has_int8 and not has_fp16,
        Quantization.FLOAT16: has_fp16 and not has_int8,
        Quantization.DYNAMIC_INT8: has_int8,
        Quantization.INT8: has_int8,
    }.get(q)
    if ok is None:
        raise BundleError(f"{path}: quantization {q.value!r} does not apply to a TFLite model")
    if not ok:
        raise BundleError(f"{path}: the manifest says quantization {q.value!r} but the file's tensors are "
                          f"{sorted(tensor_dtypes)}")


# The probe runs in a child process: it loads each model, reads its I/O details, allocates and
# invokes it once on zeros, and prints one JSON line per model. LiteRT 2.3.0 can crash (SIGSEGV)
# on a damaged file that passes its own flatbuffer verifier (tests/fixtures/litert_segfault.tflite,
# found by fuzzing): in a child, that crash becomes a BundleError instead of killing the app.
# A model the probe ran cleanly is then safe to load in this process (same bytes, same library).
_PROBE_MARK = "glassfinder-probe:"
_PROBE_SCRIPT = r"""
import json, struct, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter

def details(ds):
    return [{"name": d["name"], "shape": [int(v) for v in d["shape"]], "dtype": np.dtype(d["dtype"]).name,
             "quantization": [float(d["quantization"][0]), int(d["quantization"][1])]} for d in ds]

data = sys.stdin.buffer.read()
print("MARK ready", flush=True)
pos = 0
while pos < len(data):
    (n,) = struct.unpack_from("<Q", data, pos)
    content, pos = data[pos + 8:pos + 8 + n], pos + 8 + n
    try:
        it = Interpreter(model_content=content, num_threads=1)
        rec = {"inputs": details(it.get_input_details()), "outputs": details(it.get_output_details()),
               "tensor_dtypes": sorted({np.dtype(t["dtype"]).name for t in it.get_tensor_details()})}
        it.allocate_tensors()
        for d in it.get_input_details():
            it.set_tensor(d["index"], np.zeros(d["shape"], d["dtype"]))
        it.invoke()
    except Exception as exc:
        rec = {"error": (type(exc).__name__ + ": " + str(exc).strip())[:300]}
    print("MARK " + json.dumps(rec), flush=True)
""".replace("MARK", _PROBE_MARK)
# Loading and one invoke of the four bundle models takes well under a second; this is a hang.
PROBE_TIMEOUT_S = 120.0


def probe_tflite(contents: Sequence[bytes], timeout_s: float = PROBE_TIMEOUT_S) -> list[dict[str, Any]]:
    """What LiteRT makes of each model, found in a child process (see _PROBE_SCRIPT).

    Returns one record per model: {"inputs", "outputs", "tensor_dtypes"} (details as lists and
    plain types), or {"error": message} when LiteRT raised, or {"crash": reason} when the
    child died or hung on that model (the remaining models are probed in a new child).
    """
    results: list[dict[str, Any]] = []
    while len(results) < len(contents):
        todo = contents[len(results):]
        payload = b"".join(struct.pack("<Q", len(c)) + bytes(c) for c in todo)
        try:
            proc = subprocess.run([sys.executable, "-c", _PROBE_SCRIPT], input=payload, capture_output=True,
                                  timeout=timeout_s)
            stdout, returncode, stderr = proc.stdout, proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            stdout, returncode, stderr = exc.stdout or b"", None, exc.stderr or b""
        lines = [ln[len(_PROBE_MARK):].strip() for ln in stdout.decode("utf-8", "replace").splitlines()
                 if ln.startswith(_PROBE_MARK)]
        if not lines or lines[0] != "ready":
            tail = stderr.decode("utf-8", "replace").strip()[-300:]
            raise BundleError(f"cannot check TFLite models: the LiteRT check process did not start ({tail})")
        records = [json.loads(ln) for ln in lines[1:len(todo) + 1]]
        results += records
        if len(records) < len(todo):
            if returncode is None:
                why = f"LiteRT did not finish loading it within {timeout_s:g} s"
            elif returncode < 0:
                why = f"LiteRT crashed on it ({signal.Signals(-returncode).name})"
            else:
                why = f"the LiteRT check process exited with code {returncode}"
            results.append({"crash": why})
    return results


def check_tflite_models(models: Sequence[tuple[Path, ModelEntry, bytes]]) -> None:
    """Load each (path, entry, hash-checked content) with LiteRT, safely, and compare with its entry.

    Raises BundleError naming the file for a file that is not a TFLite model (truncated,
    garbage, one that crashes or hangs LiteRT) or whose inputs, outputs or quantization disagree
    with the manifest.
    """
    for path, _, content in models:
        if len(content) < 8 or content[4:8] != _TFLITE_IDENTIFIER:
            raise BundleError(f"{path}: not a TFLite model (no {_TFLITE_IDENTIFIER.decode()} identifier; "
                              f"{len(content)} bytes, truncated or another format?)")
    records = probe_tflite([content for _, _, content in models])
    for (path, entry, _), rec in zip(models, records):
        if "crash" in rec:
            raise BundleError(f"{path}: not a valid TFLite model: {rec['crash']}; the file is damaged")
        if "error" in rec:
            raise BundleError(f"{path}: not a valid TFLite model ({rec['error']})")
        inputs, outputs = rec["inputs"], rec["outputs"]
        if len(inputs) != 1 or not _matches(inputs[0], entry.input):
            have = ", ".join(_describe(d) for d in inputs) or "none"
            raise BundleError(f"{path}: the model file's input is {have}, but {MANIFEST_NAME} says "
                              f"{_spec_text(entry.input)}")
        # Matched by name: the manifest lists outputs in their meaning's order (e.g. boxes, then
        # scores), which need not be the order the file happens to store them in.
        by_name = {d["name"]: d for d in outputs}
        if len(outputs) != len(entry.outputs) or not all(s.name in by_name and _matches(by_name[s.name], s)
                                                         for s in entry.outputs):
            have = "; ".join(_describe(d) for d in outputs) or "none"
            want = "; ".join(_spec_text(s) for s in entry.outputs)
            raise BundleError(f"{path}: the model file's outputs are {have}, but {MANIFEST_NAME} says {want}")
        _check_quantization(path, entry, set(rec["tensor_dtypes"]))


def check_gallery(path: Path, entry: GalleryEntry, content: bytes) -> Gallery:
    """Parse the (hash-checked) gallery bytes and compare the header with the manifest entry.

    Raises GalleryError naming the file: bad magic, truncated codes, ids out of range (see
    runtime/gallery.py), or d / n / spec / code size other than the manifest says.
    """
    try:
        gallery = gallery_from_bytes(content)
    except GalleryError as exc:
        raise GalleryError(f"{path}: {exc}") from None
    have = (gallery.d, gallery.n, str(gallery.spec), gallery.spec.code_size)
    want = (entry.d, entry.n, entry.spec, entry.code_size)
    if have != want:
        raise GalleryError(f"{path}: the file has d={have[0]}, n={have[1]}, {have[2]}, code size {have[3]}, "
                           f"but {MANIFEST_NAME} says d={want[0]}, n={want[1]}, {want[2]}, code size {want[3]}")
    return gallery


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: its folder, its manifest, its gallery and the hash-checked TFLite bytes."""

    root: Path
    manifest: Manifest
    gallery: Gallery | None  # parsed from the bytes that were hash-checked; None if the bundle has none
    _tflite: dict[str, bytes] = field(repr=False)  # model file -> its verified bytes

    def path(self, ref: FileRef | str) -> Path:
        """Absolute path of a bundle file (hash-checked by open_bundle)."""
        return self.root / (ref.file if isinstance(ref, FileRef) else ref)

    def model(self, name: ModelRole | str, format: ModelFormat | str = ModelFormat.TFLITE) -> ModelEntry:
        return self.manifest.model(name, format)

    def interpreter(self, name: ModelRole | str, *, num_threads: int = 1) -> Interpreter:
        """A fresh LiteRT interpreter (tensors allocated) for the TFLite model of stage `name`."""
        if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
            raise ConfigError(f"num_threads must be an integer >= 1, got {num_threads!r}")
        entry = self.model(name, ModelFormat.TFLITE)
        try:
            interp = Interpreter(model_content=self._tflite[entry.file], num_threads=num_threads)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(f"{self.path(entry)}: LiteRT cannot prepare this model ({str(exc).strip()[:200]})") from None
        return interp


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Open and verify a bundle folder (or its manifest.json); see the module docstring for the order.

    Raises BundleError (GalleryError for the gallery) naming the file and the problem: no
    manifest, bad manifest, missing file, sha256 mismatch, a .tflite that is not a model or
    disagrees with the manifest, a gallery that is malformed or disagrees with the manifest.
    """
    path = Path(path)
    if path.is_file() and path.name == MANIFEST_NAME:
        path = path.parent
    if not path.is_dir():
        raise BundleError(f"{path}: not a bundle folder ({'no such folder' if not path.exists() else 'not a folder'})")
    manifest_path = path / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a bundle: there is no {MANIFEST_NAME} (export writes it last; "
                          "an interrupted export leaves none)")
    manifest = parse_manifest(_read_manifest_json(manifest_path), source=str(manifest_path))

    # Every checksum is verified before any model or the gallery is even parsed. Those are kept
    # in memory and parsed from the very bytes that were hashed.
    content: dict[str, bytes] = {}
    for label, ref in manifest.file_refs():
        file_path = _resolve(path, ref, label)
        parsed_later = ref is manifest.gallery or (isinstance(ref, ModelEntry) and ref.format is ModelFormat.TFLITE)
        if parsed_later:
            content[ref.file] = file_path.read_bytes()
            actual = hashlib.sha256(content[ref.file]).hexdigest()
        else:
            actual = sha256_path(file_path)
        if actual != ref.sha256:
            raise BundleError(f"{file_path}: sha256 mismatch (manifest {ref.sha256[:16]}..., file {actual[:16]}...): "
                              "the file was changed or damaged after export")

    tflite = {m.file: content[m.file] for m in manifest.models if m.format is ModelFormat.TFLITE}
    check_tflite_models([(path / m.file, m, tflite[m.file]) for m in manifest.models if m.format is ModelFormat.TFLITE])
    gallery = None
    if manifest.gallery is not None:
        gallery = check_gallery(path / manifest.gallery.file, manifest.gallery, content[manifest.gallery.file])
    return Bundle(root=path, manifest=manifest, gallery=gallery, _tflite=tflite)


def _with_checksums(root: Path, manifest: Manifest) -> Manifest:
    """`manifest` with every PENDING sha256 computed; a given sha256 must match the file."""

    def digest(ref: FileRef, label: str) -> str:
        actual = sha256_path(_resolve(root, ref, label))
        if ref.sha256 not in (PENDING_SHA256, actual):
            raise BundleError(f"{root / ref.file}: sha256 given for {label} does not match the file")
        return actual

    models = tuple(dataclasses.replace(m, sha256=digest(m, f"models[{i}]")) for i, m in enumerate(manifest.models))
    gallery = manifest.gallery
    if gallery is not None:
        gallery = dataclasses.replace(gallery, sha256=digest(gallery, "gallery"),
                                      sku_sha256=digest(gallery.sku_ref, "gallery.sku_file"))
    golden = manifest.golden
    if golden is not None:
        golden = dataclasses.replace(golden, sha256=digest(golden, "golden"))
    return dataclasses.replace(manifest, models=models, gallery=gallery, golden=golden)


def write_manifest(bundle_dir: str | os.PathLike, manifest: Manifest) -> Manifest:
    """Compute the checksums, check each .tflite against its entry, and write manifest.json LAST.

    Call it after every other bundle file is in place. Pending (empty) sha256 fields are filled
    in; the write is atomic (temporary file + rename), so a reader sees either no manifest or a
    complete one. Returns the manifest as written. Raises BundleError if a file is missing or a
    model disagrees with its entry (nothing is written then).
    """
    root = Path(bundle_dir)
    if not root.is_dir():
        raise BundleError(f"{root}: not a folder: write the bundle files first, the manifest last")
    filled = _with_checksums(root, manifest)
    text = manifest_to_json(filled)
    parse_manifest(json.loads(text), source=str(root / MANIFEST_NAME))  # what we write must read back
    check_tflite_models([(root / m.file, m, (root / m.file).read_bytes())
                         for m in filled.models if m.format is ModelFormat.TFLITE])
    fd, tmp = tempfile.mkstemp(dir=root, prefix=f".{MANIFEST_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, root / MANIFEST_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return filled

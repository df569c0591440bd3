"""The Android stub's plain-Kotlin core agrees with the Python runtime on the golden vectors.

Compiles android_stub/src/main/kotlin/glassfinder/core/*.kt + GoldenCheck.kt with Debian's kotlinc
(1.3; `apt-get install -y kotlin`) into a temporary jar once, then runs it on
tests/fixtures/golden/golden.txt: integers must match exactly, floats within the tolerances
named in GoldenCheck.kt. kotlinc missing is a FAILURE, not a skip: CI must install it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STUB = ROOT / "android_stub"
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "golden.txt"
INSTALL_HINT = "install it with `apt-get install -y kotlin` (Debian's kotlinc 1.3 and a Java runtime)"
# The compiler is a short-lived JVM: C1 only and the serial GC halve its CPU time.
KOTLINC_FLAGS = ["-J-XX:TieredStopAtLevel=1", "-J-XX:+UseSerialGC", "-nowarn"]
COMPILE_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120


@pytest.fixture(scope="module")
def golden_check_jar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    kotlinc, java = shutil.which("kotlinc"), shutil.which("java")
    if kotlinc is None or java is None:
        pytest.fail(f"{'kotlinc' if kotlinc is None else 'java'} not found on PATH: {INSTALL_HINT}")
    sources = sorted((STUB / "src" / "main" / "kotlin" / "glassfinder" / "core").glob("*.kt"))
    sources.append(STUB / "src" / "test" / "kotlin" / "glassfinder" / "GoldenCheck.kt")
    assert len(sources) > 5, f"Kotlin core sources missing under {STUB}"
    # The core must stay plain Kotlin: Android and TFLite code belongs in glassfinder/android/.
    for src in sources:
        text = src.read_text(encoding="utf-8")
        assert "import android." not in text and "import org.tensorflow" not in text, f"{src} imports Android/TFLite"
    jar = tmp_path_factory.mktemp("kotlin") / "golden-check.jar"
    proc = subprocess.run([kotlinc, *KOTLINC_FLAGS, *map(str, sources), "-include-runtime", "-d", str(jar)],
                          capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S, check=False)
    if proc.returncode != 0 or not jar.is_file():
        pytest.fail(f"kotlinc failed (exit {proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return jar


def _run(jar: Path, golden: Path) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("java") or "java", "-XX:TieredStopAtLevel=1", "-jar", str(jar), str(golden)],
                          capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)


# One test function on purpose: `make test` runs pytest-xdist, which could hand two tests of this
# module to two workers and compile the Kotlin twice (~10 s of CPU each on this machine).
def test_kotlin_core_matches_the_golden_vectors_and_the_check_can_fail(golden_check_jar: Path, tmp_path: Path) -> None:
    _check_passes(golden_check_jar)
    _check_fails_on_a_wrong_id(golden_check_jar, tmp_path)
    _check_fails_on_a_wrong_refine_order_or_rounding(golden_check_jar, tmp_path)
    _check_fails_on_another_face_choice(golden_check_jar, tmp_path)


def _check_passes(golden_check_jar: Path) -> None:
    assert GOLDEN.is_file(), f"missing {GOLDEN} (tests/runtime/test_golden.py says how to write it)"
    proc = _run(golden_check_jar, GOLDEN)
    out = proc.stdout + proc.stderr
    summary = re.search(r"^(\d+) passed, (\d+) failed$", proc.stdout, re.MULTILINE)
    assert proc.returncode == 0 and summary is not None, f"GoldenCheck failed (exit {proc.returncode}):\n{out[-6000:]}"
    passed, failed = int(summary.group(1)), int(summary.group(2))
    assert failed == 0 and passed >= 100, out[-6000:]
    # Every stage family was compared (a stage that silently stopped running would vanish here).
    for stage in ("image_limits", "letterbox", "tiles", "normalize", "anchors", "decode", "nms", "project", "similarity", "affine", "warp",
                  "align_crop", "landmarks", "preprocess", "int8", "gate", "l2_normalize", "pq", "manifest", "find_face"):
        assert re.search(rf"^{stage}\s+[1-9]\d*\s", proc.stdout, re.MULTILINE), f"stage {stage} not compared:\n{out}"


def _check_fails_on_a_wrong_id(golden_check_jar: Path, tmp_path: Path) -> None:
    """The check can fail: one gallery id changed in the expected top-k makes it exit 1 and name it."""
    lines = GOLDEN.read_text(encoding="utf-8").split("\n")
    row = lines.index(next(line for line in lines if line.startswith("pq.ip.I "))) + 1
    values = lines[row].split(" ")
    values[0] = str(int(values[0]) + 1)
    lines[row] = " ".join(values)
    tampered = tmp_path / "golden.txt"
    tampered.write_text("\n".join(lines), encoding="utf-8")
    proc = _run(golden_check_jar, tampered)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAIL pq.ip.I" in proc.stdout and "1 failed" in proc.stdout, proc.stdout[-3000:]


def _check_fails_on_a_wrong_refine_order_or_rounding(golden_check_jar: Path, tmp_path: Path) -> None:
    """The Refine(SQ8) case is really compared: the first two re-ranked ids swapped, and a .5 tie
    rounded away from even (2.5 -> 3) in the SQ8 encoding case, each fail by name."""
    lines = GOLDEN.read_text(encoding="utf-8").split("\n")
    row = lines.index(next(line for line in lines if line.startswith("pq.refine_ip.I "))) + 1
    values = lines[row].split(" ")
    assert values[0] != values[1], "the golden refine case needs two distinct leading ids"
    values[0], values[1] = values[1], values[0]
    lines[row] = " ".join(values)
    row = lines.index(next(line for line in lines if line.startswith("pq.sq8.codes "))) + 1
    values = lines[row].split(" ")
    assert values[2] == "2", "the golden SQ8 case starts with 0.5, 1.5, 2.5 steps: 2.5 rounds to 2"
    values[2] = "3"
    lines[row] = " ".join(values)
    tampered = tmp_path / "golden_refine.txt"
    tampered.write_text("\n".join(lines), encoding="utf-8")
    proc = _run(golden_check_jar, tampered)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAIL pq.refine_ip.I" in proc.stdout and "FAIL pq.sq8.codes" in proc.stdout, proc.stdout[-3000:]
    assert "2 failed" in proc.stdout, proc.stdout[-3000:]


def _check_fails_on_another_face_choice(golden_check_jar: Path, tmp_path: Path) -> None:
    """find_face is really compared: another chosen candidate in the expected output makes it exit 1."""
    lines = GOLDEN.read_text(encoding="utf-8").split("\n")
    row = lines.index("find_face.whole.index i64 1 1") + 1
    lines[row] = str(int(lines[row]) + 1)
    tampered = tmp_path / "golden_face.txt"
    tampered.write_text("\n".join(lines), encoding="utf-8")
    proc = _run(golden_check_jar, tampered)
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "FAIL find_face.whole.index" in proc.stdout and "1 failed" in proc.stdout, proc.stdout[-3000:]

"""runtime/ never imports torch or tensorflow (nor the training package), not even indirectly.

Every module in the runtime/ folder is imported in a fresh interpreter, found by listing the
folder, so a module added later is covered without editing this test.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import glassfinder_runtime

# Top-level packages the phone-side runtime must not pull in.
FORBIDDEN = ("torch", "tensorflow", "keras", "tf_keras", "jax", "glassfinder", "glassfinder_export")

CHECK = r"""
import importlib, json, sys
forbidden, modules = set(sys.argv[1].split(",")), sys.argv[2:]
culprits = {}
for name in modules:
    importlib.import_module(name)
    found = sorted(forbidden & {m.split(".")[0] for m in sys.modules})
    if found:
        culprits[name] = found
        break
print(json.dumps(culprits))
"""


def runtime_modules() -> list[str]:
    folder = Path(glassfinder_runtime.__file__).parent
    names = sorted(p.stem for p in folder.glob("*.py") if p.stem != "__init__")
    return ["glassfinder_runtime"] + [f"glassfinder_runtime.{n}" for n in names]


def test_the_folder_listing_finds_the_modules():
    mods = runtime_modules()
    for expected in ("glassfinder_runtime.bundle", "glassfinder_runtime.manifest", "glassfinder_runtime.image_io",
                     "glassfinder_runtime.errors", "glassfinder_runtime.geometry"):
        assert expected in mods


def test_no_runtime_module_imports_torch_or_tensorflow():
    result = subprocess.run([sys.executable, "-c", CHECK, ",".join(FORBIDDEN), *runtime_modules()],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    culprits = json.loads(result.stdout.strip().splitlines()[-1])
    assert culprits == {}, f"importing {culprits} pulled in forbidden packages"


def test_the_check_can_fail():
    """The same check, pointed at a module that does import torch, reports it."""
    result = subprocess.run([sys.executable, "-c", CHECK, ",".join(FORBIDDEN), "glassfinder_runtime.errors",
                             "glassfinder.checkpoint"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"glassfinder.checkpoint": ["glassfinder", "torch"]}

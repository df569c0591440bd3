# Two entry points for people and CI: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: install demo test kotlin
install: $(VENV)/.installed

# The Android stub's numeric core is compiled and checked against the golden vectors by the tests.
kotlin:
	@command -v kotlinc >/dev/null || { apt-get update -qq && apt-get install -y -qq kotlin >/dev/null; }

# torch is installed first, alone, so that nothing later can pull a CUDA build (see constraints.txt).
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[all]"
	$(BIN)/pip install -q --no-deps onnx2tf==1.29.24
	touch $@

demo: install
	$(BIN)/glassfinder demo

test: install kotlin
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

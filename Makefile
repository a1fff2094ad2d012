# The two commands a newcomer types:  make demo   and   make test
# Both create .venv and install the workspace (editable) on first use.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The emulators with their [test] extra: their tests drive them through the vendors' SDKs.
PACKAGES := $(shell for d in sdk host agent emulators drivers/netapp drivers/solidfire stack; do [ -f $$d/pyproject.toml ] && echo "-e './$$d$$([ $$d = emulators ] && echo '[test]')'"; done)

.PHONY: venv demo up test test-all lint typecheck protos proto-check unit clean

venv: $(VENV)/.installed

# uv, not pip, installs the workspace: ~15-30 s instead of ~90 s of CI's 15 minutes
# (it downloads in parallel and builds the editables at once). pip only installs uv,
# and stays in the venv for whatever a user adds by hand.
$(VENV)/.installed: constraints.txt requirements-dev.txt $(wildcard */pyproject.toml drivers/*/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt uv
	$(VENV)/bin/uv pip install -q --python $(PY) -c constraints.txt -r requirements-dev.txt $(PACKAGES)
	$(PY) scripts/proto_deps.py >/dev/null  # .deps/googleapis for `buf lint proto`
	touch $@

demo: venv
	$(VENV)/bin/vmsnap demo

up: venv
	$(VENV)/bin/vmsnap up

protos: venv
	$(PY) scripts/gen_protos.py

test: venv
	$(PY) scripts/check.py

# Also the long acceptance runs (pytest marker "ondemand") that CI leaves out.
test-all: venv
	VMSNAP_ALL_TESTS=1 $(PY) scripts/check.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

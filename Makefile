# hoody-tunnel developer entry points. Needs only python3 (3.11) and make.
#   make install   .venv with the pinned dependencies and this package (editable); a no-op when current
#   make run       the server as the Procfile starts it, on 0.0.0.0:${PORT:-8080}
#   make test      unit, then integration, then e2e tests
#   make bench     python -m bench
#   make lint      mypy --strict on tunnel/

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Newer than every input file means the venv is current: `make install` then skips pip entirely.
STAMP := $(VENV)/.hoody-tunnel-installed
PORT ?= 8080
TEST_STAGES := unit integration e2e

.PHONY: install run test bench lint

install: $(STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements.txt requirements-dev.txt setup.cfg setup.py
	$(PY) -m pip install --disable-pip-version-check -q -r requirements-dev.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -e .
	touch $@

# The Procfile's command; gunicorn.conf.py binds 0.0.0.0:$$PORT.
run: install
	PORT=$(PORT) exec $(VENV)/bin/gunicorn -c gunicorn.conf.py tunnel.wsgi:app

# Every stage runs even when an earlier one failed, so one run shows everything; the target fails
# if any stage failed. pytest's exit 5 ("no tests collected") is not a failure.
test: install
	@rc=0; \
	for stage in $(TEST_STAGES); do \
		if [ ! -d tests/$$stage ]; then echo "== $$stage: no tests/$$stage, skipped"; continue; fi; \
		echo "== $$stage tests"; \
		$(PY) -m pytest tests/$$stage; status=$$?; \
		if [ $$status -ne 0 ] && [ $$status -ne 5 ]; then rc=1; echo "== $$stage tests FAILED (exit $$status)"; fi; \
	done; \
	exit $$rc

bench: install
	$(PY) -m bench

lint: install
	$(PY) -m mypy

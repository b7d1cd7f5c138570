# chainmail — set-up, run, lint and test. Every target works from a clean clone.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install run test lint unit interop clean

$(STAMP): pyproject.toml src/chainmail/_ssbscan.c src/chainmail/_sigbatch.c
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: install
	$(BIN)/chainmail serve --data $${CHAINMAIL_DATA:-.chainmail-node}

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/mypy tests benchmarks

# node_modules for the SSB interoperability tests, from the committed lock file.
interop/node_modules/.installed: interop/package.json interop/package-lock.json
	cd interop && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: install lint interop/node_modules/.installed
	$(BIN)/pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then echo 'pytest collected no tests' >&2; exit 1; fi; exit $$rc

clean:
	rm -rf $(VENV) interop/node_modules .pytest_cache .mypy_cache .ruff_cache

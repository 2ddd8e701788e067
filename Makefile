PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench stress clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY) requirements.txt requirements-dev.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

demo: $(STAMP)
	$(PY) -m bench.demo

bench: $(STAMP)
	$(PY) bench/bench_tag_sync.py
	$(PY) bench/bench_tag_sync_reruns.py
	$(PY) bench/bench_cache.py
	$(PY) bench/bench_hook.py

stress: $(STAMP)
	$(PY) -m pytest -q -m stress tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis

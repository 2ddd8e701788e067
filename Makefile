PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo bench stress package clean

$(PY):
	@$(PYTHON) -m venv $(VENV)

# Quiet on success (pip's notices would bury the first lines of `make demo`); the whole log on failure.
$(STAMP): $(PY) requirements.txt requirements-dev.txt
	@echo "Installing requirements-dev.txt into $(VENV) ..."
	@log=$$(mktemp) && PIP_ROOT_USER_ACTION=ignore $(PY) -m pip install --quiet --disable-pip-version-check \
		-r requirements-dev.txt > $$log 2>&1 || { cat $$log; rm -f $$log; exit 1; }; rm -f $$log
	@touch $(STAMP)

# Tests run on every core (at most 4): they pick their own ports and folders, and assert nothing on timing.
test: $(STAMP)
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist worksteal

demo: $(STAMP)
	@$(PY) -m bench.demo

bench: $(STAMP)
	$(PY) bench/bench_tag_sync.py
	$(PY) bench/bench_tag_sync_reruns.py
	$(PY) bench/bench_cache.py
	$(PY) bench/idle_smart_cpu.py 1 3
	$(PY) bench/bench_hook.py
	$(PY) bench/bench_tag_links.py
	$(PY) bench/bench_hooks_cost.py
	$(PY) bench/bench_page_sizes.py

package: $(STAMP)
	@$(PY) -m tools.package_source --out dist

stress: $(STAMP)
	$(PY) -m pytest -q -m stress tests

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis dist

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Tests mostly wait on timeouts and real processes: four at a time; the chaos suite, which
# measures latencies, runs alone after them.
TEST_PROCESSES ?= 4

.PHONY: test chaos demo lint bench clean dist fresh-clone-test systemd-test

# sqsd depends on sqsd-client, built from clients/python: both are installed editable.
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@echo "Setting up $(VENV): sqsd, sqsd-client and their dependencies (about a minute the first time)"
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ./clients/python -e '.[local,test]'
	touch $(STAMP)
	@echo "$(VENV) is ready"


test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n $(TEST_PROCESSES) tests --ignore=tests/chaos
	$(PY) -m pytest -q tests/chaos

# The reliability suite with the issue's full numbers (the short form runs in `make test`);
# figures in tests/chaos/last-run.json. Then the worker model with many thousands of cases
# (tests/unit/worker-model-last-run.json).
chaos: $(STAMP)
	SQSD_CHAOS=long $(PY) -m pytest -q tests/chaos
	SQSD_CHAOS=long $(PY) -m pytest -q tests/unit/test_worker_model.py

# The shipped units under a real systemd: a Debian container booted with systemd-nspawn
# (root only; elsewhere one line says why and it exits 0). Cached container layers live in
# /var/cache/sqsd-systemd-test; see tests/systemd/container.py.
systemd-test: $(STAMP)
	$(PY) tests/systemd/container.py test

demo: $(STAMP)
	$(PY) etc/demo.py

# The wheels of sqsd and sqsd-client (clients/python), for hosts without a PyPI release.
dist: $(STAMP)
	$(PY) -m pip wheel --quiet --no-deps --wheel-dir dist . ./clients/python
	@ls dist/*.whl

# getting-started.md and the README's `make demo`, run as written on a fresh clone of the
# committed HEAD (about 3 minutes; .ci/run calls it after `make test`).
fresh-clone-test: $(STAMP)
	SQSD_FRESH_CLONE=1 $(PY) -m pytest -q -s tests/integration/test_fresh_clone.py

lint: $(STAMP)
	$(PY) -m ruff check .

# The peers the benchmark runs beside sqsd (dramatiq, Celery): their own venv, never .venv.
PEERS_STAMP := bench/.peers-venv/.installed
$(PEERS_STAMP): bench/peers-requirements.txt | $(STAMP)
	$(PY) -m bench.peers --install

# Benchmarks against fauxqs (figures only, never pass/fail): make bench BENCH_ARGS=--quick
bench: $(STAMP) $(PEERS_STAMP)
	test -d bench/node_modules/fauxqs || npm install --prefix bench --no-save fauxqs@1.9.2
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) bench/.peers-venv build dist clients/python/build *.egg-info clients/python/*.egg-info

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test chaos demo lint bench clean systemd-test

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[local,test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

# The reliability suite with the issue's full numbers (the short form runs in `make test`);
# figures in tests/chaos/last-run.json.
chaos: $(STAMP)
	SQSD_CHAOS=long $(PY) -m pytest -q tests/chaos

# The shipped units under a real systemd: a Debian container booted with systemd-nspawn
# (root only; elsewhere one line says why and it exits 0). Cached container layers live in
# /var/cache/sqsd-systemd-test; see tests/systemd/container.py.
systemd-test: $(STAMP)
	$(PY) tests/systemd/container.py test

demo: $(STAMP)
	$(PY) etc/demo.py

lint: $(STAMP)
	$(PY) -m ruff check .

# Benchmarks against fauxqs (figures only, never pass/fail): make bench BENCH_ARGS=--quick
bench: $(STAMP)
	test -d bench/node_modules/fauxqs || npm install --prefix bench --no-save fauxqs@1.9.2
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info

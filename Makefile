# make demo: train on the built-in shapes dataset.  make test: run the test suite (CI runs it).
# make test-fast: the suite without the tests marked slow (training, export, benchmark runs), for the inner loop.
# Both build .venv as a fresh machine would: no system site-packages, exact versions from the locks
# (requirements.lock for the demo, requirements-extra.lock, a superset, for the tests). The venv is kept:
# a second run reinstalls only when a lock changed.
# make lock: refresh both locks from the ranges in requirements*.txt (pip-tools, in .venv-lock).
# make test-latest: the suite in .venv-latest, built from the ranges at their newest releases.
VENV ?= .venv
PY := $(VENV)/bin/python
LATEST := .venv-latest
COMPILE := .venv-lock/bin/pip-compile --quiet --strip-extras --allow-unsafe --no-emit-index-url \
           --no-emit-find-links --no-emit-trusted-host -c requirements-pins.txt

.PHONY: demo test test-fast test-latest lock bench clean

$(VENV)/.installed: requirements.lock
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.lock
	rm -f $(VENV)/.installed-extra
	touch $@

$(VENV)/.installed-extra: $(VENV)/.installed requirements-extra.lock
	$(PY) -m pip install -q -r requirements-extra.lock
	touch $@

demo: $(VENV)/.installed
	$(PY) train.py

# The suite runs in TEST_JOBS processes (pytest-xdist; each test file stays in one, so its fixtures are built once),
# one torch thread each: the processes share the cores. TEST_JOBS=0 runs it in this process; TEST_JOBS=auto, one
# process per core.
TEST_JOBS ?= 2
PYTEST_ARGS := -q -n $(TEST_JOBS) --dist loadfile

test: $(VENV)/.installed-extra
	$(VENV)/bin/lint-imports --no-cache
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-extra
	OMP_NUM_THREADS=1 $(PY) -m pytest $(PYTEST_ARGS) -m 'not slow'

$(LATEST)/.installed: requirements.txt requirements-extra.txt
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q --upgrade -r requirements.txt -r requirements-extra.txt
	$(LATEST)/bin/python -m pip freeze > $(LATEST)/freeze.txt
	touch $@

test-latest: $(LATEST)/.installed
	$(LATEST)/bin/lint-imports --no-cache
	OMP_NUM_THREADS=1 $(LATEST)/bin/python -m pytest $(PYTEST_ARGS)

lock:
	test -x .venv-lock/bin/pip-compile || (python3 -m venv .venv-lock && .venv-lock/bin/pip install -q pip-tools)
	rm -f requirements.lock requirements-extra.lock
	$(COMPILE) -o requirements.lock requirements.txt
	$(COMPILE) -c requirements.lock -o requirements-extra.lock requirements.txt requirements-extra.txt

bench: $(VENV)/.installed
	$(PY) benchmarks/freeze.py
	$(PY) benchmarks/dataloader.py

clean:
	rm -rf $(VENV) $(LATEST) runs

# make demo: train on the built-in shapes dataset.  make test: run the test suite.
# Both create .venv first (it may reuse packages already installed on the system); demo installs
# requirements.txt, test also requirements-extra.txt so that the optional features' tests run too.
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: requirements.txt
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-extra: $(VENV)/.installed requirements-extra.txt
	$(PY) -m pip install -q -r requirements-extra.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) train.py

test: $(VENV)/.installed-extra
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/freeze.py
	$(PY) benchmarks/dataloader.py

clean:
	rm -rf $(VENV) runs

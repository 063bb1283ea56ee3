# make demo: train on the built-in shapes dataset.  make test: run the test suite.
# Both create .venv from requirements.txt first (it may reuse packages already installed on the system).
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench clean

$(VENV)/.installed: requirements.txt
	python3 -m venv --system-site-packages $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	touch $@

demo: $(VENV)/.installed
	$(PY) train.py

test: $(VENV)/.installed
	$(PY) -m pytest -q

bench: $(VENV)/.installed
	$(PY) benchmarks/freeze.py
	$(PY) benchmarks/dataloader.py

clean:
	rm -rf $(VENV) runs

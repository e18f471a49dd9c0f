# The two front-door commands: `make demo` (main job, embedded backend) and `make test` (whole suite).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.genq-installed

.PHONY: demo demo-gpl test install opensearch-start opensearch-stop

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/genq-search adapt --config examples/pydocs-demo.toml

demo-gpl: $(STAMP)
	$(VENV)/bin/genq-search adapt --config examples/pydocs-gpl.toml

test: $(STAMP)
	PATH="$(abspath $(VENV))/bin:$$PATH" scripts/test.sh

opensearch-start:
	scripts/opensearch-local.sh start

opensearch-stop:
	scripts/opensearch-local.sh stop

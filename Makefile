# Two virtual environments: .venv (the project) and .venv-ls (the Label Studio server, whose pins
# clash with ours; the project only talks to it over HTTP). Both install from lock files.
PYTHON ?= python3

.PHONY: install demo test bench faults stack-down repro

install: .venv/.installed .venv-ls/.installed

.venv/.installed: requirements.lock pyproject.toml
	$(PYTHON) -m venv .venv
	.venv/bin/pip install -qq -r requirements.lock
	.venv/bin/pip install -qq --no-deps -e .
	touch $@

.venv-ls/.installed: requirements-ls.lock
	$(PYTHON) -m venv .venv-ls
	.venv-ls/bin/pip install -qq -r requirements-ls.lock
	touch $@

demo: install
	.venv/bin/flywheel demo

test: install
	.venv/bin/pytest

bench: install   # every benchmark that writes a figure and is not measured on this code yet (~4 hours on 2 cores; resumes)
	.venv/bin/flywheel bench all

faults: install   # the full fault matrix on a throwaway team-profile stack (~25 minutes on 2 cores)
	.venv/bin/flywheel bench faults

stack-down:
	.venv/bin/flywheel stack down

repro: install   # dvc.yaml over the latest snapshot (needs `make demo` or `flywheel stack up` and a snapshot)
	PATH="$(CURDIR)/.venv/bin:$$PATH" .venv/bin/dvc repro

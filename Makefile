# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both build the environment first (scripts/setup.sh, idempotent).
.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/rcdm demo

test: setup
	.venv/bin/python -m pytest --durations=15 -q

lint: setup
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

# The README's two commands: `make demo` (set up, then start the demo) and `make test`.
.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

# The page opens at once; models without a checkpoint train in the background (backend/configs/default.yaml).
demo: setup
	.venv/bin/crs demo

test:
	.venv/bin/pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	.venv/bin/python bench/llm_runtime.py

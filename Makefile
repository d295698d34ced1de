# The README's two commands: `make demo` (set up, then start the demo) and `make test`.
.PHONY: setup demo test lint bench

setup:
	bash scripts/setup.sh

demo: setup
	.venv/bin/crs train sasrec --dataset movielens-100k --skip-existing
	.venv/bin/crs train pecrs --dataset llm-redial --max-steps 24 --eval-every 24 --lr 5e-4 --set head_lr=2e-3 --set dev_samples=16 --skip-existing
	.venv/bin/crs demo

test:
	.venv/bin/pytest -q

lint:
	.venv/bin/ruff check . && .venv/bin/ruff format --check .

bench:
	.venv/bin/python bench/llm_runtime.py

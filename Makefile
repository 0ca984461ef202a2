# The two quick-start commands (see README.md); both set everything up first.
.PHONY: setup demo lint test test-fast bench

setup:
	@scripts/setup.sh

demo: setup
	.venv/bin/edgefarm run examples/ppocr.yaml

# Static checks first: ruff (pyflakes rules and import order) and mypy on controller/ and agent/.
lint: setup
	.venv/bin/ruff check controller agent dashboard tests bench
	.venv/bin/mypy

test: lint
	.venv/bin/pytest -q

test-fast: setup
	.venv/bin/pytest -m "not slow" -q

bench: setup
	.venv/bin/python bench/selection.py
	.venv/bin/python bench/tool_agreement.py
	.venv/bin/python bench/bundle_e2e.py
	.venv/bin/python bench/makespan.py

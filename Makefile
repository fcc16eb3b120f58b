# The two set-up commands of the README: `make demo` (the main job) and `make test` (the suite).
# Both create .venv and install aeguard with all its extras (training, Parquet, Ray, tests) into it.

PYTHON ?= python3
VENV ?= .venv
# Pinned so a CPU-only machine takes the local CPU wheel instead of pulling CUDA packages;
# override for another build, e.g. make TORCH_SPEC='torch>=2.2' demo.
TORCH_SPEC ?= torch==2.13.0
export AEGUARD_DATA_DIR ?= $(abspath ../shared/datasets)

DEMO_DIR ?= demo
BIN := $(VENV)/bin

.PHONY: demo test test-fast check docs install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[train,report,parquet,ray,test,check,docs]"
	touch $@

demo: install
	$(BIN)/aeguard fit --noise erase:0.25 --score blur --out $(DEMO_DIR)/bundle --force
	$(BIN)/aeguard evaluate $(DEMO_DIR)/bundle
	$(BIN)/aeguard dump-images $(DEMO_DIR)/photos --count 200
	$(BIN)/aeguard score $(DEMO_DIR)/bundle $(DEMO_DIR)/photos --output $(DEMO_DIR)/scores.csv
	@echo
	@echo "bundle (ONNX model + manifest): $(DEMO_DIR)/bundle"
	@echo "evaluation report:              $(DEMO_DIR)/bundle/report/report.md"
	@echo "scores of $(DEMO_DIR)/photos:     $(DEMO_DIR)/scores.csv"

test: install
	$(BIN)/python -m pytest -q

# The edit-test loop: the unit tests only (no real data sets, no daemons, no fresh environments).
test-fast: install
	$(BIN)/python -m pytest -q -m "not e2e and not slow"

# Lint (ruff, rules chosen in pyproject.toml), format, and types against tools/mypy-baseline.txt.
check: install
	$(BIN)/ruff check aeguard tests benchmarks tools
	$(BIN)/ruff format --check aeguard tests benchmarks tools
	$(BIN)/python tools/typecheck.py

# The documentation site (build/site), strict: a broken link or a docstring that does not render fails it.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/python tools/build_docs.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs

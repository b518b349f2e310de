# Two commands on a fresh machine: `make demo` and `make test` (see README).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# The generated dataset of the demo: small enough for a 2-core CPU, big enough to learn from.
DEMO_DATA       ?= data/generated
DEMO_PEOPLE     ?= 400
DEMO_EVAL       ?= 100
DEMO_OVERRIDES  ?= train.image_size=[64,48] train.epochs=10

.PHONY: install demo test lint format clean results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --progress-bar off -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	test -f $(DEMO_DATA)/train/train.csv || \
	  $(BIN)/python -m pipeline.synth $(DEMO_DATA) --people $(DEMO_PEOPLE) --eval-people $(DEMO_EVAL) --seed 0
	$(BIN)/python -m pipeline.launch data.root=$(DEMO_DATA) $(DEMO_OVERRIDES)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf outputs .pytest_cache .ruff_cache

# The results table in README: suite=seed on a full-size generated dataset (2,700 + 1,800 people).
RESULTS_DATA      ?= data/full
RESULTS_OVERRIDES ?= train.image_size=[64,48] train.epochs=4 tracking.mode=disabled
results: $(STAMP)
	test -f $(RESULTS_DATA)/train/train.csv || $(BIN)/python -m pipeline.synth $(RESULTS_DATA) --seed 1
	$(BIN)/python -m pipeline.launch suite=seed data.root=$(RESULTS_DATA) store.root=outputs/results $(RESULTS_OVERRIDES)
	$(BIN)/python -m pipeline.results store.root=outputs/results --out outputs/results/results.md

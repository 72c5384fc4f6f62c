# Two commands from nothing: `make demo` and `make test`. Everything installs into .venv from
# the pinned constraints.txt (torch/torchvision, Prefect/fastapi and MLflow known to work together).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DATE ?= $(shell date +%F)

.PHONY: install demo elpv test browser-test clean-demo

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/panelscan synth --out data/raw --n 600 --seed 0
	$(BIN)/panelscan pipeline --raw data/raw --labels data/raw/labels.csv
	$(BIN)/panelscan synth --out data/inbox/$(DEMO_DATE) --n 60 --seed 1
	$(BIN)/panelscan nightly --inbox data/inbox --date $(DEMO_DATE)
	@echo
	@echo "Inspector report: data/reports/$(DEMO_DATE)/index.html (gallery), flagged.csv, scores.csv"
	@echo "Review:           in the gallery, then $(BIN)/panelscan review import <download folder>/review-$(DEMO_DATE).csv"
	@echo "MLflow UI:        $(BIN)/mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db  -> http://127.0.0.1:5000"

# The real-data run: ELPV solar cells (ok = probability 0, crack >= 2/3), cells fill the frame.
elpv: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,elpv]"
	$(BIN)/panelscan elpv --out data/elpv
	$(BIN)/panelscan pipeline --raw data/elpv --labels data/elpv/labels.csv --workdir data/elpv-work --model-name panel-anomaly-elpv

test: $(STAMP)
	$(BIN)/pytest

# The gallery's review in a real browser: Debian's Chromium (root, apt) and Playwright to drive it.
browser-test: $(STAMP)
	command -v chromium >/dev/null || apt-get install -y chromium
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,browser]"
	$(BIN)/pytest -m browser -n 0

clean-demo:
	rm -rf data/raw data/inbox data/processed data/quarantine data/reports data/calibration.json data/latest_train.json mlruns/mlflow.db mlruns/artifacts

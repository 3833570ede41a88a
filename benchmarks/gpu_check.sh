#!/usr/bin/env bash
# The GPU checks, as one short script (about 8 minutes on one H100/H200-class GPU):
#   1. batched vs sequential chains and SGLD vs training step on small transformers, fp32 and
#      bf16 autocast (bench_chains.py);
#   2. the LLC of a 10^8-parameter deep linear network in bf16 against Aoyagi's lambda
#      (gpu_dln_100m.py, shrunk to fit its time budget);
#   3. the same as 1 at GPT-2-small scale (124M parameters).
# Run from the repository root with hf_llc importable (pip install -e . or PYTHONPATH=.).
# Each part has its own time limit, so one that overruns does not take the others with it;
# output goes to stdout and, when OUT is set, to files under $OUT.
set -u
out="${OUT:-/tmp/hf_llc_gpu_check}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
cd benchmarks
timeout 150 python3 bench_chains.py --device cuda --size small --precision no bf16 \
    --chains 4 --steps 20 --rounds 2 --json "$out/chains_small.json" 2>&1 | tee "$out/chains_small.txt"
timeout 240 python3 gpu_dln_100m.py --max-minutes 3.3 2>&1 | tee "$out/dln_100m.txt"
timeout 110 python3 bench_chains.py --device cuda --size medium --models gpt2 llama \
    --precision no bf16 --chains 4 --steps 10 --rounds 2 --json "$out/chains_medium.json" \
    2>&1 | tee "$out/chains_medium.txt"

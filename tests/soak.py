#!/usr/bin/env python3
"""Kill-and-resume soak: many random kill points, both recipes and a two-process DDP run.

Each trial starts a tiny run with ``SPEECH_ADAPTERS_FAULT=<point>:<count>[:torn]`` (the
run SIGKILLs itself there: mid-batch, at any step of a checkpoint save or of the deletion
of an older one, or after training; see :mod:`recipes.resumption`), reruns the same
command, and compares the summary (training time aside) and the adapter bytes with an
uninterrupted run of the same configuration. The killed runs write a checkpoint after
every batch (``--ckpt_interval_steps``, 1 by default), the uninterrupted one only at
epoch ends, so the comparison also shows that checkpoints inside an epoch change nothing.
It exits non-zero on any difference.

    python tests/soak.py                     # 8 trials per configuration, ~10 min on 2 cores
    python tests/soak.py --trials 20 --seed 3 --configs asr-ddp

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
ASR = [str(ROOT / "recipes/asr/train.py")]
WHISPER = [str(ROOT / "recipes/whisper/train.py")]
ASR_TINY = ["--corpus_size=tiny", "--batch_size=4", "--num_workers=0", "--d_model=64", "--nhead=2",
            "--num_encoder_layers=2", "--d_ffn=256"]  # fmt: skip
EPOCHS = 3


def execute(command: list[str], fault: str | None = None) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("SPEECH_ADAPTERS_FAULT", None)
    if fault:
        env["SPEECH_ADAPTERS_FAULT"] = fault
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if fault is None and done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    return done.returncode


def outcome(folder: Path) -> tuple[dict, str]:
    summary = json.loads((folder / "summary.json").read_text())
    summary.pop("train_time_s")
    return summary, hashlib.sha256((folder / "adapter.safetensors").read_bytes()).hexdigest()


def configurations(work: Path) -> dict[str, tuple[list[str], int]]:
    """name -> (command without --output_folder, training batches per epoch)."""
    corpus = work / "corpus"
    base = work / "pre" / "base_model.ckpt"
    execute([PY, *ASR, "hparams/pretrain_asr.yaml", f"--data_folder={corpus}", *ASR_TINY,
             "--number_of_epochs=10", f"--output_folder={work / 'pre'}"])  # fmt: skip
    from recipes.whisper.random_init import save_random_whisper

    source = save_random_whisper(work / "tiny-whisper")
    lora_asr = ["hparams/lora_asr.yaml", f"--data_folder={corpus}", *ASR_TINY, f"--base_checkpoint={base}",
                f"--number_of_epochs={EPOCHS}", "--rank=4"]  # fmt: skip
    whisper = ["hparams/lora_whisper.yaml", f"--data_folder={corpus}", f"--whisper_source={source}",
               f"--hub_cache={work / 'hub'}", "--corpus_size=tiny", "--real_speech=False",
               "--train_utterances=8", "--valid_utterances=4", "--test_utterances=4", "--batch_size=4",
               "--num_workers=0", "--train_window_s=2.0", "--eval_window_s=2.0", "--lr=0.01",
               f"--number_of_epochs={EPOCHS}", "--rank=4"]  # fmt: skip
    torchrun = str(Path(PY).with_name("torchrun"))
    return {
        "asr": ([PY, *ASR, *lora_asr], 3),
        "whisper": ([PY, *WHISPER, *whisper], 2),
        "asr-ddp": (
            [torchrun, "--nproc_per_node=2", *ASR, *lora_asr, "--distributed_backend=gloo"],
            2,
        ),
    }


#: Files of one checkpoint (CKPT.yaml and one per recoverable), about: a count past the
#: last pass of a point only means that trial's run is not killed.
FILES_PER_CHECKPOINT = 8


def random_fault(rng: random.Random, batches: int, interval: int) -> str:
    """A kill point and the pass to kill at, anywhere in a run of ``EPOCHS`` epochs of
    ``batches`` batches with a checkpoint every ``interval`` steps (0: at epoch ends)."""
    saves = EPOCHS * (1 + (batches // interval if interval else 0))
    files = saves * FILES_PER_CHECKPOINT
    limits = {
        "train_batch": batches * EPOCHS,
        "checkpoint_write": saves,
        "checkpoint_file": files,
        "checkpoint_marker": saves,
        "checkpoint_complete": saves,
        "checkpoint_delete": max(1, saves - 1) * (FILES_PER_CHECKPOINT + 1),
        "before_test": 1,
    }
    point = rng.choice(sorted(limits))
    torn = ":torn" if point == "checkpoint_file" and rng.random() < 0.5 else ""
    return f"{point}:{rng.randint(1, limits[point])}{torn}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8, help="per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--configs", default="asr,whisper,asr-ddp", help="which configurations")
    parser.add_argument(
        "--interval", type=int, default=1, help="training steps between checkpoints (0: none)"
    )
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    start, failures, rows = time.time(), 0, []
    try:
        chosen = args.configs.split(",")
        for name, (command, batches) in configurations(work).items():
            if name not in chosen:
                continue
            reference = work / f"{name}-reference"
            execute([*command, f"--output_folder={reference}"])
            expected = outcome(reference)
            for trial in range(args.trials):
                fault = random_fault(rng, batches, args.interval)
                folder = work / f"{name}-{trial}"
                interval = [f"--ckpt_interval_steps={args.interval}"] if args.interval else []
                code = execute([*command, *interval, f"--output_folder={folder}"], fault)
                execute([*command, *interval, f"--output_folder={folder}"])
                same = outcome(folder) == expected
                failures += not same
                rows.append((name, fault, code, same))
                print(
                    f"{name:8} kill at {fault:18} exit {code:4}  rerun: {'same figures and adapter bytes' if same else 'DIFFERENT'}",
                    flush=True,
                )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    killed = sum(code != 0 for _, _, code, _ in rows)
    print(
        f"{len(rows)} trials ({killed} killed runs), {failures} different, in {time.time() - start:.0f} s"
    )
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

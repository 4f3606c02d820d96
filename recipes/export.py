"""Ship what a run trained, in the format the next tool reads.

    python -m recipes.export results/whisper/lora/noisy --to speechbrain exported/sb
    python -m recipes.export results/whisper/lora/noisy --to transformers exported/hf
    python -m recipes.export results/whisper/lora/noisy --to peft exported/peft
    python -m recipes.export results/whisper/lora/noisy --to ctranslate2 ct2 --quantization int8
    python -m recipes.export results/asr/lora/noisy --to speechbrain exported/ctc

- ``speechbrain``: a pretrained folder with the adapters merged into the weights
  (``model.ckpt``) and a ``hyperparams.yaml`` without adapters, for
  ``WhisperASR``/``EncoderASR.from_hparams``; it runs at the base model's speed.
- ``transformers`` (Whisper): a merged ``WhisperForConditionalGeneration`` folder with
  tokenizer, feature extractor and generation config, for
  ``transformers.pipeline("automatic-speech-recognition", model=folder)``.
- ``peft`` (Whisper, LoRA): ``adapter_config.json`` + ``adapter_model.safetensors`` for
  ``peft.PeftModel.from_pretrained``; other adapter kinds are refused with the reason.
- ``ctranslate2`` (Whisper): the merged model converted by CTranslate2's own converter
  (``--quantization int8|int8_float32|float16|float32``, default float32), for
  ``faster_whisper.WhisperModel(folder)``; needs the optional extra ``ctranslate2``
  (docs/deploy.md).

Adapters that cannot merge into the weights (Houlsby) are refused by the merged formats,
with the reason.

The run's own ``adapter.safetensors`` (with the base's fingerprint) stays the default
format; a PEFT folder loads back with :func:`adapters.peft_format.load_peft`.

Nothing is destroyed: the folder is built in a temporary sibling and swapped in; an
output folder holding files this command did not write is refused unless
``--overwrite`` is given, and one inside (or around) the run folder or the base model's
folder is always refused.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from recipes.inference import (
    MODEL_FOLDERS,
    ROOT,
    ctc_inference_folder,
    interface_class,
    load_inference,
    model_inference_folder,
    whisper_inference_folder,
)
from recipes.io import check_target, replace_folder
from recipes.overrides import yaml_keys
from recipes.transcribe import adapted_model_of
from recipes.whisper.ctranslate2_export import QUANTIZATIONS, check_mergeable, export_ctranslate2

FORMATS = ("speechbrain", "transformers", "peft", "ctranslate2")


def _template_values(asr, template: Path) -> dict:
    """The run's values of the template's scalar settings."""
    return {
        key: getattr(asr.hparams, key)
        for key in sorted(yaml_keys(template))
        if isinstance(getattr(asr.hparams, key, None), (str, int, float, bool))
    }


def export_speechbrain(asr, output: Path, **target: Any) -> Path:
    """A merged pretrained folder: ``model.ckpt`` holds the plain weights, no adapters.

    ``target``: ``sources`` and ``overwrite``, as :func:`recipes.io.replace_folder` takes them.
    """
    adapted = adapted_model_of(asr)
    whisper = getattr(asr.hparams, "whisper", None)
    plain = adapted.export_plain() if adapted is not None else (whisper or asr.hparams.model)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.ckpt"
        torch.save(plain.state_dict(), weights)
        files = {"model.ckpt": weights}
        name = type(asr).__name__
        if name in MODEL_FOLDERS:
            task, modules = MODEL_FOLDERS[name]
            values = _template_values(asr, ROOT / "hparams" / "inference" / f"{task}.yaml")
            return model_inference_folder(output, task, values, None, files, modules, **target)
        if whisper is not None:
            values = _template_values(asr, ROOT / "hparams" / "inference" / "whisper.yaml")
            return whisper_inference_folder(output, values, None, files, **target)
        values = _template_values(asr, ROOT / "hparams" / "inference" / "ctc.yaml")
        values.pop("base_checkpoint", None)
        return ctc_inference_folder(output, values, None, files, **target)


def export_sources(run: Path, inference: Path, asr: Any) -> list[Path]:
    """Folders an export of ``run`` is made from: the run folder, its inference folder and
    the base model's local folder. An output inside or around one of them is refused."""
    sources = [run, inference]
    if inference.name == "inference" and (inference.parent / "summary.json").is_file():
        sources.append(inference.parent)  # an inference folder given: its run too
    base = getattr(asr.hparams, "base_source", None)
    if isinstance(base, str) and Path(base).is_dir():
        sources.append(Path(base))
    return sources


def export(
    run: str | Path,
    to: str,
    output: str | Path,
    overwrite: bool = False,
    quantization: str | None = None,
) -> Path:
    """Export the run (or inference) folder ``run`` in format ``to`` into ``output``.

    ``output`` is refused when it holds files this project did not write (unless
    ``overwrite``) and whenever it is inside or around the run or the base model.
    ``quantization`` (``--to ctranslate2`` only): CTranslate2's weight type.
    """
    if quantization is not None and to != "ctranslate2":
        raise ValueError(
            f"--quantization applies to --to ctranslate2; --to {to} writes the weights as "
            "trained. Leave --quantization out, or export --to ctranslate2."
        )
    folder = Path(run)
    inference = folder / "inference" if (folder / "inference").is_dir() else folder
    run_marks = ("save", "summary.json", "train_log.txt")
    if not (inference / "hyperparams.yaml").is_file() and any(
        (folder / m).exists() for m in run_marks
    ):
        raise FileNotFoundError(
            f"{run} is a run folder without an inference folder: the run has not finished (the "
            "inference folder is written at its end) or it only evaluated (evaluate_only). "
            "Rerun its training command to resume and finish it, then export."
        )
    name = interface_class(inference).__name__
    if to != "speechbrain" and name != "WhisperASR":
        raise ValueError(
            f"--to {to} exports Whisper runs; {run} holds a {name} model, which "
            "exports --to speechbrain."
        )
    asr = load_inference(inference)
    output = Path(output)
    target = {"sources": export_sources(folder, inference, asr), "overwrite": overwrite}
    check_target(output, **target)  # before any work
    if to != "peft":  # PEFT names what it cannot represent itself
        check_mergeable(adapted_model_of(asr), target=to)
    if to == "speechbrain":
        return export_speechbrain(asr, output, **target)
    from adapters.peft_format import save_peft
    from recipes.whisper.export import export_transformers

    whisper, adapted = asr.hparams.whisper, adapted_model_of(asr)
    if to == "transformers":
        return export_transformers(whisper, adapted, asr.hparams.base_source, output, **target)
    if to == "ctranslate2":
        weights = quantization or "float32"
        source = asr.hparams.base_source
        return export_ctranslate2(whisper, adapted, source, output, weights, **target)
    if adapted is None:
        raise ValueError(f"--to peft exports adapters; {run} is a full fine-tuning run.")
    with replace_folder(output, **target) as tmp:
        save_peft(adapted, tmp, base_model_name_or_path=asr.hparams.base_source)
    return output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", help="a run's output folder (or its inference/ folder)")
    parser.add_argument("--to", choices=FORMATS, required=True)
    parser.add_argument(
        "output",
        help="folder to write (new, empty, or an earlier export; anything else needs --overwrite)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT even if it holds files this command did not write",
    )
    parser.add_argument(
        "--quantization",
        choices=QUANTIZATIONS,
        help="--to ctranslate2: CTranslate2's weight type (default float32; int8 for CPU serving)",
    )
    args = parser.parse_args(argv)
    try:
        path = export(
            args.run, args.to, args.output, overwrite=args.overwrite, quantization=args.quantization
        )
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run} --to {args.to}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Ship what a run trained, in the format the next tool reads.

    python -m recipes.export results/whisper/lora/noisy --to speechbrain exported/sb
    python -m recipes.export results/whisper/lora/noisy --to transformers exported/hf
    python -m recipes.export results/whisper/lora/noisy --to peft exported/peft
    python -m recipes.export results/lora_asr/noisy --to speechbrain exported/ctc

- ``speechbrain``: a pretrained folder with the adapters merged into the weights
  (``model.ckpt``) and a ``hyperparams.yaml`` without adapters, for
  ``WhisperASR``/``EncoderASR.from_hparams``; it runs at the base model's speed.
- ``transformers`` (Whisper): a merged ``WhisperForConditionalGeneration`` folder with
  tokenizer, feature extractor and generation config, for
  ``transformers.pipeline("automatic-speech-recognition", model=folder)``.
- ``peft`` (Whisper, LoRA): ``adapter_config.json`` + ``adapter_model.safetensors`` for
  ``peft.PeftModel.from_pretrained``; other adapter kinds are refused with the reason.

The run's own ``adapter.safetensors`` (with the base's fingerprint) stays the default
format; a PEFT folder loads back with :func:`recipes.whisper.export.load_peft`.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from recipes.inference import (
    ROOT,
    ctc_inference_folder,
    interface_class,
    load_inference,
    whisper_inference_folder,
)
from recipes.overrides import yaml_keys
from recipes.transcribe import adapted_model_of

FORMATS = ("speechbrain", "transformers", "peft")


def _template_values(asr, template: Path) -> dict:
    """The run's values of the template's scalar settings."""
    return {
        key: getattr(asr.hparams, key)
        for key in sorted(yaml_keys(template))
        if isinstance(getattr(asr.hparams, key, None), (str, int, float, bool))
    }


def export_speechbrain(asr, output: Path) -> Path:
    """A merged pretrained folder: ``model.ckpt`` holds the plain weights, no adapters."""
    adapted = adapted_model_of(asr)
    whisper = getattr(asr.hparams, "whisper", None)
    plain = adapted.export_plain() if adapted is not None else (whisper or asr.hparams.model)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "model.ckpt"
        torch.save(plain.state_dict(), weights)
        files = {"model.ckpt": weights}
        if whisper is not None:
            values = _template_values(asr, ROOT / "hparams" / "inference" / "whisper.yaml")
            return whisper_inference_folder(output, values, None, files)
        values = _template_values(asr, ROOT / "hparams" / "inference" / "ctc.yaml")
        values.pop("base_checkpoint", None)
        return ctc_inference_folder(output, values, None, files)


def export(run: str | Path, to: str, output: str | Path) -> Path:
    """Export the run (or inference) folder ``run`` in format ``to`` into ``output``."""
    folder = Path(run)
    inference = folder / "inference" if (folder / "inference").is_dir() else folder
    is_whisper = interface_class(inference).__name__ == "WhisperASR"
    if to != "speechbrain" and not is_whisper:
        raise ValueError(
            f"--to {to} exports Whisper runs; {run} holds a Conformer CTC, which "
            "exports --to speechbrain."
        )
    asr = load_inference(inference)
    output = Path(output)
    if to == "speechbrain":
        return export_speechbrain(asr, output)
    from recipes.whisper.export import export_transformers, save_peft

    whisper, adapted = asr.hparams.whisper, adapted_model_of(asr)
    if to == "transformers":
        return export_transformers(whisper, adapted, asr.hparams.base_source, output)
    if adapted is None:
        raise ValueError(f"--to peft exports adapters; {run} is a full fine-tuning run.")
    return save_peft(adapted, output, base_model_name_or_path=asr.hparams.base_source)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", help="a run's output folder (or its inference/ folder)")
    parser.add_argument("--to", choices=FORMATS, required=True)
    parser.add_argument("output", help="folder to write (replaced if it exists)")
    args = parser.parse_args(argv)
    try:
        path = export(args.run, args.to, args.output)
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"exported {args.run} --to {args.to}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

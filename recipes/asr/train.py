#!/usr/bin/env python3
"""Train a CTC ASR model: pretrain from scratch, fine-tune in full, or adapt.

The same script runs every ``hparams/<method>_asr.yaml``:

    python recipes/asr/train.py hparams/pretrain_asr.yaml
    python recipes/asr/train.py hparams/lora_asr.yaml --rank 16
    python recipes/asr/train.py hparams/full_asr.yaml
    torchrun --nproc_per_node=2 recipes/asr/train.py hparams/lora_asr.yaml

A YAML that declares a ``pretrainer`` loads the base model from a local
checkpoint; one that declares an ``adapted_model`` gets its adapters inserted
after that load. Every run evaluates WER/CER on each of its ``test_sets``
before (adaptation runs) and after training and writes ``summary.json`` in
its output folder.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import speechbrain as sb

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

from recipes.adaptation import (
    load_pretrained_base,
    prepare_corpus_on_main,
    run_adaptation,
    setup_experiment,
)
from recipes.asr.model import ctc_text_encoder
from recipes.audio import load_audio
from recipes.common import load_manifest
from recipes.inference import ctc_inference_folder, trained_files
from recipes.speech_recognition import SpeechRecognitionBrain
from recipes.text_normalization import inventory_text

logger = logging.getLogger(__name__)


#: The settings that shape the model and its features (the inference folder's too).
ARCHITECTURE = (
    "sample_rate", "tokens", "blank_index", "output_neurons", "n_mels", "frontend_channels_1",
    "frontend_channels_2", "d_model", "nhead", "num_encoder_layers", "d_ffn", "kernel_size",
)  # fmt: skip


class ASR(SpeechRecognitionBrain):
    """CTC training and evaluation with WER and CER."""

    #: Beyond the base weights and the data, the figures depend on the model's shape and
    #: features, and on the token inventory that normalises references and hypotheses.
    evaluation_settings = ARCHITECTURE

    def compute_forward(self, batch, stage):
        """Waveforms -> features -> log-probabilities over tokens."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        feats = self.hparams.compute_features(wavs)
        augment = getattr(self.hparams, "augment", None)
        if stage == sb.Stage.TRAIN and augment is not None:
            feats = augment(feats)
        logits = self.modules.model(feats, wav_lens)
        return self.hparams.log_softmax(logits), wav_lens

    def compute_objectives(self, predictions, batch, stage):
        """CTC loss; greedy decoding and error rates outside training."""
        log_probs, wav_lens = predictions
        tokens, token_lens = batch.tokens
        loss = self.hparams.ctc_cost(log_probs, tokens, wav_lens, token_lens)
        if stage != sb.Stage.TRAIN:
            hyps = sb.decoders.ctc_greedy_decode(
                log_probs, wav_lens, blank_id=self.hparams.blank_index
            )
            texts = ["".join(self.label_encoder.decode_ndim(h)) for h in hyps]
            inventory = self.hparams.tokens
            words = [inventory_text(t, inventory)[0].split() for t in texts]
            self.append_error_rates(batch.id, words, [r.split() for r in batch.reference])
        return loss


def build_label_encoder(hparams):
    """The character inventory, blank first, fixed by ``hparams["tokens"]``."""
    encoder = ctc_text_encoder(hparams["tokens"], hparams["blank_index"])
    if len(encoder) != hparams["output_neurons"]:
        raise ValueError(
            f"output_neurons is {hparams['output_neurons']} but the token inventory has "
            f"{len(encoder)} entries (blank + {len(hparams['tokens'])} characters)."
        )
    return encoder


def dataio_prepare(hparams, label_encoder):
    """DynamicItemDatasets for train, valid and each test set, and a report of the data.

    Audio goes through the collection's one loader (resampled to ``sample_rate``,
    downmixed); training data leaves out empty or too-short files, test sets
    refuse them. Transcripts are normalised the way hypotheses are scored
    (:func:`recipes.text_normalization.inventory_text`) into ``reference``, what
    scoring reads (never the manifest's raw ``wrd``); characters the token
    inventory cannot write are counted per set in the report.
    """
    data_root = hparams["data_folder"]
    inventory = hparams["tokens"]
    hint = "Run the recipe with prepare_corpus: True, or point the *_csv keys at your manifests."
    report: dict[str, int] = {}

    def load(name, path, train=False):
        data = load_manifest(path, data_root, hint, hparams["min_audio_s"], skip_short=train)
        report[f"{name}_unwritable_chars"] = sum(
            inventory_text(row["wrd"], inventory)[1] for row in data.data.values()
        )
        return data.filtered_sorted(sort_key="duration")

    train = load("train", hparams["train_csv"], train=True)
    valid = load("valid", hparams["valid_csv"], train=True)
    tests = {name: load(name, path) for name, path in (hparams["test_sets"] or {}).items()}
    datasets = [train, valid, *tests.values()]
    if any(report.values()):
        logger.warning("Characters the token inventory cannot write, dropped: %s", report)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    # A new name: an item named like a manifest column would be shadowed by the raw column.
    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("reference", "tokens")
    def text_pipeline(wrd):
        reference = inventory_text(wrd, inventory)[0]
        yield reference
        yield label_encoder.encode_sequence_torch(list(reference))

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "reference", "tokens"])
    return train, valid, tests, report


def write_inference(brain: ASR, hparams) -> Path:
    """``<output_folder>/inference``: ``EncoderASR.from_hparams`` with what this run trained."""
    adapted = hparams.get("adapted_model")
    values = {key: hparams[key] for key in ARCHITECTURE}
    if adapted is not None:
        values["base_checkpoint"] = str(Path(hparams["base_checkpoint"]).resolve())
    folder = Path(hparams["output_folder"]) / "inference"
    return ctc_inference_folder(folder, values, adapted, trained_files(brain, hparams))


def main():
    hparams, run_opts = setup_experiment(sys.argv[1:])
    prepare_corpus_on_main(hparams)

    label_encoder = build_label_encoder(hparams)
    train_set, valid_set, test_sets, data_report = dataio_prepare(hparams, label_encoder)

    load_pretrained_base(
        hparams,
        "Pretrain it first with `python recipes/asr/train.py hparams/pretrain_asr.yaml`, or set "
        "base_checkpoint.",
    )
    if "adapted_model" in hparams:  # full fine-tuning and pretraining have none
        hparams["adapted_model"].insert_adapters()

    asr = ASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr.label_encoder = label_encoder
    run_adaptation(
        asr, hparams, hparams["modules"]["model"], train_set, valid_set, test_sets, data_report,
        write_inference=write_inference,
    )  # fmt: skip


if __name__ == "__main__":
    main()

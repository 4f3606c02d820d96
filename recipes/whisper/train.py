#!/usr/bin/env python3
"""Fine-tune a pretrained Whisper in full or with adapters (sequence to sequence).

    python recipes/whisper/train.py hparams/lora_whisper.yaml
    python recipes/whisper/train.py hparams/lora_whisper.yaml --rank 16 --target voices
    python recipes/whisper/train.py hparams/full_whisper.yaml
    python recipes/whisper/train.py hparams/lora_whisper.yaml --whisper_source openai/whisper-small.en

The model is SpeechBrain's Whisper integration (through
:class:`recipes.whisper.model.WindowedWhisper`); ``whisper_source`` is a local
transformers folder (by default the packaged tiny.en, converted on first use)
or a hub id when a hub is reachable: the same code path either way. Training
uses teacher forcing with a cross-entropy loss; validation decodes greedily,
tests greedily or with beam search (``test_search``). Error rates compare
normalised text (:mod:`recipes.text_normalization`) because Whisper writes
cased, punctuated text.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import logging
import random
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.utils.distributed import run_on_main

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

from recipes.adaptation import (
    prepare_corpus_on_main,
    run_adaptation,
    setup_experiment,
)
from recipes.audio import load_audio
from recipes.common import load_manifest
from recipes.inference import trained_files, whisper_inference_folder
from recipes.speech_recognition import SpeechRecognitionBrain
from recipes.text_normalization import normalized_words

logger = logging.getLogger(__name__)


class WhisperASR(SpeechRecognitionBrain):
    """Teacher-forced training and searched decoding of a Whisper model."""

    #: Beyond the base weights and the data, the figures depend on the audio the encoder
    #: sees and on the searchers' settings (``max_decode_ratio``, beam size...).
    evaluation_settings = ("sample_rate", "eval_window_s", "valid_search", "test_search")

    def compute_forward(self, batch, stage):
        """Waveforms and prompt tokens -> next-token log-probabilities (and hypotheses)."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        prompt_tokens, _ = batch.tokens_bos
        enc_out, logits, _ = self.modules.whisper(wavs, prompt_tokens)
        log_probs = self.hparams.log_softmax(logits)
        hyps = None
        if stage == sb.Stage.VALID:
            hyps, _, _, _ = self.hparams.valid_search(enc_out.detach(), wav_lens)
        elif stage == sb.Stage.TEST:
            hyps, _, _, _ = self.hparams.test_search(enc_out.detach(), wav_lens)
        return log_probs, hyps

    def compute_objectives(self, predictions, batch, stage):
        """Cross-entropy on the transcript tokens; error rates on normalised text."""
        log_probs, hyps = predictions
        tokens_eos, tokens_eos_lens = batch.tokens_eos
        loss = self.hparams.nll_loss(log_probs, tokens_eos, length=tokens_eos_lens)
        if stage != sb.Stage.TRAIN:
            texts = self.tokenizer.batch_decode(hyps, skip_special_tokens=True)
            self.append_error_rates(
                batch.id,
                [normalized_words(t) for t in texts],
                [r.split() for r in batch.reference],
            )
        return loss


def training_text(text: str) -> str:
    """The text Whisper learns to write: all-caps transcripts become sentences.

    Whisper writes cased, punctuated text; teaching it an all-caps style would
    change its output on every domain. Cased transcripts are kept as they are.

    Example
    -------
    >>> training_text("SHE LIVED ON THE OTHER SIDE")
    'She lived on the other side.'
    >>> training_text("Press one, then pound.")
    'Press one, then pound.'
    """
    text = " ".join(text.split())
    if text.isupper():
        text = text.lower()
        text = text[:1].upper() + text[1:] + "."
    return text


def subset(data, count: int | None, seed: int):
    """A seeded random subset of ``count`` items of a dataset, or the dataset."""
    if count is None or count >= len(data):
        return data
    chosen = set(random.Random(seed).sample(sorted(data.data_ids), count))
    return data.filtered_sorted(key_test={"id": lambda uid: uid in chosen})


def dataio_prepare(hparams, tokenizer, real_sets: dict[str, str]):
    """DynamicItemDatasets for train, valid and each test set.

    The text pipeline provides the training targets and ``reference``, the
    normalised words scoring reads (never the manifest's raw ``wrd``).
    """
    data_root = hparams["data_folder"]
    hint = "Run the recipe with prepare_corpus: True, or point the *_csv keys at your manifests."
    sample_rate = hparams["sample_rate"]
    seed = hparams["seed"]

    def load(path, count=None, max_duration=None, train=False):
        data = load_manifest(path, data_root, hint, hparams["min_audio_s"], skip_short=train)
        data = subset(data, count, seed)
        limits = {"duration": max_duration} if max_duration else {}
        return data.filtered_sorted(sort_key="duration", key_max_value=limits)

    train = load(
        hparams["train_csv"], hparams["train_utterances"], hparams["train_window_s"], train=True
    )
    valid = load(hparams["valid_csv"], hparams["valid_utterances"], train=True)
    tests = {
        name: load(path, hparams["test_utterances"])
        for name, path in (hparams["test_sets"] or {}).items()
        if path is not None  # "--test_sets={source: null}" leaves a set out
    }
    # Real recordings longer than the evaluation window would be cut: leave them out.
    for name, path in real_sets.items():
        tests[name] = load(path, max_duration=hparams["eval_window_s"])
    datasets = [train, valid, *tests.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, sample_rate)

    prompt = list(tokenizer.prefix_tokens)  # <|startoftranscript|><|notimestamps|>
    eos = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    max_tokens = hparams["max_target_tokens"]

    # ``reference``, what scoring reads, is a new name: an item named like a manifest
    # column would be shadowed by the raw column.
    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("reference", "tokens_bos", "tokens_eos")
    def text_pipeline(wrd):
        yield " ".join(normalized_words(wrd))
        tokens = tokenizer.encode(" " + training_text(wrd), add_special_tokens=False)
        tokens = tokens[:max_tokens]
        yield torch.LongTensor(prompt + tokens)
        yield torch.LongTensor(prompt[1:] + tokens + [eos])

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    keys = ["id", "sig", "reference", "tokens_bos", "tokens_eos"]
    sb.dataio.dataset.set_output_keys(datasets, keys)
    return train, valid, tests


def prepare_data(hparams) -> dict[str, str]:
    """Generate the corpus and the real-speech manifests; return the real ones found."""
    prepare_corpus_on_main(hparams)
    if not hparams.get("real_speech", False):
        return {}
    from recipes.corpus.real_speech import prepare_real_speech

    kwargs = {"data_folder": hparams["data_folder"], "max_asterisk": hparams["max_asterisk"]}
    run_on_main(prepare_real_speech, kwargs=kwargs)
    # Done on the main process: now only lists what is there.
    found = {f"real_{n}": p for n, p in prepare_real_speech(**kwargs, download=False).items()}
    if not found:
        logger.warning("No real recorded speech on this machine: evaluating on synthetic only.")
    return found


def write_inference(brain: WhisperASR, hparams) -> Path:
    """``<output_folder>/inference``: ``WhisperASR.from_hparams`` with what this run trained."""
    whisper, adapted = hparams["whisper"], hparams.get("adapted_model")
    values = {
        "base_source": str(Path(whisper.source).resolve()),
        "train_window_s": whisper.train_window_s,
        "eval_window_s": whisper.eval_window_s,
        "max_decode_ratio": hparams["valid_search"].max_decode_ratio,
        "sample_rate": hparams["sample_rate"],
    }
    folder = Path(hparams["output_folder"]) / "inference"
    return whisper_inference_folder(folder, values, adapted, trained_files(brain, hparams))


def main():
    hparams, run_opts = setup_experiment(sys.argv[1:])
    real_sets = prepare_data(hparams)

    whisper = hparams["whisper"]
    train_set, valid_set, test_sets = dataio_prepare(hparams, whisper.tokenizer, real_sets)
    if "adapted_model" in hparams:
        hparams["adapted_model"].insert_adapters()

    brain = WhisperASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.tokenizer = whisper.tokenizer
    summary_model = hparams.get("adapted_model", whisper)
    run_adaptation(
        brain, hparams, summary_model, train_set, valid_set, test_sets,
        write_inference=write_inference,
    )  # fmt: skip


if __name__ == "__main__":
    main()

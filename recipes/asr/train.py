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

import json
import logging
import os
import sys
import time
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

from recipes.common import check_manifest, write_json

logger = logging.getLogger(__name__)


class ASR(sb.Brain):
    """CTC training and evaluation with WER and CER."""

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
            words = ["".join(self.label_encoder.decode_ndim(h)).split() for h in hyps]
            refs = [w.split() for w in batch.wrd]
            self.wer_metric.append(batch.id, words, refs)
            self.cer_metric.append(
                batch.id, [list(" ".join(w)) for w in words], [list(" ".join(r)) for r in refs]
            )
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Step the learning-rate schedule once per update."""
        if should_step:
            self.hparams.lr_annealing(self.optimizer)

    def init_optimizers(self):
        """Optimise only what is trainable (the adapters, for adapted models)."""
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_stage_start(self, stage, epoch=None):
        """Start the training clock, or fresh error-rate trackers."""
        if stage == sb.Stage.TRAIN:
            self.stage_start = time.perf_counter()
        else:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.error_rate_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Log, keep the best checkpoint by validation WER, record test figures."""
        stats = {"loss": stage_loss}
        if stage != sb.Stage.TRAIN:
            stats["WER"] = self.wer_metric.summarize("error_rate")
            stats["CER"] = self.cer_metric.summarize("error_rate")
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            self.train_seconds = getattr(self, "train_seconds", 0.0)
            self.train_seconds += time.perf_counter() - self.stage_start
        elif stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(meta={"WER": stats["WER"]}, min_keys=["WER"])
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"test set": self.test_name}, test_stats=stats
            )
            if if_main_process():
                path = os.path.join(self.hparams.output_folder, f"wer_{self.test_name}.txt")
                with open(path, "w") as handle:
                    self.wer_metric.write_stats(handle)

    def evaluate_sets(self, test_sets, min_key=None):
        """Evaluate on each named test set; return ``{name: {"WER", "CER"}}``."""
        results = {}
        for name, dataset in test_sets.items():
            self.test_name = name
            self.evaluate(dataset, min_key=min_key, test_loader_kwargs=self.hparams.test_loader)
            results[name] = {k: round(float(self.test_stats[k]), 2) for k in ("WER", "CER")}
        return results


def build_label_encoder(hparams):
    """The character inventory, blank first, fixed by ``hparams["tokens"]``."""
    encoder = sb.dataio.encoder.CTCTextEncoder()
    encoder.insert_blank(index=hparams["blank_index"])
    for char in hparams["tokens"]:
        encoder.add_label(char)
    encoder.expect_len(len(encoder))
    if len(encoder) != hparams["output_neurons"]:
        raise ValueError(
            f"output_neurons is {hparams['output_neurons']} but the token inventory has "
            f"{len(encoder)} entries (blank + {len(hparams['tokens'])} characters)."
        )
    return encoder


def dataio_prepare(hparams, label_encoder):
    """DynamicItemDatasets for train, valid and each test set."""
    data_root = hparams["data_folder"]
    allowed = set(hparams["tokens"])
    hint = "Run the recipe with prepare_corpus: True, or point the *_csv keys at your manifests."

    def load(path, sort=False):
        check_manifest(path, data_root, hint)
        data = sb.dataio.dataset.DynamicItemDataset.from_csv(
            path, replacements={"data_root": data_root}
        )
        if sort:
            data = data.filtered_sorted(sort_key="duration")
        return data

    train = load(hparams["train_csv"], sort=True)
    valid = load(hparams["valid_csv"], sort=True)
    tests = {name: load(path, sort=True) for name, path in hparams["test_sets"].items()}
    datasets = [train, valid, *tests.values()]

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        try:
            sig = sb.dataio.dataio.read_audio(wav)
        except Exception as err:
            raise RuntimeError(f"Cannot read audio file {wav}: {err}") from err
        if sig.dim() != 1:
            raise ValueError(f"{wav} is not mono ({tuple(sig.shape)}); convert it to one channel.")
        return sig

    @sb.utils.data_pipeline.takes("wrd")
    @sb.utils.data_pipeline.provides("wrd", "tokens")
    def text_pipeline(wrd):
        wrd = " ".join("".join(c for c in wrd.upper() if c in allowed).split())
        yield wrd
        yield label_encoder.encode_sequence_torch(list(wrd))

    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.add_dynamic_item(datasets, text_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "wrd", "tokens"])
    return train, valid, tests


def count_parameters(model):
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def main():
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )

    if hparams.get("prepare_corpus", False):
        from recipes.corpus import prepare_corpus

        run_on_main(
            prepare_corpus,
            kwargs={
                "data_folder": hparams["data_folder"],
                "size": hparams["corpus_size"],
                "seed": hparams["corpus_seed"],
            },
        )

    label_encoder = build_label_encoder(hparams)
    train_set, valid_set, test_sets = dataio_prepare(hparams, label_encoder)

    if "pretrainer" in hparams:
        base = hparams["base_checkpoint"]
        if not os.path.isfile(base):
            raise FileNotFoundError(
                f"Base checkpoint {base} not found. Pretrain it first with "
                "`python recipes/asr/train.py hparams/pretrain_asr.yaml`, or set base_checkpoint."
            )
        run_on_main(hparams["pretrainer"].collect_files)
        hparams["pretrainer"].load_collected()
    if "adapted_model" in hparams:
        hparams["adapted_model"].insert_adapters()

    asr = ASR(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    asr.label_encoder = label_encoder
    trainable, total = count_parameters(hparams["modules"]["model"])
    summary = {
        "method": hparams["method"],
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100.0 * trainable / total, 3),
    }
    if "adapted_model" in hparams:
        summary["adapters"] = hparams["adapted_model"].summary()

    before_path = os.path.join(hparams["output_folder"], "before.json")
    if hparams.get("evaluate_before", False):
        if os.path.isfile(before_path):  # resumed run: the model may be trained already
            with open(before_path) as handle:
                summary["before"] = json.load(handle)
        else:
            summary["before"] = asr.evaluate_sets(test_sets)
            if if_main_process():
                write_json(before_path, summary["before"])

    asr.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=hparams["train_loader"],
        valid_loader_kwargs=hparams["valid_loader"],
    )
    # Time spent in training epochs of this process (validation excluded).
    summary["train_time_s"] = round(getattr(asr, "train_seconds", 0.0), 1)
    summary["epochs"] = hparams["number_of_epochs"]
    summary["after"] = asr.evaluate_sets(test_sets, min_key="WER")

    if if_main_process():
        if "export_base" in hparams:  # the best model, as a plain state dict
            torch.save(hparams["model"].state_dict(), hparams["export_base"])
        if "adapted_model" in hparams:
            path = os.path.join(hparams["output_folder"], "adapter.safetensors")
            hparams["adapted_model"].save_adapter(path)
            summary["adapter_file_bytes"] = os.path.getsize(path)
        write_json(os.path.join(hparams["output_folder"], "summary.json"), summary)
    logger.info("Summary: %s", summary)


if __name__ == "__main__":
    main()

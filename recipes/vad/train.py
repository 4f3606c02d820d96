#!/usr/bin/env python3
"""Adapt a pretrained voice activity detector (Silero VAD v6) to a new noise and room.

    python -m recipes.vad.pretrained          # once: the weights from PyPI
    python recipes/vad/train.py hparams/lora_vad.yaml
    python recipes/vad/train.py hparams/lora_vad.yaml --rank 16 --target telephone
    python recipes/vad/train.py hparams/full_vad.yaml

Scenes of the corpus's utterances between pauses of silence or noise
(:mod:`recipes.corpus.scenes`) give a speech label per 32 ms chunk. Training
minimises the binary cross-entropy of the model's per-chunk logits; evaluation
reports frame (chunk) F1 at the decision threshold and the ROC AUC, before and
after training, on the target domain's scenes, clean source-domain scenes (what
adapting may cost) and real recordings (Asterisk prompts joined into scenes, as
recorded and degraded like the target domain) when they are installed.

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
import torch.nn.functional as F
from speechbrain.utils.distributed import if_main_process, run_on_main

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # repository root

from recipes.adaptation import (
    AdaptationBrain,
    load_pretrained_base,
    run_adaptation,
    setup_experiment,
)
from recipes.audio import load_audio
from recipes.common import load_manifest
from recipes.inference import MODEL_FOLDERS, model_inference_folder, trained_files
from recipes.vad.model import CHUNK, chunk_labels, f1_score, roc_auc, speech_segments

logger = logging.getLogger(__name__)
SPEECH_COLUMN = (
    " A VAD manifest's 'speech' column lists each recording's speech segments in seconds, "
    "e.g. '0.50-1.75 2.10-3.00' (empty: no speech)."
)


class VoiceActivity(AdaptationBrain):
    """Per-chunk binary cross-entropy; chunk F1 (at ``threshold``) and ROC AUC in evaluation."""

    metric_names = ("F1", "AUC", "precision", "recall")
    selection_metric = "F1"
    lower_is_better = False
    metric_decimals = 3
    table_decimals = 3
    #: Beyond the base weights and the data (labels included), the figures depend on the
    #: decision threshold (F1), the rate the audio is read at and the model's shape.
    evaluation_settings = ("threshold", "sample_rate", "hidden_size")

    def compute_forward(self, batch, stage):
        batch = batch.to(self.device)
        wav, lens = batch.sig
        return self.modules.model(wav), lens, wav.shape[1]

    def compute_objectives(self, predictions, batch, stage):
        logits, lens, samples = predictions
        labels, _ = batch.labels
        labels = labels.to(logits.device)
        chunks = torch.ceil(torch.round(lens * samples) / CHUNK).long()
        mask = torch.arange(logits.shape[1], device=logits.device)[None] < chunks[:, None]
        logits = logits[:, : labels.shape[1]].float()
        loss = F.binary_cross_entropy_with_logits(logits[mask], labels[mask])
        if stage != sb.Stage.TRAIN:
            probabilities = logits.detach().sigmoid().cpu()
            for row, uid in enumerate(batch.id):
                n = int(chunks[row])
                self.scores[uid] = (probabilities[row, :n], labels[row, :n].cpu())
        return loss

    def start_metrics(self, stage) -> None:
        self.scores: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def summarize_metrics(self, stage) -> dict[str, float]:
        if not self.scores:
            raise ValueError("No recording was evaluated: the evaluation set is empty.")
        scores = torch.cat([s for s, _ in self.scores.values()])
        labels = torch.cat([lab for _, lab in self.scores.values()])
        figures = f1_score(scores >= self.hparams.threshold, labels)
        return {**figures, "AUC": roc_auc(scores, labels)}

    def details_text(self) -> str:
        """Per recording: chunks, speech chunks, chunks detected, F1."""
        lines = ["ID chunks speech_chunks detected F1\n"]
        for uid, (scores, labels) in sorted(self.scores.items()):
            decisions = scores >= self.hparams.threshold
            f1 = f1_score(decisions, labels)["F1"]
            lines.append(
                f"{uid} {len(labels)} {int(labels.sum())} {int(decisions.sum())} {f1:.3f}\n"
            )
        return "".join(lines)


def prepare_data(hparams) -> dict[str, str]:
    """Scenes of the target and source domains, and of the real recordings if installed;
    returns the real scenes' manifests (test set name -> path)."""
    if not hparams.get("prepare_corpus", False):
        return {}
    from recipes.corpus.prepare import TARGET_DOMAINS
    from recipes.corpus.scenes import prepare_real_scenes, prepare_scenes

    target = hparams["target"]
    if target not in TARGET_DOMAINS:
        raise ValueError(
            f"target {target!r} names no domain of the generated corpus; choose one of "
            f"{', '.join(TARGET_DOMAINS)} (--target noisy), or set prepare_corpus: False and "
            "point train_csv, valid_csv and test_sets at your own manifests."
        )
    common = {
        "data_folder": hparams["data_folder"],
        "size": hparams["corpus_size"],
        "seed": hparams["corpus_seed"],
    }
    for name, splits in hparams["scene_splits"].items():
        domain = target if name == "target" else name
        run_on_main(prepare_scenes, kwargs={**common, "domain": domain, "splits": splits})
    if not hparams.get("real_speech", False):
        return {}
    from recipes.corpus.real_speech import prepare_real_speech

    kwargs = {"data_folder": hparams["data_folder"], "sources": ["asterisk"],
              "max_asterisk": hparams["max_asterisk"]}  # fmt: skip
    run_on_main(prepare_real_speech, kwargs=kwargs)
    found = prepare_real_speech(**kwargs, download=False)
    if "asterisk" not in found:
        logger.warning("The Asterisk prompts are not installed: no real-speech test sets.")
        return {}
    real = {"data_folder": hparams["data_folder"], "manifest": found["asterisk"],
            "domain": target, "seed": hparams["corpus_seed"]}  # fmt: skip
    run_on_main(prepare_real_scenes, kwargs=real)
    manifests = prepare_real_scenes(**real)
    return {key.replace("real_", "").replace("_vad", ""): path for key, path in manifests.items()}


def read_labels(path: str, rows: dict[str, dict]) -> dict[str, list[tuple[float, float]]]:
    """The speech segments of each row of manifest ``path``, every segment checked.

    Parameters
    ----------
    path : str
        The manifest, named in errors.
    rows : dict
        Its rows by ID, each with ``speech`` and ``duration``.

    Returns
    -------
    dict
        ID -> ``(start, end)`` segments in seconds.

    Raises
    ------
    ValueError
        Naming the manifest, the ID and the segment that is malformed, not finite,
        reversed, or past the end of the recording.
    """
    segments = {}
    for uid, row in rows.items():
        try:
            segments[uid] = speech_segments(row["speech"], row["duration"])
        except ValueError as err:
            raise ValueError(
                f"{path}, ID {uid}: {err}. Fix that row's speech column (or leave the row out)."
                + SPEECH_COLUMN
            ) from None
    return segments


def dataio_prepare(hparams, real_sets: dict[str, str]):
    """Datasets of scenes: audio (``sig``) and per-chunk labels (``labels``) from ``speech``.

    Every segment of every recording is checked (:func:`read_labels`), and a
    training set that labels no speech at all is refused.
    """
    data_root = hparams["data_folder"]
    hint = "Run the recipe with prepare_corpus: True, or point the *_csv keys at your manifests."

    def load(path, train=False):
        data = load_manifest(path, data_root, hint + SPEECH_COLUMN, hparams["min_audio_s"],
                             skip_short=train, columns=("ID", "duration", "wav", "speech"))  # fmt: skip
        segments = read_labels(path, data.data)
        if train and not any(segments.values()):
            raise ValueError(
                f"The training set {path} labels no speech in any of its {len(segments)} "
                "recordings (its speech column is empty everywhere): a detector trained on it "
                "would learn to find none. Give the speech segments of each recording."
                + SPEECH_COLUMN
            )
        return data.filtered_sorted(sort_key="duration")

    train = load(hparams["train_csv"], train=True)
    valid = load(hparams["valid_csv"])
    tests = {
        name: load(path) for name, path in {**(hparams["test_sets"] or {}), **real_sets}.items()
    }

    @sb.utils.data_pipeline.takes("wav", "speech")
    @sb.utils.data_pipeline.provides("sig", "labels")
    def audio_pipeline(wav, speech):
        sig = load_audio(wav, hparams["sample_rate"])
        yield sig
        yield chunk_labels(speech_segments(speech), sig.shape[0], hparams["sample_rate"])

    datasets = [train, valid, *tests.values()]
    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig", "labels"])
    return train, valid, tests


def write_inference(brain: VoiceActivity, hparams) -> Path:
    """``<output_folder>/inference``: ``SpeechDetector.from_hparams`` with what this run
    trained, its threshold, and Silero's smoothing (speech continues until the probability
    falls 0.15 below the threshold)."""
    values = {key: hparams[key] for key in ("sample_rate", "hidden_size", "threshold")}
    values["deactivation_threshold"] = round(max(hparams["threshold"] - 0.15, 0.0), 6)
    values["time_resolution"] = CHUNK / hparams["sample_rate"]
    values["base_checkpoint"] = os.path.abspath(hparams["base_checkpoint"])
    task, modules = MODEL_FOLDERS["SpeechDetector"]
    folder = Path(hparams["output_folder"]) / "inference"
    files = trained_files(brain, hparams)
    return model_inference_folder(
        folder, task, values, hparams.get("adapted_model"), files, modules
    )


def main():
    hparams, run_opts = setup_experiment(sys.argv[1:])
    real_sets = prepare_data(hparams)
    train_set, valid_set, test_sets = dataio_prepare(hparams, real_sets)

    load_pretrained_base(
        hparams,
        "Convert Silero VAD first with `python -m recipes.vad.pretrained --output "
        "pretrained/silero_vad`, or set base_checkpoint.",
    )
    if "adapted_model" in hparams:  # full fine-tuning and pretraining have none
        hparams["adapted_model"].insert_adapters()
    brain = VoiceActivity(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    if if_main_process():
        logger.info("Scenes: train %d, valid %d", len(train_set), len(valid_set))
    run_adaptation(
        brain, hparams, hparams["modules"]["model"], train_set, valid_set, test_sets,
        write_inference=write_inference,
    )  # fmt: skip


if __name__ == "__main__":
    main()

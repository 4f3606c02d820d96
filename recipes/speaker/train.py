#!/usr/bin/env python3
"""Adapt a pretrained speaker encoder (Resemblyzer's GE2E d-vectors) to a new domain.

    python -m recipes.speaker.pretrained            # once: the weights from PyPI
    python recipes/speaker/train.py hparams/lora_speaker.yaml
    python recipes/speaker/train.py hparams/lora_speaker.yaml --target voices --rank 16
    python recipes/speaker/train.py hparams/full_speaker.yaml

Training uses the speakers of the ``adapt`` group (``recipes.corpus.trials``)
with the GE2E loss the encoder was trained with: each batch holds
``speakers_per_batch`` speakers with ``utterances_per_speaker`` 1.6 s crops each.
Verification is scored on trials among the held-out speakers of each
evaluation set (cosine scoring): EER (%) and normalised minDCF (p_target 0.01),
before and after training, on the target domain and on the source domain.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import functools
import logging
import os
import random
import sys
from collections import defaultdict
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataset import FilteredSortedDynamicItemDataset
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
from recipes.common import load_manifest
from recipes.corpus.trials import read_trials, speaker_group, write_trials
from recipes.inference import MODEL_FOLDERS, model_inference_folder, trained_files
from recipes.io import sha256_json
from recipes.speaker.model import (
    PARTIAL_FRAMES,
    PARTIAL_SAMPLES,
    eer_and_min_dcf,
    eer_threshold,
    embed_waveforms,
    ge2e_loss,
    split_by_label,
    trial_scores,
)

logger = logging.getLogger(__name__)


class SpeakerBatches(torch.utils.data.Sampler):
    """Batches of ``speakers`` speakers x ``per_speaker`` utterances, for the GE2E loss.

    Each epoch (``set_epoch``) shuffles every speaker's utterances into chunks of
    ``per_speaker``, shuffles the chunks, and fills batches with chunks of
    distinct speakers; what cannot fill a batch waits for the next epoch's draw.
    A pure function of the seed and the epoch, so a resumed run sees the same batches.
    Under DDP (``world_size`` processes) each process takes every ``world_size``-th
    batch of the one draw, all processes the same number.

    Example
    -------
    >>> sampler = SpeakerBatches(["a", "a", "b", "b", "c", "c"], speakers=2, per_speaker=2)
    >>> batches = list(sampler)
    >>> len(batches), all(len(b) == 4 for b in batches)
    (1, True)
    """

    def __init__(
        self,
        labels: list[str],
        speakers: int,
        per_speaker: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.speakers, self.per_speaker, self.seed, self.epoch = speakers, per_speaker, seed, 0
        self.rank, self.world_size = rank, world_size
        self._drawn: tuple[int, list[list[int]]] | None = None  # (epoch, its batches)
        self.by_speaker: dict[str, list[int]] = defaultdict(list)
        for index, label in enumerate(labels):
            self.by_speaker[label].append(index)
        usable = [s for s, items in self.by_speaker.items() if len(items) >= per_speaker]
        if len(usable) < speakers:
            raise ValueError(
                f"GE2E batches need {speakers} speakers with at least {per_speaker} training "
                f"utterances each; the training set has {len(usable)} such speakers (of "
                f"{len(self.by_speaker)}). Lower speakers_per_batch or utterances_per_speaker, "
                "or add data."
            )

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _batches(self) -> list[list[int]]:
        """This epoch's batches, drawn once (``len`` and iteration both need them)."""
        if self._drawn is None or self._drawn[0] != self.epoch:
            batches = self._draw()
            if self.world_size > 1:
                usable = len(batches) // self.world_size * self.world_size
                if usable == 0:
                    raise ValueError(
                        f"This epoch's draw holds {len(batches)} GE2E batches, fewer than the "
                        f"{self.world_size} processes: lower speakers_per_batch or "
                        "utterances_per_speaker, or run fewer processes."
                    )
                batches = batches[:usable][self.rank :: self.world_size]
            self._drawn = (self.epoch, batches)
        return self._drawn[1]

    def _draw(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        chunks = []
        for speaker in sorted(self.by_speaker):
            items = list(self.by_speaker[speaker])
            rng.shuffle(items)
            for start in range(0, len(items) - self.per_speaker + 1, self.per_speaker):
                chunks.append((speaker, items[start : start + self.per_speaker]))
        rng.shuffle(chunks)
        batches, open_batches = [], []
        for speaker, chunk in chunks:
            for batch in open_batches:
                if speaker not in batch[0]:
                    batch[0].add(speaker)
                    batch[1].extend(chunk)
                    break
            else:
                open_batches.append(({speaker}, list(chunk)))
            full = [b for b in open_batches if len(b[0]) == self.speakers]
            batches += [b[1] for b in full]
            open_batches = [b for b in open_batches if len(b[0]) < self.speakers]
        return batches

    def __iter__(self):
        return iter(list(self._batches()))

    def __len__(self) -> int:
        return len(self._batches())


class SpeakerVerification(AdaptationBrain):
    """GE2E training; embeddings, cosine scoring, EER and minDCF in evaluation."""

    def _train_loader_specifics(self, dataset, loader_kwargs):
        """The GE2E batches shard themselves across processes (:class:`SpeakerBatches`):
        SpeechBrain's wrapper would re-draw them and, with one batch a process, hand the
        loader a batch where it expects a list of batches."""
        if self.distributed_launch and isinstance(
            loader_kwargs.get("batch_sampler"), SpeakerBatches
        ):
            self.train_sampler = loader_kwargs["batch_sampler"]
            return loader_kwargs
        return super()._train_loader_specifics(dataset, loader_kwargs)

    metric_names = ("EER", "minDCF")
    selection_metric = "EER"
    lower_is_better = True
    metric_decimals = 3
    #: Beyond the base weights, the data (speaker IDs included) and the trial lists
    #: (:meth:`evaluation_inputs`), the figures depend on the features, the encoder's shape
    #: and the prior of the detection cost.
    evaluation_settings = (
        "sample_rate", "n_mels", "hidden_size", "num_layers", "embedding_size", "p_target",
    )  # fmt: skip

    def evaluation_inputs(self) -> dict:
        """The settings, and the trials scored on each set (labels and pairs, by content)."""
        trials = {name: sha256_json(pairs) for name, pairs in sorted(self.trials.items())}
        return {**super().evaluation_inputs(), "trials": trials}

    def compute_forward(self, batch, stage):
        """Training: embeddings of one 1.6 s crop per utterance. Evaluation: of whole utterances."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        frontend = self.hparams.compute_features
        if stage != sb.Stage.TRAIN:  # as the inference interface computes them
            return embed_waveforms(frontend, self.modules.model, wavs, wav_lens)
        crops = self._crops(frontend.normalize_loudness(wavs, wav_lens), wav_lens, batch.id)
        mels = frontend.spectrogram(crops)[:, :PARTIAL_FRAMES]
        return self.modules.model(mels)

    def _crops(self, wavs, wav_lens, ids):
        """One 1.6 s crop per utterance, placed by a hash of (seed, epoch, ID): resumable."""
        lengths = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        salt = f"{self.hparams.seed}-{self.hparams.epoch_counter.current}"
        starts = crop_starts(lengths, list(ids), PARTIAL_SAMPLES, salt)
        return crop_batch(wavs, lengths, starts, PARTIAL_SAMPLES)[0]

    def compute_objectives(self, predictions, batch, stage):
        """GE2E loss in training; elsewhere, keep the embeddings for scoring."""
        if stage == sb.Stage.TRAIN:
            encoder = self.hparams.model
            return ge2e_loss(
                predictions,
                self.hparams.speakers_per_batch,
                encoder.similarity_weight,
                encoder.similarity_bias,
            )
        for uid, embedding in zip(batch.id, predictions.detach().float().cpu()):
            self.embeddings[uid] = embedding
        return torch.zeros((), device=self.device)

    def start_metrics(self, stage) -> None:
        self.embeddings: dict[str, torch.Tensor] = {}

    def _gathered_embeddings(self) -> dict[str, torch.Tensor]:
        """Every process's embeddings (DDP evaluates a shard per process)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self.embeddings
        shards = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(shards, self.embeddings)
        return {k: v for shard in shards for k, v in shard.items()}

    def summarize_metrics(self, stage) -> dict[str, float]:
        name = "valid" if stage == sb.Stage.VALID else self.test_name
        self.embeddings = self._gathered_embeddings()
        self.scores = trial_scores(self.embeddings, self.trials[name])  # kept for the details
        positive, negative = split_by_label(self.scores, self.trials[name])
        eer, cost = eer_and_min_dcf(positive, negative, p_target=self.hparams.p_target)
        return {"EER": eer, "minDCF": cost}

    def details_text(self) -> str:
        """Every trial of the set with its label and cosine score, one a line."""
        name = self.test_name
        scores = self.scores.tolist()  # of this set, from summarize_metrics
        return "".join(
            f"{label} {enrol} {test} {score:.6f}\n"
            for (label, enrol, test), score in zip(self.trials[name], scores)
        )


def trial_lists(hparams) -> dict[str, str]:
    """The trial list of the validation set and of each test set: the user's, or built.

    Built lists pair the utterances of held-out speakers (``speaker_seed``) and
    are written to ``<output_folder>/trials`` by the main process.
    """
    given = dict(hparams.get("trial_lists") or {})
    manifests = {"valid": hparams["valid_csv"], **(hparams["test_sets"] or {})}
    unknown = sorted(set(given) - set(manifests))
    if unknown:
        raise ValueError(
            f"trial_lists names {unknown}, which are neither 'valid' nor a test set "
            f"({', '.join(hparams['test_sets'])})."
        )
    folder = Path(hparams["output_folder"]) / "trials"
    lists = {}
    for name, manifest in manifests.items():
        if name in given:
            lists[name] = given[name]
            continue
        lists[name] = str(folder / f"{name}.txt")
        kwargs = {
            "manifest": manifest,
            "path": lists[name],
            "seed": hparams["speaker_seed"],
            "max_nontarget_per_target": hparams["max_nontarget_per_target"],
        }
        run_on_main(write_trials, kwargs=kwargs)
    return lists


def dataio_prepare(hparams, trials: dict[str, list]):
    """Training set (adapt-group speakers, by ``spk_id``), validation and test sets
    (the utterances their trials name), through the collection's one audio loader."""
    data_root = hparams["data_folder"]
    hint = "Run the recipe with prepare_corpus: True, or point the *_csv keys at your manifests."
    report: dict[str, int] = {}

    train = load_manifest(hparams["train_csv"], data_root, hint, hparams["min_audio_s"], True)
    keep = [
        uid
        for uid, row in train.data.items()
        if speaker_group(row.get("spk_id", ""), hparams["speaker_seed"]) == "adapt"
    ]
    report["train_speakers"] = len({train.data[uid]["spk_id"] for uid in keep})
    train = FilteredSortedDynamicItemDataset(train, keep)

    def trial_set(name, path):
        data = load_manifest(path, data_root, hint, hparams["min_audio_s"])
        named = {u for _, e, t in trials[name] for u in (e, t)}
        missing = sorted(named - set(data.data))
        if missing:
            raise ValueError(
                f"The trial list of {name!r} names utterances that {path} does not hold, e.g. "
                f"{missing[:3]}: use trials built from this manifest."
            )
        positives = sum(label for label, _, _ in trials[name])
        report[f"{name}_trials"] = len(trials[name])
        report[f"{name}_target_trials"] = positives
        if positives == 0 or positives == len(trials[name]):
            raise ValueError(
                f"The trials of {name!r} hold {positives} target and "
                f"{len(trials[name]) - positives} non-target pairs: EER needs both. "
                f"{path} needs held-out speakers with two or more utterances each."
            )
        return FilteredSortedDynamicItemDataset(data, sorted(named))

    valid = trial_set("valid", hparams["valid_csv"])
    tests = {name: trial_set(name, path) for name, path in (hparams["test_sets"] or {}).items()}

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        return load_audio(wav, hparams["sample_rate"])

    datasets = [train, valid, *tests.values()]
    sb.dataio.dataset.add_dynamic_item(datasets, audio_pipeline)
    sb.dataio.dataset.set_output_keys(datasets, ["id", "sig"])
    return train, valid, tests, report


#: The settings the inference folder rebuilds the encoder and its front end with.
ARCHITECTURE = ("sample_rate", "n_mels", "hidden_size", "num_layers", "embedding_size")


def validation_threshold(brain: SpeakerVerification, valid_set) -> float:
    """The cosine score at the equal error rate of the validation trials, for the model as it
    is now (the best checkpoint, once the run has evaluated it): the decision threshold."""
    hparams = brain.hparams
    kwargs = {k: v for k, v in hparams.test_loader.items() if k != "ckpt_prefix"}  # Brain's own
    loader = sb.dataio.dataloader.make_dataloader(valid_set, **kwargs)
    model = hparams.modules["model"]  # not the DDP wrapper: this runs on the main process only
    model.eval()
    embeddings = {}
    with torch.no_grad():
        for batch in loader:
            batch = batch.to(brain.device)
            wavs, wav_lens = batch.sig
            found = embed_waveforms(hparams.compute_features, model, wavs, wav_lens)
            embeddings.update(zip(batch.id, found.float().cpu()))
    scores = trial_scores(embeddings, brain.trials["valid"])
    return eer_threshold(*split_by_label(scores, brain.trials["valid"]))


def write_inference(brain: SpeakerVerification, hparams, valid_set) -> Path:
    """``<output_folder>/inference``: ``SpeakerVerifier.from_hparams`` with what this run
    trained and the decision threshold chosen on its validation trials."""
    values = {key: hparams[key] for key in ARCHITECTURE}
    values["base_checkpoint"] = os.path.abspath(hparams["base_checkpoint"])
    values["threshold"] = round(validation_threshold(brain, valid_set), 6)
    task, modules = MODEL_FOLDERS["SpeakerVerifier"]
    folder = Path(hparams["output_folder"]) / "inference"
    adapted = hparams.get("adapted_model")
    files = trained_files(brain, hparams)
    return model_inference_folder(folder, task, values, adapted, files, modules)


def main():
    hparams, run_opts = setup_experiment(sys.argv[1:])
    prepare_corpus_on_main(hparams)
    lists = trial_lists(hparams)
    trials = {name: read_trials(path) for name, path in lists.items()}
    train_set, valid_set, test_sets, data_report = dataio_prepare(hparams, trials)

    load_pretrained_base(
        hparams,
        "Convert Resemblyzer's weights first with `python -m recipes.speaker.pretrained "
        "--output pretrained/resemblyzer`, or set base_checkpoint.",
    )
    if "adapted_model" in hparams:  # full fine-tuning and pretraining have none
        hparams["adapted_model"].insert_adapters()

    labels = [train_set.data[uid]["spk_id"] for uid in train_set.data_ids]
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    sampler = SpeakerBatches(
        labels,
        hparams["speakers_per_batch"],
        hparams["utterances_per_speaker"],
        seed=hparams["seed"],
        rank=torch.distributed.get_rank() if distributed else 0,
        world_size=torch.distributed.get_world_size() if distributed else 1,
    )
    brain = SpeakerVerification(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
    )
    brain.trials = trials
    brain.train_sampler = sampler  # Brain calls its set_epoch
    hparams["train_loader"] = {**hparams["train_loader"], "batch_sampler": sampler}
    if if_main_process():
        logger.info("Data: %s", data_report)
    run_adaptation(
        brain, hparams, hparams["modules"]["model"], train_set, valid_set, test_sets, data_report,
        write_inference=functools.partial(write_inference, valid_set=valid_set),
    )  # fmt: skip


if __name__ == "__main__":
    main()

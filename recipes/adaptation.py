"""What every recipe of the collection shares: the Brain's bookkeeping and the run.

A recipe starts with :func:`setup_experiment` (arguments, DDP, HyperPyYAML,
experiment folder) and :func:`prepare_corpus_on_main`, subclasses
:class:`AdaptationBrain` with its own ``compute_forward`` and
``compute_objectives`` (which append to ``self.wer_metric`` and
``self.cer_metric`` outside training), builds its datasets, then calls
:func:`run_adaptation`, which evaluates before training (adaptation runs),
trains, evaluates after, saves the adapter and writes ``summary.json``.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import if_main_process, run_on_main

from recipes.common import write_json

logger = logging.getLogger(__name__)


def setup_experiment(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse ``train.py hparams.yaml --key value ...`` the SpeechBrain way.

    Initialises DDP when launched by ``torchrun``, loads the YAML with the
    command-line overrides and creates the experiment folder.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    run_opts : dict
        SpeechBrain's run options (device, distributed settings...).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file) as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    return hparams, run_opts


def prepare_corpus_on_main(hparams: dict[str, Any]) -> None:
    """Generate the corpus (main process only) when ``prepare_corpus`` is set."""
    if not hparams.get("prepare_corpus", False):
        return
    from recipes.corpus import prepare_corpus

    kwargs = {
        "data_folder": hparams["data_folder"],
        "size": hparams["corpus_size"],
        "seed": hparams["corpus_seed"],
    }
    run_on_main(prepare_corpus, kwargs=kwargs)


class AdaptationBrain(sb.Brain):
    """A ``Brain`` that trains only what is trainable and reports WER/CER per test set.

    Expects in ``hparams``: ``error_rate_computer``, ``train_logger``,
    ``output_folder``, ``test_loader``, and optionally ``lr_annealing`` (stepped
    after each update) and ``checkpointer``.
    """

    def init_optimizers(self) -> None:
        """Optimise only trainable parameters (the adapters, for adapted models)."""
        params = [p for p in self.modules.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "The model has no trainable parameter: check adapter_class, target_layers and "
                "unfrozen_layers (or the freeze options of the model)."
            )
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def on_fit_batch_end(self, batch, outputs, loss, should_step) -> None:
        """Step the learning-rate schedule once per update."""
        scheduler = getattr(self.hparams, "lr_annealing", None)
        if should_step and scheduler is not None:
            scheduler(self.optimizer)

    def on_stage_start(self, stage, epoch=None) -> None:
        """Start the training clock, or fresh error-rate trackers."""
        if stage == sb.Stage.TRAIN:
            self.stage_start = time.perf_counter()
        else:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.error_rate_computer()

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
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

    def append_error_rates(self, ids: list, hyps: list[list[str]], refs: list[list[str]]) -> None:
        """Record word and character errors of a batch of word-split hypotheses."""
        self.wer_metric.append(ids, hyps, refs)
        self.cer_metric.append(
            ids, [list(" ".join(h)) for h in hyps], [list(" ".join(r)) for r in refs]
        )

    def evaluate_sets(self, test_sets: dict, min_key: str | None = None) -> dict:
        """Evaluate on each named test set; return ``{name: {"WER", "CER", "n"}}``."""
        results = {}
        for name, dataset in test_sets.items():
            self.test_name = name
            self.evaluate(dataset, min_key=min_key, test_loader_kwargs=self.hparams.test_loader)
            results[name] = {k: round(float(self.test_stats[k]), 2) for k in ("WER", "CER")}
            results[name]["n"] = len(dataset)
        return results


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def _evaluate_before(brain: AdaptationBrain, hparams: dict[str, Any], test_sets: dict) -> dict:
    """Error rates of the model before training, computed once.

    ``before.json`` in the output folder serves a resumed run (whose model may
    be trained already). ``before_cache``, when set, is shared by the runs of
    several methods: it is reused when its ``key`` (``before_key``: what the
    base model and test sets are) and the test-set utterances are the same.
    """
    local = os.path.join(hparams["output_folder"], "before.json")
    if os.path.isfile(local):
        with open(local) as handle:
            return json.load(handle)
    shared = hparams.get("before_cache")
    key = {
        "base": hparams.get("before_key"),
        "test_sets": {name: sorted(data.data_ids) for name, data in test_sets.items()},
    }
    if shared and os.path.isfile(shared):
        with open(shared) as handle:
            cached = json.load(handle)
        if cached.get("key") == key:
            logger.info("Error rates before training: reusing %s", shared)
            results = cached["results"]
            if if_main_process():
                write_json(local, results)
            return results
    results = brain.evaluate_sets(test_sets)
    if if_main_process():
        write_json(local, results)
        if shared:
            os.makedirs(os.path.dirname(shared) or ".", exist_ok=True)
            write_json(shared, {"key": key, "results": results})
    return results


def run_adaptation(
    brain: AdaptationBrain,
    hparams: dict[str, Any],
    model: torch.nn.Module,
    train_set,
    valid_set,
    test_sets: dict,
) -> dict[str, Any]:
    """Evaluate before (when asked), train, evaluate after, save; return the summary.

    Arguments
    ---------
    brain : AdaptationBrain
        The recipe's Brain.
    hparams : dict
        Loaded hyperparameters: ``method``, ``output_folder``, ``number_of_epochs``,
        ``epoch_counter``, ``train_loader``, ``valid_loader``, optionally
        ``evaluate_before`` (with ``before_cache`` and ``before_key``),
        ``adapted_model`` and ``export_base``.
    model : torch.nn.Module
        The module whose parameters are counted (the adapted model if any).
    train_set, valid_set : Dataset
        Training and validation data.
    test_sets : dict
        Named test sets, evaluated before and after.

    Returns
    -------
    dict
        What ``summary.json`` holds: parameter counts, adapters, before/after
        error rates per test set, training time, adapter file size.
    """
    trainable, total = count_parameters(model)
    summary: dict[str, Any] = {
        "method": hparams["method"],
        "target": hparams.get("target"),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100.0 * trainable / total, 3),
    }
    adapted = hparams.get("adapted_model")
    if adapted is not None:
        summary["adapters"] = adapted.summary()

    if hparams.get("evaluate_before", False):
        summary["before"] = _evaluate_before(brain, hparams, test_sets)

    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=hparams["train_loader"],
        valid_loader_kwargs=hparams["valid_loader"],
    )
    # Time spent in training epochs of this process (validation excluded).
    summary["train_time_s"] = round(getattr(brain, "train_seconds", 0.0), 1)
    summary["epochs"] = hparams["number_of_epochs"]
    summary["train_utterances"] = len(train_set)
    summary["after"] = brain.evaluate_sets(test_sets, min_key="WER")

    if if_main_process():
        if "export_base" in hparams:  # the best model, as a plain state dict
            torch.save(hparams["model"].state_dict(), hparams["export_base"])
        if adapted is not None:
            path = os.path.join(hparams["output_folder"], "adapter.safetensors")
            adapted.save_adapter(path)
            summary["adapter_file_bytes"] = os.path.getsize(path)
        write_json(os.path.join(hparams["output_folder"], "summary.json"), summary)
    logger.info("Summary: %s", summary)
    return summary

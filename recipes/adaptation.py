"""What every recipe of the collection shares: the Brain's bookkeeping and the run.

A recipe starts with :func:`setup_experiment` (arguments, DDP, HyperPyYAML,
experiment folder) and :func:`prepare_corpus_on_main`, loads its pretrained weights
(:func:`load_pretrained_base`), inserts its adapters, subclasses
:class:`AdaptationBrain` with its own ``compute_forward`` and ``compute_objectives``
and the task's metrics (``metric_names``, ``selection_metric``, ``lower_is_better``,
``start_metrics``, ``summarize_metrics``, ``details_text``), builds its datasets,
then calls :func:`run_adaptation`, which evaluates before training (adaptation runs),
trains, evaluates after, saves the adapter, writes the inference folder and
``summary.json``. Per-item details of each evaluation go to
``<output_folder>/details/<set>_<before|after>.txt``, never overwritten by the other.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import atexit
import io
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from functools import partial, wraps
from itertools import islice
from pathlib import Path
from typing import Any

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml, resolve_references
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process, run_on_main

from adapters.data_init import InputMoments, data_initialised_layers
from adapters.loraplus import apply_lr_scales, loraplus_groups
from recipes.bookkeeping import (
    RunLock,
    check_inputs,
    defer_until_accepted,
    describe_setting,
    figure_run_options,
    figure_settings,
    input_fingerprint,
)
from recipes.io import write_bytes, write_json, write_text
from recipes.resumption import RunState, fault_point

logger = logging.getLogger(__name__)


def setup_experiment(argv: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Parse ``train.py hparams.yaml --key value ...`` the SpeechBrain way.

    Initialises DDP when launched by ``torchrun``, loads the YAML with the
    command-line overrides, records the run options that change figures in
    ``hparams["run_options"]`` (``--precision``...), and takes the output folder's
    lock (a second run into it stops at once).

    Nothing else is written into the output folder until the run's inputs are
    accepted (:func:`recipes.bookkeeping.check_inputs`, from :func:`run_adaptation`):
    the log goes to a staging folder, the base model's files are collected there
    too, and ``hyperparams.yaml``, ``env.log``, ``log.txt`` and
    ``save/pretrained`` are written only then. A refused rerun leaves the folder
    as it found it, so the folder still says what trained it.

    Returns
    -------
    hparams : dict
        The loaded hyperparameters.
    run_opts : dict
        SpeechBrain's run options (device, distributed settings...).
    """
    hparams_file, run_opts, overrides = sb.parse_arguments(argv)
    sb.utils.distributed.ddp_init_group(run_opts)
    if torch.distributed.is_initialized():  # runs last, after the handlers below
        atexit.register(_leave_process_group)
    with open(hparams_file) as handle:
        hparams = load_hyperpyyaml(handle, overrides)
    hparams["run_options"] = figure_run_options(run_opts, hparams)
    folder = hparams["output_folder"]
    staging = _staging_folder()
    collect_in = _collect_base_in(hparams, os.path.join(staging, "pretrained"))
    if if_main_process():  # one run per output folder, released when the process ends
        lock = RunLock(folder)
        atexit.register(lock.release)
        atexit.register(shutil.rmtree, staging, ignore_errors=True)
        _log_to(os.path.join(staging, "log.txt"))
        write = partial(
            _open_experiment_folder, hparams, hparams_file, overrides, staging, collect_in
        )
        defer_until_accepted(folder, hparams["run_options"], write)
    return hparams, run_opts


def _leave_process_group() -> None:
    """Close this process's DDP group before the interpreter shuts down.

    Left to interpreter teardown, gloo's destructor can abort a process whose peer has
    already exited (SIGABRT after the run finished); :func:`run_adaptation` ends with a
    barrier, so no process is inside a collective when the group is closed here.
    """
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def _staging_folder() -> str:
    """A temporary folder, the same for every DDP process, removed when the run ends."""
    path = tempfile.mkdtemp(prefix="speech-adapters-run-") if if_main_process() else None
    return ddp_broadcast(path, src=0)


def _collect_base_in(hparams: dict[str, Any], staging: str) -> str | None:
    """Point the YAML's ``pretrainer`` (if any) at ``staging``; return where it pointed.

    The base model's files are linked there by :func:`load_pretrained_base` and
    moved to their place in the output folder once the run is accepted.
    """
    pretrainer = hparams.get("pretrainer")
    if pretrainer is None or getattr(pretrainer, "collect_in", None) is None:
        return None
    original = str(pretrainer.collect_in)
    pretrainer.set_collect_in(staging)
    return original


def _log_to(path: str) -> None:
    """SpeechBrain's logging (console, and a file at ``path``); uncaught errors logged."""
    sb.utils.logger.setup_logging(
        sb.core.DEFAULT_LOG_CONFIG, {"handlers": {"file_handler": {"filename": path}}}
    )
    sys.excepthook = _log_uncaught


def _log_uncaught(kind: type[BaseException], error: BaseException, trace: Any) -> None:
    logger.error("Exception:", exc_info=(kind, error, trace))


def _open_experiment_folder(
    hparams: dict[str, Any],
    hparams_file: str,
    overrides: str,
    staging: str,
    collect_in: str | None,
) -> None:
    """What SpeechBrain's ``create_experiment_directory`` writes, once the run is accepted
    (main process): ``hyperparams.yaml``, a copy of this module, ``env.log``, and
    ``log.txt`` continued from the staging log; then the base model's links in
    ``collect_in`` (``save/pretrained``)."""
    folder = hparams["output_folder"]
    with open(hparams_file) as handle:
        resolved = resolve_references(handle, overrides).getvalue()
    header = f"# Generated {date.today()} from:\n# {os.path.abspath(hparams_file)}\n"
    write_text(os.path.join(folder, "hyperparams.yaml"), header + "# yamllint disable\n" + resolved)
    shutil.copy(__file__, folder)
    description = sb.utils.logger.get_environment_description()
    write_text(os.path.join(folder, "env.log"), description)
    log = os.path.join(folder, "log.txt")
    staged_log = os.path.join(staging, "log.txt")
    if os.path.isfile(staged_log):
        with open(staged_log) as source, open(log, "a") as target:
            shutil.copyfileobj(source, target)
    _log_to(log)
    logger.info("Experiment folder: %s (its inputs accepted)", folder)
    staged = os.path.join(staging, "pretrained")
    if collect_in is not None and os.path.isdir(staged):
        shutil.rmtree(collect_in, ignore_errors=True)
        shutil.copytree(staged, collect_in, symlinks=True)
        hparams["pretrainer"].set_collect_in(collect_in)


def prepare_corpus_on_main(hparams: dict[str, Any]) -> None:
    """Generate the corpus (main process only) when ``prepare_corpus`` is set."""
    if not hparams.get("prepare_corpus", False):
        return
    from recipes.corpus import prepare_corpus
    from recipes.corpus.prepare import TARGET_DOMAINS

    target = hparams.get("target")
    if target is not None and target not in TARGET_DOMAINS:
        raise ValueError(
            f"target {target!r} names no domain of the generated corpus; choose one of "
            f"{', '.join(TARGET_DOMAINS)} (--target noisy), or set prepare_corpus: False and "
            "point train_csv, valid_csv and test_sets at your own manifests."
        )

    kwargs = {
        "data_folder": hparams["data_folder"],
        "size": hparams["corpus_size"],
        "seed": hparams["corpus_seed"],
        "domains": hparams.get("corpus_domains"),  # None: every domain
    }
    run_on_main(prepare_corpus, kwargs=kwargs)


def load_pretrained_base(hparams: dict[str, Any], how_to_make_it: str) -> None:
    """Load ``base_checkpoint`` through the YAML's ``pretrainer`` (the recipe then inserts
    its adapters: ``hparams["adapted_model"].insert_adapters()``).

    Files are collected afresh (a link left by an earlier run may point to another
    base); a missing checkpoint stops the run with ``how_to_make_it``. Without a
    ``pretrainer`` (training from scratch) nothing is loaded.
    """
    if "pretrainer" in hparams:
        base = hparams["base_checkpoint"]
        if not os.path.isfile(base):
            raise FileNotFoundError(f"Base checkpoint {base} not found. {how_to_make_it}")
        pretrainer = hparams["pretrainer"]
        run_on_main(shutil.rmtree, args=[pretrainer.collect_in], kwargs={"ignore_errors": True})
        run_on_main(pretrainer.collect_files)
        pretrainer.load_collected()


class AdaptationBrain(sb.Brain):
    """A ``Brain`` that trains only what is trainable and reports WER/CER per test set.

    Expects in ``hparams``: ``error_rate_computer``, ``train_logger``,
    ``output_folder``, ``test_loader``, ``seed``, ``run_state`` (a checkpointed
    ``RunState``) and optionally ``lr_annealing`` (stepped after each update).

    What it refuses to report: an update whose loss or gradients are not finite
    is skipped and counted (``skipped_updates``), and more than
    ``nonfinite_patience`` in a row stop training with the likely causes; a first
    epoch without an update that could change a parameter (no batch, zero
    gradients, zero learning rate) stops it too; weights that are not finite are
    never checkpointed.
    """

    def _wrap_distributed(self) -> None:
        """DDP as SpeechBrain wraps it, except that on CPU BatchNorm stays per process:
        SpeechBrain converts it to ``SyncBatchNorm``, which runs on GPUs only (a CPU run
        under torchrun would stop at its first training batch)."""
        on_cpu = torch.device(self.device).type == "cpu"
        if not (self.distributed_launch and on_cpu):
            return super()._wrap_distributed()
        from torch.nn.parallel import DistributedDataParallel

        for name, module in self.modules.items():
            if not any(p.requires_grad for p in module.parameters()):
                continue
            if has_batch_norm(module):
                logger.warning(
                    "%s has BatchNorm layers: on CPU their statistics are kept per process "
                    "(SyncBatchNorm needs GPUs), so each process normalises with its own share "
                    "of the batch.",
                    name,
                )
            self.modules[name] = DistributedDataParallel(
                module, device_ids=None, find_unused_parameters=self.find_unused_parameters
            )

    def init_optimizers(self) -> None:
        """Optimise only trainable parameters (the adapters, for adapted models).

        With ``loraplus_lr_ratio`` in the hparams (LoRA+), LoRA's B matrices form a
        second group whose rate is that many times the others' (:mod:`adapters.loraplus`).
        """
        params = [p for p in self.modules.parameters() if p.requires_grad]
        if not params:
            raise ValueError(
                "The model has no trainable parameter: check adapter_class, target_layers and "
                "unfrozen_layers (or the freeze options of the model)."
            )
        ratio = getattr(self.hparams, "loraplus_lr_ratio", 1.0)
        self.optimizer = self.opt_class(loraplus_groups(self.modules, ratio))
        apply_lr_scales(self.optimizer)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    @property
    def run_state(self) -> RunState:
        if not hasattr(self.hparams, "run_state"):
            self.hparams.run_state = RunState()
        return self.hparams.run_state

    def on_fit_start(self) -> None:
        """Seed every random stream, then resume: a checkpoint's states replace the seeded ones.

        So training consumes the same random numbers whatever ran before it
        (an evaluation, or none because its results were cached).
        """
        sb.utils.seed_everything(self.hparams.seed)
        super().on_fit_start()
        self.skipped_updates = getattr(self, "skipped_updates", 0)
        self._nonfinite_in_a_row, self._nonfinite_batch = 0, False
        # Until an update with a non-zero gradient and learning rate is seen, in a first epoch
        # (one resumed from a checkpoint written inside it, after updates, is not checked).
        self._learning_seen = self.hparams.epoch_counter.current > 0 or self.step > 0

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.modules.parameters() if p.requires_grad]

    def on_fit_batch_start(self, batch, should_step) -> None:
        fault_point("train_batch")

    def check_loss_isfinite(self, loss) -> None:
        """Mark the batch: its update is skipped (SpeechBrain would step on it)."""
        if not torch.isfinite(loss):
            self._nonfinite_batch = True

    def optimizers_step(self) -> None:
        """Step, unless the loss or a gradient is not finite: then skip and count."""
        params = self._trainable_parameters()
        finite = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in params)
        if finite and not self._nonfinite_batch:
            self._nonfinite_in_a_row = 0
            if not self._learning_seen:
                moving = any(group["lr"] > 0 for group in self.optimizer.param_groups)
                self._learning_seen = moving and any(
                    p.grad is not None and bool(p.grad.any()) for p in params
                )
            return super().optimizers_step()
        self._nonfinite_batch = False
        self.skipped_updates += 1
        self._nonfinite_in_a_row += 1
        for param in params:
            param.grad = None
        logger.warning(
            "Skipped an update with a non-finite loss or gradient (%d so far).",
            self.skipped_updates,
        )
        if self._nonfinite_in_a_row > self.nonfinite_patience:
            raise RuntimeError(
                f"{self._nonfinite_in_a_row} updates in a row had a non-finite loss or gradient "
                f"({self.skipped_updates} in all): training stops instead of writing a broken "
                "model. Likely causes: audio that is silent, empty or too short for the model "
                "(raise min_audio_s), a learning rate too high (lower lr), or fp16 overflow "
                "(use --precision bf16 or fp32)."
            )

    def on_fit_batch_end(self, batch, outputs, loss, should_step) -> None:
        """Step the learning-rate schedule once per update."""
        scheduler = getattr(self.hparams, "lr_annealing", None)
        if should_step and scheduler is not None:
            scheduler(self.optimizer)
            apply_lr_scales(self.optimizer)  # the scheduler gave every group one rate

    #: Figures of an evaluation stage (``summarize_metrics``), the one that selects the best
    #: checkpoint (and whether lower is better), and the decimals they are reported with.
    #: Every task declares its own.
    metric_names: tuple[str, ...]
    selection_metric: str
    lower_is_better: bool
    metric_decimals: int = 2
    #: Decimals of the selection metric in the printed table (``recipes/report.py``).
    table_decimals: int = 1
    #: Manifest columns naming files the task reads: their bytes are fingerprinted (every
    #: other column is fingerprinted by value).
    file_columns: tuple[str, ...] = ("wav",)
    #: Settings (``hparams`` keys) that change an evaluation's figures besides the base
    #: weights and the data: decoding, thresholds, feature and architecture settings. They
    #: key the "before" cache, and a resumed run refuses a change of any of them.
    evaluation_settings: tuple[str, ...] = ()

    def evaluation_inputs(self) -> dict[str, Any]:
        """What this task's figures depend on besides the base weights, the data and the code.

        The ``evaluation_settings`` as JSON-able descriptions (objects the YAML built,
        such as a searcher, by their class and plain attributes); a task whose figures
        read other inputs (a trial list) adds them.

        Returns
        -------
        dict
            Name -> JSON-able value.
        """
        return {
            key: describe_setting(getattr(self.hparams, key, None))
            for key in self.evaluation_settings
        }

    def _best(self, plural: bool = False) -> dict:
        """``min_key``/``max_key`` (or ``min_keys``/``max_keys``) selecting the best checkpoint."""
        name = ("min_key" if self.lower_is_better else "max_key") + ("s" if plural else "")
        return {name: [self.selection_metric] if plural else self.selection_metric}

    def on_stage_start(self, stage, epoch=None) -> None:
        """Start the training clock, or fresh metric trackers."""
        if stage == sb.Stage.TRAIN:
            self.stage_start = time.perf_counter()
        else:
            self.start_metrics(stage)

    def start_metrics(self, stage) -> None:
        """Fresh trackers of the task's metrics, at the start of an evaluation stage."""
        raise NotImplementedError(f"{type(self).__name__} must define start_metrics()")

    def summarize_metrics(self, stage) -> dict[str, float]:
        """The ``metric_names`` figures of the evaluation stage that ends."""
        raise NotImplementedError(f"{type(self).__name__} must define summarize_metrics()")

    def details_text(self) -> str:
        """Per-item details of the evaluation that ended (alignments, scores...), as text."""
        raise NotImplementedError(f"{type(self).__name__} must define details_text()")

    def write_details(self, folder: Path, stem: str) -> Path:
        """Write :meth:`details_text` to ``folder/<stem>.txt`` (a task may write more)."""
        return write_text(folder / f"{stem}.txt", self.details_text())

    def on_stage_end(self, stage, stage_loss, epoch=None) -> None:
        """Log, keep the best checkpoint by the validation metric, record test figures."""
        stats = {"loss": stage_loss}
        if stage != sb.Stage.TRAIN:
            stats.update(self.summarize_metrics(stage))
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            self.run_state.train_seconds += time.perf_counter() - self.stage_start
            if not self._learning_seen:
                raise RuntimeError(
                    "The first epoch made no update with a non-zero gradient and learning rate "
                    f"({self.skipped_updates} updates skipped): this configuration trains "
                    "nothing. Check that the training set is not empty, lr, alpha and the "
                    "adapted layers; for an evaluation without training, set evaluate_only: True."
                )
        elif stage == sb.Stage.VALID:
            lr = self.optimizer.param_groups[0]["lr"]
            self.hparams.train_logger.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            check_finite(self.modules, f"after epoch {epoch}")
            key = self.selection_metric
            self.checkpointer.save_and_keep_only(meta={key: stats[key]}, **self._best(plural=True))
        else:
            self.test_stats = stats
            self.hparams.train_logger.log_stats(
                stats_meta={"test set": self.test_name}, test_stats=stats
            )
            if if_main_process():
                folder = Path(self.hparams.output_folder) / "details"
                folder.mkdir(exist_ok=True)
                self.write_details(folder, f"{self.test_name}_{self.phase}")

    def evaluate_sets(self, test_sets: dict, best: bool = False, phase: str = "after") -> dict:
        """Evaluate on each named test set (with the best checkpoint if ``best``); return
        ``{name: {<metric_names>..., "n"}}``. ``phase`` (``before``, ``after``) names the
        details files: ``details/<set>_<phase>.txt``."""
        results = {}
        self.phase = phase
        for name, dataset in test_sets.items():
            self.test_name = name
            self.evaluate(
                dataset,
                test_loader_kwargs=self.hparams.test_loader,
                **(self._best() if best else {}),
            )
            results[name] = {
                k: round(float(self.test_stats[k]), self.metric_decimals) for k in self.metric_names
            }
            results[name]["n"] = len(dataset)
        return results


def initialise_from_data(
    brain: AdaptationBrain, hparams: dict[str, Any], train_set
) -> dict[str, Any] | None:
    """Set the ``A`` of every LoRA adapter with ``init: eva`` from the training data
    (:mod:`adapters.data_init`); return what it used, for ``summary.json``.

    The first ``data_init_batches`` batches of the training set (in file order, the
    validation loader's batch size) go through ``compute_forward`` as in training
    (``Stage.TRAIN``: what training sees, e.g. Whisper's teacher forcing), with the
    modules in eval mode and no gradients, seeded so a rerun gets the same ``A``.
    Skipped (``None``) when no adapter asks for it. When a checkpoint exists the
    resumed run takes its adapters from the checkpoint: the report is read back from
    ``data_init.json``, written when ``A`` was set.
    """
    adapted = hparams.get("adapted_model")
    if adapted is None or not data_initialised_layers(adapted):
        return None
    record = os.path.join(hparams["output_folder"], "data_init.json")
    if brain.checkpointer is not None and brain.checkpointer.list_checkpoints():
        if os.path.exists(record):
            with open(record, encoding="utf-8") as handle:
                return json.load(handle)
        return None
    batches = int(hparams.get("data_init_batches", 8))
    if batches < 1:
        raise ValueError(
            f"data_init_batches is {batches}: init: eva needs at least one training batch "
            "to find each layer's input directions. Set data_init_batches to 1 or more, or "
            "choose another init in adapter_kwargs."
        )
    loader_kwargs = {**hparams["valid_loader"], "shuffle": False}
    loader = sb.dataio.dataloader.make_dataloader(train_set, **loader_kwargs)
    sb.utils.seed_everything(hparams["seed"])
    was_training = brain.modules.training
    brain.modules.eval()
    used = 0
    try:
        with InputMoments(adapted) as moments, torch.no_grad():
            for batch in islice(loader, batches):
                brain.compute_forward(batch, sb.Stage.TRAIN)
                used += 1
    finally:
        brain.modules.train(was_training)
    shares = moments.initialise()
    if moments.skipped:
        logger.warning(
            "init: eva: %d convolution adapter(s) keep their random A (e.g. %s).",
            len(moments.skipped),
            moments.skipped[0],
        )
    report = {
        "method": "eva",
        "batches": used,
        "layers": len(shares),
        "tokens_per_layer_min": min(moments.tokens.values()),
        "energy_share_mean": round(sum(shares.values()) / len(shares), 4),
        "energy_share_min": round(min(shares.values()), 4),
    }
    logger.info("A set from the training data's input directions: %s", report)
    if if_main_process():
        write_json(record, report)
    return report


def has_batch_norm(module: torch.nn.Module) -> bool:
    """Whether ``module`` holds a BatchNorm layer.

    Example
    -------
    >>> has_batch_norm(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2)))
    True
    """
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def check_finite(model: torch.nn.Module, when: str) -> None:
    """Raise if a parameter of ``model`` holds NaN or infinity (never checkpoint or report it)."""
    bad = [name for name, p in model.named_parameters() if not bool(torch.isfinite(p).all())]
    if bad:
        raise RuntimeError(
            f"Non-finite weights {when} in {bad[:5]} ({len(bad)} tensors): refusing to save or "
            "report them. Lower the learning rate, and check the data for empty or silent audio."
        )


def check_trains_something(adapted: torch.nn.Module | None) -> None:
    """Refuse, before training, an adapted model whose training could change nothing."""
    if adapted is None:
        return
    adapters = adapted.adapters()
    if not adapters and not adapted.unfrozen_layers:
        raise ValueError(
            "No layer is adapted and none is unfrozen: training would change nothing. Set "
            "all_linear, all_conv or target_layers; or evaluate_only: True to only evaluate."
        )
    dead = [name for name, a in adapters.items() if getattr(a, "scaling", None) == 0]
    if dead:
        raise ValueError(
            f"alpha: 0 makes the update of every adapter zero ({len(dead)} layers, e.g. "
            f"{dead[0]}): nothing would be learnt. Set alpha > 0 (it defaults to the rank)."
        )


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def before_key(hparams: dict[str, Any], test_sets: dict, inputs: dict) -> dict:
    """What the figures before training depend on: the key of the shared ``before_cache``.

    The base weights, every column and file of each test set, the task's
    evaluation inputs (``AdaptationBrain.evaluation_inputs``: decoding settings,
    thresholds, trial lists...), the YAML's optional ``before_key`` and the code,
    all from ``inputs`` (:func:`recipes.bookkeeping.input_fingerprint`). Training
    settings are left out, so the runs of every method on one base share it.

    Returns
    -------
    dict
        A JSON-able key: equal keys mean equal figures.
    """
    return {
        "base": inputs["base"],
        "test_sets": {name: inputs["data"][f"test_{name}"] for name in test_sets},
        "evaluation": inputs.get("evaluation", {}),
        "settings": hparams.get("before_key"),
        "code": inputs["code"],
    }


def _evaluate_before(
    brain: AdaptationBrain, hparams: dict[str, Any], test_sets: dict, inputs: dict
) -> dict:
    """Figures of the model before training, computed once.

    ``before.json`` in the output folder serves a resumed run (whose model may
    be trained already; the folder's inputs, evaluation inputs included, are
    checked before). ``before_cache``, when set, is shared by the runs of
    several methods: it is reused only when its key (:func:`before_key`) is the
    same, else the figures are computed again and the cache replaced.
    """
    local = os.path.join(hparams["output_folder"], "before.json")
    if os.path.isfile(local):
        with open(local) as handle:
            return json.load(handle)
    shared = hparams.get("before_cache")
    key = before_key(hparams, test_sets, inputs)
    if shared and os.path.isfile(shared):
        with open(shared) as handle:
            cached = json.load(handle)
        if cached.get("key") == key:
            logger.info("Figures before training: reusing %s", shared)
            results = cached["results"]
            if if_main_process():
                write_json(local, results)
            return results
        logger.info(
            "Figures before training: %s was computed from other inputs; recomputing", shared
        )
    results = brain.evaluate_sets(test_sets, phase="before")
    if if_main_process():
        write_json(local, results)
        if shared:
            os.makedirs(os.path.dirname(shared) or ".", exist_ok=True)
            write_json(shared, {"key": key, "results": results})
    return results


def _leaving_together(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function``, followed by a DDP barrier on success: every process leaves together,
    after the main one has written (:func:`_leave_process_group` then closes the group)."""

    @wraps(function)
    def leave_together(*args: Any, **kwargs: Any) -> Any:
        result = function(*args, **kwargs)
        ddp_barrier()
        return result

    return leave_together


@_leaving_together
def run_adaptation(
    brain: AdaptationBrain,
    hparams: dict[str, Any],
    model: torch.nn.Module,
    train_set,
    valid_set,
    test_sets: dict,
    data_report: dict | None = None,
    write_inference: Callable[[AdaptationBrain, dict[str, Any]], os.PathLike] | None = None,
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
    data_report : dict, optional
        What the data preparation counted (e.g. characters the model cannot write).
    write_inference : callable, optional
        ``write_inference(brain, hparams)`` writes the run's inference folder (after
        the adapter file) and returns its path: see :mod:`recipes.inference`.

    Returns
    -------
    dict
        What ``summary.json`` holds: parameter counts, adapters, before/after
        error rates per test set, training time, adapter file size.
    """
    folder = hparams["output_folder"]
    adapted = hparams.get("adapted_model")
    datasets = {
        "train": train_set,
        "valid": valid_set,
        **{f"test_{k}": v for k, v in test_sets.items()},
    }
    inputs = input_fingerprint(
        hparams,
        _pretrained_state(model, adapted),
        datasets,
        file_columns=brain.file_columns,
        evaluation=brain.evaluation_inputs(),
    )
    if if_main_process():
        check_inputs(folder, inputs, hparams.get("fresh_start", False))
    evaluate_only = hparams.get("evaluate_only", False)
    finished = _finished_summary(folder, hparams, evaluate_only)
    if finished is not None:
        logger.info(
            "This run is finished; its results (--fresh_start True to redo it): %s", finished
        )
        print(json.dumps(finished, indent=2))
        return finished

    trainable, total = count_parameters(model)
    summary: dict[str, Any] = {
        "method": hparams["method"],
        "target": hparams.get("target"),
        "trainable_params": trainable,
        "total_params": total,
        "trainable_pct": round(100.0 * trainable / total, 3),
        "metric": brain.selection_metric,
        "table_decimals": brain.table_decimals,
        # Every setting that can change a figure, run options (precision...) included.
        "settings": figure_settings(hparams),
    }
    if adapted is not None:
        summary["adapters"] = adapted.summary()
        if adapted.left_out:
            summary["adapters_left_out"] = adapted.left_out
    if data_report:
        summary["data"] = data_report
    if evaluate_only:
        summary["evaluate_only"] = True
        summary["after"] = brain.evaluate_sets(test_sets, phase="evaluated")
        if if_main_process():
            write_json(os.path.join(folder, "summary.json"), summary)
        return summary
    check_trains_something(adapted)
    if len(train_set) == 0:
        raise ValueError(
            f"The training set is empty once filtered ({hparams['train_csv']}): no utterance is "
            "left (too long for train_window_s, or too short for min_audio_s?). Loosen the "
            "filter or add data."
        )

    if hparams.get("evaluate_before", False):
        summary["before"] = _evaluate_before(brain, hparams, test_sets, inputs)
    data_init = initialise_from_data(brain, hparams, train_set)
    if data_init is not None:
        summary["data_init"] = data_init

    brain.fit(
        hparams["epoch_counter"],
        train_set,
        valid_set,
        train_loader_kwargs=hparams["train_loader"],
        valid_loader_kwargs=hparams["valid_loader"],
    )
    fault_point("before_test")
    # Time spent in training epochs, accumulated across resumes (validation excluded).
    summary["train_time_s"] = round(brain.run_state.train_seconds, 1)
    summary["skipped_updates"] = getattr(brain, "skipped_updates", 0)
    summary["epochs"] = hparams["number_of_epochs"]
    summary["train_utterances"] = len(train_set)
    best = brain.checkpointer.find_checkpoint(**brain._best()) if brain.checkpointer else None
    if best is not None and brain.selection_metric in best.meta:  # what chose the checkpoint
        value = float(best.meta[brain.selection_metric])
        summary["valid"] = {brain.selection_metric: round(value, brain.metric_decimals)}
    summary["after"] = brain.evaluate_sets(test_sets, best=True)
    check_finite(model, "after training")

    if if_main_process():
        if "export_base" in hparams:  # the best model, as a plain state dict
            buffer = io.BytesIO()
            torch.save(hparams["model"].state_dict(), buffer)
            write_bytes(hparams["export_base"], buffer.getvalue())  # whole, or not at all
        if adapted is not None:
            path = os.path.join(folder, "adapter.safetensors")
            adapted.save_adapter(path)
            summary["adapter_file_bytes"] = os.path.getsize(path)
        if write_inference is not None:
            summary["inference_folder"] = os.path.relpath(write_inference(brain, hparams), folder)
        write_json(os.path.join(folder, "summary.json"), summary)
    logger.info("Summary: %s", summary)
    return summary


def _pretrained_state(model: torch.nn.Module, adapted) -> dict[str, torch.Tensor]:
    """The weights a run starts from, adapters aside, under the plain model's names.

    The same for every method on one base (so the runs share ``before_cache``):
    all parameters and persistent buffers of the base, frozen or not.
    """
    if adapted is None:
        return dict(model.state_dict())
    state = adapted.base_state()
    owned = {id(p) for adapter in adapted.adapters().values() for p in adapter.parameters()}
    for key, value in adapted.adapted_model.state_dict(keep_vars=True).items():
        plain = key.replace("base_layer.", "")
        if plain not in state and id(value) not in owned and "param_adapters." not in key:
            state[plain] = value.detach()
    return state


def _finished_summary(folder: str, hparams: dict[str, Any], evaluate_only: bool) -> dict | None:
    """The summary of a finished run of these inputs in ``folder`` (checked before), if any."""
    path = os.path.join(folder, "summary.json")
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        summary = json.load(handle)
    if evaluate_only:
        return summary if summary.get("evaluate_only") else None
    return summary if summary.get("epochs") == hparams["number_of_epochs"] else None

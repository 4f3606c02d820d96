"""The inference folder every run writes: a SpeechBrain ``from_hparams`` source.

``<output_folder>/inference/`` holds ``hyperparams.yaml`` (the recipe's template
under ``hparams/inference/``, filled in with the run's settings) and the trained
tensors: ``adapter.ckpt`` (our adapter file: safetensors with the base's
fingerprint) or ``model.ckpt`` (full fine-tuning). SpeechBrain's ``Pretrainer``
reads them from the ``source`` folder itself, so the folder works from any working
directory and after a move; the base model is named by its absolute path.

    from speechbrain.inference.ASR import WhisperASR
    asr = WhisperASR.from_hparams(source="results/whisper/lora/noisy/inference")

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from recipes.io import replace_folder

ROOT = Path(__file__).resolve().parents[1]
INTERFACES = {
    "WhisperASR": "speechbrain.inference.ASR.WhisperASR",
    "EncoderASR": "speechbrain.inference.ASR.EncoderASR",
    "SpeakerVerifier": "recipes.speaker.interface.SpeakerVerifier",
    "SpeechEnhancer": "recipes.enhancement.interface.SpeechEnhancer",
    "SpeechDetector": "recipes.vad.interface.SpeechDetector",
}
#: Tasks whose inference folder is a ``model`` network read from ``base_checkpoint``
#: (:func:`model_inference_folder`): interface -> (template name, the interface's modules
#: by their template keys, ``model`` standing for the trained network).
MODEL_FOLDERS = {
    "SpeakerVerifier": (
        "speaker",
        {"compute_features": "compute_features", "embedding_model": "model"},
    ),
    "SpeechEnhancer": ("enhancement", {"enhance_model": "model"}),
    "SpeechDetector": ("vad", {"model": "model"}),
}
#: The template key a task's base checkpoint loads into, where it is a part of ``model``
#: (the ``base`` of :func:`model_inference_folder`).
BASE_KEYS = {"SpeechEnhancer": "mask_net"}


def link_or_copy(source: str | os.PathLike, destination: str | os.PathLike) -> None:
    """Hard-link ``source`` to ``destination`` (copy across file systems), replacing it."""
    destination = Path(destination)
    destination.unlink(missing_ok=True)
    try:
        os.link(source, destination)
    except OSError:
        shutil.copyfile(source, destination)


def _flow(value: Any) -> str:
    """A YAML flow value (JSON is YAML)."""
    return json.dumps(value)


def adapter_block(adapted: torch.nn.Module, model_key: str) -> str:
    """The ``adapted_model`` YAML block rebuilding exactly the layers ``adapted`` adapts.

    Layer names become patterns (a name matches itself), so the inference model
    adapts and unfreezes the same layers whatever flags the training YAML used.
    """
    cls = adapted.adapter_class
    name = f"{getattr(cls, '__module__', '')}.{getattr(cls, '__qualname__', cls)}"
    return (
        "adapted_model: !new:adapters.AdaptedModel\n"
        f"    model_to_adapt: !ref <{model_key}>\n"
        f"    adapter_class: !name:{name}\n"
        f"    target_layers: {_flow(list(adapted.adapted_layers))}\n"
        f"    unfrozen_layers: {_flow(list(adapted.unfrozen_layers))}\n"
        f"    adapter_kwargs: {_flow(adapted.adapter_kwargs)}\n"
        f"    adapter_kwargs_by_layer: {_flow(adapted.adapter_kwargs_by_layer)}\n"
    )


def fill_template(text: str, values: dict[str, Any]) -> str:
    r"""Set top-level keys of a HyperPyYAML text, keeping its references (so that
    ``from_hparams(..., overrides=...)`` still reaches every use of a key).

    Example
    -------
    >>> print(fill_template("rate: 1\nmodel: !ref <rate>\n", {"rate": 8000}))
    rate: 8000
    model: !ref <rate>
    <BLANKLINE>
    """
    for key, value in values.items():
        line = f"{key}: {_flow(value)}"
        pattern = rf"^{re.escape(key)}:[^\n]*$"
        text, count = re.subn(pattern, lambda _, line=line: line, text, flags=re.MULTILINE)
        if count != 1:
            raise KeyError(f"The template defines {key!r} {count} times (one expected).")
    return text


def write_inference_folder(
    folder: str | os.PathLike,
    template: str | os.PathLike,
    values: dict[str, Any],
    tail: str,
    files: dict[str, str | os.PathLike],
    sources: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
) -> Path:
    """Write ``hyperparams.yaml`` (``template`` with ``values``, then ``tail``) and link
    ``files`` (``{name in the folder: path}``) into ``folder``; return the folder.

    Through :func:`recipes.io.replace_folder`: built in a temporary sibling and swapped
    in (a crash leaves the old folder or the new one), and a ``folder`` holding files
    this project did not write, or inside/around one of ``sources``, is refused unless
    ``overwrite``.
    """
    folder = Path(folder)
    text = fill_template(Path(template).read_text(), values)
    with replace_folder(folder, sources, overwrite) as tmp:
        (tmp / "hyperparams.yaml").write_text(text + "\n" + tail)
        for name, path in files.items():
            link_or_copy(path, tmp / name)
    return folder


def interface_class(folder: str | os.PathLike):
    """The SpeechBrain inference class an inference folder declares (``interface:``)."""
    import importlib

    path = Path(folder) / "hyperparams.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} is not an inference folder: it has no hyperparams.yaml. Give a run's "
            "output folder (it holds inference/) or its inference/ folder."
        )
    for line in path.read_text().splitlines():
        if line.startswith("interface:"):
            name = line.split(":", 1)[1].split("#")[0].strip().strip("\"'")
            module, _, cls = INTERFACES[name].rpartition(".")
            return getattr(importlib.import_module(module), cls)
    raise ValueError(f"{path} names no interface (interface: {' | '.join(INTERFACES)}).")


def load_inference(
    folder: str | os.PathLike, device: str = "cpu", overrides: dict | None = None, **kwargs: Any
):
    """``<interface>.from_hparams`` on an inference folder (or a run folder holding one)."""
    folder = Path(folder)
    if (folder / "inference" / "hyperparams.yaml").is_file():
        folder = folder / "inference"
    cls = interface_class(folder)
    return cls.from_hparams(
        source=str(folder.resolve()), overrides=overrides or {}, run_opts={"device": device},
        **kwargs,
    )  # fmt: skip


def load_task_interface(run: str | os.PathLike, interface: str, recipe: str, device: str = "cpu"):
    """The ``interface`` of a run of ``recipe`` (its run folder or inference folder), or a
    clear error: an unfinished run, or a run of another task."""
    folder = Path(run)
    inference = folder / "inference" if (folder / "inference").is_dir() else folder
    if not (inference / "hyperparams.yaml").is_file() and (folder / "save").is_dir():
        raise FileNotFoundError(
            f"{run} is a run folder without an inference folder: the run has not finished (the "
            "inference folder is written at its end). Rerun its training command to finish it."
        )
    name = interface_class(inference).__name__
    if name != interface:
        raise ValueError(
            f"{run} holds a {name} model, not a {interface}: give the folder of a run of {recipe}."
        )
    return load_inference(inference, device=device)


def trained_files(brain: Any, hparams: dict[str, Any]) -> dict[str, Path]:
    """What a finished run trained, by its name in the inference folder.

    ``adapter.ckpt``: the run's adapter file. ``model.ckpt``: the exported base
    (pretraining) or the best checkpoint's model (full fine-tuning), hard-linked.
    """
    folder = Path(hparams["output_folder"])
    if hparams.get("adapted_model") is not None:
        return {"adapter.ckpt": folder / "adapter.safetensors"}
    if "export_base" in hparams:
        return {"model.ckpt": Path(hparams["export_base"])}
    best = brain.checkpointer.find_checkpoint(**brain._best())  # by the task's own metric
    if best is None or "model" not in best.paramfiles:
        raise FileNotFoundError(
            f"No checkpoint with a model in {brain.checkpointer.checkpoints_dir}: the inference "
            "folder needs the trained weights (was the run cut short?)."
        )
    return {"model.ckpt": Path(best.paramfiles["model"])}


def pretrainer_block(loadables: dict[str, str], paths: dict[str, str], strict: list[str]) -> str:
    """A ``Pretrainer`` YAML block. ``loadables`` and ``paths`` map names to YAML keys (so
    ``from_hparams(..., overrides={key: ...})`` reaches them); loadables without a path
    are read from the source folder."""
    lines = ["pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer", "    loadables:"]
    lines += [f"        {name}: !ref <{key}>" for name, key in loadables.items()]
    if paths:
        lines += ["    paths:", *(f"        {name}: !ref <{key}>" for name, key in paths.items())]
    if strict:
        lines += ["    custom_hooks:"]
        lines += [f"        {name}: !name:recipes.common.strict_transfer" for name in strict]
    return "\n".join(lines) + "\n"


def whisper_inference_folder(
    folder: str | os.PathLike,
    values: dict[str, Any],
    adapted: torch.nn.Module | None,
    files: dict[str, str | os.PathLike],
    **target: Any,
) -> Path:
    """A ``WhisperASR`` inference folder: the base (``values["base_source"]``) with
    ``adapter.ckpt`` (``adapted`` given) or with the full weights in ``model.ckpt``.
    ``target``: ``sources`` and ``overwrite``, as :func:`write_inference_folder` takes them."""
    if adapted is not None:
        tail = adapter_block(adapted, "whisper")
        tail += "modules:\n    whisper: !ref <adapted_model>\n    decoder: !ref <decoder>\n"
        tail += pretrainer_block({"adapter": "adapted_model"}, {}, [])
    else:
        tail = "modules:\n    whisper: !ref <whisper>\n    decoder: !ref <decoder>\n"
        tail += pretrainer_block({"model": "whisper"}, {}, ["model"])
    template = ROOT / "hparams" / "inference" / "whisper.yaml"
    return write_inference_folder(folder, template, values, tail, files, **target)


def ctc_inference_folder(
    folder: str | os.PathLike,
    values: dict[str, Any],
    adapted: torch.nn.Module | None,
    files: dict[str, str | os.PathLike],
    **target: Any,
) -> Path:
    """An ``EncoderASR`` inference folder: the base (``values["base_checkpoint"]``) with
    ``adapter.ckpt`` (``adapted`` given) or the full weights in ``model.ckpt``.
    ``target``: ``sources`` and ``overwrite``, as :func:`write_inference_folder` takes them."""
    features = (
        "encoder: !new:recipes.asr.model.WaveformCTC\n"
        "    features: !new:speechbrain.lobes.features.Fbank\n"
        "        n_mels: !ref <n_mels>\n"
        f"    model: !ref <{'adapted_model' if adapted is not None else 'model'}>\n"
        "modules:\n    encoder: !ref <encoder>\n"
    )
    if adapted is not None:
        tail = adapter_block(adapted, "model") + "    manual_adapter_insertion: True\n" + features
        tail += pretrainer_block(
            {"model": "model", "adapter": "adapted_model"},
            {"model": "base_checkpoint"},
            ["model"],
        )
    else:
        tail = features + pretrainer_block({"model": "model"}, {}, ["model"])
    template = ROOT / "hparams" / "inference" / "ctc.yaml"
    return write_inference_folder(folder, template, values, tail, files, **target)


def model_inference_folder(
    folder: str | os.PathLike,
    task: str,
    values: dict[str, Any],
    adapted: torch.nn.Module | None,
    files: dict[str, str | os.PathLike],
    modules: dict[str, str],
    base: str = "model",
    **target: Any,
) -> Path:
    """An inference folder for a task whose template (``hparams/inference/<task>.yaml``)
    defines its network as ``model``, read from ``values["base_checkpoint"]``.

    ``modules`` maps the interface's module names to template keys; ``model`` there
    stands for the network as trained: the ``AdaptedModel`` (``adapted`` given, with
    ``adapter.ckpt``) or the model with the full weights of ``model.ckpt``. ``base``: the
    template key the base checkpoint loads into, when it is a part of ``model``.
    ``target``: ``sources`` and ``overwrite``, as :func:`write_inference_folder` takes them.
    """
    network = "adapted_model" if adapted is not None else "model"
    lines = ["modules:"]
    lines += [
        f"    {name}: !ref <{network if key == 'model' else key}>" for name, key in modules.items()
    ]
    mods = "\n".join(lines) + "\n"
    if adapted is not None:
        tail = adapter_block(adapted, "model") + "    manual_adapter_insertion: True\n" + mods
        tail += pretrainer_block(
            {"model": base, "adapter": "adapted_model"},
            {"model": "base_checkpoint"},
            ["model"],
        )
    else:
        tail = mods + pretrainer_block({"model": "model"}, {}, ["model"])
    template = ROOT / "hparams" / "inference" / f"{task}.yaml"
    return write_inference_folder(folder, template, values, tail, files, **target)

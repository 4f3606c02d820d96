"""Data-aware LoRA initialisation: ``A`` from the principal directions of each layer's inputs.

EVA (Paischer et al. 2024, https://arxiv.org/abs/2410.07170) starts ``A`` on the
directions along which the target data's inputs to the layer carry the most
energy, instead of random ones; ``B`` stays zero, so the adapted model is still
exactly the pretrained one (merge, export and the base fingerprint are unchanged).
With ``freeze_a`` (LoRA-FA) the low-rank update then learns on those directions.

Here the directions are the top eigenvectors of the uncentred second moment
``E[x x^T]`` of the inputs seen by ``A`` (after PoolLoRA's pooling): the rank-r
subspace that keeps the most of ``||x||^2``, i.e. the top right singular vectors
of the stacked inputs. ``A``'s rows are those vectors, all scaled alike so that
``E||A x||^2`` is what the default random ``A`` gives (kaiming-uniform, entries of
variance ``1 / (3 in)``): the projection is no larger, so a learning rate chosen
for random ``A`` still applies (unit rows, as in EVA, make it over ten times larger
on Whisper's layers, and lr 4e-3 diverged). Convolution adapters keep their random
``A`` (their inputs are patches, not tokens).

Usage: ``with InputMoments(model) as moments:`` run a few target batches through
the model (no gradients needed), then ``moments.initialise()``.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import torch
from torch import nn

from adapters.base import LINEAR_TYPES
from adapters.lora import LoRA

#: The ``init`` value that asks for this initialisation (``adapter_kwargs: {init: eva}``).
DATA_INIT = "eva"


def data_initialised_layers(model: nn.Module) -> dict[str, LoRA]:
    """``{name: adapter}`` of the LoRA adapters (of any LoRA variant) that asked for
    ``init: eva``: those whose ``A`` waits for :class:`InputMoments`.

    Example
    -------
    >>> model = nn.Sequential(LoRA(nn.Linear(4, 4), rank=2, init="eva"), LoRA(nn.Linear(4, 4), rank=2))
    >>> list(data_initialised_layers(model))
    ['0']
    """
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, LoRA) and getattr(module, "init", None) == DATA_INIT
    }


class InputMoments:
    """Accumulates, for each data-initialised LoRA layer, ``sum x x^T`` over the tokens
    its ``A`` sees (float64), while the ``with`` block runs the model.

    Arguments
    ---------
    model : torch.nn.Module
        A model holding LoRA adapters; those with ``init="eva"`` are hooked (or every
        Linear LoRA adapter with ``every_lora=True``).
    every_lora : bool
        Hook all Linear LoRA adapters, whatever their ``init``.

    Example
    -------
    >>> torch.manual_seed(0) and None
    >>> layer = LoRA(nn.Linear(8, 8), rank=2, init="eva")
    >>> x = torch.randn(500, 8) * torch.tensor([5.0, 3.0, 1, 1, 1, 1, 1, 1])
    >>> with InputMoments(layer) as moments:
    ...     _ = layer(x)
    >>> report = moments.initialise()
    >>> layer.lora_A.abs().argmax(dim=1).tolist()  # the two widest input directions
    [0, 1]
    >>> round(report[""], 2)  # their share of the energy (expected (25 + 9) / 40 = 0.85)
    0.86
    """

    def __init__(self, model: nn.Module, every_lora: bool = False) -> None:
        if every_lora:
            found = {n: m for n, m in model.named_modules() if isinstance(m, LoRA)}
        else:
            found = data_initialised_layers(model)
        self.layers = {
            n: m
            for n, m in found.items()
            if isinstance(m.base_layer, LINEAR_TYPES) and m.init != "pissa"
        }
        #: Convolution adapters asked to start from data keep their random ``A``; PiSSA
        #: layers (``every_lora``) keep their start, which ``A`` must equal.
        self.skipped = sorted(set(found) - set(self.layers))
        self.moments: dict[str, torch.Tensor] = {}
        self.tokens: dict[str, int] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> InputMoments:  # noqa: PYI034 (Python 3.10 has no typing.Self)
        for name, layer in self.layers.items():
            self._handles.append(layer.register_forward_pre_hook(self._hook(name)))
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def accumulate(layer: LoRA, args: tuple) -> None:
            with torch.no_grad():
                h = layer._down_input(args[0].detach())
                h = h.reshape(-1, h.shape[-1]).double()
                moment = h.t() @ h
                if name in self.moments:
                    self.moments[name] += moment
                else:
                    self.moments[name] = moment
                self.tokens[name] = self.tokens.get(name, 0) + h.shape[0]

        return accumulate

    def initialise(self) -> dict[str, float]:
        """Set each hooked layer's ``A`` to the top-``rank`` eigenvectors of its inputs'
        second moment (largest first, orthogonal rows of equal norm, scaled to random
        ``A``'s ``E||A x||^2``); return ``{layer: share of the inputs' energy in that
        subspace}``. A layer that saw no input, or only zeros, is an error.

        Under ``torch.distributed``, rank 0's result is broadcast so every process
        starts from the same ``A``.
        """
        unseen = sorted(set(self.layers) - set(self.moments))
        if unseen:
            raise RuntimeError(
                f"init: eva found no input for {len(unseen)} adapted layer(s), e.g. "
                f"{unseen[0]!r}: the batches run inside InputMoments did not reach them. Run "
                "batches that go through every adapted layer, or leave those layers out."
            )
        report = {}
        for name, layer in self.layers.items():
            values, vectors = torch.linalg.eigh(self.moments[name])  # ascending
            values = values.clamp_min(0)
            total, kept = values.sum(), values[-layer.rank :].sum()
            if not kept > 0:
                raise RuntimeError(
                    f"init: eva: the inputs of {name!r} were all zero in the batches run, so "
                    "they have no direction to start A on. Run batches of real data."
                )
            features = vectors.shape[0]
            # kaiming-uniform A: E||A x||^2 = rank E||x||^2 / (3 in); unit rows give kept / n
            scale = torch.sqrt(layer.rank * total / (3 * features * kept))
            top = vectors[:, -layer.rank :].flip(1).t() * scale  # [rank, in], largest first
            report[name] = float(kept / total)
            with torch.no_grad():
                layer.lora_A.copy_(top.reshape(layer.lora_A.shape).to(layer.lora_A.dtype))
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for layer in self.layers.values():
                torch.distributed.broadcast(layer.lora_A.data, src=0)
        return report

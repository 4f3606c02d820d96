"""Which layers to adapt: ``all_linear``, ``all_conv`` and fnmatch patterns.

Patterns match module names (``model.named_modules()``) and the names of
weights held as raw parameters (``adapters.targets``): ``<attention>.q_proj``,
``<rnn>.weight_ih_l0``, ``<module>.<parameter>``. Naming an attention or
recurrent module selects its raw-parameter weights. Every pattern must match
something, and what the flags saw and left out is counted with the reason.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch

from torch import nn

from adapters.base import CONV_TYPES, LINEAR_TYPES, within
from adapters.targets import ParamTarget


def as_patterns(value: str | Sequence[str] | None) -> list[str]:
    """A YAML value (one pattern, a list, or nothing) as a list of patterns."""
    return [value] if isinstance(value, str) else list(value or [])


def matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


def check_patterns(
    key: str, patterns: Sequence[str], names: Sequence[str], which: str = "layer of the model"
) -> None:
    """Raise ``ValueError`` for the first pattern that matches no name, with the closest
    names; ``which`` says what the names are."""
    for pattern in patterns:
        if not any(fnmatch(n, pattern) for n in names):
            closest = difflib.get_close_matches(pattern, names, n=5, cutoff=0.0)
            raise ValueError(
                f"{key} pattern {pattern!r} matches no {which}. Closest names: "
                f"{closest}. Patterns use fnmatch wildcards on the names printed by "
                "`model.named_modules()`, and on raw weights such as '<rnn>.weight_ih_l0'."
            )


@dataclass
class Selection:
    """The outcome: layers to adapt, layers trained in full, what the flags left out."""

    adapted: list[str] = field(default_factory=list)
    unfrozen: list[str] = field(default_factory=list)
    left_out: Counter = field(default_factory=Counter)  # (label, reason) -> count

    def left_out_message(self) -> str:
        """One paragraph: what ``all_linear``/``all_conv`` saw and did not adapt, and why."""
        parts = [f"{n} {label} ({reason})" for (label, reason), n in sorted(self.left_out.items())]
        return "all_linear/all_conv left out: " + "; ".join(parts) + "." if parts else ""


def select_layers(
    model: nn.Module,
    targets: dict[str, ParamTarget],
    adapter_name: str,
    by_weight: bool,
    all_linear: bool = False,
    all_conv: bool = False,
    target_layers: Sequence[str] = (),
    unfrozen_layers: Sequence[str] = (),
    exclude_layers: Sequence[str] = (),
) -> Selection:
    """Choose the layers to adapt, outermost first, none inside another.

    ``by_weight`` says whether the adapter updates a weight (and so can take
    raw-parameter targets) rather than wrapping a module.

    Example
    -------
    >>> net = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    >>> chosen = select_layers(net, {}, "LoRA", True, all_linear=True, unfrozen_layers=["1"])
    >>> chosen.adapted, chosen.unfrozen
    (['0'], ['1'])
    >>> chosen.left_out_message()
    'all_linear/all_conv left out: 1 Linear (unfrozen_layers: trained in full).'
    """
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    check_patterns("target_layers", target_layers, [*names, *targets])
    check_patterns("unfrozen_layers", unfrozen_layers, names)
    check_patterns("exclude_layers", exclude_layers, [*names, *targets])
    out = Selection(unfrozen=[n for n in names if matches(n, unfrozen_layers)])
    holders = {t.holder for t in targets.values() if t.holder}
    candidates = [(n, modules[n]) for n in names if n not in targets and n not in holders]
    for name, target in [*candidates, *targets.items()]:
        raw = isinstance(target, ParamTarget)
        matched = matches(name, target_layers) or (
            raw and matches(target.holder or "", target_layers)
        )
        if raw:
            flagged, label = all_linear and target.holder is not None, target.label
        else:
            linear, conv = isinstance(target, LINEAR_TYPES), isinstance(target, CONV_TYPES)
            flagged, label = (all_linear and linear) or (all_conv and conv), type(target).__name__
            if all_conv and isinstance(target, nn.modules.conv._ConvTransposeNd):
                out.left_out[(label, "transposed convolutions are not adapted")] += 1
        if not (matched or flagged) or any(within(name, s) for s in out.adapted):
            continue
        prefixes = [name.rsplit(".", i)[0] for i in range(name.count(".") + 1)]
        reason = None
        if any(within(name, u) for u in out.unfrozen):
            reason = "unfrozen_layers: trained in full"
        elif any(matches(p, exclude_layers) for p in prefixes):
            reason = "exclude_layers"
        elif raw and not by_weight:
            if matched:
                raise TypeError(
                    f"{name} ({target.label}) is held as a raw parameter; only weight-update "
                    f"adapters (LoRA, PoolLoRA, DoRA) can adapt it, not {adapter_name}."
                )
            reason = f"raw parameters; {adapter_name} wraps modules, LoRA/PoolLoRA/DoRA reach them"
        if reason is None:
            out.adapted.append(name)
        elif flagged and not matched:
            out.left_out[(label, reason)] += 1
    return out

"""Deterministic, offline, generated domain-shift ASR corpus (espeak-ng speech, WordNet text)."""

from typing import Any

__all__ = ["prepare_corpus"]


def __getattr__(name: str) -> Any:
    # Imported lazily so that ``python -m recipes.corpus.prepare`` does not load
    # the module twice (once as a package member, once as ``__main__``).
    if name == "prepare_corpus":
        from .prepare import prepare_corpus

        return prepare_corpus
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

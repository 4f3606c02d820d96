"""Transcripts for the generated corpus: example sentences from WordNet.

WordNet glosses carry short quoted usage examples (``"the dog barked all night"``).
They are plain, mostly modern English, which makes them good material for a
synthetic ASR corpus. The text is read at generation time from the files of the
Debian package ``wordnet-base`` (``/usr/share/wordnet/data.{noun,verb,adj,adv}``),
so no third-party text is stored in this repository.

Sentences are normalised to the transcript alphabet of the recipes: upper-case
letters ``A``-``Z``, the apostrophe and single spaces.
"""

from __future__ import annotations

import collections
import functools
import re
from pathlib import Path

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")

MIN_WORDS = 4
MAX_WORDS = 16

# Raw examples may only use letters, spaces and ordinary punctuation; anything
# else (digits, symbols, accented letters) makes the spoken form ambiguous.
_ALLOWED_RAW = re.compile(r"[A-Za-z ,.;:!?'()\-]+")
# Two or more capitals in a row (``TV``, ``NATO``) would be spelled out.
_ACRONYM = re.compile(r"[A-Z]{2,}")
_EXAMPLE = re.compile(r'"([^"]+)"')
# Single-letter words other than these are initials (``J. Smith``).
_SINGLE_LETTER_WORDS = frozenset({"A", "I"})


class WordNetNotFoundError(FileNotFoundError):
    """Raised when the WordNet data files are not installed."""


def normalize(text: str) -> str:
    """Normalise a sentence to upper-case letters, apostrophes and single spaces.

    Punctuation becomes a word boundary; apostrophes are kept inside words
    (``don't``) but dropped where they act as quotation marks.

    Parameters
    ----------
    text : str
        Raw sentence.

    Returns
    -------
    str
        The normalised transcript (possibly empty).

    Examples
    --------
    >>> normalize("He said: 'don't go -- it's late!'")
    "HE SAID DON'T GO IT'S LATE"
    """
    text = re.sub(r"[^A-Z']+", " ", text.replace("\u2019", "'").upper())
    words = (word.strip("'") for word in text.split())
    return " ".join(word for word in words if word)


def _is_clean(raw: str, normalized: str) -> bool:
    """Whether an example is speakable without ambiguity and of a usable length."""
    if not _ALLOWED_RAW.fullmatch(raw) or _ACRONYM.search(raw):
        return False
    words = normalized.split()
    if any(len(word) == 1 and word not in _SINGLE_LETTER_WORDS for word in words):
        return False
    return MIN_WORDS <= len(words) <= MAX_WORDS


def wordnet_examples(wordnet_dir: Path = WORDNET_DIR) -> list[str]:
    """Extract, clean and normalise the quoted usage examples of WordNet glosses.

    Parameters
    ----------
    wordnet_dir : Path
        Folder holding WordNet's ``data.*`` files.

    Returns
    -------
    list of str
        Distinct normalised sentences of 4 to 16 words, in order of first
        appearance (nouns, verbs, adjectives, adverbs).

    Raises
    ------
    WordNetNotFoundError
        If any of the data files is missing.
    """
    paths = [Path(wordnet_dir) / name for name in WORDNET_FILES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise WordNetNotFoundError(
            f"WordNet data files not found: {', '.join(missing)}. The generated corpus takes its "
            "transcripts from WordNet: install them with `apt-get install wordnet-base` "
            "(Debian/Ubuntu), or skip corpus generation and pass your own manifests."
        )
    sentences: dict[str, None] = {}
    for path in paths:
        with path.open(encoding="latin-1") as lines:
            for line in lines:
                if line.startswith("  "):  # licence header
                    continue
                gloss = line.partition("|")[2]
                for raw in _EXAMPLE.findall(gloss):
                    raw = raw.strip()
                    normalized = normalize(raw)
                    if _is_clean(raw, normalized):
                        sentences.setdefault(normalized)
    return list(sentences)


def restrict_vocabulary(sentences: list[str], vocab_size: int) -> list[str]:
    """Keep the sentences whose words are all among the most frequent ones.

    Restricting the vocabulary keeps the corpus learnable from a few hours of
    speech: every word of the test sets is frequent in the training text.

    Parameters
    ----------
    sentences : list of str
        Normalised sentences.
    vocab_size : int
        Number of most frequent words (counted over ``sentences``) to allow;
        ties are broken alphabetically.

    Returns
    -------
    list of str
        The kept sentences, sorted alphabetically.
    """
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    counts = collections.Counter(word for sentence in sentences for word in sentence.split())
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    vocabulary = set(ranked[:vocab_size])
    return sorted(s for s in sentences if vocabulary.issuperset(s.split()))


@functools.lru_cache(maxsize=4)
def load_sentences(vocab_size: int = 2000, wordnet_dir: Path = WORDNET_DIR) -> tuple[str, ...]:
    """WordNet example sentences restricted to the ``vocab_size`` most frequent words.

    Parameters
    ----------
    vocab_size : int
        Size of the allowed vocabulary (2000 gives about 4,100 sentences).
    wordnet_dir : Path
        Folder holding WordNet's ``data.*`` files.

    Returns
    -------
    tuple of str
        Distinct normalised sentences in alphabetical order.
    """
    return tuple(restrict_vocabulary(wordnet_examples(wordnet_dir), vocab_size))

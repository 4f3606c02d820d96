"""Text normalisation for word error rates on cased, punctuated ASR output.

Whisper writes ``"Mr. Dashwood paid 1,250 dollars."`` where a reference may read
``"mister dashwood paid one thousand two hundred fifty dollars"``. Scoring both
as they are would count casing, punctuation and number formatting as word
errors. :func:`normalize_text` maps reference and hypothesis alike to lower-case
words separated by single spaces, in this order:

1. Unicode compatibility normalisation (NFKC; e.g. full-width letters and
   ligatures become plain letters) and typographic apostrophes (``’ ‘ ʼ``)
   become ``'``.
2. Lower-casing.
3. Symbols: ``&`` becomes ``and``, ``%`` becomes ``percent``.
4. Abbreviations, as whole words with or without a final period:
   ``mr`` becomes ``mister``, ``mrs`` ``missus``, ``dr`` ``doctor``
   (see :data:`ABBREVIATIONS`). Nothing else is expanded: ``st``, ``$`` and
   units stay as they are (``$`` is then dropped as punctuation).
5. Numbers, written in words without hyphens or "and":

   * thousands separators are removed (``1,250`` is ``1250``): a comma counts
     as a separator only between groups of exactly three digits;
   * decimals are read digit by digit after the point: ``3.5`` is
     ``three point five``, ``0.25`` is ``zero point two five``;
   * ordinals with a suffix ``st``, ``nd``, ``rd`` or ``th``: ``2nd`` is
     ``second``, ``21st`` is ``twenty first``, ``100th`` is
     ``one hundredth``;
   * integers from 0 to 999,999,999 are spelled out: ``22`` is
     ``twenty two``, ``1250`` is ``one thousand two hundred fifty``, and a
     year such as ``1990`` is ``one thousand nine hundred ninety``;
   * digit strings longer than nine digits or with a leading zero (phone
     numbers, PINs) are read digit by digit: ``007`` is
     ``zero zero seven``.

   Digits glued to letters are split from them (``mp3`` is ``mp three``).
6. Punctuation: every character that is neither a letter nor an apostrophe
   becomes a space, so hyphens, dashes and slashes between words separate
   them (``ill-disposed`` is ``ill disposed``, ``and/or`` is ``and or``) and
   ``a.m.`` is ``a m``. An apostrophe is kept only between two letters
   (``don't``, ``o'clock``); quotation marks and leading or trailing
   apostrophes are dropped (``'quoted'`` is ``quoted``, ``dashwoods'`` is
   ``dashwoods``).
7. Whitespace is collapsed to single spaces and stripped.

The result is idempotent: normalising a normalised text changes nothing.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import re
import unicodedata

ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor"}
"""Lower-case abbreviations expanded when they form a whole word (optionally followed by ``.``)."""

SYMBOLS = {"&": " and ", "%": " percent "}
"""Symbols replaced by words before punctuation is dropped."""

MAX_SPELLED_NUMBER = 999_999_999
"""Largest integer spelled out as a number; longer digit strings are read digit by digit."""

_ONES = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen",
)  # fmt: skip
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ((1_000_000, "million"), (1_000, "thousand"))
_IRREGULAR_ORDINALS = {
    "one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
    "nine": "ninth", "twelve": "twelfth",
}  # fmt: skip

_APOSTROPHES = re.compile("[\u2018\u2019\u02bc]")
_ABBREVIATION = re.compile(r"\b(" + "|".join(ABBREVIATIONS) + r")\b\.?")
_THOUSANDS = re.compile(r"(?<![\d,])\d{1,3}(?:,\d{3})+(?![\d,]*\d)")
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?!\.?\d)")
_ORDINAL = re.compile(r"(?<!\d)(\d+)(st|nd|rd|th)\b")
_INTEGER = re.compile(r"\d+")
_NOT_WORD = re.compile(r"[^\w']|_")
_LOOSE_APOSTROPHE = re.compile(r"(?<!\w)'|'(?!\w)")


def number_to_words(number: int) -> str:
    """Spell out a non-negative integer in English words.

    Parameters
    ----------
    number : int
        From 0 to :data:`MAX_SPELLED_NUMBER`.

    Returns
    -------
    str
        Words separated by single spaces, without hyphens or "and".

    Raises
    ------
    ValueError
        If ``number`` is negative or larger than :data:`MAX_SPELLED_NUMBER`.

    Example
    -------
    >>> number_to_words(0)
    'zero'
    >>> number_to_words(21)
    'twenty one'
    >>> number_to_words(1_250)
    'one thousand two hundred fifty'
    >>> number_to_words(100_000_007)
    'one hundred million seven'
    """
    if not 0 <= number <= MAX_SPELLED_NUMBER:
        raise ValueError(f"Only integers from 0 to {MAX_SPELLED_NUMBER} are spelled out.")
    if number == 0:
        return "zero"
    words: list[str] = []
    for scale, name in _SCALES:
        if number >= scale:
            words += [_below_thousand(number // scale), name]
            number %= scale
    if number:
        words.append(_below_thousand(number))
    return " ".join(words)


def _below_thousand(number: int) -> str:
    """Words for 1 to 999."""
    words = []
    hundreds, rest = divmod(number, 100)
    if hundreds:
        words += [_ONES[hundreds], "hundred"]
    if rest >= 20:
        tens, ones = divmod(rest, 10)
        words.append(_TENS[tens])
        if ones:
            words.append(_ONES[ones])
    elif rest:
        words.append(_ONES[rest])
    return " ".join(words)


def ordinal_to_words(number: int) -> str:
    """Spell out a non-negative integer as an ordinal.

    Parameters
    ----------
    number : int
        From 0 to :data:`MAX_SPELLED_NUMBER`.

    Returns
    -------
    str
        The cardinal words with the last word turned into an ordinal.

    Example
    -------
    >>> ordinal_to_words(2)
    'second'
    >>> ordinal_to_words(21)
    'twenty first'
    >>> ordinal_to_words(40)
    'fortieth'
    >>> ordinal_to_words(1_000)
    'one thousandth'
    """
    *head, last = number_to_words(number).split()
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = last[:-1] + "ieth"
    else:
        last += "th"
    return " ".join([*head, last])


def _digits(text: str) -> str:
    """Read a digit string digit by digit."""
    return " ".join(_ONES[int(digit)] for digit in text)


def _integer(match: re.Match[str]) -> str:
    digits = match.group()
    if (len(digits) > 1 and digits.startswith("0")) or int(digits) > MAX_SPELLED_NUMBER:
        return f" {_digits(digits)} "
    return f" {number_to_words(int(digits))} "


def _decimal(match: re.Match[str]) -> str:
    whole, fraction = match.groups()
    return f" {_integer(_INTEGER.match(whole))} point {_digits(fraction)} "


def _ordinal(match: re.Match[str]) -> str:
    digits = match.group(1)
    if (len(digits) > 1 and digits.startswith("0")) or int(digits) > MAX_SPELLED_NUMBER:
        return match.group()  # not a plain ordinal; left to the integer rule
    return f" {ordinal_to_words(int(digits))} "


def normalize_text(text: str) -> str:
    """Normalise a transcript or an ASR hypothesis for WER scoring.

    The steps, in order, are those listed in the module docstring: Unicode and
    apostrophe clean-up, lower-casing, ``&`` and ``%`` as words, ``mr``/``mrs``/
    ``dr`` expanded, numbers spelled out (thousands separators, decimals,
    ordinals, integers up to 999,999,999, other digit strings digit by digit),
    punctuation replaced by spaces (apostrophes kept only inside words), and
    whitespace collapsed.

    Parameters
    ----------
    text : str
        Cased, punctuated text, e.g. Whisper output or a reference transcript.

    Returns
    -------
    str
        Lower-case words separated by single spaces (possibly empty).

    Example
    -------
    >>> normalize_text(" And Mr. John Dashwood had then leisure.")
    'and mister john dashwood had then leisure'
    >>> normalize_text("He was not an ill-disposed young man.")
    'he was not an ill disposed young man'
    >>> normalize_text("Press 1 or 22.")
    'press one or twenty two'
    >>> normalize_text("It costs 1,250 dollars")
    'it costs one thousand two hundred fifty dollars'
    >>> normalize_text("The 2nd 'best' rate: 3.5% & don't wait!")
    "the second best rate three point five percent and don't wait"
    """
    text = _APOSTROPHES.sub("'", unicodedata.normalize("NFKC", text)).lower()
    for symbol, words in SYMBOLS.items():
        text = text.replace(symbol, words)
    text = _ABBREVIATION.sub(lambda match: ABBREVIATIONS[match.group(1)], text)
    text = _THOUSANDS.sub(lambda match: match.group().replace(",", ""), text)
    text = _DECIMAL.sub(_decimal, text)
    text = _ORDINAL.sub(_ordinal, text)
    text = _INTEGER.sub(_integer, text)
    text = _NOT_WORD.sub(" ", text)
    text = _LOOSE_APOSTROPHE.sub(" ", text)
    return " ".join(text.split())


def normalized_words(text: str) -> list[str]:
    """Split a text into the words of :func:`normalize_text`.

    Parameters
    ----------
    text : str
        Cased, punctuated text.

    Returns
    -------
    list of str
        The normalised words, e.g. for ``speechbrain``'s WER statistics.

    Example
    -------
    >>> normalized_words("SHE LIVED ON THE OTHER SIDE, at No. 10!")
    ['she', 'lived', 'on', 'the', 'other', 'side', 'at', 'no', 'ten']
    """
    return normalize_text(text).split()


def inventory_text(text: str, inventory: str) -> tuple[str, int]:
    """What a character model with ``inventory`` can write of ``text``, and what it cannot.

    The words of :func:`normalize_text`, accents removed (``café`` is ``cafe``),
    in the inventory's case; characters the inventory still lacks are dropped
    and counted, so that a recipe reports them instead of hiding them. The
    Conformer recipe applies it to training targets, references and hypotheses
    alike.

    Example
    -------
    >>> inventory_text("Café on the 2nd floor!", " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ('CAFE ON THE SECOND FLOOR', 0)
    >>> inventory_text("naïve 日本", " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    ('NAIVE', 2)
    """
    text = unicodedata.normalize("NFKD", normalize_text(text))
    text = "".join(c for c in text if not unicodedata.combining(c))
    letters = [c for c in inventory if c.isalpha()]
    if letters and all(c.isupper() for c in letters):
        text = text.upper()
    kept = "".join(c for c in text if c in inventory)
    dropped = sum(1 for c in text if c not in inventory and not c.isspace())
    return " ".join(kept.split()), dropped

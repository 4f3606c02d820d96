"""Text normalisation for WER on cased, punctuated ASR output."""

from __future__ import annotations

import pytest

from recipes.text_normalization import (
    normalize_text,
    normalized_words,
    number_to_words,
    ordinal_to_words,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (" And Mr. John Dashwood had then leisure.", "and mister john dashwood had then leisure"),
        ("He was not an ill-disposed young man.", "he was not an ill disposed young man"),
        ("Press 1 or 22.", "press one or twenty two"),
        ("SHE LIVED ON THE OTHER SIDE", "she lived on the other side"),
        ("It costs 1,250 dollars", "it costs one thousand two hundred fifty dollars"),
    ],
)
def test_brief_examples(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Mrs. Dashwood met Dr Willoughby", "missus dashwood met doctor willoughby"),
        ("MR. PALMER", "mister palmer"),
        ("Mrs and mr, and drs", "missus and mister and drs"),  # whole words only
        ("Rock & roll: 100% sure", "rock and roll one hundred percent sure"),
        ("and/or black\u2014white \u2013 grey", "and or black white grey"),
        ("Call-Forward on No Answer.", "call forward on no answer"),
    ],
)
def test_abbreviations_symbols_and_separators(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", "zero"),
        ("13 40 99", "thirteen forty ninety nine"),
        ("101", "one hundred one"),
        ("1000000", "one million"),
        ("1,000,001", "one million one"),
        (
            "999,999,999",
            "nine hundred ninety nine million nine hundred ninety nine thousand nine hundred "
            + "ninety nine",
        ),
        ("1234567890", "one two three four five six seven eight nine zero"),
        ("Dial 007", "dial zero zero seven"),
        ("3.5", "three point five"),
        ("it is 0.25.", "it is zero point two five"),
        ("1.2.3", "one two three"),
        (
            "2nd 1st 3rd 4th 11th 12th 20th 21st 100th",
            "second first third fourth eleventh twelfth twentieth twenty first one hundredth",
        ),
        ("10:30", "ten thirty"),
        ("mp3", "mp three"),
        ("1,2,3", "one two three"),
    ],
)
def test_numbers(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("don't", "don't"),
        ("'quoted'", "quoted"),
        ("\u2018quoted\u2019 and it\u2019s", "quoted and it's"),
        ('He said "hi" -- then left!', "he said hi then left"),
        ("the Dashwoods' house", "the dashwoods house"),
        ("o'clock", "o'clock"),
        ("A.M.", "a m"),
        ("  lots\tof \n space  ", "lots of space"),
        ("...", ""),
        ("", ""),
    ],
)
def test_punctuation_and_whitespace(text, expected):
    assert normalize_text(text) == expected


def test_number_words():
    assert [number_to_words(n) for n in (7, 19, 20, 45, 300, 1_001, 20_000)] == [
        "seven", "nineteen", "twenty", "forty five", "three hundred", "one thousand one",
        "twenty thousand",
    ]  # fmt: skip
    assert [ordinal_to_words(n) for n in (5, 8, 9, 30, 101, 1_000_000)] == [
        "fifth", "eighth", "ninth", "thirtieth", "one hundred first", "one millionth",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="Only integers from 0"):
        number_to_words(1_000_000_000)
    with pytest.raises(ValueError):
        number_to_words(-1)


def test_normalisation_is_idempotent_and_words_split():
    text = "On 2nd May, Mrs. Smith paid $1,250.50 (12.5%) -- 'twenty-one' times & more!"
    once = normalize_text(text)
    assert once == (
        "on second may missus smith paid one thousand two hundred fifty point five zero "
        "twelve point five percent twenty one times and more"
    )
    assert normalize_text(once) == once
    assert normalized_words(text) == once.split()
    assert normalized_words("Hello, World!") == ["hello", "world"]

"""Tests of the generated domain-shift corpus (``recipes.corpus``), on the ``tiny`` preset.

They need the Debian package ``wordnet-base`` (``apt-get install wordnet-base``);
without it the corpus fixture fails with an error saying so.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from recipes.corpus import augment, prepare, texts
from recipes.corpus.prepare import DOMAINS, SPLITS, TARGET_DOMAINS, prepare_corpus
from recipes.corpus.tts import ESpeak

SEED = 7
TINY_UTTERANCES = sum(
    n * (1 if group == "source" else len(TARGET_DOMAINS))
    for group, counts in prepare.SIZES["tiny"].items()
    for n in counts.values()
)
RENDER = prepare.render_utterance


def _files(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file under ``folder``."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def _manifest(folder: Path, domain: str, split: str) -> list[dict[str, str]]:
    with open(folder / f"{domain}_{split}.csv", newline="") as file:
        return list(csv.DictReader(file))


def _wav_path(folder: Path, row: dict[str, str]) -> Path:
    return Path(row["wav"].replace("$data_root", str(folder)))


class _CountingRender:
    """Stand-in for ``prepare.render_utterance`` that counts calls and can fail on one."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, engine: ESpeak, utterance: prepare.Utterance) -> np.ndarray:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated crash")
        return RENDER(engine, utterance)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    manifests = prepare_corpus(folder, size="tiny", seed=SEED, num_workers=2)
    assert manifests == {f"{d}_{s}": str(folder / f"{d}_{s}.csv") for d in DOMAINS for s in SPLITS}
    return folder


@pytest.fixture(scope="module")
def corpus_files(corpus: Path) -> dict[str, bytes]:
    return _files(corpus)


def test_same_seed_is_byte_identical_with_one_worker(
    corpus_files: dict[str, bytes], tmp_path: Path
) -> None:
    prepare_corpus(tmp_path, size="tiny", seed=SEED, num_workers=1)
    assert _files(tmp_path) == corpus_files
    assert sum(name.endswith(".wav") for name in corpus_files) == TINY_UTTERANCES


def test_other_seed_replaces_the_audio(
    corpus: Path, corpus_files: dict[str, bytes], tmp_path: Path
) -> None:
    folder = tmp_path / "reseeded"
    shutil.copytree(corpus, folder)
    prepare_corpus(folder, size="tiny", seed=SEED + 1, domains=["source"], num_workers=2)
    reseeded = _files(folder)
    source_wavs = [name for name in corpus_files if name.startswith("source/")]
    assert source_wavs and all(reseeded[name] != corpus_files[name] for name in source_wavs)
    assert all(
        reseeded[name] == corpus_files[name] for name in corpus_files if name.startswith("noisy/")
    )


def test_sentence_pools_are_disjoint(corpus: Path) -> None:
    pools: dict[tuple[str, str], list[str]] = {}
    for domain in DOMAINS:
        group = "source" if domain == "source" else "target"
        for split in SPLITS:
            sentences = [row["wrd"] for row in _manifest(corpus, domain, split)]
            assert len(set(sentences)) == len(sentences), f"repeated sentence in {domain}_{split}"
            pools.setdefault((group, split), sentences)
            assert sentences == pools[group, split], "target domains must share their pools"
    assert len(pools) == 6
    keys = list(pools)
    for i, first in enumerate(keys):
        for second in keys[i + 1 :]:
            assert not set(pools[first]) & set(pools[second]), f"{first} and {second} overlap"


def test_manifests_and_audio_format(corpus: Path) -> None:
    transcript = re.compile(r"[A-Z']+( [A-Z']+)*")
    for domain in DOMAINS:
        for split in SPLITS:
            with open(corpus / f"{domain}_{split}.csv", newline="") as file:
                assert next(csv.reader(file)) == ["ID", "duration", "wav", "spk_id", "wrd"]
            for row in _manifest(corpus, domain, split):
                assert row["wav"] == f"$data_root/{domain}/{split}/{row['ID']}.wav"
                info = sf.info(_wav_path(corpus, row))
                assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
                assert abs(float(row["duration"]) - info.frames / 16000) <= 0.001
                assert transcript.fullmatch(row["wrd"]), row["wrd"]
                assert re.fullmatch(r"en[a-z0-9-]*\+\w+", row["spk_id"]), row["spk_id"]


def test_manifests_load_in_speechbrain(corpus: Path) -> None:
    from speechbrain.dataio.dataset import DynamicItemDataset

    dataset = DynamicItemDataset.from_csv(
        corpus / "voices_valid.csv", replacements={"data_root": str(corpus)}
    )
    dataset.set_output_keys(["id", "wav", "duration", "wrd"])
    items = list(dataset)
    assert len(items) == prepare.SIZES["tiny"]["target"]["valid"]
    assert all(Path(item["wav"]).is_file() and item["duration"] > 0 for item in items)


def test_held_out_voices_are_disjoint_from_source(corpus: Path) -> None:
    def speakers(domain: str) -> set[str]:
        return {row["spk_id"] for split in SPLITS for row in _manifest(corpus, domain, split)}

    assert not speakers("voices") & speakers("source")
    assert speakers("noisy") | speakers("telephone") | speakers("source") <= {
        f"{a}+{v}" for a in prepare.SOURCE_ACCENTS for v in prepare.SOURCE_VARIANTS
    }
    assert not set(prepare.HELD_OUT_ACCENTS) & set(prepare.SOURCE_ACCENTS)
    assert not set(prepare.HELD_OUT_VARIANTS) & set(prepare.SOURCE_VARIANTS)


def test_configured_voices_exist_in_espeak_data() -> None:
    engine = ESpeak()
    assert set(prepare.SOURCE_ACCENTS + prepare.HELD_OUT_ACCENTS) <= set(engine.accents)
    assert set(prepare.SOURCE_VARIANTS + prepare.HELD_OUT_VARIANTS) <= engine.variants
    with pytest.raises(ValueError, match="variant"):
        engine.synthesize("hello there", "en-us+no-such-variant")


def test_noisy_audio_is_degraded_clean_speech(corpus: Path) -> None:
    plan = prepare.plan_corpus(prepare.resolve_size("tiny"), texts.load_sentences(), SEED)
    engine = ESpeak()
    source = plan["source", "train"][0]
    stored, _ = sf.read(corpus / "source" / "train" / f"{source.uid}.wav", dtype="int16")
    np.testing.assert_array_equal(stored, prepare.render_utterance(engine, source))
    for utterance in plan["noisy", "train"][:4]:
        noisy, _ = sf.read(corpus / "noisy" / "train" / f"{utterance.uid}.wav", dtype="float64")
        clean_settings = dataclasses.replace(
            utterance, domain="source", snr_db=None, noise_color=None, rt60=None
        )
        clean = prepare.render_utterance(engine, clean_settings) / 32767.0
        assert len(clean) == len(noisy)
        snr_db = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
        assert snr_db < prepare.NOISY_SNR_DB[1] + 1.0


def test_telephone_audio_is_band_limited(corpus: Path) -> None:
    def energy_above(path: Path, hz: float = 3500.0) -> float:
        samples, rate = sf.read(path, dtype="float64")
        power = np.abs(np.fft.rfft(samples)) ** 2
        return float(power[np.fft.rfftfreq(len(samples), 1 / rate) > hz].sum() / power.sum())

    telephone = [energy_above(p) for p in sorted((corpus / "telephone").rglob("*.wav"))]
    source = [energy_above(p) for p in sorted((corpus / "source").rglob("*.wav"))]
    assert max(telephone) < 0.002
    assert np.median(source) > 10 * max(telephone)


def test_interrupted_run_resumes_to_identical_output(
    corpus_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source_train = prepare.SIZES["tiny"]["source"]["train"]
    crash = _CountingRender(fail_on=source_train + 6)  # the 6th source/valid utterance
    monkeypatch.setattr(prepare, "render_utterance", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        prepare_corpus(tmp_path, size="tiny", seed=SEED, num_workers=1)
    assert (tmp_path / "source_train.csv").is_file()
    assert not (tmp_path / "source_valid.csv").exists()
    assert len(list((tmp_path / "source" / "valid").glob("*.wav"))) == 5
    (tmp_path / "source" / "valid" / "source-valid-00005.wav.tmp").write_bytes(b"RIFF partial")

    resume = _CountingRender()
    monkeypatch.setattr(prepare, "render_utterance", resume)
    prepare_corpus(tmp_path, size="tiny", seed=SEED, num_workers=1)
    assert resume.calls == TINY_UTTERANCES - (crash.calls - 1)
    assert _files(tmp_path) == corpus_files

    finished = _CountingRender(fail_on=1)
    monkeypatch.setattr(prepare, "render_utterance", finished)
    prepare_corpus(tmp_path, size="tiny", seed=SEED, num_workers=1)
    assert finished.calls == 0


def test_deleted_files_are_regenerated(
    corpus: Path, corpus_files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "damaged"
    shutil.copytree(corpus, folder)
    (folder / "noisy_test.csv").unlink()
    for path in sorted((folder / "noisy" / "test").glob("*.wav"))[:3]:
        path.unlink()
    (folder / "noisy" / "test" / "noisy-test-00000.wav.tmp").write_bytes(b"")

    counting = _CountingRender()
    monkeypatch.setattr(prepare, "render_utterance", counting)
    prepare_corpus(folder, size="tiny", seed=SEED, num_workers=1)
    assert counting.calls == 3
    assert _files(folder) == corpus_files


def test_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        texts.wordnet_examples(tmp_path)
    too_many = {
        "source": {"train": 10**6, "valid": 1, "test": 1},
        "target": prepare.SIZES["tiny"]["target"],
    }
    with pytest.raises(ValueError, match="distinct sentences"):
        prepare_corpus(tmp_path, size=too_many)
    with pytest.raises(ValueError, match="size preset"):
        prepare_corpus(tmp_path, size="huge")


def test_add_noise_reaches_the_requested_snr() -> None:
    rng = np.random.default_rng(0)
    clean = np.sin(np.arange(16000) * 0.05)
    for color in ("white", "pink"):
        noisy = augment.add_noise(clean, 10.0, np.random.default_rng(1), color)
        snr_db = 10 * np.log10(np.sum(clean**2) / np.sum((noisy - clean) ** 2))
        assert snr_db == pytest.approx(10.0, abs=0.01)
    np.testing.assert_array_equal(
        augment.reverberate(clean, 0.5, np.random.default_rng(2)),
        augment.reverberate(clean, 0.5, np.random.default_rng(2)),
    )
    assert not np.array_equal(
        augment.add_noise(clean, 10.0, rng), augment.add_noise(clean, 10.0, rng)
    )

"""In-process espeak-ng speech synthesis through ctypes.

The shared library and its voice data come from the ``espeakng-loader`` wheel,
so no system package or subprocess is needed.

libespeak-ng keeps synthesis state in static variables (the phase of the pitch
flutter, the automatic gain, the ``rand()`` stream of breath noise) that carry
over from one utterance to the next and survive ``espeak_Terminate``. To make
every utterance depend only on its own text and settings, :class:`ESpeak`
never synthesises in its own process: each call forks a child that starts from
the same pristine engine state, synthesises, and sends the samples back through
a pipe (POSIX only).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys
import traceback
from math import gcd
from pathlib import Path

import espeakng_loader
import numpy as np
from scipy.signal import resample_poly

SAMPLE_RATE = 16000
"""Sample rate (Hz) of the audio returned by :meth:`ESpeak.synthesize`."""

MIN_RATE_WPM, MAX_RATE_WPM = 80, 450
MAX_PITCH = 99

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_DEFAULT_VOLUME, _DEFAULT_RANGE = 100, 50

_SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


class _Voice(ctypes.Structure):
    """``espeak_VOICE`` from ``speak_lib.h``."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_void_p),  # (priority byte, language, NUL)*, NUL
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


def _load_library() -> ctypes.CDLL:
    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Info.restype = ctypes.c_char_p
    lib.espeak_Info.argtypes = [ctypes.c_void_p]
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
    lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [
        ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]  # fmt: skip
    return lib


def espeak_version() -> str:
    """Version string of the bundled libespeak-ng (for example ``"1.52.0"``)."""
    return _load_library().espeak_Info(None).decode()


def to_pcm16(audio: np.ndarray) -> np.ndarray:
    """Convert float audio in [-1, 1] to 16-bit PCM, rounding and clipping.

    Parameters
    ----------
    audio : numpy.ndarray
        Float samples.

    Returns
    -------
    numpy.ndarray
        ``int16`` samples.
    """
    return np.clip(np.round(np.asarray(audio) * 32767.0), -32768, 32767).astype(np.int16)


class ESpeak:
    """espeak-ng synthesiser producing 16 kHz mono float audio.

    Voices are named ``"accent+variant"`` or ``"accent"``: the accent is an
    espeak-ng language code such as ``en-us``, ``en-gb`` or ``en-gb-scotland``
    (see :attr:`accents`), the variant one of the files in the data's
    ``voices/!v`` folder such as ``m3``, ``f2`` or ``klatt4`` (see
    :attr:`variants`). Unknown names raise ``ValueError`` instead of silently
    falling back to a default voice as libespeak-ng does.

    The library is process-global: create one instance per process.
    """

    def __init__(self) -> None:
        if not hasattr(os, "fork"):
            raise RuntimeError("ESpeak needs os.fork (Linux or macOS)")
        self._lib = _load_library()
        data_path = Path(espeakng_loader.get_data_path())
        self.native_rate: int = self._lib.espeak_Initialize(
            _AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data_path).encode(), _INITIALIZE_DONT_EXIT
        )
        if self.native_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed for the voice data in {data_path}")
        self._chunks: list[np.ndarray] = []
        self._callback = _SynthCallback(self._collect)
        self.accents: dict[str, str] = self._list_accents()
        """Language code -> voice file identifier, e.g. ``"en-gb" -> "gmw/en"``."""
        self.variants: frozenset[str] = frozenset(
            path.name for path in (data_path / "voices" / "!v").iterdir()
        )
        """Names of the voice variants in the data, e.g. ``"m3"``, ``"klatt4"``."""

    @property
    def version(self) -> str:
        """Version string of libespeak-ng."""
        return self._lib.espeak_Info(None).decode()

    def _list_accents(self) -> dict[str, str]:
        """Map each language code to the voice that serves it with the best priority."""
        best: dict[str, tuple[int, str]] = {}
        voices = self._lib.espeak_ListVoices(None)
        for index in itertools.count():
            if not voices[index]:
                break
            voice = voices[index].contents
            identifier = voice.identifier.decode()
            address = voice.languages
            while priority := ctypes.c_ubyte.from_address(address).value:
                language = ctypes.string_at(address + 1).decode()
                address += len(language) + 2
                if language not in best or (priority, identifier) < best[language]:
                    best[language] = (priority, identifier)
        return {language: identifier for language, (_, identifier) in best.items()}

    def _resolve(self, voice: str) -> bytes:
        """Translate ``"accent+variant"`` into the name libespeak-ng resolves exactly."""
        accent, _, variant = voice.partition("+")
        if accent not in self.accents:
            english = sorted(a for a in self.accents if a.startswith("en"))
            raise ValueError(f"unknown espeak-ng accent {accent!r}; English ones: {english}")
        if variant and variant not in self.variants:
            raise ValueError(
                f"unknown espeak-ng voice variant {variant!r}; available: {sorted(self.variants)}"
            )
        return (self.accents[accent] + (f"+{variant}" if variant else "")).encode()

    def _collect(self, samples: ctypes.Array, count: int, events: int) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(samples, shape=(count,)).copy())
        return 0

    def _synthesize_native(
        self, text: bytes, name: bytes, rate: int, pitch: int, seed: int
    ) -> bytes:
        """Synthesise in the current process; returns native-rate int16 bytes."""
        lib = self._lib
        ctypes.CDLL(None).srand(ctypes.c_uint(seed))  # breath noise uses libc rand()
        lib.espeak_ng_SetRandSeed(seed)
        lib.espeak_SetSynthCallback(self._callback)
        if lib.espeak_SetVoiceByName(name) != 0:
            raise RuntimeError(f"espeak_SetVoiceByName({name!r}) failed")
        for parameter, value in (
            (_RATE, rate), (_PITCH, pitch), (_VOLUME, _DEFAULT_VOLUME), (_RANGE, _DEFAULT_RANGE)
        ):  # fmt: skip
            lib.espeak_SetParameter(parameter, value, 0)
        self._chunks = []
        status = lib.espeak_Synth(text, len(text) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        if status != 0 or lib.espeak_Synchronize() != 0:
            raise RuntimeError(f"espeak_Synth failed with status {status}")
        return b"".join(chunk.tobytes() for chunk in self._chunks)

    def _synthesize_in_child(
        self, text: bytes, name: bytes, rate: int, pitch: int, seed: int
    ) -> bytes:
        """Run :meth:`_synthesize_native` in a forked child and return its output."""
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: never returns into the caller's stack
            exit_code = 1
            try:
                os.close(read_fd)
                with os.fdopen(write_fd, "wb") as pipe:
                    pipe.write(self._synthesize_native(text, name, rate, pitch, seed))
                exit_code = 0
            except BaseException:  # noqa: BLE001 - the child must exit, whatever happened
                traceback.print_exc()
                sys.stderr.flush()
            finally:
                os._exit(exit_code)
        os.close(write_fd)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(
                f"espeak-ng synthesis of {text.decode()!r} with voice {name.decode()!r} failed "
                "in its child process (see the traceback above)"
            )
        return data

    def synthesize(
        self, text: str, voice: str = "en-us", rate: int = 160, pitch: int = 50, seed: int = 0
    ) -> np.ndarray:
        """Synthesise ``text`` as 16 kHz mono float audio.

        The result depends only on the arguments, not on earlier calls.

        Parameters
        ----------
        text : str
            Text to speak.
        voice : str
            ``"accent+variant"`` or ``"accent"``, e.g. ``"en-gb+m3"``.
        rate : int
            Speaking rate in words per minute (80 to 450).
        pitch : int
            Base pitch, 0 to 99 (50 is the voice's default).
        seed : int
            Seed of the engine's random generators (breath noise of voices such
            as ``whisper``).

        Returns
        -------
        numpy.ndarray
            ``float32`` samples in [-1, 1] at :data:`SAMPLE_RATE`.
        """
        if not MIN_RATE_WPM <= rate <= MAX_RATE_WPM:
            raise ValueError(f"rate must be {MIN_RATE_WPM}-{MAX_RATE_WPM} wpm, got {rate}")
        if not 0 <= pitch <= MAX_PITCH:
            raise ValueError(f"pitch must be 0-{MAX_PITCH}, got {pitch}")
        data = self._synthesize_in_child(
            text.encode(), self._resolve(voice), rate, pitch, seed & 0x7FFFFFFF
        )
        if not data:
            raise RuntimeError(f"espeak-ng produced no audio for {text!r} with voice {voice!r}")
        native = np.frombuffer(data, dtype=np.int16).astype(np.float64) / 32768.0
        factor = gcd(SAMPLE_RATE, self.native_rate)
        audio = resample_poly(native, SAMPLE_RATE // factor, self.native_rate // factor)
        return audio.astype(np.float32)

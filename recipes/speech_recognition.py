"""What the two speech-recognition recipes (Whisper and the Conformer CTC) score alike: word
and character error rates of the normalised text, with per-utterance alignments.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import io

from recipes.adaptation import AdaptationBrain


class SpeechRecognitionBrain(AdaptationBrain):
    """An :class:`~recipes.adaptation.AdaptationBrain` scored by WER (selecting the best
    checkpoint) and CER. ``compute_objectives`` calls :meth:`append_error_rates` outside
    training; the details of a test set are SpeechBrain's alignments, utterance by utterance.

    Expects ``error_rate_computer`` in ``hparams`` (SpeechBrain's ``ErrorRateStats``).
    """

    metric_names = ("WER", "CER")
    selection_metric = "WER"
    lower_is_better = True

    def start_metrics(self, stage) -> None:
        """Fresh word and character error-rate trackers."""
        self.wer_metric = self.hparams.error_rate_computer()
        self.cer_metric = self.hparams.error_rate_computer()

    def summarize_metrics(self, stage) -> dict[str, float]:
        return {
            "WER": self.wer_metric.summarize("error_rate"),
            "CER": self.cer_metric.summarize("error_rate"),
        }

    def details_text(self) -> str:
        """SpeechBrain's WER report: the totals, then each utterance's alignment."""
        buffer = io.StringIO()
        self.wer_metric.write_stats(buffer)
        return buffer.getvalue()

    def append_error_rates(self, ids: list, hyps: list[list[str]], refs: list[list[str]]) -> None:
        """Record word and character errors of a batch of word-split hypotheses."""
        self.wer_metric.append(ids, hyps, refs)
        self.cer_metric.append(
            ids, [list(" ".join(h)) for h in hyps], [list(" ".join(r)) for r in refs]
        )

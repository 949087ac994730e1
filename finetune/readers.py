"""Readers for downstream annotation files, each in its format as distributed (issue 10).

    result = read_annotations("msrvtt-qa", "train_qa.json")   # or READERS.get(name)(...)
    result.items      # typed records (QAItem, MCItem, CaptionItem, LabelItem)
    result.failures   # bad rows, with file and line (text formats) or JSON path (json formats)

| format            | files                               | records                          |
|-------------------|-------------------------------------|----------------------------------|
| msrvtt-qa/msvd-qa | json list (or jsonl) of question, answer, video_id [, id] | QAItem |
| activitynet-qa    | *_q.json + *_a.json on question_id  | QAItem, answer `type` kept       |
| tgif-qa           | tab-separated (despite .csv), header | MCItem (Action/Transition: 0-based answer over a1..a5), QAItem (FrameQA, Count) |
| msrvtt-captions   | {"videos": [...], "sentences": [...]} | CaptionItem (20 per video)     |
| youcook2          | {"database": {id: {"subset", "annotations": [{"segment", "sentence"}]}}} | CaptionItem with [start, end] |
| kinetics          | csv label,youtube_id,time_start,time_end,split | LabelItem with [start, end] |
| ucf101            | classInd.txt (1-based) + trainlist/testlist (CRLF) | LabelItem, 0-based index |
| hmdb51            | <label>_test_split<k>.txt: 1 train, 2 test, 0 unused | LabelItem        |

Bad input never stops a read: a row that is malformed, has an empty question, answer, caption
or label, or repeats an id is left out and recorded as a `Failure` (file, where, why); the
first row of an id wins. A file in the wrong format (not JSON, wrong top-level shape, missing
header columns, no row with the required fields) raises `FormatError` naming the expected
format before any record is made. Split names are normalised to train / val / test
("training", "validation", "validate", "testing" as YouCook2 and Kinetics write them).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.registry import Registry

SPLIT_NAMES = {"training": "train", "validation": "val", "validate": "val", "testing": "test"}


class FormatError(ValueError):
    """The whole file is not in the expected format (raised before any work)."""


@dataclass(frozen=True)
class Origin:
    """Where a record was read: the file, and "line 7" / "[3]" / "database.x.annotations[2]"."""

    file: str
    where: str

    def __str__(self) -> str:
        return f"{self.file} {self.where}"


@dataclass(frozen=True)
class Failure:
    """One bad row: the file, where in it ("line 7", "[3]", "database.x.annotations[2]"), why."""

    file: str
    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.file} {self.where}: {self.reason}"

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "where": self.where, "reason": self.reason}


@dataclass(frozen=True)
class QAItem:
    """Open-ended question about a video (or its [start, end] segment, seconds)."""

    qid: str
    video_id: str
    question: str
    answers: tuple[str, ...]  # one for every video QA dataset here; several -> soft targets
    qtype: str | None = None  # ActivityNet-QA answer type, TGIF FrameQA type (per-type tables)
    start: float | None = None
    end: float | None = None
    origin: Origin | None = None  # the file and line (or JSON path) it was read from

    @property
    def answer(self) -> str:
        return self.answers[0]


@dataclass(frozen=True)
class MCItem:
    """Multiple-choice question: ``options[answer_index]`` is right."""

    qid: str
    video_id: str
    question: str
    options: tuple[str, ...]
    answer_index: int
    qtype: str | None = None
    start: float | None = None
    end: float | None = None
    origin: Origin | None = None


@dataclass(frozen=True)
class CaptionItem:
    """One reference sentence of a video or of its [start, end] segment."""

    cid: str
    video_id: str
    caption: str
    split: str | None = None
    start: float | None = None
    end: float | None = None
    origin: Origin | None = None


@dataclass(frozen=True)
class LabelItem:
    """An action label of a video or of its [start, end] segment; ``label_index`` 0-based."""

    video_id: str
    label: str
    label_index: int | None = None  # only where the format numbers its classes (UCF101)
    split: str | None = None
    start: float | None = None
    end: float | None = None
    origin: Origin | None = None


@dataclass
class ReadResult:
    """Records of one read, the rows left out, and the rows skipped on purpose (HMDB51 0)."""

    format: str
    items: list = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    skipped: int = 0

    def fail(self, file: str, where: str, reason: str) -> None:
        self.failures.append(Failure(file, where, reason))


def normalise_split(name: str | None) -> str | None:
    """ "training" -> "train", "validation"/"validate" -> "val", "testing" -> "test"."""
    return None if name is None else SPLIT_NAMES.get(str(name).strip().lower(), str(name))


def label_to_words(label: str) -> str:
    """Class name -> words for zero-shot prompts.

    UCF101 CamelCase and HMDB51 underscores become lower-case words ("ApplyEyeMakeup" -> "apply
    eye makeup", "YoYo" -> "yo yo", "brush_hair" -> "brush hair"); a name that already has
    spaces (Kinetics: "passing American football (in game)") is kept as it is.
    """
    if " " in label.strip():
        return label.strip()
    words = label.replace("_", " ")
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", " ", words)
    return " ".join(words.lower().split())


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _load_json(path: Path, fmt: str, expected: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FormatError(f"{path}: not {fmt} format (expected {expected}): {e}") from None


def _json_rows(path: Path, fmt: str, expected: str, required: tuple[str, ...]) -> list:
    """(where, row) of a JSON list, or of a JSON-lines file (one object per line).

    A .jsonl line that does not parse becomes a row of None (reported by the caller as
    malformed); FormatError when the file is neither, or when no row has every required key.
    """
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix.lower() == ".jsonl" or text.lstrip().startswith("{"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                try:
                    rows.append((f"line {n}", json.loads(line)))
                except json.JSONDecodeError:
                    rows.append((f"line {n}", None))
    else:
        data = _load_json(path, fmt, expected)
        if not isinstance(data, list):
            raise FormatError(f"{path}: not {fmt} format: expected {expected}, found a JSON object")
        rows = [(f"[{i}]", row) for i, row in enumerate(data)]
    if rows and not any(isinstance(r, dict) and all(k in r for k in required) for _, r in rows):
        raise FormatError(f"{path}: not {fmt} format: no row has {', '.join(required)}")
    return rows


def _missing(row: Any, keys: Iterable[str]) -> str | None:
    """Why ``row`` is malformed (not an object, a key missing), or None."""
    if not isinstance(row, dict):
        return "malformed row: not a JSON object"
    lost = [k for k in keys if k not in row]
    return f"malformed row: missing {', '.join(lost)}" if lost else None


def _segment(value: Any) -> tuple[float, float]:
    """[start, end] in seconds, end > start >= 0; ValueError otherwise."""
    start, end = (float(x) for x in value)
    if not 0 <= start < end:
        raise ValueError(f"bad segment [{start}, {end}]")
    return start, end


class _Ids:
    """First-seen ids: a later row with the same id is a duplicate."""

    def __init__(self) -> None:
        self.first: dict[Any, str] = {}

    def duplicate(self, key: Any, where: str) -> str | None:
        if key in self.first:
            return f"duplicate id {key!r} (first at {self.first[key]})"
        self.first[key] = where
        return None


READERS: Registry[Callable[..., ReadResult]] = Registry("annotation format")


@READERS.register("msrvtt-qa")
def read_msrvtt_qa(path: str | Path, video_id_format: str = "{}") -> ReadResult:
    """MSRVTT-QA / MSVD-QA: a JSON list (or JSON lines) of {question, answer, video_id[, id]}.

    ``video_id_format`` turns the file's video_id into the prep id, e.g. "video{}" for
    MSRVTT-QA's integer ids (video 7010 is video7010.mp4). The question id is "id" (or
    "question_id"), else the row's position.
    """
    path = Path(path)
    expected = "a JSON list of {question, answer, video_id}"
    rows = _json_rows(path, "MSRVTT-QA", expected, ("question", "answer", "video_id"))
    result, ids = ReadResult("msrvtt-qa"), _Ids()
    for n, (where, row) in enumerate(rows):
        why = _missing(row, ("question", "answer", "video_id"))
        qid = _text(row.get("id", row.get("question_id", n))) if why is None else ""
        question, answer = (_text(row.get(k)) if not why else "" for k in ("question", "answer"))
        why = why or ("empty question" if not question else None)
        why = why or ("empty answer" if not answer else None) or ids.duplicate(qid, where)
        if why:
            result.fail(str(path), where, why)
            continue
        video = video_id_format.format(_text(row["video_id"]))
        result.items.append(
            QAItem(qid, video, question, (answer,), origin=Origin(str(path), where))
        )
    return result


READERS.register("msvd-qa", read_msrvtt_qa)


@READERS.register("activitynet-qa")
def read_activitynet_qa(
    questions: str | Path, answers: str | Path, video_id_format: str = "{}"
) -> ReadResult:
    """ActivityNet-QA: ``*_q.json`` [{video_name, question, question_id}] joined with
    ``*_a.json`` [{answer, type, question_id}] on question_id; ``type`` becomes ``qtype``.

    ``video_id_format``: e.g. "v_{}" where the videos are stored as ActivityNet's v_<id>.mp4.
    A question without an answer, or an answer without a question, is a failure.
    """
    q_path, a_path = Path(questions), Path(answers)
    q_keys, a_keys = ("video_name", "question", "question_id"), ("answer", "question_id")
    q_rows = _json_rows(q_path, "ActivityNet-QA questions", f"a JSON list of {q_keys}", q_keys)
    a_rows = _json_rows(a_path, "ActivityNet-QA answers", f"a JSON list of {a_keys}", a_keys)
    result, a_ids = ReadResult("activitynet-qa"), _Ids()
    found: dict[str, tuple[str, Any, str]] = {}  # question_id -> (answer, type, where)
    for where, row in a_rows:
        why = _missing(row, ("answer", "question_id"))
        why = why or ("empty answer" if not _text(row["answer"]) else None)
        why = why or a_ids.duplicate(_text(row["question_id"]), where)
        if why:
            result.fail(str(a_path), where, why)
            continue
        found[_text(row["question_id"])] = (_text(row["answer"]), row.get("type"), where)
    q_ids, used = _Ids(), set()
    for where, row in q_rows:
        why = _missing(row, ("video_name", "question", "question_id"))
        qid = _text(row["question_id"]) if why is None else ""
        why = why or ("empty question" if not _text(row["question"]) else None)
        why = why or q_ids.duplicate(qid, where)
        why = why or (
            f"question {qid!r} has no answer in {a_path.name}" if qid not in found else None
        )
        if why:
            result.fail(str(q_path), where, why)
            continue
        used.add(qid)
        answer, qtype, _ = found[qid]
        video = video_id_format.format(_text(row["video_name"]))
        qtype = None if qtype is None else str(qtype)
        src = Origin(str(q_path), where)
        result.items.append(
            QAItem(qid, video, _text(row["question"]), (answer,), qtype, origin=src)
        )
    for qid, (_, _, where) in found.items():
        if qid not in used and qid not in q_ids.first:
            result.fail(str(a_path), where, f"answer to {qid!r}, a question not in {q_path.name}")
    return result


def _text_rows(path: Path, delimiter: str, fmt: str, required: tuple[str, ...]) -> tuple:
    """(header, [(line number, fields)]) of a delimited text file with a header row."""
    text = path.read_text(encoding="utf-8", errors="replace")
    lines = text.splitlines()  # also strips CRLF
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL  # TGIF has bare quotes
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter, quoting=quoting)
    rows = list(reader)
    header = [h.strip() for h in rows[0]] if rows else []
    if not all(col in header for col in required):
        sep = "tab" if delimiter == "\t" else "comma"
        raise FormatError(
            f"{path}: not {fmt} format: expected a {sep}-separated header with "
            f"{', '.join(required)}; found {header[:8]}"
        )
    return header, [(n, r) for n, r in enumerate(rows[1:], 2) if any(x.strip() for x in r)]


@READERS.register("tgif-qa")
def read_tgif_qa(path: str | Path) -> ReadResult:
    """TGIF-QA ``{Train,Test}_{action,transition,frameqa,count}_question.csv``: TAB-separated
    despite the name, with a header row.

    Action / Transition (columns a1..a5): MCItem, ``answer`` a 0-based index over a1..a5.
    FrameQA / Count: QAItem (FrameQA's ``type`` 0-3, object/number/color/location, as qtype).
    The video is ``gif_name``. The question id is the ``vid_id`` column: in the released files
    it holds the unique question key ("ACTION4"), while ``key`` numbers the GIF.
    """
    path = Path(path)
    header, rows = _text_rows(path, "\t", "TGIF-QA", ("gif_name", "question", "answer"))
    mc = all(f"a{i}" in header for i in range(1, 6))
    result, ids = ReadResult("tgif-qa"), _Ids()
    col = {name: i for i, name in enumerate(header)}
    for n, fields in rows:
        where = f"line {n}"
        if len(fields) != len(header):
            result.fail(
                str(path), where, f"malformed row: {len(fields)} fields, header has {len(header)}"
            )
            continue
        get = {name: fields[i].strip() for name, i in col.items()}
        qid = get.get("vid_id") or f"{path.stem}:{n}"
        why = "empty question" if not get["question"] else None
        why = why or ("empty answer" if not get["answer"] else None) or ids.duplicate(qid, where)
        if not why and mc:
            options = tuple(get[f"a{i}"] for i in range(1, 6))
            ok = get["answer"].isdigit() and int(get["answer"]) < 5
            why = None if ok else f"answer {get['answer']!r} is not an option index 0-4"
            why = why or ("empty option" if not all(options) else None)
        if why:
            result.fail(str(path), where, why)
            continue
        src = Origin(str(path), where)
        if mc:
            item = MCItem(
                qid, get["gif_name"], get["question"], options, int(get["answer"]), origin=src
            )
        else:
            item = QAItem(
                qid, get["gif_name"], get["question"], (get["answer"],), get.get("type"), origin=src
            )
        result.items.append(item)
    return result


@READERS.register("msrvtt-captions")
def read_msrvtt_captions(path: str | Path) -> ReadResult:
    """MSR-VTT ``train_val_videodatainfo.json`` / ``test_videodatainfo.json``:
    {"videos": [{video_id, split, ...}], "sentences": [{caption, video_id, sen_id}]}, 20
    sentences per video. The clips are distributed already cut, so no segment is set (the
    videos' "start time"/"end time" refer to the YouTube originals)."""
    path = Path(path)
    expected = '{"videos": [...], "sentences": [...]}'
    data = _load_json(path, "MSR-VTT captions", expected)
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("videos", "sentences")
    ):
        raise FormatError(f"{path}: not MSR-VTT captions format: expected {expected}")
    result, ids = ReadResult("msrvtt-captions"), _Ids()
    splits = {}
    for i, video in enumerate(data["videos"]):
        if isinstance(video, dict) and "video_id" in video:
            splits[_text(video["video_id"])] = normalise_split(video.get("split"))
        else:
            result.fail(str(path), f"videos[{i}]", "malformed row: no video_id")
    for i, row in enumerate(data["sentences"]):
        where = f"sentences[{i}]"
        why = _missing(row, ("caption", "video_id"))
        sid = _text(row.get("sen_id", i)) if why is None else ""
        video = _text(row["video_id"]) if why is None else ""
        why = (
            why
            or ("empty caption" if not _text(row["caption"]) else None)
            or ids.duplicate(sid, where)
        )
        why = why or (f"video {video!r} is not in 'videos'" if video not in splits else None)
        if why:
            result.fail(str(path), where, why)
            continue
        result.items.append(
            CaptionItem(
                sid, video, _text(row["caption"]), splits[video], origin=Origin(str(path), where)
            )
        )
    return result


@READERS.register("youcook2")
def read_youcook2(path: str | Path) -> ReadResult:
    """YouCook2 ``youcookii_annotations_*.json``: {"database": {video: {"subset",
    "annotations": [{"segment": [start, end], "id", "sentence"}]}}} -> one CaptionItem per
    annotation, with its segment; the caption id is "<video>#<id>"."""
    path = Path(path)
    expected = '{"database": {video_id: {"subset", "annotations": [{"segment", "sentence"}]}}}'
    data = _load_json(path, "YouCook2", expected)
    if not isinstance(data, dict) or not isinstance(data.get("database"), dict):
        raise FormatError(f"{path}: not YouCook2 format: expected {expected}")
    result, ids = ReadResult("youcook2"), _Ids()
    for video, entry in data["database"].items():
        anns = entry.get("annotations") if isinstance(entry, dict) else None
        if not isinstance(anns, list):
            result.fail(str(path), f"database.{video}", "malformed row: no annotations list")
            continue
        split = normalise_split(entry.get("subset"))
        for i, ann in enumerate(anns):
            where = f"database.{video}.annotations[{i}]"
            why = _missing(ann, ("segment", "sentence"))
            cid = f"{video}#{_text(ann.get('id', i))}" if why is None else ""
            why = (
                why
                or ("empty caption" if not _text(ann["sentence"]) else None)
                or ids.duplicate(cid, where)
            )
            if not why:
                try:
                    start, end = _segment(ann["segment"])
                except (TypeError, ValueError) as e:
                    why = f"malformed segment {ann['segment']!r}: {e}"
            if why:
                result.fail(str(path), where, why)
                continue
            result.items.append(
                CaptionItem(
                    cid, video, _text(ann["sentence"]), split, start, end, Origin(str(path), where)
                )
            )
    return result


@READERS.register("kinetics")
def read_kinetics(path: str | Path, trimmed: bool = False) -> ReadResult:
    """Kinetics csv ``label,youtube_id,time_start,time_end,split`` (extra columns ignored).

    Default: the video is ``youtube_id`` and [time_start, time_end] its labelled segment (an
    untrimmed video, as in the sample corpus). ``trimmed=True``: the usual download of 10 s
    clips named ``<youtube_id>_<start:06d>_<end:06d>``, each labelled as a whole.
    """
    path = Path(path)
    cols = ("label", "youtube_id", "time_start", "time_end")
    header, rows = _text_rows(path, ",", "Kinetics csv", cols)
    col = {name: i for i, name in enumerate(header)}
    result, ids = ReadResult("kinetics"), _Ids()
    for n, fields in rows:
        where = f"line {n}"
        if len(fields) != len(header):
            result.fail(
                str(path), where, f"malformed row: {len(fields)} fields, header has {len(header)}"
            )
            continue
        get = {name: fields[i].strip() for name, i in col.items()}
        why = "empty label" if not get["label"] else None
        why = why or ("empty youtube_id" if not get["youtube_id"] else None)
        if not why:
            try:
                start, end = _segment((get["time_start"], get["time_end"]))
            except ValueError as e:
                why = f"malformed row: {e}"
        why = why or ids.duplicate((get["youtube_id"], start, end), where)
        if why:
            result.fail(str(path), where, why)
            continue
        split, src = normalise_split(get.get("split") or None), Origin(str(path), where)
        if trimmed:
            video = f"{get['youtube_id']}_{int(start):06d}_{int(end):06d}"
            result.items.append(LabelItem(video, get["label"], None, split, origin=src))
        else:
            result.items.append(
                LabelItem(get["youtube_id"], get["label"], None, split, start, end, src)
            )
    return result


def _plain_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-split fields) of non-empty lines; CRLF or LF."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]


@READERS.register("ucf101")
def read_ucf101(class_index: str | Path, split_file: str | Path) -> ReadResult:
    """UCF101 ``classInd.txt`` ("1 ApplyEyeMakeup", 1-based) and one ``trainlistNN.txt``
    ("Class/v_Class_g08_c01.avi 1") or ``testlistNN.txt`` ("Class/v_Class_g01_c01.avi"), CRLF
    line endings. The video id is the relative path without extension (what prep keys a
    directory input by); the label index becomes 0-based."""
    ci_path, sp_path = Path(class_index), Path(split_file)
    names: dict[int, str] = {}
    for n, fields in _plain_lines(ci_path):
        if len(fields) != 2 or not fields[0].isdigit():
            raise FormatError(
                f"{ci_path}: not UCF101 classInd format: line {n} is not '<1-based index> <ClassName>'"
            )
        names[int(fields[0])] = fields[1]
    lines = _plain_lines(sp_path)
    if not names or not lines or not any(f[0].lower().endswith(".avi") for _, f in lines):
        raise FormatError(
            f"{sp_path}: not a UCF101 split list: expected lines '<Class>/<video>.avi [index]'"
        )
    split = "train" if "train" in sp_path.name.lower() else "test"
    by_name = {v: k for k, v in names.items()}
    result, ids = ReadResult("ucf101"), _Ids()
    for n, fields in lines:
        where = f"line {n}"
        rel = fields[0]
        klass = rel.split("/")[0] if "/" in rel else None
        index = int(fields[1]) if len(fields) == 2 and fields[1].isdigit() else by_name.get(klass)
        why = None if len(fields) in (1, 2) else f"malformed row: {len(fields)} fields"
        why = why or (f"unknown class of {rel!r}" if index not in names else None)
        if not why and klass in by_name and by_name[klass] != index:
            why = f"index {index} disagrees with directory {klass!r}"
        why = why or ids.duplicate(rel, where)
        if why:
            result.fail(str(sp_path), where, why)
            continue
        video = rel.rsplit(".", 1)[0]
        result.items.append(
            LabelItem(video, names[index], index - 1, split, origin=Origin(str(sp_path), where))
        )
    return result


@READERS.register("hmdb51")
def read_hmdb51(split_dir: str | Path, split: int = 1) -> ReadResult:
    """HMDB51 ``testTrainMulti_7030_splits/<label>_test_split<k>.txt``: "<video>.avi <id>" with
    1 = train, 2 = test, 0 = unused in split k (unused rows are counted in ``skipped``). The
    video id is "<label>/<video stem>", the layout of the extracted per-class archives."""
    split_dir = Path(split_dir)
    files = sorted(split_dir.glob(f"*_test_split{split}.txt"))
    if not files:
        raise FormatError(f"{split_dir}: no HMDB51 split files '<label>_test_split{split}.txt'")
    result, ids = ReadResult("hmdb51"), _Ids()
    for path in files:
        label = path.name[: -len(f"_test_split{split}.txt")]
        for n, fields in _plain_lines(path):
            where = f"line {n}"
            ok = len(fields) == 2 and fields[1] in ("0", "1", "2")
            why = None if ok else "malformed row: expected '<video>.avi <0|1|2>'"
            video = f"{label}/{fields[0].rsplit('.', 1)[0]}"
            why = why or ids.duplicate(video, Origin(str(path), where))
            if why:
                result.fail(str(path), where, why)
                continue
            if fields[1] == "0":
                result.skipped += 1
                continue
            split_name = "train" if fields[1] == "1" else "test"
            result.items.append(
                LabelItem(video, label, None, split_name, origin=Origin(str(path), where))
            )
    return result


def read_annotations(fmt: str, *paths: str | Path, **options: Any) -> ReadResult:
    """Read with the reader registered as ``fmt`` (ConfigError listing the formats if unknown)."""
    return READERS.get(fmt)(*paths, **options)

"""Downstream-task annotation files of the sample corpus, each in a format as distributed.

`data_prep.sample_corpus` renders the videos and calls `write_task_files`, which writes, for
every split (train / val / test), four tasks in four standard formats so that fine-tuning and
evaluation on the sample corpus go through the same readers (finetune/readers.py) as real data:

    annotations/msrvtt_qa/{train,val,test}_qa.json     open-ended QA, MSRVTT-QA json list
    annotations/tgif_qa/{Train,Val,Test}_action_question.csv
                                                      multiple choice, TGIF-QA Action tsv
    annotations/youcook2/youcookii_annotations.json   segment captions, YouCook2 database
    annotations/kinetics/{verb,noun}.csv              segment labels, Kinetics csv

Every question is about the whole video and has one answer in it: a video never shows a verb
or a noun twice (sample_corpus.take_combos), so "what does the red square do?" and "what shape
spins?" are answerable. Each segment gets two open-ended questions (answer: its verb, its noun),
two multiple-choice questions (the 5 verbs or the 5 nouns as options, shuffled), three caption
phrasings and a verb and a noun label. Everything is a pure function of labels.json and the seed.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.io import atomic_write_text

VERB_QUESTIONS = ("what does the {c} {n} do?", "what is the {n} doing?", "what does the {n} do?")
NOUN_QUESTIONS = ("what shape {v3}?", "which shape is {ving}?", "what {v3} in the video?")
MC_VERB_QUESTIONS = ("What does the {c} {n} do ?", "What does the {n} do in the video ?")
MC_NOUN_QUESTIONS = ("Which shape {v3} ?", "What is {ving} in the video ?")
# YouCook2-style sentences: lower case, no final period.
CAPTIONS = (
    "the {c} {n} {v3}",
    "a {c} {n} is {ving}",
    "the {n} {v3} {adv}",
    "a {c} {n} {v3} on a grey background",
    "we {v} the {c} {n}",
    "the {c} {n} keeps {ving}",
)
CAPTIONS_PER_SEGMENT = 3
TGIF_COLUMNS = ("gif_name", "question", "a1", "a2", "a3", "a4", "a5", "answer", "vid_id", "key")
KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end", "split")
YOUCOOK2_SUBSETS = {"train": "training", "val": "validation", "test": "testing"}


def _fields(segment: dict[str, Any], verb_forms: dict[str, tuple[str, str, str]]) -> dict:
    v3, ving, adv = verb_forms[segment["verb"]]
    n, c, v = segment["noun"], segment["colour"], segment["verb"]
    return {"v": v, "n": n, "c": c, "v3": v3, "ving": ving, "adv": adv}


def _tsv(rows: list[list[Any]], header: tuple[str, ...], delimiter: str) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=delimiter, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def write_task_files(out: Path, labels: dict[str, Any], seed: int) -> dict[str, Any]:
    """Write every task file under ``out/annotations``; return labels.json's "annotations" entry.

    ``labels`` is the labels.json payload (verbs, nouns, videos{id: {split, segments}}).
    """
    from data_prep.sample_corpus import SPLITS, VERB_FORMS

    rng = np.random.default_rng([seed, 1_000_003])  # independent of the videos' own streams
    verbs, nouns = list(labels["verbs"]), list(labels["nouns"])
    qa: dict[str, list[dict]] = {s: [] for s in SPLITS}
    mc: dict[str, list[list]] = {s: [] for s in SPLITS}
    kinetics: dict[str, list[list]] = {"verb": [], "noun": []}
    database: dict[str, dict] = {}
    qa_id = mc_id = caption_id = 0
    for index, (video_id, video) in enumerate(sorted(labels["videos"].items())):
        split = video["split"]
        annotations = []
        for segment in video["segments"]:
            f = _fields(segment, VERB_FORMS)
            for kind, templates in (("verb", VERB_QUESTIONS), ("noun", NOUN_QUESTIONS)):
                question = str(rng.choice(templates)).format(**f)
                qa[split].append(
                    {"answer": f["v" if kind == "verb" else "n"], "id": qa_id,
                     "question": question, "video_id": video_id}
                )  # fmt: skip
                qa_id += 1
            for kind, templates, options in (
                ("verb", MC_VERB_QUESTIONS, verbs),
                ("noun", MC_NOUN_QUESTIONS, nouns),
            ):
                order = [options[i] for i in rng.permutation(len(options))]
                answer = order.index(segment[kind])  # TGIF: a 0-based index over a1..a5
                question = str(rng.choice(templates)).format(**f)
                mc[split].append([video_id, question, *order, answer, f"ACTION{mc_id}", index])
                mc_id += 1
            span = [segment["start"], segment["end"]]
            for template in rng.choice(CAPTIONS, CAPTIONS_PER_SEGMENT, replace=False):
                annotations.append(
                    {"segment": span, "id": caption_id, "sentence": str(template).format(**f)}
                )
                caption_id += 1
            for kind in ("verb", "noun"):
                kinetics[kind].append([segment[kind], video_id, *span, split])
        database[video_id] = {
            "duration": video["duration"],
            "subset": YOUCOOK2_SUBSETS[split],
            "recipe_type": "shapes",
            "annotations": annotations,
            "video_url": video["file"],
        }
    files: dict[str, dict[str, str]] = {"qa": {}, "mc": {}, "captions": {}, "labels": {}}
    for split in SPLITS:
        rel = f"annotations/msrvtt_qa/{split}_qa.json"
        atomic_write_text(out / rel, "[\n" + ",\n".join(map(json.dumps, qa[split])) + "\n]\n")
        files["qa"][split] = rel
        rel = f"annotations/tgif_qa/{split.capitalize()}_action_question.csv"
        atomic_write_text(out / rel, _tsv(mc[split], TGIF_COLUMNS, "\t"))
        files["mc"][split] = rel
    rel = "annotations/youcook2/youcookii_annotations.json"
    entries = ",\n".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in database.items())
    atomic_write_text(out / rel, '{"database": {\n' + entries + "\n}}\n")  # a video per line
    files["captions"] = {s: rel for s in SPLITS}  # one file; the split is each video's subset
    for kind, rows in kinetics.items():
        rel = f"annotations/kinetics/{kind}.csv"
        atomic_write_text(out / rel, _tsv(rows, KINETICS_COLUMNS, ","))
        files["labels"][kind] = rel
    return {
        "qa": {"format": "msrvtt-qa", "files": files["qa"]},
        "mc": {"format": "tgif-qa", "files": files["mc"]},
        "captions": {"format": "youcook2", "files": files["captions"]},
        "labels": {"format": "kinetics", "files": files["labels"]},
    }

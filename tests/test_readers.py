"""finetune.readers on small files written here in each dataset's real format.

Each format gets good rows (as distributed: field names, separators, line endings, index bases)
and bad ones (empty question/answer, malformed row, duplicate id), which must be listed with
their file and line (or JSON path) while the good rows are read; a file in another format must
fail at once, naming the format it expected.
"""

import json
from pathlib import Path

import pytest

from finetune.readers import (
    READERS,
    CaptionItem,
    FormatError,
    LabelItem,
    MCItem,
    Origin,
    QAItem,
    label_to_words,
    read_activitynet_qa,
    read_annotations,
    read_hmdb51,
    read_kinetics,
    read_msrvtt_captions,
    read_msrvtt_qa,
    read_tgif_qa,
    read_ucf101,
    read_youcook2,
)
from pipeline.config import ConfigError


def reasons(result) -> list[tuple[str, str]]:
    return [(f.where, f.reason) for f in result.failures]


def test_msrvtt_qa_json_list(tmp_path: Path):
    rows = [
        {
            "answer": "man",
            "category_id": 9,
            "id": 0,
            "question": "who is singing?",
            "video_id": 7010,
        },
        {
            "answer": "",
            "category_id": 9,
            "id": 1,
            "question": "what is a man doing?",
            "video_id": 7010,
        },
        {"answer": "dog", "category_id": 2, "id": 2, "question": "  ", "video_id": 7011},
        {"answer": "car", "category_id": 2, "id": 0, "question": "what drives?", "video_id": 7012},
        {"answer": "car", "id": 3, "question": "what drives?"},
        {"answer": "ball", "category_id": 5, "id": 4, "question": "what rolls?", "video_id": 7013},
    ]
    path = tmp_path / "train_qa.json"
    path.write_text(json.dumps(rows))  # distributed on one line
    result = read_msrvtt_qa(path, video_id_format="video{}")
    assert result.items == [
        QAItem("0", "video7010", "who is singing?", ("man",), origin=Origin(str(path), "[0]")),
        QAItem("4", "video7013", "what rolls?", ("ball",), origin=Origin(str(path), "[5]")),
    ]
    assert reasons(result) == [
        ("[1]", "empty answer"),
        ("[2]", "empty question"),
        ("[3]", "duplicate id '0' (first at [0])"),
        ("[4]", "malformed row: missing video_id"),
    ]
    assert all(f.file == str(path) for f in result.failures)
    assert str(result.failures[0]) == f"{path} [1]: empty answer"


def test_msvd_qa_jsonl_variant(tmp_path: Path):
    path = tmp_path / "test.jsonl"
    path.write_text(
        '{"question": "what is the cat doing?", "answer": "playing", "video_id": "vid1"}\n'
        "{not json\n"
        '{"question": "who cooks?", "answer": "woman", "video_id": "vid2"}\n'
    )
    result = read_annotations("msvd-qa", path)
    assert [(i.qid, i.video_id, i.answer) for i in result.items] == [
        ("0", "vid1", "playing"),
        ("2", "vid2", "woman"),
    ]
    assert reasons(result) == [("line 2", "malformed row: not a JSON object")]


def test_activitynet_qa_joins_questions_and_answers(tmp_path: Path):
    q = tmp_path / "val_q.json"
    a = tmp_path / "val_a.json"
    q.write_text(
        json.dumps(
            [
                {
                    "video_name": "JDg--pjY5gg",
                    "question": "is the man happy",
                    "question_id": "v_JDg--pjY5gg_1",
                },
                {
                    "video_name": "JDg--pjY5gg",
                    "question": "what color is the ball",
                    "question_id": "v_JDg--pjY5gg_2",
                },
                {"video_name": "abc", "question": "where is he", "question_id": "v_abc_0"},
            ]
        )
    )
    a.write_text(
        json.dumps(
            [
                {"answer": "yes", "type": 3, "question_id": "v_JDg--pjY5gg_1"},
                {"answer": "red", "type": 4, "question_id": "v_JDg--pjY5gg_2"},
                {"answer": "gym", "type": 6, "question_id": "v_zzz_9"},
            ]
        )
    )
    result = read_activitynet_qa(q, a, video_id_format="v_{}")
    assert [(i.qid, i.video_id, i.answer, i.qtype) for i in result.items] == [
        ("v_JDg--pjY5gg_1", "v_JDg--pjY5gg", "yes", "3"),
        ("v_JDg--pjY5gg_2", "v_JDg--pjY5gg", "red", "4"),
    ]
    assert [(Path(f.file).name, f.where) for f in result.failures] == [
        ("val_q.json", "[2]"),  # no answer
        ("val_a.json", "[2]"),  # no question
    ]


def test_tgif_action_is_tab_separated_multiple_choice(tmp_path: Path):
    path = tmp_path / "Test_action_question.csv"
    header = "gif_name\tquestion\ta1\ta2\ta3\ta4\ta5\tanswer\tvid_id\tkey\n"
    path.write_text(
        header
        + 'tumblr_a\tWhat does the "man" do 3 times ?\tnod\tclap\twave\tjump\tspin\t3\tACTION12\t52\n'
        + "tumblr_b\tWhat does the cat do ?\tnod\tclap\twave\tjump\tspin\t5\tACTION13\t53\n"
        + "tumblr_c\tWhat does the dog do ?\tnod\tclap\n"
        + "tumblr_d\tWhat does the dog do ?\tnod\tclap\twave\tjump\tspin\t0\tACTION12\t54\n"
    )
    result = read_tgif_qa(path)
    assert result.items == [
        MCItem(
            "ACTION12",
            "tumblr_a",
            'What does the "man" do 3 times ?',
            ("nod", "clap", "wave", "jump", "spin"),
            3,
            origin=Origin(str(path), "line 2"),
        )
    ]
    assert result.items[0].options[result.items[0].answer_index] == "jump"  # 0-based
    assert [w for w, _ in reasons(result)] == ["line 3", "line 4", "line 5"]
    assert "not an option index" in result.failures[0].reason
    assert "duplicate" in result.failures[2].reason


def test_tgif_frameqa_is_open_ended(tmp_path: Path):
    path = tmp_path / "Train_frameqa_question.csv"
    path.write_text(
        "gif_name\tquestion\tanswer\ttype\tvid_id\tkey\tdescription\n"
        "tumblr_x\twhat is the color of the shirt ?\tblack\t2\tFRAMEQA4460\t87751\ta man .\n"
        "tumblr_y\thow many men ?\t\t1\tFRAMEQA1\t1\ttwo men .\n"
    )
    result = read_tgif_qa(path)
    assert result.items == [
        QAItem("FRAMEQA4460", "tumblr_x", "what is the color of the shirt ?", ("black",), "2",
               origin=Origin(str(path), "line 2"))
    ]  # fmt: skip
    assert reasons(result) == [("line 3", "empty answer")]


def test_msrvtt_captions(tmp_path: Path):
    path = tmp_path / "train_val_videodatainfo.json"
    data = {
        "info": {"year": 2016},
        "videos": [
            {
                "category": 9,
                "url": "u",
                "video_id": "video0",
                "start time": 137.7,
                "end time": 149.4,
                "split": "train",
                "id": 0,
            },
            {
                "category": 2,
                "url": "u",
                "video_id": "video1",
                "start time": 1.0,
                "end time": 9.0,
                "split": "validate",
                "id": 1,
            },
        ],
        "sentences": [
            {"caption": "a man is singing", "video_id": "video0", "sen_id": 0},
            {"caption": "a car drives down a road", "video_id": "video1", "sen_id": 1},
            {"caption": "", "video_id": "video1", "sen_id": 2},
            {"caption": "a dog runs", "video_id": "video9", "sen_id": 3},
        ],
    }
    path.write_text(json.dumps(data))
    result = read_msrvtt_captions(path)
    assert result.items == [
        CaptionItem(
            "0", "video0", "a man is singing", "train", origin=Origin(str(path), "sentences[0]")
        ),
        CaptionItem(
            "1",
            "video1",
            "a car drives down a road",
            "val",
            origin=Origin(str(path), "sentences[1]"),
        ),
    ]  # no segment: the clips are cut already
    assert reasons(result) == [
        ("sentences[2]", "empty caption"),
        ("sentences[3]", "video 'video9' is not in 'videos'"),
    ]


def test_youcook2_segments(tmp_path: Path):
    path = tmp_path / "youcookii_annotations_trainval.json"
    anns = [
        {
            "segment": [90, 102],
            "id": 0,
            "sentence": "spread margarine on two slices of white bread",
        },
        {"segment": [114, 127], "id": 1, "sentence": "place a slice of cheese on the bread"},
        {"segment": [130, 120], "id": 2, "sentence": "backwards"},
        {"segment": [131, 140], "id": 1, "sentence": "duplicate id"},
    ]
    db = {"GLd3aX16zBg": {"duration": 241.62, "subset": "training", "recipe_type": "113",
                          "annotations": anns, "video_url": "https://youtu.be/GLd3aX16zBg"},
          "broken": {"subset": "validation"}}  # fmt: skip
    path.write_text(json.dumps({"database": db}))
    result = read_youcook2(path)
    assert [(i.cid, i.split, i.start, i.end) for i in result.items] == [
        ("GLd3aX16zBg#0", "train", 90.0, 102.0),
        ("GLd3aX16zBg#1", "train", 114.0, 127.0),
    ]
    assert [w for w, _ in reasons(result)] == [
        "database.GLd3aX16zBg.annotations[2]",
        "database.GLd3aX16zBg.annotations[3]",
        "database.broken",
    ]


def test_kinetics_csv_untrimmed_and_trimmed(tmp_path: Path):
    path = tmp_path / "validate.csv"
    path.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "abseiling,0wR5jVB-WPk,417,427,val\n"
        '"passing American football (in game)",--6bJUbfpnQ,17,27,val\n'
        ",xyz,1,11,val\n"
        "abseiling,0wR5jVB-WPk,417,427,val\n"
        "air drumming,abc,5\n"
    )
    result = read_kinetics(path)
    assert result.items[0] == LabelItem(
        "0wR5jVB-WPk", "abseiling", None, "val", 417.0, 427.0, Origin(str(path), "line 2")
    )
    assert result.items[1].label == "passing American football (in game)"
    assert [w for w, _ in reasons(result)] == ["line 4", "line 5", "line 6"]
    trimmed = read_kinetics(path, trimmed=True)
    assert trimmed.items[0].video_id == "0wR5jVB-WPk_000417_000427"
    assert trimmed.items[0].start is None


def test_ucf101_crlf_one_based(tmp_path: Path):
    ci = tmp_path / "classInd.txt"
    ci.write_bytes(b"1 ApplyEyeMakeup\r\n2 ApplyLipstick\r\n3 YoYo\r\n")
    train = tmp_path / "trainlist01.txt"
    train.write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"YoYo/v_YoYo_g08_c01.avi 3\r\n"
        b"YoYo/v_YoYo_g09_c01.avi 2\r\n"  # the index disagrees with the directory
        b"YoYo/v_YoYo_g08_c01.avi 3\r\n"
    )
    test = tmp_path / "testlist01.txt"
    test.write_bytes(
        b"ApplyLipstick/v_ApplyLipstick_g01_c01.avi\r\nSkiing/v_Skiing_g01_c01.avi\r\n"
    )
    result = read_ucf101(ci, train)
    assert result.items == [
        LabelItem("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01", "ApplyEyeMakeup", 0, "train",
                  origin=Origin(str(train), "line 1")),
        LabelItem("YoYo/v_YoYo_g08_c01", "YoYo", 2, "train", origin=Origin(str(train), "line 2")),
    ]  # fmt: skip
    assert [w for w, _ in reasons(result)] == ["line 3", "line 4"]
    result = read_ucf101(ci, test)
    assert [(i.label, i.label_index, i.split) for i in result.items] == [
        ("ApplyLipstick", 1, "test")
    ]
    assert "unknown class" in result.failures[0].reason


def test_hmdb51_split_files(tmp_path: Path):
    (tmp_path / "brush_hair_test_split1.txt").write_text(
        "April_09_brush_hair_u_nm_np1_ba_goo_0.avi 1 \n"
        "Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0.avi 2 \n"
        "Brushing_Hair_with_Beth_brush_hair_h_nm_np1_le_goo_0.avi 0 \n"
        "bad_line.avi 7 \n"
    )
    (tmp_path / "brush_hair_test_split2.txt").write_text("x.avi 2 \n")
    (tmp_path / "climb_stairs_test_split1.txt").write_text(
        "Stairs_climb_stairs_f_cm_np1_ba_med_0.avi 2 \n"
    )
    result = read_hmdb51(tmp_path, split=1)
    assert [(i.video_id, i.label, i.split) for i in result.items] == [
        ("brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0", "brush_hair", "train"),
        ("brush_hair/Blonde_being_brushed_brush_hair_f_nm_np2_ri_med_0", "brush_hair", "test"),
        ("climb_stairs/Stairs_climb_stairs_f_cm_np1_ba_med_0", "climb_stairs", "test"),
    ]
    assert result.skipped == 1 and reasons(result) == [
        ("line 4", "malformed row: expected '<video>.avi <0|1|2>'")
    ]


@pytest.mark.parametrize(
    ("fmt", "content", "expected"),
    [
        ("msrvtt-qa", '{"database": {}}', "MSRVTT-QA"),  # a YouCook2 file
        ("msrvtt-qa", "[1, 2, 3]", "no row has question, answer, video_id"),
        ("msrvtt-qa", "not json at all", "MSRVTT-QA"),
        ("youcook2", '[{"question": "q", "answer": "a", "video_id": 1}]', "YouCook2"),
        ("msrvtt-captions", '{"database": {}}', "MSR-VTT captions"),
        ("tgif-qa", "gif_name,question,answer\nx,y,z\n", "tab-separated header"),
        ("kinetics", "label\tyoutube_id\ttime_start\ttime_end\n", "comma-separated header"),
    ],
)
def test_wrong_format_fails_before_any_work(tmp_path: Path, fmt, content, expected):
    path = tmp_path / "annotations.json"
    path.write_text(content)
    with pytest.raises(FormatError, match=expected):
        read_annotations(fmt, path)


def test_wrong_format_label_files(tmp_path: Path):
    bad = tmp_path / "classInd.txt"
    bad.write_text("ApplyEyeMakeup 1\n")
    with pytest.raises(FormatError, match="UCF101 classInd"):
        read_ucf101(bad, bad)
    with pytest.raises(FormatError, match="HMDB51"):
        read_hmdb51(tmp_path)


def test_registry_and_label_words():
    assert {"msrvtt-qa", "msvd-qa", "activitynet-qa", "tgif-qa", "msrvtt-captions", "youcook2",
            "kinetics", "ucf101", "hmdb51"} == set(READERS.names())  # fmt: skip
    with pytest.raises(ConfigError, match="choose one of"):
        read_annotations("coco", "x.json")
    assert label_to_words("ApplyEyeMakeup") == "apply eye makeup"
    assert label_to_words("YoYo") == "yo yo"
    assert label_to_words("HandstandPushups") == "handstand pushups"
    assert label_to_words("brush_hair") == "brush hair"
    assert (
        label_to_words("passing American football (in game)")
        == "passing American football (in game)"
    )
    assert label_to_words("air drumming") == "air drumming"

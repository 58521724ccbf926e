"""Task loaders on the real shared files (counts from shared/data/README.md) and on broken copies."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

from daram.errors import DaramError
from daram.pipeline.eval.downstream import (
    TASKS,
    build_nsmc_train_from_raw,
    get_tasks,
    load_split,
    NSMC_DEV_SIZE,
    nsmc_label,
    parse_bool,
    read_nsmc_ratings,
    subsample,
)

# (task, split) -> label counts, as counted in shared/data/README.md (COPA's 1/2 become choices 0/1).
README_COUNTS = {
    ("boolq", "train"): {0: 1834, 1: 1831},
    ("boolq", "test"): {0: 699, 1: 705},
    ("copa", "train"): {0: 1671, 1: 1405},
    ("copa", "test"): {0: 517, 1: 483},
    ("wic", "train"): {1: 1680, 0: 1638},
    ("wic", "test"): {1: 615, 0: 645},
    ("hellaswag", "train"): {0: 533, 1: 511, 2: 487, 3: 498},
    ("hellaswag", "test"): {0: 124, 1: 137, 2: 121, 3: 118},
    ("sentineg", "train"): {0: 1811, 1: 1838},
    ("sentineg", "test"): {0: 197, 1: 200},
    ("nsmc", "test"): {0: 24827, 1: 25173},
    ("boolq", "dev"): {0: 374, 1: 326},
    ("copa", "dev"): {0: 248, 1: 252},
    ("wic", "dev"): {1: 261, 0: 349},
    ("hellaswag", "dev"): {0: 111, 1: 125, 2: 145, 3: 119},
    ("sentineg", "dev"): {0: 200, 1: 200},
}


@pytest.mark.parametrize("task,split", sorted(README_COUNTS))
def test_loader_counts_match_readme(shared_data: Path, task: str, split: str) -> None:
    examples = load_split(TASKS[task], split, str(shared_data))
    assert dict(Counter(e.label for e in examples)) == README_COUNTS[task, split]
    spec = TASKS[task]
    for example in examples:
        assert len(example.sequences) == (spec.num_labels if spec.kind == "choice" else 1)
        assert all(isinstance(segment, str) for sequence in example.sequences for segment in sequence)


def test_nsmc_dev_is_a_fixed_part_of_train(shared_data: Path) -> None:
    # NSMC has no dev split: 3,000 of the 33,128 reviews built from raw/ become one, and train leaves them out.
    train, dev = (load_split(TASKS["nsmc"], split, str(shared_data)) for split in ("train", "dev"))
    assert len(dev) == NSMC_DEV_SIZE and len(train) == 33128 - NSMC_DEV_SIZE
    nsmc = shared_data / "nsmc"
    built = build_nsmc_train_from_raw(nsmc / "raw", {i for i, _, _ in read_nsmc_ratings(nsmc / "ratings_test.txt")})
    # train + dev is every built review exactly once: none is in both, none is lost
    assert Counter((e.sequences[0][0], e.label) for e in train + dev) == Counter((d, y) for _, d, y in built)
    assert load_split(TASKS["nsmc"], "dev", str(shared_data)) == dev  # the same draw every time


def test_boolq_keeps_leading_quotes(shared_data: Path) -> None:
    # Fields that begin with a literal " would be mangled by CSV quoting.
    examples = load_split(TASKS["boolq"], "train", str(shared_data))
    questions = [e.sequences[0][1] for e in examples]
    assert "\"뷰티 인사이드\"는 외적인 요소를 중시하는 이야기인가?" in questions
    assert sum(seg.startswith('"') for e in examples for seg in e.sequences[0]) == 13


def test_hellaswag_unquotes_csv_fields(shared_data: Path) -> None:
    examples = load_split(TASKS["hellaswag"], "test", str(shared_data))
    segments = {segment for e in examples for sequence in e.sequences for segment in sequence}
    assert any('누군가 "빙고"를 외치고' in s for s in segments)
    assert not any('""' in s for s in segments)


def test_copa_reads_question_with_trailing_space(shared_data: Path) -> None:
    examples = load_split(TASKS["copa"], "train", str(shared_data))
    first = examples[0]  # 이퀄라이저로 ... 키웠다. / 결과 / answer 1
    assert first.sequences == (
        ("이퀄라이저로 저음 음역대 소리 크기를 키웠다.", "그래서 베이스 소리가 잘 들리게 되었다."),
        ("이퀄라이저로 저음 음역대 소리 크기를 키웠다.", "그래서 소프라노 음역대 소리가 잘 들리게 되었다."),
    )
    assert first.label == 0
    connectives = Counter(seq[1].split()[0] for e in examples for seq in e.sequences)
    assert set(connectives) == {"왜냐하면", "그래서"}  # every 원인/결과, trailing spaces included


def test_wic_keeps_target_marks(shared_data: Path) -> None:
    examples = load_split(TASKS["wic"], "test", str(shared_data))
    target, first, second = examples[0].sequences[0]
    assert target == "양분" and "[양분]" in first and "[양분]" in second


def test_sentineg_test_uses_text_and_label_columns(shared_data: Path) -> None:
    examples = load_split(TASKS["sentineg"], "test", str(shared_data))
    assert examples[0].sequences == (("택배사 정말 마음에 듬",),)  # Text, not Text_origin
    assert examples[0].label == 1  # Label, not Label_origin


def test_nsmc_train_from_raw_excludes_test_ids(shared_data: Path) -> None:
    nsmc = shared_data / "nsmc"
    test_ids = {row_id for row_id, _, _ in read_nsmc_ratings(nsmc / "ratings_test.txt")}
    rows = build_nsmc_train_from_raw(nsmc / "raw", test_ids)
    assert len(rows) == 16560 + 16568
    assert not {row_id for row_id, _, _ in rows} & test_ids
    assert not any(re.search(r"\s{2,}|\n|^\s|\s$", document) for _, document, _ in rows)


def test_nsmc_label_mapping() -> None:
    assert [nsmc_label(r) for r in range(1, 11)] == [0, 0, 0, 0, None, None, None, None, 1, 1]


def test_nsmc_prefers_ratings_train(tmp_path: Path) -> None:
    nsmc = tmp_path / "nsmc"
    nsmc.mkdir()
    (nsmc / "ratings_test.txt").write_text("id\tdocument\tlabel\n1\t굳 ㅋ\t1\n", encoding="utf-8")
    (nsmc / "ratings_train.txt").write_text(
        'id\tdocument\tlabel\n2\t"""따옴표""" 그대로\t0\n3\t재밌다\t1\n', encoding="utf-8"
    )
    train = load_split(TASKS["nsmc"], "train", str(tmp_path))
    assert [(e.sequences[0][0], e.label) for e in train] == [('"""따옴표""" 그대로', 0), ("재밌다", 1)]
    (nsmc / "ratings_train.txt").unlink()
    with pytest.raises(DaramError, match="no NSMC training data"):
        load_split(TASKS["nsmc"], "train", str(tmp_path))


def test_nsmc_raw_build_from_small_crawl(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    reviews = [
        {"review": "  최고\n\n영화  ", "rating": "10", "review_id": "1"},
        {"review": "별로", "rating": "2", "review_id": "2"},
        {"review": "그냥저냥", "rating": "6", "review_id": "3"},  # 5-8: dropped
        {"review": "테스트에 있음", "rating": "1", "review_id": "4"},  # a test id: excluded
    ]
    (raw / "1.json").write_text(json.dumps(reviews, ensure_ascii=False), encoding="utf-8")
    assert build_nsmc_train_from_raw(raw, {"4"}) == [("1", "최고 영화", 1), ("2", "별로", 0)]


def _write_kobest(tmp_path: Path, task_dir: str, split: str, text: str) -> Path:
    target = tmp_path / "kobest" / task_dir
    target.mkdir(parents=True)
    (target / f"{split}.tsv").write_text(text, encoding="utf-8", newline="")
    return target / f"{split}.tsv"


def test_bad_rows_name_the_file_and_line(tmp_path: Path) -> None:
    header = "ID\tText\tQuestion\tAnswer\r\n"
    _write_kobest(tmp_path, "BoolQ", "train", header + "1\t본문\t질문\tTrue\r\n2\t본문만\r\n")
    with pytest.raises(DaramError, match=r"BoolQ/train.tsv:3: 2 fields, the header has 4"):
        load_split(TASKS["boolq"], "train", str(tmp_path))


def test_bad_label_is_named(tmp_path: Path) -> None:
    _write_kobest(tmp_path, "BoolQ", "test", "ID\tText\tQuestion\tAnswer\n7\t본문\t질문\tmaybe\n")
    with pytest.raises(DaramError, match=r"BoolQ/test.tsv ID 7: expected True or False, got 'maybe'"):
        load_split(TASKS["boolq"], "test", str(tmp_path))


def test_missing_column_and_file(tmp_path: Path) -> None:
    _write_kobest(tmp_path, "SentiNeg", "test", "ID\tSentence\tLabel\n1\t좋다\t1\n")
    with pytest.raises(DaramError, match="no column 'Text'"):
        load_split(TASKS["sentineg"], "test", str(tmp_path))
    with pytest.raises(DaramError, match="data file not found: .*WiC/train.tsv"):
        load_split(TASKS["wic"], "train", str(tmp_path))
    with pytest.raises(DaramError, match="eval data directory not found"):
        load_split(TASKS["wic"], "train", str(tmp_path / "nowhere"))


def test_parse_bool_accepts_mixed_spellings() -> None:
    assert [parse_bool(s, "x") for s in ("TRUE", "True", "true", "FALSE", "False", " false ")] == [1, 1, 1, 0, 0, 0]


def test_get_tasks_checks_names() -> None:
    assert [t.name for t in get_tasks(["nsmc", "copa"])] == ["nsmc", "copa"]
    with pytest.raises(DaramError, match="unknown task 'kobest'"):
        get_tasks(["kobest"])
    with pytest.raises(DaramError, match="twice"):
        get_tasks(["copa", "copa"])


def test_subsample_is_seeded_and_keeps_order(shared_data: Path) -> None:
    examples = load_split(TASKS["sentineg"], "test", str(shared_data))
    first, again, other = (subsample(examples, 16, seed) for seed in (42, 42, 7))
    assert first == again and first != other and len(first) == 16
    positions = [examples.index(e) for e in first]
    assert positions == sorted(positions)
    assert subsample(examples, 0, 42) is examples


@pytest.mark.parametrize(
    "task,record,sequences,label",
    [
        ("boolq", {"paragraph": "본문", "question": "질문?", "label": 1}, (("본문", "질문?"),), 1),
        (
            "copa",
            {"premise": "물을 오래 끓였다.", "question": "결과", "alternative_1": "늘었다.", "alternative_2": "줄었다.", "label": 1},
            (("물을 오래 끓였다.", "그래서 늘었다."), ("물을 오래 끓였다.", "그래서 줄었다.")),
            1,
        ),
        ("wic", {"word": "철", "context_1": "가", "context_2": "나", "label": 0}, (("철", "가", "나"),), 0),
        (
            "hellaswag",
            {"context": "맥락", "ending_1": "a", "ending_2": "b", "ending_3": "c", "ending_4": "d", "label": 3},
            (("맥락", "a"), ("맥락", "b"), ("맥락", "c"), ("맥락", "d")),
            3,
        ),
        ("sentineg", {"sentence": "좋다", "label": 1}, (("좋다",),), 1),
        ("nsmc", {"id": "9", "document": None, "label": 0}, (("",),), 0),
    ],
)
def test_hub_records_map_like_the_files(task, record, sequences, label) -> None:
    # Field names of skt/kobest_v1 and e9t/nsmc as their dataset cards give them.
    example = TASKS[task].from_hub(record)
    assert example.sequences == sequences and example.label == label


def test_undecodable_file_is_named(tmp_path: Path) -> None:
    path = _write_kobest(tmp_path, "SentiNeg", "train", "ID\tText\tLabel\n1\t좋다\t1\n")
    path.write_bytes(path.read_bytes() + "2\t나쁘다\t0\n".encode("euc-kr"))
    with pytest.raises(DaramError, match=r"SentiNeg/train.tsv:\d+: cannot read \(UnicodeDecodeError"):
        load_split(TASKS["sentineg"], "train", str(tmp_path))

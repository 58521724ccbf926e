"""Zero/few-shot KoBEST: the harness's prompts, its tokenization split, our log-likelihoods against a direct
computation, and (slow) against lm-evaluation-harness itself run offline on a local model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from daram.errors import DaramError
from daram.pipeline.eval.downstream import TASKS, Example, load_split
from daram.pipeline.eval.fewshot import (
    build_requests,
    draw_shots,
    encode_pair,
    fewshot_context,
    loglikelihoods,
    score_shots,
    shot_tasks,
)

KO_SMALL = "teachers/ko-small"


@pytest.fixture(scope="module")
def ko_small(shared_data: Path):
    """The shared trained 4-layer GPT-2 (128 wide, KoGPT2 vocabulary, 1,024 positions) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = shared_data / KO_SMALL
    if not (path / "model.safetensors").is_file():
        pytest.skip(f"no model at {path}")
    return path, AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def test_prompts_are_the_harness_kobest_ones(shared_data: Path) -> None:
    # The strings of lm_eval/tasks/kobest/*.yaml and utils.py (lm-evaluation-harness 0.4), applied to real rows.
    copa = load_split(TASKS["copa"], "train", str(shared_data))[0]  # 결과 with a trailing space in the file
    assert fewshot_context("copa", copa, []) == (
        "이퀄라이저로 저음 음역대 소리 크기를 키웠다.  그래서",
        ["베이스 소리가 잘 들리게 되었다.", "소프라노 음역대 소리가 잘 들리게 되었다."],
    )
    boolq = Example((), 1, {"paragraph": "본문이다.", "question": "맞는가?"})
    wic = Example((), 0, {"word": "단수", "context_1": "[단수]의 고통", "context_2": "[단수]로 할지"})
    senti = Example((), 1, {"sentence": "좋아요"})
    hella = Example((), 2, {"context": "맥락", "ending_1": "a", "ending_2": "b", "ending_3": "c", "ending_4": "d"})
    assert fewshot_context("boolq", boolq, []) == ("본문이다. 질문: 맞는가? 답변: ", ["아니오", "예"])
    assert fewshot_context("wic", wic, []) == (
        "문장1: [단수]의 고통 문장2: [단수]로 할지 두 문장에서 단수가 같은 뜻으로 쓰였나?", ["아니오", "예"])
    assert fewshot_context("sentineg", senti, []) == ("문장: 좋아요 긍부정:", ["부정", "긍정"])
    assert fewshot_context("hellaswag", hella, []) == ("문장: 맥락", ["a", "b", "c", "d"])
    # few-shot: each solved example is its prompt, " " and its right choice; "\n\n" between them and before the query
    context, _ = fewshot_context("sentineg", senti, [Example((), 0, {"sentence": "별로"}), senti])
    assert context == "문장: 별로 긍부정: 부정\n\n문장: 좋아요 긍부정: 긍정\n\n문장: 좋아요 긍부정:"


def test_requests_put_the_delimiter_before_each_choice(shared_data: Path) -> None:
    test = load_split(TASKS["sentineg"], "test", str(shared_data))[:3]
    built = build_requests("sentineg", test, [], 0)
    assert [x for _, x in built.requests] == [" 부정", " 긍정"] * 3 and built.labels == [e.label for e in test]


def test_shots_are_seeded_train_draws(shared_data: Path) -> None:
    train = load_split(TASKS["copa"], "train", str(shared_data))
    first, again = draw_shots(train, 5, 4), draw_shots(train, 5, 4)
    assert first == again and all(len(s) == 5 for s in first) and first[0] != first[1]  # one stream, drawn in order
    assert draw_shots(train, 0, 2) == [[], []]
    with pytest.raises(DaramError, match="5 shots need 5 train examples"):
        draw_shots(train[:3], 5, 1)


def test_shot_tasks_leave_out_nsmc() -> None:
    assert [t.name for t in shot_tasks([TASKS["nsmc"], TASKS["copa"]])] == ["copa"]
    with pytest.raises(DaramError, match="none of the tasks"):
        shot_tasks([TASKS["nsmc"]])


def test_encode_pair_moves_trailing_spaces_and_splits_the_whole_string(ko_small) -> None:
    _, _, tokenizer = ko_small
    context, continuation = encode_pair(tokenizer, "본문이다. 질문: 맞는가? 답변: ", " 예")
    assert context == tokenizer.encode("본문이다. 질문: 맞는가? 답변:")
    assert context + continuation == tokenizer.encode("본문이다. 질문: 맞는가? 답변:  예")  # two spaces, as the harness


def test_loglikelihoods_equal_a_direct_sum(ko_small, shared_data: Path) -> None:
    # Batched, sorted and padded scoring equals each pair's own forward, token by token (one row, no padding).
    import torch

    _, model, tokenizer = ko_small
    test = load_split(TASKS["copa"], "test", str(shared_data))[:6]
    pairs = [encode_pair(tokenizer, c, x) for c, x in build_requests("copa", test, [], 0).requests]
    batched = loglikelihoods(model, pairs, batch_size=5, device=torch.device("cpu"))
    for (context, continuation), score in zip(pairs, batched):
        ids = torch.tensor([context + continuation])
        with torch.no_grad():
            logp = torch.log_softmax(model(ids).logits[0], -1)
        direct = sum(float(logp[len(context) - 1 + k, token]) for k, token in enumerate(continuation))
        assert score == pytest.approx(direct, abs=1e-4)


def test_long_contexts_are_cut_from_the_left(ko_small) -> None:
    import torch

    _, model, _ = ko_small
    continuation = [5, 6, 7]
    long_context = list(range(10, 10 + 1500))  # past the 1,024 positions
    (cut,) = loglikelihoods(model, [(long_context, continuation)], 1, torch.device("cpu"))
    (kept,) = loglikelihoods(model, [(long_context[-(1024 + 1 - 3):], continuation)], 1, torch.device("cpu"))
    assert cut == pytest.approx(kept, abs=1e-5)


def test_score_shots_on_real_sentineg(ko_small, shared_data: Path) -> None:
    import torch

    _, model, tokenizer = ko_small
    task = TASKS["sentineg"]
    train = load_split(task, "train", str(shared_data))
    test = load_split(task, "test", str(shared_data))[:24]
    entry = score_shots(model, tokenizer, task, train, test, 2, 8, torch.device("cpu"), "ko-small")
    assert entry["shots"] == 2 and entry["examples"] == 24
    low, high = entry["f1_interval"]
    assert 0 <= low <= entry["f1"] <= high <= 1 and 0 <= entry["accuracy"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("task,shots", [("copa", 0), ("boolq", 5)])
def test_loglikelihoods_equal_lm_evaluation_harness(ko_small, shared_data: Path, tmp_path: Path, task, shots) -> None:
    """lm-evaluation-harness itself, offline, on a local model and the local KoBEST files: its prompts must be
    ours (0-shot: string for string) and its per-example log-likelihoods ours within 1e-4. At 5 shots its draws
    are its own, so we score its exact contexts and check their layout."""
    lm_eval = pytest.importorskip("lm_eval")
    import torch
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    path, model, tokenizer = ko_small
    harness_dir = Path(lm_eval.__file__).parent / "tasks" / "kobest"
    name = f"daram_kobest_{task}"
    # the harness's own task file and utils.py, with the hub dataset swapped for the local files in hub field names
    splits = {"train": "train", "validation": "dev", "test": "test"}
    for hub_split, split in splits.items():
        rows = [{**e.doc, "label": e.label} for e in load_split(TASKS[task], split, str(shared_data))]
        (tmp_path / f"{hub_split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                                     encoding="utf-8")
    shutil.copy(harness_dir / "utils.py", tmp_path / "utils.py")
    yaml = (harness_dir / f"kobest_{task}.yaml").read_text(encoding="utf-8")
    yaml = yaml.replace(f"task: kobest_{task}", f"task: {name}").replace("dataset_path: skt/kobest_v1", "dataset_path: json")
    yaml = yaml.replace(f"dataset_name: {task}\n", "dataset_kwargs:\n  data_files:\n" + "".join(
        f"    {s}: {tmp_path / (s + '.jsonl')}\n" for s in splits))
    (tmp_path / f"{name}.yaml").write_text(yaml, encoding="utf-8")

    limit = 12
    results = lm_eval.simple_evaluate(
        model=HFLM(pretrained=str(path), batch_size=4, device="cpu", dtype="float32"), tasks=[name],
        num_fewshot=shots, limit=limit, log_samples=True, task_manager=TaskManager(include_path=str(tmp_path)),
    )
    samples = sorted(results["samples"][name], key=lambda s: s["doc_id"])
    assert len(samples) == limit
    test = load_split(TASKS[task], "test", str(shared_data))
    pairs, theirs = [], []
    for sample in samples:
        arguments = [tuple(a) for a in sample["arguments"]]
        context, choices = fewshot_context(task, test[sample["doc_id"]], [])
        if shots == 0:
            assert arguments == [(context, " " + c) for c in choices]
        else:  # five solved examples, then our 0-shot prompt of this example
            assert arguments[0][0].endswith("\n\n" + context) and arguments[0][0].count("\n\n") >= 5
        pairs += [encode_pair(tokenizer, c, x) for c, x in arguments]
        theirs += [float(r[0][0]) for r in sample["resps"]]
    ours = loglikelihoods(model, pairs, 4, torch.device("cpu"))
    assert len(ours) == len(theirs) == limit * TASKS[task].num_labels  # one per choice
    gap = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"kobest_{task} {shots}-shot: {len(ours)} log-likelihoods, max |ours - harness| = {gap:.1e}")  # for the docs
    assert gap < 1e-4

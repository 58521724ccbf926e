import json
import math
import re

import pytest
from typer.testing import CliRunner

from daram.cli import app
from daram.pipeline.job.demo import DEMO_CONFIG, DemoPaths, demo_config, train_tokenizer
from daram.pipeline.job.demo_corpus import TOPICS, P, copula, demo_sentences, josa, write_demo_corpus

runner = CliRunner()


# --- the generated corpus -------------------------------------------------------------------------


@pytest.mark.parametrize("word, pair, expected", [
    ("책", "을/를", "책을"), ("사과", "을/를", "사과를"), ("민수", "은/는", "민수는"), ("선생님", "은/는", "선생님은"),
    ("비", "이/가", "비가"), ("눈", "이/가", "눈이"), ("친구", "과/와", "친구와"), ("팀", "과/와", "팀과"),
    ("부산", "으로/로", "부산으로"), ("제주도", "으로/로", "제주도로"), ("서울", "으로/로", "서울로"),  # ㄹ takes 로
    ("3 대 0", "으로/로", "3 대 0으로"), ("5 대 1", "으로/로", "5 대 1로"), ("2 대 2", "으로/로", "2 대 2로"),
])
def test_particles_follow_the_final_consonant(word, pair, expected):
    assert josa(word, pair) == expected


@pytest.mark.parametrize("lemma, past, descriptive, plain, polite, formal, past_plain", [
    ("먹다", "먹었", False, "먹는다", "먹어요", "먹습니다", "먹었다"),
    ("가다", "갔", False, "간다", "가요", "갑니다", "갔다"),
    ("살다", "살았", False, "산다", "살아요", "삽니다", "살았다"),  # ㄹ drops before ㄴ and ㅂ
    ("듣다", "들었", False, "듣는다", "들어요", "듣습니다", "들었다"),  # ㄷ-irregular, from the past stem
    ("마시다", "마셨", False, "마신다", "마셔요", "마십니다", "마셨다"),
    ("공부하다", "공부했", False, "공부한다", "공부해요", "공부합니다", "공부했다"),
    ("춥다", "추웠", True, "춥다", "추워요", "춥습니다", "추웠다"),  # ㅂ-irregular adjective
    ("달다", "달았", True, "달다", "달아요", "답니다", "달았다"),
])
def test_predicates_conjugate_in_three_styles(lemma, past, descriptive, plain, polite, formal, past_plain):
    p = P(lemma, past, descriptive)
    assert (p.say("plain", False), p.say("polite", False), p.say("formal", False)) == (plain, polite, formal)
    assert p.say("plain", True) == past_plain and p.say("formal", True) == past + "습니다"


def test_derived_forms():
    eat, cold = P("먹다", "먹었"), P("춥다", "추웠", True)
    assert (eat.and_then(), cold.so()) == ("먹고", "추워서")
    assert eat.want().say("polite", False) == "먹고 싶어요"
    assert eat.doing().say("plain", False) == "먹고 있다"
    assert P("끓이다", "끓였").must().say("plain", False) == "끓여야 한다"
    assert eat.negated().say("plain", False) == "먹지 않는다" and cold.negated().say("plain", False) == "춥지 않다"
    assert P("뽑다", "뽑았").decided().say("formal", True) == "뽑기로 했습니다"
    assert (copula("학생", "polite"), copula("바다", "polite"), copula("바다", "plain", past=True)) == (
        "학생이에요", "바다예요", "바다였다")


def test_demo_corpus_is_deterministic_distinct_and_varied():
    sentences = demo_sentences(3000, seed=0)
    assert sentences == demo_sentences(3000, seed=0)
    assert sentences != demo_sentences(3000, seed=1)
    assert len(set(sentences)) == 3000
    assert all(s.endswith(".") and re.search("[가-힣]", s) for s in sentences)
    words = {w for s in sentences for w in s.rstrip(".").split()}
    assert len(words) > 800  # many distinct words, not a handful of templates
    # the three speech styles all occur
    endings = {style: sum(s.endswith(e) for s in sentences) for style, e in (("plain", "다."), ("polite", "요."), ("formal", "니다."))}
    assert all(n > 200 for n in endings.values()), endings
    # every topic contributes: its own words appear
    for marker in ("빨래", "기상청", "찌개", "여행", "회의", "선생님", "행성", "경기", "공연"):
        assert any(marker in s for s in sentences), marker
    assert len(TOPICS) == 9


def test_trained_tokenizer_round_trips_the_corpus(tmp_path):
    from daram.pipeline.hf import load_tokenizer, tokenizer_info

    corpus = tmp_path / "corpus.txt"
    write_demo_corpus(corpus, 800, seed=3)
    out = train_tokenizer(corpus, tmp_path / "tok", vocab_size=1000)
    tokenizer = load_tokenizer(str(out))  # the same loader the pipeline uses
    info = tokenizer_info(tokenizer, str(out))
    assert len(tokenizer) <= 1000 and len({info.eos_id, info.pad_id, tokenizer.unk_token_id}) == 3
    lines = corpus.read_text(encoding="utf-8").splitlines()
    ids = tokenizer(lines, add_special_tokens=False)["input_ids"]
    assert [tokenizer.decode(i) for i in ids] == lines  # byte-level: lossless
    # merges learned units larger than a syllable (a Hangul syllable is 3 bytes, one character)
    assert sum(map(len, ids)) < 0.7 * sum(map(len, lines))


# --- the config -------------------------------------------------------------------------------------


def test_demo_configs_load_and_hold_out_a_shard_outside_training():
    from daram.config import parse_shards

    for quick in (False, True):
        cfg = demo_config(None, (), quick, {})
        shards = parse_shards(cfg.train.shards, cfg.prepare.num_shards)
        assert 0 <= cfg.train.heldout_shard < cfg.prepare.num_shards and cfg.train.heldout_shard not in shards
        assert cfg.teacher.device == cfg.train.device == "cpu" and cfg.train.max_steps > 0
    assert DEMO_CONFIG.is_file()
    assert demo_config(None, (), True, {}).demo.sentences < demo_config(None, (), False, {}).demo.sentences
    # --set beats --quick, and flags beat --set
    cfg = demo_config(None, ["demo.teacher_steps=7", "train.max_steps=9"], True, {"train.max_steps": 11})
    assert (cfg.demo.teacher_steps, cfg.train.max_steps) == (7, 11)


def test_demo_refuses_a_missing_corpus_before_writing_anything(tmp_path):
    workdir = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--workdir", str(workdir), "--corpus", str(tmp_path / "nope.txt")])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: demo.corpus: no such file") and result.stderr.count("\n") == 1
    assert not workdir.exists()


def test_demo_leaves_a_foreign_directory_alone(tmp_path):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "report.md").write_text("mine", encoding="utf-8")
    result = runner.invoke(app, ["demo", "--workdir", str(tmp_path)])
    assert result.exit_code == 2 and "is not empty and holds no earlier demo" in result.stderr
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == "mine" and (tmp_path / "teacher").is_dir()


def test_a_rerun_clears_only_what_the_demo_wrote(tmp_path):
    paths = DemoPaths.under(tmp_path / "demo")
    paths.claim()  # a new directory becomes the demo's
    (paths.student_kd / "checkpoints").mkdir(parents=True)
    (paths.root / "report.md").write_text("old", encoding="utf-8")
    (paths.root / "notes.txt").write_text("the user's", encoding="utf-8")
    paths.claim()
    assert not paths.student_kd.exists() and not (paths.root / "report.md").exists()
    assert (paths.root / "notes.txt").read_text(encoding="utf-8") == "the user's"


@pytest.mark.parametrize("setting, message", [
    ("demo.teacher_n_head=3", "demo.teacher_n_embd (128) must be divisible by demo.teacher_n_head (3)"),
    ("train.heldout_shard=1", "train.heldout_shard 1 is also in train.shards (0-2)"),
    ("train.heldout_shard=-1", "train.heldout_shard: the demo scores its students on a held-out shard; name one of the 4 shards"),
])
def test_demo_rejects_bad_settings_in_one_line_before_writing(tmp_path, setting, message):
    workdir = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "--workdir", str(workdir), "--set", setting])
    assert result.exit_code == 2 and result.stderr == f"error: {message}\n"
    assert not workdir.exists()


# --- end to end -------------------------------------------------------------------------------------


def check_report(workdir):
    report = json.loads((workdir / "report.json").read_text(encoding="utf-8"))
    markdown = (workdir / "report.md").read_text(encoding="utf-8")
    metrics = report["metrics"]
    assert list(metrics) == ["teacher", "CE-only student", "KD student"]
    for name, m in metrics.items():
        assert m["ce"] > 0 and math.isclose(m["perplexity"], math.exp(m["ce"]), rel_tol=1e-9)
        assert m["kl"] >= 0 and 0 <= m["top1_agreement"] <= 1 and 0 <= m["ece"] <= 1
        # the table holds the same numbers
        assert f"| {name} | {m['ce']:.4f} | {m['perplexity']:.2f} | {m['kl']:.4f} | {m['top1_agreement']:.1%} | {m['ece']:.4f} |" in markdown
    # the teacher scored against its own dump: only float16 rounding separates them
    assert metrics["teacher"]["kl"] < 1e-3 and metrics["teacher"]["top1_agreement"] > 0.99
    assert metrics["teacher"]["ce"] < metrics["CE-only student"]["ce"]
    for stage in ("corpus", "tokenizer", "prepare", "teacher training", "teacher-dump", "student-train, KD student",
                  "student-train, CE-only student", "held-out evaluation"):
        assert report["timings_s"][stage] > 0 and f"| {stage} | {report['timings_s'][stage]:.1f} |" in markdown
    assert report["store"]["teacher_bytes_per_token"] > report["store"]["token_bytes_per_token"] > 0
    for png in ("loss_curves.png", "kl_to_teacher.png"):
        data = (workdir / png).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000 and f"]({png})" in markdown
    students = report["students"]
    assert students["KD student"]["steps"] == students["CE-only student"]["steps"] > 0
    return report


def test_quick_demo_runs_end_to_end(tmp_path):  # about 40 s on 2 busy cores
    from daram.config import load_config
    from daram.pipeline.hf import load_causal_lm
    from daram.pipeline.inspect import run_verify

    workdir = tmp_path / "demo"
    # one thread: steady timings on a machine shared with other jobs (two threads fight over two cores there)
    result = runner.invoke(app, ["demo", "--quick", "--threads", "1", "--workdir", str(workdir)])
    assert result.exit_code == 0, result.output
    assert "demo: done in" in result.stdout
    for stage in range(1, 8):
        assert f"[demo {stage}/7]" in result.stderr
    report = check_report(workdir)
    metrics = report["metrics"]
    # distillation pulls the student towards the teacher: closer than the same steps of CE alone
    assert metrics["KD student"]["kl"] < metrics["CE-only student"]["kl"]
    # the student is a save_pretrained directory with its tokenizer, and the store is intact
    model = load_causal_lm(report["outputs"]["student"], "float32", "cpu")
    assert model.config.n_embd == 32 and (workdir / "student-kd" / "tokenizer.json").is_file()
    assert run_verify(load_config(overrides={"store.path": str(workdir / "store.zarr")}))


@pytest.mark.slow
def test_demo_on_real_text_with_the_kogpt2_tokenizer(tmp_path, korean_sentences, kogpt2_tokenizer_dir):
    workdir = tmp_path / "demo"
    result = runner.invoke(app, [
        "demo", "--quick", "--threads", "1", "--workdir", str(workdir), "--corpus", str(korean_sentences),
        "--tokenizer", str(kogpt2_tokenizer_dir), "--sentences", "400", "--teacher-steps", "5", "--max-steps", "3",
        "--set", "demo.teacher_batch_size=4", "--set", "train.batch_size=4",  # 51,200-id logits are heavy on a CPU
    ])
    assert result.exit_code == 0, result.output
    report = check_report(workdir)
    assert report["settings"]["vocab_size"] == 51200 and report["settings"]["corpus_lines"] == 400
    sampled = (workdir / "corpus.txt").read_text(encoding="utf-8").splitlines()
    real = set(korean_sentences.read_text(encoding="utf-8").splitlines())
    assert len(sampled) == 400 and set(sampled) <= real

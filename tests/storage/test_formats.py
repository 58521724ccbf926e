"""The storage half of the teacher kinds: which kind a dump's settings pick, and what each kind refuses."""

from __future__ import annotations

import numpy as np
import pytest

from daram.config import TeacherConfig
from daram.errors import DaramError
from daram.storage import TEACHER_FORMATS, choose_kind, kinds_reading, teacher_format


def test_each_kind_specific_setting_names_the_kinds_that_read_it():
    assert kinds_reading("top_k") == ["topk"]
    assert kinds_reading("sample_width") == ["sampled"]
    assert sorted(kinds_reading("draws")) == ["draw_ranks", "draws", "sampled"]
    assert kinds_reading("temperature") == []  # every kind reads it: it never picks one


@pytest.mark.parametrize("given, kind", [
    ([], "draws"),  # the default kind
    (["top_k"], "topk"),
    (["draws"], "draws"),  # read by draws and sampled: the default stays
    (["sample_width"], "sampled"),
    (["draws", "sample_width"], "sampled"),
    (["temperature", "top_k"], "topk"),
])
def test_a_setting_only_one_kind_reads_picks_that_kind(given, kind):
    chosen, why = choose_kind("draws", False, given)
    assert chosen == kind
    assert (why == "") == (kind == "draws")
    if why:
        assert why.startswith(f"teacher.kind = {kind!r} (from teacher.")


@pytest.mark.parametrize("kind, setting", [
    ("draws", "top_k"), ("sampled", "top_k"), ("topk", "draws"), ("topk", "sample_width"), ("draws", "sample_width"),
    ("topk", "seed"),
])
def test_a_setting_the_given_kind_does_not_read_is_refused_naming_both(kind, setting):
    with pytest.raises(DaramError, match=rf"^teacher\.{setting} is read only by .* but teacher\.kind is '{kind}'"):
        choose_kind(kind, True, [setting])
    assert choose_kind(kind, True, [s for s in ("top_k", "draws", "sample_width") if kind in kinds_reading(s)]) == (kind, "")


def test_settings_of_two_kinds_without_a_kind_are_refused_naming_both():
    with pytest.raises(DaramError, match=r"teacher\.top_k \(topk dumps\) and teacher\.draws .* belong to different kinds"):
        choose_kind("draws", False, ["top_k", "draws"])


def test_an_unknown_kind_fails_in_one_place_with_one_line():
    with pytest.raises(DaramError, match=r"^unknown teacher kind 'top-k'; this daram knows topk, sampled, draws, draw_ranks$"):
        choose_kind("top-k", True, [])
    with pytest.raises(DaramError, match="unknown teacher kind"):
        teacher_format("logits")


def test_widths_are_checked_against_the_vocabulary_and_the_draws():
    assert teacher_format("topk").width(TeacherConfig(top_k=32), 51_200, "s") == 32
    with pytest.raises(DaramError, match=r"teacher.top_k=60000 exceeds the vocabulary of s \(51,200 ids\)"):
        teacher_format("topk").width(TeacherConfig(top_k=60_000), 51_200, "s")
    assert teacher_format("sampled").width(TeacherConfig(draws=16), 100, "s") == 16
    with pytest.raises(DaramError, match="teacher.sample_width=20 exceeds teacher.draws=16"):
        teacher_format("sampled").width(TeacherConfig(draws=16, sample_width=20), 100, "s")
    assert teacher_format("draws").width(TeacherConfig(draws=8), 100, "s") == 8


class _Dump:
    kind, width, draws, seed, vocab_size = "draws", 4, 4, 0, 100


def test_every_kind_decodes_to_probabilities_that_its_statistics_count():
    draws = np.array([[[3, 3, 7, 9]]], dtype=np.uint16)
    fmt = teacher_format("draws")
    ids, p = fmt.probabilities((draws,), _Dump)
    assert ids.dtype == np.int64 and np.allclose(p, [[[0.5, 0, 0.25, 0.25]]])
    assert fmt.statistics([(draws,)], _Dump) == {"unique_ids_mean": 3.0, "truncated_positions": 0}
    sampled = teacher_format("sampled")
    counts = np.array([[[2, 1, 1, 0]]], dtype=np.uint8)
    assert np.allclose(sampled.probabilities((draws, counts), _Dump)[1], [[[0.5, 0.25, 0.25, 0]]])
    assert sampled.statistics([(draws, counts)], _Dump) == {"unique_ids_mean": 3.0, "truncated_positions": 0}
    topk = teacher_format("topk")
    logprobs = np.log(np.array([[[0.5, 0.3]]])).astype(np.float16)
    assert topk.statistics([(draws[..., :2], logprobs)], _Dump)["captured_mass_mean"] == pytest.approx(0.8, abs=1e-3)


def test_every_kind_describes_itself_and_estimates_its_bytes():
    for fmt in TEACHER_FORMATS.values():
        assert fmt.describe(_Dump) and fmt.bytes_per_slot > 0 and fmt.bytes_note


def test_draw_ranks_store_the_same_draws_as_frequency_ranks_in_steps():
    """Lossless: decoding the stored steps gives back each position's multiset of draws, whatever the ids; the
    frequent ids get small ranks, so a sure position stores steps of 0."""
    fmt = teacher_format("draw_ranks")
    tokens = np.array([[7, 7, 7, 3, 3, 9]], dtype=np.uint16)
    (rank_ids,) = fmt.build_tables(tokens, 12)
    assert rank_ids.tolist()[:3] == [7, 3, 9] and sorted(rank_ids.tolist()) == list(range(12))  # ties: id order
    draws = np.sort(np.random.default_rng(0).integers(0, 12, (5, 3, 6)), axis=-1).astype(np.uint16)
    draws[0, 0] = 7
    (steps,) = fmt.encode((draws,), (rank_ids,))
    assert steps.dtype == np.uint16 and steps[0, 0].tolist() == [0] * 6  # id 7 is rank 0: all steps 0
    ids, p = fmt.probabilities((steps, rank_ids), _Dump)
    want_ids, want_p = teacher_format("draws").probabilities((draws,), _Dump)
    for got, want in [(ids, want_ids), (p, want_p)]:
        assert got.shape == want.shape
    mass = lambda i, q: {(pos, int(t)): float(x) for pos in np.ndindex(i.shape[:-1]) for t, x in zip(i[pos], q[pos]) if x > 0}
    assert mass(ids, p) == mass(want_ids, want_p)
    assert fmt.check_block((steps, rank_ids), _Dump12) == []


class _Dump12:
    kind, width, draws, seed, vocab_size = "draw_ranks", 6, 6, 0, 12


def test_draw_ranks_block_checks_name_a_broken_permutation_and_a_rank_past_the_vocabulary():
    fmt = teacher_format("draw_ranks")
    rank_ids = np.arange(12, dtype=np.uint16)
    steps = np.array([[[1, 0, 2, 0, 0, 4]]], dtype=np.uint16)
    assert fmt.check_block((steps, rank_ids), _Dump12) == []
    assert fmt.check_block((steps, np.where(rank_ids == 5, 4, rank_ids).astype(np.uint16)), _Dump12) == [
        "rank_ids is not a permutation of the 12 ids"]
    assert fmt.check_block((np.array([[[1, 0, 2, 0, 0, 9]]], dtype=np.uint16), rank_ids), _Dump12) == ["rank 12 >= vocab 12"]

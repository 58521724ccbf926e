"""``daram inspect`` (what a store holds) and ``daram verify`` (is it intact and complete)."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterator

import numpy as np

from daram.config import Config
from daram.storage import Store, TeacherManifest, shard_name
from daram.storage.store import CHUNKS_DONE, fingerprint_bytes
from daram.text import figure, plural

PROB_SUM_TOLERANCE = 5e-3  # float16 rounding of k stored log-probs


def run_inspect(cfg: Config, sample: bool = True) -> None:
    store = Store.open(cfg.store.path)
    m = store.manifest
    print(f"store        {store.url}  (format {m.format} v{m.format_version}, daram {m.daram_version or '?'})")
    print(f"tokenizer    {m.tokenizer.name_or_path}  vocab {m.tokenizer.vocab_size:,}  eos {m.tokenizer.eos_id}  "
          f"pad {m.tokenizer.pad_id}  sha256 {m.tokenizer.vocab_sha256[:12]}")
    print(f"tokens       {m.total_tokens:,} in {plural(m.num_shards, 'shard')}, rows of {m.seq_len} ({m.token_dtype}), "
          f"{plural(m.rows_per_chunk, 'row')} per chunk, packing {m.packing}, {plural(m.dropped_tail_tokens, 'tail token')} dropped")
    print(f"fingerprint  {m.tokens_fingerprint[:16]}")
    print("sources (curriculum order):")
    for s in m.sources:  # one line per entry: a source read in slices shows each slice
        cut = ", ".join(f"{k} {v}" for k, v in (("skip", s.skip), ("take", s.take)) if v)
        print(f"  {s.name}: {plural(s.files, 'file')}, {s.bytes / 1e6:.2f} MB, {plural(s.units, s.unit)}, {s.tokens:,} tokens, "
              f"{plural(s.skipped_lines, 'skipped line')}  [{s.format}{'; ' + cut if cut else ''}]")

    teacher = store.teacher_manifest()
    if teacher is None:
        print("teacher      none yet (run `daram teacher-dump`)")
    else:
        kind = {
            "topk": f"top-{teacher.width}",
            "sampled": f"sampled, {plural(teacher.draws, 'draw')}, width {teacher.width}, seed {teacher.seed}",
            "draws": f"draws (format v2), {plural(teacher.draws, 'sorted draw')}, seed {teacher.seed}",
        }[teacher.kind]
        print(f"teacher      {teacher.teacher} @ {teacher.revision}  {teacher.dtype}  T={teacher.temperature:g}  {kind}")

    print("shards:")
    for shard in range(m.num_shards):
        rows = m.rows_per_shard[shard]
        tokens = rows * m.seq_len
        line = f"  {shard:5d}  {rows:7,} rows  {tokens:11,} tokens  tokens {store.bytes_on_disk(f'tokens/{shard_name(shard)}/') / tokens:5.2f} B/tok"
        if teacher is not None:
            done = store.teacher_chunks_done(shard, teacher)
            status = "complete" if teacher.is_complete(shard) else f"{int(done.sum())}/{len(done)} chunks"
            if str(shard) in teacher.released and not done.any():  # daram run freed its disk; teacher-dump restores it
                status = "released"
            line += f"  teacher {status}"
            if done.any():
                line += f"  {store.bytes_on_disk(f'teacher/{shard_name(shard)}/') / tokens:6.1f} B/tok"
            stats = teacher.shards.get(str(shard), {})
            line += "".join(f"  {k} {_fmt(v)}" for k, v in stats.items() if k in SHOWN_STATS)
        print(line)

    if sample:
        from daram.pipeline.hf import load_tokenizer

        tokenizer = load_tokenizer(m.tokenizer.name_or_path)
        text = tokenizer.decode(store.read_tokens(0, 0, 1)[0].tolist())
        print(f"sample (shard 0, row 0): {text[:300]!r}")


SHOWN_STATS = ("captured_mass_mean", "captured_mass_p5", "entropy_mean", "unique_ids_mean", "truncated_positions", "tokens_per_s")


def _fmt(value) -> str:
    return figure(value) if isinstance(value, float) else str(value)


def run_verify(cfg: Config) -> bool:
    """Read every chunk and check it. Prints one line per problem and a summary; True when all is intact."""
    from tqdm import tqdm

    store = Store.open(cfg.store.path)
    m = store.manifest
    teacher = store.teacher_manifest()
    problems: list[str] = []
    total = sum(len(store.chunk_ranges(s)) for s in range(m.num_shards)) * (2 if teacher else 1)
    with tqdm(total=total, unit="chunk", desc="verify", dynamic_ncols=True) as bar:
        for shard in range(m.num_shards):
            problems += _verify_tokens(store, shard, bar)
            if teacher is not None:
                problems += _verify_teacher(store, teacher, shard, bar)
    for problem in problems:
        print(f"BAD  {problem}")
    dumped = "no teacher dump" if teacher is None else f"teacher complete on {len(teacher.shards)}/{m.num_shards} shards"
    if problems:
        print(f"verify: {store.url}: {plural(len(problems), 'problem')} ({dumped})")
    else:
        print(f"verify: {store.url}: intact: {m.num_shards} token shards, {dumped}")
    return not problems


def _read_chunks(array, ranges, where: str, bar) -> Iterator[tuple[int, np.ndarray | None, str]]:
    for i, (lo, hi) in enumerate(ranges):
        try:
            yield i, array[lo:hi], ""
        except Exception as exc:  # a checksum mismatch or undecodable chunk surfaces here, whatever its type
            yield i, None, f"{where} chunk {i} (rows {lo}-{hi}): unreadable ({type(exc).__name__}: {str(exc)[:120]})"
        bar.update(1)


def _verify_tokens(store: Store, shard: int, bar) -> list[str]:
    m = store.manifest
    where = f"tokens/{shard_name(shard)}"
    try:
        array = store.token_array(shard)
    except Exception as exc:
        return [f"{where}: {exc}"]
    expected = (m.rows_per_shard[shard], m.seq_len)
    if array.shape != expected or array.dtype != np.dtype(m.token_dtype):
        return [f"{where}: shape {array.shape} {array.dtype}, expected {expected} {m.token_dtype}"]
    problems, digest = [], hashlib.sha256()
    for i, block, error in _read_chunks(array, store.chunk_ranges(shard), where, bar):
        if block is None:
            problems.append(error)
            continue
        digest.update(fingerprint_bytes(block))
        if block.max(initial=0) >= m.tokenizer.vocab_size:
            problems.append(f"{where} chunk {i}: token id {int(block.max())} >= vocab {m.tokenizer.vocab_size}")
    if not problems and digest.hexdigest() != m.shard_fingerprints[shard]:
        problems.append(f"{where}: content differs from the manifest's fingerprint")
    return problems


def _verify_teacher(store: Store, teacher: TeacherManifest, shard: int, bar) -> list[str]:
    where = f"teacher/{shard_name(shard)}"
    ranges = store.chunk_ranges(shard)
    try:
        arrays = store.teacher_arrays(shard, teacher)
    except Exception:
        bar.update(len(ranges))
        return [f"{where}: marked complete in the teacher manifest but its arrays are missing"] if teacher.is_complete(shard) else []
    names = teacher.array_names  # (ids, values), or (ids,) for a draws dump
    for name, dtype in zip(names, (store.manifest.token_dtype, teacher.value_dtype)):
        if arrays[name].dtype != np.dtype(dtype):
            bar.update(len(ranges))
            return [f"{where}/{name}: dtype {arrays[name].dtype}, expected {dtype}"]
    try:
        done = arrays[CHUNKS_DONE][:].astype(bool)
    except Exception as exc:
        bar.update(len(ranges))
        return [f"{where}/{CHUNKS_DONE}: unreadable ({type(exc).__name__})"]
    problems = []
    id_chunks = _read_chunks(arrays[names[0]], ranges, f"{where}/{names[0]}", bar if len(names) == 1 else _NoBar())
    value_chunks = (
        _read_chunks(arrays[names[1]], ranges, f"{where}/{names[1]}", bar) if len(names) > 1
        else itertools.repeat((None, np.zeros(0), None))  # a draws dump has no values array
    )
    for (i, ids, error), (_, values, error2) in zip(id_chunks, value_chunks):
        if not done[i]:
            problems.append(f"{where} chunk {i}: not written yet (dump incomplete; rerun teacher-dump --shard {shard})")
        elif ids is None or values is None:
            problems.append(error or error2)
        else:
            problems += [f"{where} chunk {i}: {p}" for p in check_teacher_block(teacher, ids, values)]
    if done.all() and not teacher.is_complete(shard):
        problems.append(f"{where}: every chunk is written but the shard was never recorded complete (rerun teacher-dump)")
    return problems


class _NoBar:
    def update(self, n: int) -> None:
        pass


def check_teacher_block(teacher: TeacherManifest, ids: np.ndarray, values: np.ndarray) -> list[str]:
    """Content checks of one chunk of teacher arrays; each problem as a short phrase."""
    problems = []
    if ids.max(initial=0) >= teacher.vocab_size:
        problems.append(f"id {int(ids.max())} >= vocab {teacher.vocab_size}")
    if teacher.kind == "topk":
        logprobs = values.astype(np.float32)
        if not np.isfinite(logprobs).all():
            problems.append("non-finite log-probs")
            return problems
        mass = np.exp(logprobs).sum(-1)
        if mass.max() > 1 + PROB_SUM_TOLERANCE:
            problems.append(f"probabilities sum to {mass.max():.4f} > 1")
        if (np.diff(logprobs, axis=-1) > 0).any():
            problems.append("top-k log-probs not sorted in descending order")
        if (np.diff(np.sort(ids, axis=-1), axis=-1) == 0).any():
            problems.append("an id appears twice at one position")
    elif teacher.kind == "draws":  # the draws themselves, sorted ascending at each position
        if (np.diff(ids.astype(np.int64), axis=-1) < 0).any():
            problems.append("draws not sorted in ascending order")
    else:  # sampled: unique ids with their draw counts, most drawn first, padded with id 0 / count 0
        counts = values.astype(np.int64)
        drawn = counts > 0
        total = counts.sum(-1)
        if (np.diff(counts, axis=-1) > 0).any():
            problems.append("counts not in descending order (or padding before a drawn id)")
        if (ids[~drawn] != 0).any():
            problems.append("a padding slot (count 0) holds an id other than 0")
        # fewer than `draws` only when every slot is used: the rarest ids were dropped (truncation)
        if (total > teacher.draws).any() or ((total < teacher.draws) & ~drawn.all(-1)).any():
            bad = total[(total > teacher.draws) | ((total < teacher.draws) & ~drawn.all(-1))]
            problems.append(f"counts sum to {int(bad.flat[0])}, not draws={teacher.draws}")
        marked = np.where(drawn, ids.astype(np.int64), -1 - np.arange(ids.shape[-1]))  # padding never repeats
        if (np.diff(np.sort(marked, axis=-1), axis=-1) == 0).any():
            problems.append("an id appears twice at one position")
    return problems

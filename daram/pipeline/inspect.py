"""``daram inspect`` (what a store holds) and ``daram verify`` (is it intact and complete, and if not, what to run)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field


from daram.config import Config
from daram.errors import DaramError
from daram.storage import COMPLETE, INCOMPLETE, NOT_DUMPED, RELEASED, ShardState, Store, TeacherManifest, shard_name
from daram.text import figure, plural

PREPARE_AGAIN = "daram prepare --overwrite  (the tokens cannot be rebuilt from the dump; dump the teacher again after)"


def run_inspect(cfg: Config, sample: bool = True) -> None:
    store = Store.open(cfg.store.path, options=cfg.store.options)
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
        print(f"teacher      {teacher.teacher} @ {teacher.revision}  {teacher.dtype}  T={teacher.temperature:g}  "
              f"{teacher.format.describe(teacher)}")

    print("shards:")
    states = []
    for shard in range(m.num_shards):
        rows = m.rows_per_shard[shard]
        tokens = rows * m.seq_len
        line = f"  {shard:5d}  {rows:7,} rows  {tokens:11,} tokens  tokens {store.token_bytes(shard) / tokens:5.2f} B/tok"
        if teacher is not None:
            state = store.shard_state(shard, teacher)
            states.append(state)
            line += f"  teacher {state.describe()}"
            if state.chunks_done:
                line += f"  {store.teacher_bytes(shard) / tokens:6.1f} B/tok"
            stats = teacher.shards.get(str(shard), {})
            line += "".join(f"  {k} {_fmt(v)}" for k, v in stats.items() if k in SHOWN_STATS)
        print(line)
    if states:
        print(f"teacher      {_state_counts(states)}")

    if sample:
        from daram.pipeline.hf import load_tokenizer

        tokenizer = load_tokenizer(m.tokenizer.name_or_path)
        text = tokenizer.decode(store.read_tokens(0, 0, 1)[0].tolist())
        print(f"sample (shard 0, row 0): {text[:300]!r}")


SHOWN_STATS = ("captured_mass_mean", "captured_mass_p5", "entropy_mean", "unique_ids_mean", "truncated_positions", "tokens_per_s")


def _fmt(value) -> str:
    return figure(value) if isinstance(value, float) else str(value)


def _state_counts(states: list[ShardState]) -> str:
    counts = Counter(st.state for st in states)
    return ", ".join(f"{counts[name]} {name}" for name in (COMPLETE, INCOMPLETE, NOT_DUMPED, RELEASED))


@dataclass
class Findings:
    """What verify found: each problem with the command that repairs it."""

    problems: list[tuple[str, str]] = field(default_factory=list)  # (what is wrong, the command that repairs it)

    def add(self, problem: str, repair: str) -> None:
        self.problems.append((problem, repair))


def run_verify(cfg: Config, tokens_only: bool = False) -> bool:
    """Read every chunk and check it; print one line per problem with its repair, then counts. True (exit 0)
    only when the tokens are intact and, unless ``tokens_only``, every shard's dump is complete or released."""
    from tqdm import tqdm

    store = Store.open(cfg.store.path, options=cfg.store.options)
    m = store.manifest
    teacher = None if tokens_only else store.teacher_manifest()
    findings = Findings()
    states: list[ShardState] = []
    total = sum(len(store.chunk_ranges(s)) for s in range(m.num_shards)) * (2 if teacher else 1)
    with tqdm(total=total, unit="chunk", desc="verify", dynamic_ncols=True) as bar:
        for shard in range(m.num_shards):
            _verify_tokens(store, shard, findings, bar)
            if teacher is not None:
                states.append(store.shard_state(shard, teacher))
                _verify_teacher(store, teacher, states[-1], findings, bar)
    for problem, repair in findings.problems:
        print(f"BAD  {problem}\n     repair: {repair}")
    repairs = list(dict.fromkeys(repair for _, repair in findings.problems))
    if len(repairs) > 1:
        print("to repair the store, run:\n" + "\n".join(f"  {r}" for r in repairs))

    summary = f"verify: {store.url}: {plural(m.num_shards, 'token shard')}"
    if tokens_only:
        summary += " (--tokens-only: the teacher dump was not checked)"
    elif teacher is None:
        summary += "; no teacher dump (run `daram teacher-dump`, or pass --tokens-only to check the tokens alone)"
    else:
        summary += f"; teacher: {_state_counts(states)}"
    gaps = [st for st in states if st.state in (INCOMPLETE, NOT_DUMPED)]
    released = [st for st in states if st.state == RELEASED]
    ok = not findings.problems and not gaps and (tokens_only or teacher is not None)
    if findings.problems:
        print(f"{summary}: {plural(len(findings.problems), 'problem')}")
    elif not ok:
        print(f"{summary}: intact but not complete")
    elif released:
        print(f"{summary}: intact; the only gaps are released shards ({', '.join(str(st.shard) for st in released)})")
    else:
        print(f"{summary}: intact and complete")
    return ok


def _verify_tokens(store: Store, shard: int, findings: Findings, bar) -> None:
    m = store.manifest
    where = f"tokens/{shard_name(shard)}"
    try:
        store.check_tokens_layout(shard)
    except DaramError as exc:
        bar.update(len(store.chunk_ranges(shard)))
        findings.add(str(exc), PREPARE_AGAIN)
        return
    damaged = False

    def readable_blocks():
        nonlocal damaged
        for i, (lo, hi) in enumerate(store.chunk_ranges(shard)):
            bar.update(1)
            try:
                block = store.read_tokens(shard, lo, hi)
            except DaramError as exc:  # an absent chunk
                findings.add(str(exc).split("; ")[0], PREPARE_AGAIN)
                damaged = True
                continue
            except Exception as exc:  # a checksum mismatch or undecodable chunk surfaces here, whatever its type
                findings.add(f"{where} chunk {i} (rows {lo}-{hi}): unreadable ({type(exc).__name__}: {str(exc)[:120]})", PREPARE_AGAIN)
                damaged = True
                continue
            if block.max(initial=0) >= m.tokenizer.vocab_size:
                findings.add(f"{where} chunk {i}: token id {int(block.max())} >= vocab {m.tokenizer.vocab_size}", PREPARE_AGAIN)
                damaged = True
            yield block

    if not store.tokens_fingerprint_matches(shard, readable_blocks()) and not damaged:
        findings.add(f"{where}: content differs from the manifest's fingerprint", PREPARE_AGAIN)


def _verify_teacher(store: Store, teacher: TeacherManifest, state: ShardState, findings: Findings, bar) -> None:
    shard, ranges = state.shard, store.chunk_ranges(state.shard)
    redump = f"daram teacher-dump --shard {shard}"
    if state.state in (NOT_DUMPED, RELEASED) or (state.state == INCOMPLETE and not state.recorded and not state.chunks_done):
        bar.update(len(ranges))
        return  # a gap, counted in the summary, not damage
    try:
        target = store.teacher_shard(shard, teacher)
    except DaramError as exc:
        bar.update(len(ranges))
        findings.add(str(exc).split("; run")[0], redump)
        return
    for chunk in target.damaged_flags():
        findings.add(f"teacher shard {shard}: the done flag of chunk {chunk} is damaged (checksum)", redump)
    missing = target.missing_chunks()
    flags = target.flags()
    for i, (lo, hi) in enumerate(ranges):
        bar.update(1)
        absent = [name for name, chunks in missing.items() if i in chunks]
        if absent:
            if flags[i] or state.recorded:
                findings.add(f"teacher shard {shard} chunk {i} (rows {lo}-{hi}): {', '.join(absent)} file missing", redump)
            continue
        if not flags[i]:
            if state.recorded:
                findings.add(f"teacher shard {shard} chunk {i}: written, but its done flag is lost", redump)
            continue  # not written yet: the dump is incomplete (a gap)
        try:
            arrays = target.read_rows(lo, hi)
        except Exception as exc:  # a checksum mismatch or undecodable chunk
            findings.add(
                f"teacher shard {shard} chunk {i} (rows {lo}-{hi}): unreadable ({type(exc).__name__}: {str(exc)[:120]})",
                _redo_chunk(store, target.chunk_keys(i), redump),
            )
            continue
        for problem in teacher.format.check_block(arrays, teacher):
            findings.add(f"teacher shard {shard} chunk {i}: {problem}", _redo_chunk(store, target.chunk_keys(i), redump))
    if state.chunks_done == state.chunks and not state.recorded:
        findings.add(f"teacher shard {shard}: every chunk is written but the shard was never recorded complete", redump)


def _redo_chunk(store: Store, keys: list[str], redump: str) -> str:
    """A damaged chunk looks done (flag set, files present): removing its files makes the dump redo it."""
    if store.local_root is not None:
        return f"rm {' '.join(f'{store.local_root}/{k}' for k in keys)} && {redump}"
    return f"delete {' and '.join(f'{store.url}/{k}' for k in keys)}, then run {redump}"

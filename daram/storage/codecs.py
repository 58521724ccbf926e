"""How the store's arrays are compressed and checksummed, and written: shared by the store and its teacher shards."""

from __future__ import annotations

from zarr.codecs import BloscCodec, Crc32cCodec

from daram.storage.formats import ArraySpec

# zarr skips writing a chunk that equals the fill value, and reads an absent chunk as the fill value:
# store every chunk, so that an absent one always means damage (see ``Store.missing_chunks``).
WRITE_EVERY_CHUNK = {"write_empty_chunks": True}

# Token shards are compressed at zstd level 3: 118 MB/s against level 9's 13 MB/s on one core, for 1.567
# B/token against 1.558 (KoGPT2 tokens of real Korean text; docs/benchmarks.md, prepare). At level 9 the
# compression alone took a third of prepare's time on top of the tokenizer's.
TOKEN_ZSTD_LEVEL = 3


def compressors() -> tuple:
    # bitshuffle + zstd suits small ints and float16 alike; crc32c last so it covers the stored bytes.
    return (BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"), Crc32cCodec())


def id_compressors(clevel: int = 9) -> tuple:
    """For arrays of vocabulary ids (tokens, draws): zstd's matches find the ids a corpus repeats, which
    bit-shuffling hides (KoGPT2 tokens: 1.56 B/token against 1.97; docs/benchmarks.md, format v2)."""
    return (BloscCodec(cname="zstd", clevel=clevel, shuffle="noshuffle"), Crc32cCodec())


def shuffled_id_compressors() -> tuple:
    """For ids whose high bytes repeat: byte-shuffling gathers them for zstd-9. Differences of sorted ids (the
    cheapest codec for them on both shared teachers; docs/benchmarks.md, "Draws where they matter") and a
    permutation ordered by frequency (a shard's rank table: 16 KB against 102 KB unshuffled, on 33K tokens)."""
    return (BloscCodec(cname="zstd", clevel=9, shuffle="shuffle"), Crc32cCodec())


def codecs_for(spec: ArraySpec) -> tuple:
    """The codecs of a teacher array, by what it holds."""
    return {"ids": id_compressors, "shuffled_ids": shuffled_id_compressors}.get(spec.codec, compressors)()


def flag_codecs() -> tuple:
    """The ``chunks_done`` flags: one byte per chunk, checksummed only."""
    return (Crc32cCodec(),)

"""Bytes per token of draw layouts, and the variance each leaves in the KD gradient (issue 22).

Today's default stores 16 sorted draws per position at T = 1 (``draws``, format v2). This measures, on
the same real text and the same teacher logits, what other layouts of draws would cost on disk and how
noisy a target they give:

- ``draws-D``: D sorted draws per position, drawn by the dump's own kernel (``dump_kernels.draws_slice``);
- ``+ freq``: ids re-labelled by their rank in the corpus's token counts (a permutation the store would
  keep, 51,200 uint16 = 100 KB once, so a reader can undo it), then sorted;
- ``+ diff``: the first sorted id, then the differences between neighbours (a repeat is a 0);
- ``head+rest-D``: the exact head (the top-1 id, uint16, and its probability, float16) plus D draws
  from the rest of the distribution (the top-1 removed, renormalised);
- ``adaptive``: a count of draws per position decided from the teacher's distribution before any draw
  (see :func:`allocate`: proportional to the square root of the per-draw variance, or to the entropy),
  at a mean of B draws per position, or (``new-id``, :func:`allocate_per_new_id`) at the expected distinct
  ids of B fixed draws; the count stored implicitly (the slots past it hold the sentinel 0xFFFF, which
  sorts last) or, as a lower bound on padding's cost, ``ragged`` (the draws of a chunk concatenated, and
  one uint8 count per position).

The estimator and why it stays unbiased with a count that varies (the same argument covers every
layout above). At a position with teacher distribution p, a count c >= 1 is chosen from p and from
random numbers independent of the draws, then X_1..X_c are drawn i.i.d. from p and the target is
p_hat_i = (1/c) sum_k [X_k = i]. Given c, E[p_hat_i | c] = P(X_1 = i) = p_i for every c, so
E[p_hat_i] = E[E[p_hat_i | c]] = p_i: no importance weights are needed, because c never depends on
the draws themselves (a count chosen *after* looking at the draws, e.g. "draw until the top id
repeats", would bias it). With an exact head h: p_hat_h = p_h and p_hat_i = (1 - p_h)(1/c) sum_k
[Y_k = i] for Y ~ p restricted to i != h and renormalised, unbiased by the same argument. The
loss sum_i p_hat_i (log p_hat_i - log q_i) differs from KL(p_hat || q) only by terms without the
student, so its gradient in the student's logits, q - p_hat, is unbiased for the exact KL gradient
q - p; its variance (summed over the vocabulary) is E||p_hat - p||^2 = (1 - sum p_i^2) / c for plain
draws and (1 - p_h)^2 (1 - sum r_i^2) / c with the head (r: the renormalised rest). Summed over
positions this is minimised under a mean of B draws by c_t proportional to the square root of the
per-draw variance (Lagrange), the ``var`` allocation below. This script prints that mean squared
error exactly (from the teacher's p, plus the float16 head's rounding as a bias), next to the bytes.

    HF_HUB_OFFLINE=1 nice -n 10 .venv/bin/python benchmarks/draw_bytes.py --json /tmp/draw-bytes.json
    .venv/bin/python benchmarks/draw_bytes.py --teachers ko-small-sharp --rows 16 --budgets 8   # smoke

Bytes are deterministic: the machine's load changes only the seconds.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fidelity import SHARED, prepare_store

SENTINEL = 0xFFFF  # past the last draw of a position; above every id of a vocabulary that fits uint16
CHUNK_ROWS = 64  # the store's rows per chunk (prepare.rows_per_chunk's default)
NEW_ID_TOP = 512  # ids whose repeats the new-id allocation counts; the rarer ones count as new at every draw


def allocate(weights: np.ndarray, budget: float, cap: int, rng: np.random.Generator) -> np.ndarray:
    """Draws per position, 1..cap, proportional to ``weights`` with a mean of ``budget`` (in expectation).

    Fractions are rounded at random (floor + Bernoulli(fraction)) with ``rng``, which the draws never
    see, so the count is fixed before sampling and the estimator stays unbiased.
    """
    if not 1 <= budget <= cap:
        raise ValueError(f"budget {budget} must be within 1..{cap}")
    w = np.maximum(weights.astype(np.float64), 0.0)
    target = np.full(w.shape, float(budget))
    free = np.ones(w.shape, dtype=bool)  # positions not clipped to 1 or cap
    for _ in range(50):  # water-filling: scale the free positions so that the clipped ones keep the mean
        left = budget * w.size - target[~free].sum()
        if not free.any() or w[free].sum() == 0:
            target[free] = left / max(int(free.sum()), 1)
            break
        target[free] = w[free] * left / w[free].sum()
        clipped = free & ((target < 1) | (target > cap))
        if not clipped.any():
            break
        target[clipped] = np.clip(target[clipped], 1, cap)
        free &= ~clipped
    floor = np.floor(target)
    return (floor + (rng.random(w.shape) < target - floor)).astype(np.int64)


def expected_distinct(top_p: np.ndarray, tail: np.ndarray, cap: int) -> np.ndarray:
    """``(n, cap + 1)``: expected distinct ids among 0..cap draws, sum_i 1 - (1 - p_i)^draws, from each position's
    largest probabilities ``top_p`` (n, K) and the mass of the rest ``tail`` (n,), whose every draw counts as new."""
    draws = np.arange(cap + 1)
    miss = np.log1p(-np.minimum(top_p, 1 - 1e-12))[:, :, None] * draws
    return (1 - np.exp(miss)).sum(1) + tail[:, None] * draws


def allocate_per_new_id(per_draw_var: np.ndarray, distinct: np.ndarray, budget: int) -> np.ndarray:
    """Draws per position, 1..cap, that minimise sum_t var_t / c_t for the expected distinct ids of ``budget`` draws.

    ``distinct`` is :func:`expected_distinct`'s table. A draw costs the new ids it is expected to add, not
    one slot: where the teacher is sure a repeat costs almost nothing, so such positions get more draws.
    A position takes its (n+1)-th draw while var / (n (n+1)) >= lam * (its expected new ids); lam is found by
    bisection. The counts depend on p alone (no draw), so the estimator stays unbiased.
    """
    cap = distinct.shape[1] - 1
    n = np.arange(1, cap)  # from n draws to n + 1
    gain = per_draw_var[:, None] / (n * (n + 1))
    cost = np.maximum(distinct[:, 2:] - distinct[:, 1:-1], 1e-12)
    target = distinct[:, budget].mean()
    ratio = gain / cost

    def counts(lam: float) -> np.ndarray:
        return 1 + np.cumprod(ratio >= lam, axis=1).sum(1)

    lo, hi = 1e-12, 1e6
    for _ in range(60):  # geometric bisection: more draws while lam is small
        lam = np.sqrt(lo * hi)
        spent = distinct[np.arange(len(distinct)), counts(lam)].mean()
        lo, hi = (lam, hi) if spent > target else (lo, lam)
    return counts(hi)


def sample(e, cdf, uniforms, top=None) -> np.ndarray:
    """Draws ``(n, width)`` by inverse CDF, as ``dump_kernels.draws_slice`` does, from the weights ``e``
    (``exp(z - max)``, float32) and their running sums ``cdf``; with ``top`` (n,), from p without that id.

    Without the top id, a target in [0, total - e[top]) that reaches the top id's interval is moved past
    it: the draws then follow p restricted to the other ids, renormalised.
    """
    import torch

    total = cdf[:, -1:]
    if top is None:
        targets = uniforms * total
    else:
        top = torch.as_tensor(top)[:, None]
        mass = e.gather(1, top)
        before = cdf.gather(1, top) - mass
        targets = uniforms * (total - mass)
        targets = targets + mass * (targets >= before)
    return torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[1] - 1).numpy()


def distinct_ids(ids: np.ndarray) -> np.ndarray:
    """Distinct ids per row of a sorted, sentinel-padded ``(n, width)``."""
    new = np.ones(ids.shape, dtype=bool)
    new[:, 1:] = ids[:, 1:] != ids[:, :-1]
    return (new & (ids != SENTINEL)).sum(-1)


def estimate(draws: np.ndarray, counts: np.ndarray, head_id: np.ndarray | None = None,
             head_p: np.ndarray | None = None, vocab: int = 0) -> np.ndarray:
    """The dense target p_hat ``(n, vocab)`` of the first ``counts`` draws of each row of ``draws`` ``(n, width)``.

    With an exact head, ``head_p`` sits at ``head_id`` and the draws share ``1 - head_p``. This is the
    estimator whose error the benchmark prints in closed form; tests/benchmarks checks the two agree.
    """
    n = draws.shape[0]
    mass = np.ones(n) if head_p is None else 1.0 - head_p.astype(np.float64)
    valid = np.arange(draws.shape[1]) < counts[:, None]
    p_hat = np.zeros((n, vocab))
    rows = np.repeat(np.arange(n), draws.shape[1]).reshape(draws.shape)
    np.add.at(p_hat, (rows[valid], draws[valid].astype(np.int64)), np.broadcast_to((mass / counts)[:, None], draws.shape)[valid])
    if head_p is not None:
        p_hat[np.arange(n), head_id.astype(np.int64)] += head_p
    return p_hat


@dataclass
class Layout:
    """One way of storing the draws: its arrays (numpy, one row per position) and its exact gradient MSE."""

    name: str
    budget: float  # mean draws per position
    arrays: dict[str, list] = field(default_factory=dict)  # name -> blocks
    mse: list = field(default_factory=list)  # per position: E||p_hat - p||^2
    unique: list = field(default_factory=list)  # distinct ids stored per position (head included)
    draws: list = field(default_factory=list)  # draws per position
    ragged: bool = False  # also measure the draws as one concatenated stream + uint8 counts

    def add(self, **blocks) -> None:
        for name, block in blocks.items():
            self.arrays.setdefault(name, []).append(block)


def sorted_layout(drawn: np.ndarray, counts: np.ndarray, relabel: np.ndarray | None, diff: bool) -> np.ndarray:
    """uint16 ``(n, width)``: the first ``counts`` draws of each row (relabelled), sorted, then the sentinel."""
    ids = drawn if relabel is None else relabel[drawn]
    ids = np.where(np.arange(ids.shape[1]) < counts[:, None], ids, SENTINEL)
    ids = np.sort(ids, axis=-1)
    if diff:  # neighbours' differences; a sentinel stays a sentinel (a difference is < the vocabulary)
        d = ids.copy()
        d[:, 1:] = np.where(ids[:, 1:] == SENTINEL, SENTINEL, ids[:, 1:] - ids[:, :-1])
        ids = d
    return ids.astype(np.uint16)


def store_bytes(layout: Layout, positions_per_chunk: int) -> dict[str, float]:
    """Bytes of the layout's arrays per position, by codec of its id arrays (best kept in ``best``)."""
    import zarr
    from zarr.codecs import BloscCodec

    from daram.storage.codecs import compressors, id_compressors

    codecs = {"zstd9": id_compressors(), "zstd9-byteshuffle": (BloscCodec(cname="zstd", clevel=9, shuffle="shuffle"),
                                                               id_compressors()[1]),
              "zstd5-bitshuffle": compressors()}

    def size(value: np.ndarray, compressor) -> int:
        memory = zarr.storage.MemoryStore()
        array = zarr.create_array(memory, shape=value.shape, chunks=(positions_per_chunk, *value.shape[1:]),
                                  dtype=value.dtype, compressors=compressor, fill_value=0)
        array[...] = value
        return sum(len(v.to_bytes()) for k, v in memory._store_dict.items() if not k.endswith("zarr.json"))

    arrays = {name: np.concatenate(blocks) for name, blocks in layout.arrays.items()}
    positions = next(iter(arrays.values())).shape[0]
    result = {}
    for codec, compressor in codecs.items():
        total = 0
        for name, value in arrays.items():
            if value.dtype == np.float16:  # the head's probability: v1's value codec
                total += size(value, compressors())
            else:
                total += size(value, compressor)
        result[codec] = total / positions
    if layout.ragged:  # the draws of each chunk back to back, and the counts: what padding costs at most
        draws = arrays["draws"]
        counts = (draws != SENTINEL).sum(-1)
        for codec, compressor in codecs.items():
            total = size(counts.astype(np.uint8), compressors())
            total += sum(size(value, compressor) for name, value in arrays.items() if name != "draws")
            for lo in range(0, positions, positions_per_chunk):
                block = draws[lo : lo + positions_per_chunk]
                stream = block[block != SENTINEL]
                memory = zarr.storage.MemoryStore()
                array = zarr.create_array(memory, shape=stream.shape, chunks=stream.shape, dtype=stream.dtype,
                                          compressors=compressor, fill_value=0)
                array[...] = stream
                total += sum(len(v.to_bytes()) for k, v in memory._store_dict.items() if not k.endswith("zarr.json"))
            result[f"ragged {codec}"] = total / positions
    best = min((c for c in result if not c.startswith("ragged")), key=result.get)
    ragged = min((c for c in result if c.startswith("ragged")), key=result.get, default=None)
    return {**result, "best": result[best], "best_codec": best, "ragged": result[ragged] if ragged else None}


def variants(budgets: list[float]) -> list[tuple[str, dict]]:
    """(name, recipe) of every layout measured; a recipe says how counts, head, labels and differences are chosen.

    The default and its three cheaper-id layouts keep the same draws; the rest use both (``+ freq + diff``).
    """
    cheap = {"relabel": True, "diff": True}
    out = [("draws-16", {"fixed": 16}), ("draws-16 + freq", {"fixed": 16, "relabel": True}),
           ("draws-16 + diff", {"fixed": 16, "diff": True}), ("draws-16 + freq + diff", {"fixed": 16, **cheap})]
    for b in budgets:
        if b != 16:  # draws-16 + freq + diff is above
            out.append((f"draws-{b:g} + freq + diff", {"fixed": int(b), **cheap}))
        out.append((f"head+rest-{b:g} + freq + diff", {"fixed": int(b), "head": True, **cheap}))
        for rule in ("var", "entropy"):
            out.append((f"adaptive {rule} B={b:g} + freq + diff", {"rule": rule, "budget": b, **cheap}))
        # as many expected distinct ids as draws-B, spent where a draw removes the most variance per new id
        out.append((f"adaptive new-id ~draws-{b:g} + freq + diff", {"rule": "new-id", "budget": b, **cheap}))
        out.append((f"head+rest adaptive var B={b:g} + freq + diff", {"rule": "var", "budget": b, "head": True, **cheap}))
    return out


def measure_teacher(store, teacher, shards: list[int], rows: int, budgets: list[float], relabel: np.ndarray,
                    seed: int) -> dict:
    """Every layout's arrays and exact MSE over the first ``rows`` rows of each shard in ``shards``."""
    import torch

    from daram.pipeline.dump_kernels import draws_slice
    from daram.pipeline.losses import final_hidden, head_weight

    recipes = variants(budgets)
    assert len({name for name, _ in recipes}) == len(recipes), "two layouts of one name would share their arrays"
    layouts = {name: Layout(name, recipe.get("budget", recipe.get("fixed")), ragged="rule" in recipe) for name, recipe in recipes}
    generator = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    weight = head_weight(teacher)
    entropy_sum, positions = 0.0, 0
    for shard in shards:
        tokens_all = store.read_tokens(shard, 0, rows or None).astype(np.int64)
        for lo in range(0, len(tokens_all), 4):
            tokens = torch.from_numpy(tokens_all[lo : lo + 4])
            with torch.no_grad():
                z = (final_hidden(teacher, tokens) @ weight.T).flatten(0, 1)  # logits / T at T = 1
            n, vocab = z.shape
            top = z.argmax(-1)
            e = torch.exp(z - z.gather(1, top[:, None]))
            cdf = e.cumsum(-1)
            total = cdf[:, -1].double().numpy()
            sum_p2 = (e.double() ** 2).sum(-1).numpy() / total**2
            p_top, top = 1.0 / total, top.numpy()  # e is 1 at the top id
            rest_var = np.maximum((1 - p_top) ** 2 - (sum_p2 - p_top**2), 0.0)  # (1-p_h)^2 (1 - sum r^2)
            head16 = p_top.astype(np.float16)
            head_err = head16.astype(np.float64) - p_top  # the stored head's rounding: a bias
            rest_p2 = np.divide(sum_p2 - p_top**2, (1 - p_top) ** 2, out=np.zeros(n), where=p_top < 1)
            head_bias2 = head_err**2 * (1 + rest_p2)
            head_scale = np.divide((1 - head16.astype(np.float64)) ** 2, (1 - p_top) ** 2, out=np.ones(n), where=p_top < 1)
            # The default, by the dump's own kernel (which consumes z); the sampler must reproduce it draw for draw.
            u16 = torch.rand(n, 16, generator=generator)
            kernel_draws, entropy = draws_slice(z, torch.empty_like(z), u16)
            kernel_draws, entropy = kernel_draws.numpy(), entropy.numpy()
            assert np.array_equal(np.sort(sample(e, cdf, u16), -1), kernel_draws), "sample() differs from draws_slice"
            top_p = (torch.topk(e, NEW_ID_TOP, -1).values.double().numpy() / total[:, None])
            entropy_sum += float(entropy.sum())
            positions += n
            for name, recipe in recipes:
                layout = layouts[name]
                head = recipe.get("head", False)
                if "fixed" in recipe:
                    width = recipe["fixed"]
                    counts = np.full(n, width)
                elif recipe["rule"] == "new-id":
                    width = int(min(255, 4 * recipe["budget"]))
                    expected = expected_distinct(top_p, np.maximum(1 - top_p.sum(1), 0.0), width)
                    counts = allocate_per_new_id(1 - sum_p2, expected, int(recipe["budget"]))
                else:
                    width = int(min(255, 4 * recipe["budget"]))
                    w = {"var": np.sqrt(rest_var if head else 1 - sum_p2), "entropy": entropy}[recipe["rule"]]
                    counts = allocate(w, recipe["budget"], width, rng)
                if width == 16 and not head:  # the same draws as the default: only the layout differs
                    drawn = kernel_draws
                else:
                    drawn = sample(e, cdf, torch.rand(n, width, generator=generator), top if head else None)
                layout.add(draws=sorted_layout(drawn, counts, relabel if recipe.get("relabel") else None,
                                               recipe.get("diff", False)))
                layout.draws.append(counts)
                distinct = distinct_ids(sorted_layout(drawn, counts, None, False))
                if head:
                    layout.add(head_id=(relabel[top] if recipe.get("relabel") else top).astype(np.uint16), head_p=head16)
                    layout.mse.append(head_scale * rest_var / counts + head_bias2)
                    layout.unique.append(distinct + 1)
                else:
                    layout.mse.append((1 - sum_p2) / counts)
                    layout.unique.append(distinct)
    token_bytes = store.token_bytes() / store.manifest.total_tokens
    result = {"positions": positions, "entropy": entropy_sum / positions, "token_bytes": token_bytes, "layouts": {}}
    for name, layout in layouts.items():
        size = store_bytes(layout, CHUNK_ROWS * store.manifest.seq_len)
        result["layouts"][name] = {"budget": layout.budget, "bytes": size, "mse": float(np.concatenate(layout.mse).mean()),
                                   "unique": float(np.concatenate(layout.unique).mean()),
                                   "draws": float(np.concatenate(layout.draws).mean())}
    return result


def frequency_relabel(store) -> np.ndarray:
    """id -> rank by the store's token counts (most frequent first, ties by id): the permutation a store would keep."""
    counts = np.zeros(store.manifest.tokenizer.vocab_size, dtype=np.int64)
    for shard in range(store.manifest.num_shards):
        counts += np.bincount(store.read_tokens(shard).ravel().astype(np.int64), minlength=counts.size)
    order = np.lexsort((np.arange(counts.size), -counts))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return rank


def report(results: dict) -> None:
    teachers = list(results)
    default = {t: results[t]["layouts"]["draws-16"] for t in teachers}
    print("\nB/token = teacher arrays (padded to the widest count, best codec) + token shards; ragged: the same draws "
          "concatenated per chunk with a uint8 count per position (padding's cost, at most); MSE = E||p_hat - p||^2 "
          "per position, the KL gradient's variance in the student's logits, relative to draws-16's on the same teacher; "
          "MSE x bytes: the same product for the teacher arrays, relative to draws-16's (lower: less variance per byte).\n")
    header = "".join(f" {t}: B/token | ragged | codec | unique ids | MSE | MSE x bytes |" for t in teachers)
    print(f"| layout | mean draws ({' / '.join(teachers)}) |{header} <= 11 B/token on all |")
    print("|---|---:|" + "---:|---:|---|---:|---:|---:|" * len(teachers) + "---|")
    for name in results[teachers[0]]["layouts"]:
        cells, fits = "", True
        for t in teachers:
            r = results[t]["layouts"][name]
            total = r["bytes"]["best"] + results[t]["token_bytes"]
            fits &= total <= 11
            ragged = r["bytes"]["ragged"]
            ragged = f"{ragged + results[t]['token_bytes']:.2f}" if ragged is not None else "-"
            merit = r["mse"] * r["bytes"]["best"] / (default[t]["mse"] * default[t]["bytes"]["best"])
            cells += (f" {total:.2f} | {ragged} | {r['bytes']['best_codec']} | {r['unique']:.1f} | "
                      f"{r['mse'] / default[t]['mse']:.2f} | {merit:.2f} |")
        draws = " / ".join(f"{results[t]['layouts'][name].get('draws', results[t]['layouts'][name]['budget']):.1f}" for t in teachers)
        print(f"| {name} | {draws} |{cells} {'yes' if fits else 'no'} |")
    for t in teachers:
        print(f"\n{t}: entropy {results[t]['entropy']:.2f} nats, {results[t]['positions']:,} positions, tokens "
              f"{results[t]['token_bytes']:.2f} B/token; draws-16 MSE {default[t]['mse']:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="ko-small-sharp,ko-small", help="directories under ../shared/data/teachers")
    parser.add_argument("--shards", default="0,1", help="shards of the store measured")
    parser.add_argument("--rows", type=int, default=0, help="rows of 128 tokens from each shard (0: all)")
    parser.add_argument("--budgets", default="4,6,8,12,16", help="mean draws per position of the adaptive layouts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/daram-draw-bytes")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--report", help="print the table of an earlier --json and exit")
    args = parser.parse_args()
    if args.report:
        report(json.loads(Path(args.report).read_text(encoding="utf-8"))["results"])
        return

    import torch

    from daram.pipeline.hf import load_causal_lm

    torch.set_num_threads(1)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = prepare_store(work, 128)
    relabel = frequency_relabel(store)
    budgets = [float(b) for b in args.budgets.split(",")]
    results = {}
    for name in args.teachers.split(","):
        started = time.perf_counter()
        teacher = load_causal_lm(str(SHARED / "teachers" / name), "float32", "cpu").eval()
        results[name] = measure_teacher(store, teacher, [int(s) for s in args.shards.split(",")], args.rows, budgets,
                                        relabel, args.seed)
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=1), encoding="utf-8")
    report(results)


if __name__ == "__main__":
    main()

"""An independent Zarr v3 reader on a real store: TensorStore (Google's C++ implementation) reads a teacher shard
of the default kind, and the ids it decodes equal zarr-python's. Run with a Python that has tensorstore (its own
venv: `python -m venv /tmp/ts && /tmp/ts/bin/pip install tensorstore numpy`); it imports nothing of daram.

    /tmp/ts/bin/python benchmarks/tensorstore_reader.py STORE --out /tmp/ts-ids.npy   # then, with daram's venv:
    .venv/bin/python -c "import numpy as np; from daram.storage import Store; t = Store.open('STORE').teacher_shard(0); \
        print(np.array_equal(t.format.draw_ids(t.read_rows()), np.load('/tmp/ts-ids.npy')))"
"""

import argparse
from importlib.metadata import version

import numpy as np
import tensorstore as ts


def read(root: str, path: str) -> np.ndarray:
    return ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{root}/{path}"}}).result().read().result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("store")
    parser.add_argument("--shard", default="shard-00000")
    parser.add_argument("--out", required=True, help="the decoded ids, as .npy")
    args = parser.parse_args()
    steps = read(args.store, f"teacher/{args.shard}/draw_rank_steps")
    rank_ids = read(args.store, f"teacher/{args.shard}/rank_ids")
    ids = rank_ids.astype(np.int64)[np.cumsum(steps, -1)]  # the README's numpy line
    np.save(args.out, ids)
    print(f"tensorstore {version('tensorstore')}: {args.shard} draw_rank_steps {steps.shape} {steps.dtype}, rank_ids {rank_ids.shape}")


if __name__ == "__main__":
    main()

"""What ``benchmarks/gpu_suite.py`` measures against (the GPUs' datasheet peaks) and what ``daram plan --measured``
reads back from its JSON (the model FLOPs utilisation of the dump and of training).

The suite writes the JSON; this module is the one place that knows its name, version and the keys the plan
uses, so a file from another tool, another version or a broken run is refused in one line.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from daram.errors import DaramError

SUITE = "daram-gpu-suite"
SUITE_VERSION = 1


@dataclass(frozen=True)
class Peak:
    """Dense (no sparsity) tensor-core FLOP/s of one GPU; ``bfloat16`` 0 where the card has no bfloat16."""

    float16: float
    bfloat16: float = 0.0


# Vendors' datasheets (NVIDIA): Tesla P100 (PCIe 18.7 / SXM2 21.2 TFLOPS float16; no tensor cores, float16 at twice
# float32), T4 (65 TFLOPS mixed precision), V100 (SXM2 125 / PCIe 112 TFLOPS tensor), A10 (125 TFLOPS float16 and
# bfloat16 dense, 250 with sparsity), L4 (121 dense, 242 with sparsity), A100 (312 dense, SXM and PCIe), H100 (SXM
# 989 / PCIe 756 dense, twice that with sparsity), H200 (SXM 989 dense). Keys are matched as whole words of
# torch.cuda.get_device_name, first match in this order; NVL parts are left out (measured instead).
DATASHEET_PEAKS = {
    "P100-SXM2": Peak(21.2e12),
    "P100": Peak(18.7e12),
    "T4": Peak(65e12),
    "V100-PCIE": Peak(112e12),
    "V100": Peak(125e12),
    "A10": Peak(125e12, 125e12),
    "L4": Peak(121e12, 121e12),
    "A100": Peak(312e12, 312e12),
    "H100 PCIe": Peak(756e12, 756e12),
    "H100": Peak(989e12, 989e12),
    "H200": Peak(989e12, 989e12),
}


def datasheet_peak(device_name: str) -> tuple[str, Peak] | None:
    """(table key, peak) of a CUDA device name such as ``Tesla P100-PCIE-16GB`` or ``NVIDIA H100 80GB HBM3``;
    None for a card the table does not hold (an A10G, an NVL part, anything newer)."""
    if "NVL" in device_name:
        return None
    for key, peak in DATASHEET_PEAKS.items():
        if re.search(rf"(?<![\w-]){re.escape(key)}(?![\w])", device_name, flags=re.IGNORECASE):
            return key, peak
    return None


@dataclass(frozen=True)
class MeasuredMFU:
    """The suite's model FLOPs utilisation of the dump (at the dump's default dtype) and of a training step;
    None where the suite skipped that part."""

    path: str
    device: str
    mode: str  # "gpu", or "cpu" (tiny shapes: a test of the suite, not a forecast)
    dump: float | None
    dump_dtype: str
    train: float | None
    train_precision: str


def read_measured(path: str | Path) -> MeasuredMFU:
    """The MFU figures of a ``benchmarks/gpu_suite.py`` JSON; anything else is refused in one line."""
    where = f"--measured {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise DaramError(f"{where}: cannot read it ({exc.strerror or exc}); pass the JSON benchmarks/gpu_suite.py wrote") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DaramError(f"{where}: not JSON ({exc}); pass the JSON benchmarks/gpu_suite.py wrote") from None
    if not isinstance(data, dict) or data.get("suite") != SUITE:
        raise DaramError(f"{where}: not a result of benchmarks/gpu_suite.py (no \"suite\": \"{SUITE}\"); pass the JSON it wrote")
    if data.get("version") != SUITE_VERSION:
        raise DaramError(
            f"{where}: suite version {data.get('version')!r}, this daram reads version {SUITE_VERSION}; "
            "run benchmarks/gpu_suite.py of this checkout again"
        )
    try:
        device, mode = str(data["device"]["name"]), str(data["mode"])
        dump_dtype = str(data["dump_dtype"])
        dump = data["dump"].get(dump_dtype)
        train = data["train"]
        return MeasuredMFU(
            path=str(path), device=device, mode=mode,
            dump=None if dump is None else _mfu(dump["mfu"], f"{where}: dump.{dump_dtype}.mfu"), dump_dtype=dump_dtype,
            train=None if train is None else _mfu(train["mfu"], f"{where}: train.mfu"),
            train_precision="" if train is None else str(train["precision"]),
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise DaramError(f"{where}: a suite result without {exc} (damaged or cut short); run benchmarks/gpu_suite.py again") from None


def _mfu(value, what: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or not 0 < value <= 1:
        raise DaramError(f"{what} is {value!r}, not a fraction in (0, 1]; run benchmarks/gpu_suite.py again")
    return float(value)

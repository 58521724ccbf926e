"""The datasheet peaks match device names as torch reports them; a skipped part of the suite stays assumed."""

from __future__ import annotations

import json

import pytest

from daram.pipeline.job.measured import datasheet_peak, read_measured
from daram.pipeline.job.plan import ASSUMED_MFU, effective_mfu


@pytest.mark.parametrize("name, key", [
    ("Tesla P100-PCIE-16GB", "P100"), ("Tesla P100-SXM2-16GB", "P100-SXM2"), ("Tesla T4", "T4"),
    ("Tesla V100-PCIE-32GB", "V100-PCIE"), ("Tesla V100-SXM2-16GB", "V100"), ("NVIDIA A10", "A10"),
    ("NVIDIA A100-SXM4-40GB", "A100"), ("NVIDIA A100 80GB PCIe", "A100"), ("NVIDIA L4", "L4"),
    ("NVIDIA H100 80GB HBM3", "H100"), ("NVIDIA H100 PCIe", "H100 PCIe"), ("NVIDIA H200", "H200"),
    # not in the table: measured by a matmul instead of taking a near name's peak
    ("NVIDIA A10G", None), ("NVIDIA L40S", None), ("NVIDIA H100 NVL", None), ("NVIDIA GeForce RTX 4090", None),
])
def test_datasheet_peak_matches_whole_names(name, key):
    found = datasheet_peak(name)
    assert (found[0] if found else None) == key


def test_a_part_the_suite_skipped_stays_assumed(tmp_path):
    path = tmp_path / "suite.json"
    path.write_text(json.dumps({"suite": "daram-gpu-suite", "version": 1, "mode": "gpu", "device": {"name": "NVIDIA L4"},
                                "dump_dtype": "float16", "dump": {"float16": {"mfu": 0.25}}, "train": None}))
    mfu, note = effective_mfu(read_measured(path))
    assert mfu == {"dump": 0.25, "train": ASSUMED_MFU["train"]}
    assert "on NVIDIA L4, applied to every GPU below: 25.0% for the dump (float16)" in note
    assert "30% for training (assumed: the suite did not measure it)" in note

"""Durations and sizes as settings spell them (daram/units.py)."""

import pytest

from daram.errors import DaramError
from daram.units import format_duration, format_size, parse_amount, parse_duration, parse_size


def test_durations():
    assert parse_duration("11h30m") == 41400 and parse_duration("90m") == 5400 and parse_duration("1d 2h") == 93600
    assert parse_duration("45") == 45 and parse_duration("") == 0  # plain seconds; empty = no limit
    assert format_duration(41400) == "11h30m" and format_duration(75) == "1m15s" and format_duration(3) == "3s"
    for bad in ("soon", "0", "inf", "nan", "-3m", "3x"):
        with pytest.raises(DaramError, match="run.time_limit"):
            parse_duration(bad)


def test_sizes():
    assert parse_size("18GB") == 18 * 10**9 and parse_size("40MB") == 40 * 10**6 and parse_size("1.5GiB") == 3 << 29
    assert parse_size("512k") == 512_000 and parse_size("100") == 100 and parse_size("") == 0
    assert format_size(123_456_789) == "123 MB" and format_size(999) == "999 B"
    for bad in ("big", "0", "inf", "-1GB", "5 XB"):
        with pytest.raises(DaramError, match="run.disk_budget"):
            parse_size(bad)


def test_amounts_are_sizes_with_their_unit_written_out_or_counts_of_lines():
    assert parse_amount("300MB", "k") == (300_000_000, "bytes") and parse_amount("300 MB", "k") == parse_amount("300MB", "k")
    assert parse_amount("1.5 GiB", "k") == (int(1.5 * 2**30), "bytes") and parse_amount("1.5GiB", "k")[0] == parse_size("1.5GiB")
    assert parse_amount("20000 lines", "k") == (20000, "lines") and parse_amount("1 line", "k") == (1, "lines")
    for bad in ("300", "300 MBs", "1.5 lines", "-3MB", ""):
        with pytest.raises(DaramError, match="^k"):
            parse_amount(bad, "k")

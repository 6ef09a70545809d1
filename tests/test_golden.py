"""Behaviour pinned across refactors: every golden case (tests/golden.py) must produce exactly
what tests/golden/<case>.json recorded: exit code, stderr, the bytes of every output file, the
audit report and `inspect --json`."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from golden import CASES, golden_path, produce


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_golden(case, tmp_path: Path):
    expected = json.loads(golden_path(case).read_text())
    got = json.loads(json.dumps(produce(case, tmp_path)))
    assert got["exit"] == expected["exit"], got["stderr"]
    assert got["stderr"] == expected["stderr"]
    assert got["files"] == expected["files"]
    assert got.get("inspect_exit") == expected.get("inspect_exit")
    if "inspect" in expected:
        assert got["inspect"]["images"] == expected["inspect"]["images"]
        assert got["inspect"]["warnings"] == expected["inspect"]["warnings"]
        assert got["inspect"]["fields"] == expected["inspect"]["fields"]
        assert got["inspect"] == expected["inspect"]

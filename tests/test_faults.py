"""Crash safety of the file layer, by deterministic fault injection: the process dies (os._exit,
as kill -9 leaves things: no cleanup runs) just before its N-th file-system change, for every
N (or a spread of them), in a forked child; then the next run's recovery must leave exactly
the old slide or exactly the new one, and nothing of the undo record.

File-system changes counted: os.write, pwrite, replace, rename, unlink, rmdir, ftruncate,
mkdir and fsync (a death before an fsync is a death between two writes). A process death,
not a power cut: what was written stays in the page cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from fixtures.mrxs import write_mrxs
from fixtures.svs import write_svs
from wsideid import adapters, batch
from wsideid.containers import files
from wsideid.containers.output import Target
from wsideid.keyring import Keyring
from wsideid.model import Job
from wsideid.pipeline import Settings, run
from wsideid.policy import Policy

CHANGES = ("write", "pwrite", "replace", "rename", "unlink", "rmdir", "ftruncate", "mkdir", "fsync")
DIED, DONE, RAISED = 86, 0, 1


def _die_before(n: int) -> None:
    """In the child: os._exit just before the n-th file-system change."""
    seen = [0]

    def wrap(fn):
        def changed(*args, **kwargs):
            seen[0] += 1
            if seen[0] == n:
                os._exit(DIED)
            return fn(*args, **kwargs)
        return changed

    for name in CHANGES:
        setattr(os, name, wrap(getattr(os, name)))


def in_child(work, die_before: int | None) -> int:
    """Run `work` in a forked child that dies before its `die_before`-th change; its exit
    code: DIED, DONE, or RAISED (work raised)."""
    pid = os.fork()
    if pid == 0:   # pragma: no cover - the child
        code = RAISED
        try:
            if die_before is not None:
                _die_before(die_before)
            work()
            code = DONE
        except BaseException:  # noqa: BLE001
            code = RAISED
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def state(folder: Path) -> dict[str, str]:
    """Every entry under `folder`: relative path -> sha256 (folders: "dir")."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# ---- the undo record alone: every crash point of a change, and of its restore --------------

def _change(folder: Path) -> None:
    """An in-place change as the TIFF writer makes it: bytes overwritten, zeroed, the file
    cut and renamed; then released (the record forgotten)."""
    path, final = folder / "slide.svs", folder / "wsi-new.svs"
    undo = files.Undo(files.undo_record_for(path))
    fd = os.open(path, os.O_RDWR)
    try:
        planned = files.PlannedWrites(fd)
        planned.write(b"NEW" * 100, 1000)
        planned.write(b"tail", 60_000)
        planned.zero_gaps(np.array([0, 20_000]), np.array([5000, 30_000]))
        planned.truncate(50_000)
        undo.keep_ranges(path, planned.ranges())
        undo.rename(path, final)
        undo.seal()
        planned.apply()
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(path, final)
    files.fsync_dir(folder)
    undo.discard()


OLD_BYTES = random.Random(4711).randbytes(64_000)


def _fresh(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    (folder / "slide.svs").write_bytes(OLD_BYTES)


def test_undo_every_crash_point(tmp_path):
    """Die before each change of an in-place change and its release; recovery (what every
    run does first) gives the old slide or the new one; a recovery that itself dies at any
    point is finished by the next one."""
    folder = tmp_path / "slide"
    _fresh(folder)
    old = state(folder)
    assert in_child(lambda: _change(folder), None) == DONE
    new = state(folder)
    assert list(new) == ["wsi-new.svs"]
    outcomes = {"old": 0, "new": 0}
    n = 0
    while True:
        n += 1
        _fresh(folder)
        code = in_child(lambda: _change(folder), n)
        if code == DONE:
            break
        assert code == DIED, f"the change raised before change {n}"
        record = files.undo_record_for(folder / "slide.svs")
        if record.exists():
            # the recovery itself dies at its first, second, ... change; the next one finishes
            m = 0
            while in_child(lambda: files.restore(record), m := m + 1) == DIED:
                pass
        assert not record.exists(), f"crash before change {n}: the record is left"
        now = state(folder)
        if now == old:
            outcomes["old"] += 1
        elif now == new:
            outcomes["new"] += 1
        else:
            pytest.fail(f"crash before change {n}: neither the old nor the new slide: {list(now)}")
    assert n > 20 and outcomes["old"] and outcomes["new"], (n, outcomes)


def test_interrupted_forget_of_an_older_version_is_not_restored(tmp_path):
    """A record whose saved parts were partly removed (what the rmtree of earlier versions
    left when killed after the release) is forgotten: the released slide stays released,
    under its name, and later runs do not fail on it (they used to rename the slide back to
    its original name and then crash, forever)."""
    folder = tmp_path / "slide"
    _fresh(folder)
    path = folder / "slide.svs"
    undo = files.Undo(files.undo_record_for(path))
    fd = os.open(path, os.O_RDWR)
    planned = files.PlannedWrites(fd)
    planned.write(b"X" * 10, 0)
    undo.keep_ranges(path, planned.ranges())
    undo.rename(path, folder / "wsi-new.svs")
    undo.seal()
    planned.apply()
    os.close(fd)
    os.replace(path, folder / "wsi-new.svs")
    released = {k: v for k, v in state(folder).items() if not k.startswith(".")}
    for blob in undo.record.glob("*.bin"):
        blob.unlink()
    assert files.restore(undo.record) is False
    assert state(folder) == released
    assert not undo.record.exists()


def test_damaged_undo_record_is_one_error_and_touches_nothing(tmp_path):
    folder = tmp_path / "slide"
    _fresh(folder)
    path = folder / "slide.svs"
    record = files.undo_record_for(path)
    record.mkdir()
    (record / "manifest.json").write_text("{not json")
    before = state(folder)
    found = batch.find([folder])
    assert [(p.name, "cannot be read" in why) for p, why in found.problems] == [("slide.svs", True)]
    assert not found.items          # the slide is not touched while its record is in doubt
    assert state(folder) == before


# ---- the whole in-place pipeline, killed at a spread of points ----------------------------

KEY = b"fault-injection-key-0123456789abcdef"


def _in_place(folder: Path) -> None:
    [src] = [p for p in folder.iterdir() if p.suffix in (".svs", ".mrxs")]
    job = Job((src,), adapters.detect(src).name)
    result = run(job, Settings(Policy(), Keyring(KEY), Target(None)))
    assert result.status == "ok", result.message


@pytest.mark.parametrize("kind", ["svs", "mrxs"])
def test_in_place_pipeline_killed(tmp_path, kind):
    """`deid --in-place` of an SVS (a patched file renamed) and a MIRAX slide (data files
    patched, Slidedat.ini and Index.dat replaced, folder and file renamed), killed before
    a spread of its file-system changes (and each of the last six; every one of them with
    WSIDEID_FAULTS_ALL=1): the next run's recovery leaves exactly the old
    slide or the new one, and a run after it completes to the new one."""
    template = tmp_path / "template"
    template.mkdir()
    write_svs(template / "s.svs") if kind == "svs" else write_mrxs(template / "s.mrxs")
    old = state(template)
    reference = tmp_path / "reference"
    shutil.copytree(template, reference)
    assert in_child(lambda: _in_place(reference), None) == DONE
    new = state(reference)
    total = _count_changes(template, tmp_path)
    if os.environ.get("WSIDEID_FAULTS_ALL"):    # the long run: every change (docs/robustness.md)
        points = list(range(1, total + 1))
    else:    # a spread, and the last changes (rename, release, forgetting the record) all
        points = sorted(set(range(1, total + 1, max(1, total // 6)))
                        | set(range(max(1, total - 5), total + 1)))
    outcomes = {"old": 0, "new": 0}
    trial = tmp_path / "trial"
    for n in points:
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(template, trial)
        code = in_child(lambda: _in_place(trial), n)
        assert code in (DIED, DONE), f"the run raised when killed before change {n}"
        batch.restore_interrupted([trial])      # what every run does first
        now = state(trial)
        if now == old:
            outcomes["old"] += 1
        elif now == new:
            outcomes["new"] += 1
        else:
            pytest.fail(f"killed before change {n} of {total}: neither old nor new: {sorted(now)}")
    assert in_child(lambda: _in_place(trial), None) == DONE or state(trial) == new
    assert outcomes["old"] and outcomes["new"], outcomes


def _count_changes(template: Path, tmp_path: Path) -> int:
    """How many file-system changes an uninterrupted in-place run makes (counted in a
    child, reported through a file)."""
    folder = tmp_path / "count"
    shutil.copytree(template, folder)
    out = tmp_path / "count.json"

    def work() -> None:
        seen = [0]
        real = {name: getattr(os, name) for name in CHANGES}

        def wrap(fn):
            def changed(*args, **kwargs):
                seen[0] += 1
                return fn(*args, **kwargs)
            return changed

        for name in CHANGES:
            setattr(os, name, wrap(real[name]))
        _in_place(folder)
        for name in CHANGES:
            setattr(os, name, real[name])
        out.write_text(json.dumps(seen[0]))

    assert in_child(work, None) == DONE
    return json.loads(out.read_text())

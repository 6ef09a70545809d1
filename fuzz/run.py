"""Run a fuzz target for a while.

    .venv/bin/python fuzz/run.py TARGET [--seconds N] [--engine atheris|mutate] [--seed S]
    .venv/bin/python fuzz/run.py all --seconds 5          # the smoke run: every target briefly

atheris (pip install -c constraints.txt 'wsideid[fuzz]') is coverage-guided (libFuzzer); its
corpus is kept in fuzz/corpus/TARGET/ (not committed) and a crashing input is written to
fuzz/crashes/. Without atheris, `mutate` flips, inserts, deletes and splices bytes of the
seeds at random (seeded, reproducible). Either prints one line per target: executions,
executions per second, findings. Exit 1 when a property failed.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import targets as T  # noqa: E402

INTERESTING = [0, 0xFF, 0x7F, 0x80, 0x00, 0x01, 0x10, 0x20, 0x3D, 0x5B, 0x5D, 0x0A, 0x0D]


def mutate(data: bytes, rng: random.Random, others: tuple[bytes, ...]) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        if not buf:
            buf += bytes([rng.randrange(256)])
            continue
        op = rng.randrange(7)
        pos = rng.randrange(len(buf))
        if op == 0:
            buf[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[pos] = rng.choice(INTERESTING)
        elif op == 2:   # a 16- or 32-bit field set to an extreme
            width = rng.choice((2, 4))
            buf[pos:pos + width] = rng.choice((b"\xff" * width, b"\x00" * width,
                                               b"\x7f" + b"\xff" * (width - 1)))
        elif op == 3:
            del buf[pos:pos + rng.randrange(1, 64)]
        elif op == 4:
            buf[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        elif op == 5:
            other = rng.choice(others)
            if other:
                a = rng.randrange(len(other))
                buf[pos:pos] = other[a:a + rng.randrange(1, 256)]
        else:
            buf = buf[:pos]
    return bytes(buf)


def run_mutate(name: str, seconds: float, seed: int) -> tuple[int, list[str]]:
    target = T.TARGETS[name]
    corpus = T.seeds(name)
    rng = random.Random(seed)
    findings: list[str] = []
    execs = 0
    end = time.monotonic() + seconds
    for data in corpus:   # the seeds themselves must pass
        findings += _one(target, data, name)
        execs += 1
    while time.monotonic() < end and len(findings) < 5:
        data = mutate(rng.choice(corpus), rng, corpus)
        findings += _one(target, data, name)
        execs += 1
    return execs, findings


def _one(target, data: bytes, name: str) -> list[str]:
    try:
        target(data)
        return []
    except Exception as exc:  # noqa: BLE001 - every escape is a finding
        crash = HERE / "crashes" / name
        crash.mkdir(parents=True, exist_ok=True)
        path = crash / f"{abs(hash(data)):016x}.bin"
        path.write_bytes(data)
        return [f"{type(exc).__name__}: {exc} ({path}) " + traceback.format_exc(limit=-2)
                .strip().splitlines()[-3]]


def run_atheris(name: str, seconds: float) -> int:
    import atheris

    import importlib

    import pkgutil

    import wsideid

    # every module of the package instrumented (a parser missing from a hand-kept list is
    # fuzzed blind: libFuzzer then sees no coverage beyond the target function), and the
    # Python libraries they import with them (pydicom's parser is what dicom_header fuzzes)
    with atheris.instrument_imports():
        for module in pkgutil.walk_packages(wsideid.__path__, "wsideid."):
            if not module.name.endswith("__main__"):
                importlib.import_module(module.name)
    corpus = HERE / "corpus" / name
    corpus.mkdir(parents=True, exist_ok=True)
    for n, data in enumerate(T.seeds(name)):
        (corpus / f"seed-{n}").write_bytes(data)
    crashes = HERE / "crashes" / name
    crashes.mkdir(parents=True, exist_ok=True)
    target = T.TARGETS[name]
    atheris.Setup([sys.argv[0], f"-max_total_time={int(seconds)}", "-print_final_stats=1",
                   f"-artifact_prefix={crashes}/", "-rss_limit_mb=2048", "-timeout=60",
                   str(corpus)], target)
    atheris.Fuzz()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", choices=[*T.TARGETS, "all"])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--engine", choices=["atheris", "mutate"], default="mutate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    import warnings

    warnings.simplefilter("ignore")
    if args.engine == "atheris":
        if args.target == "all":
            parser.error("atheris runs one target per process")
        return run_atheris(args.target, args.seconds)
    names = list(T.TARGETS) if args.target == "all" else [args.target]
    failed = False
    for name in names:
        t0 = time.monotonic()
        execs, findings = run_mutate(name, args.seconds, args.seed)
        took = time.monotonic() - t0
        print(f"{name}: {execs} executions in {took:.1f} s ({execs / took:.0f}/s), "
              f"{len(findings)} findings", flush=True)
        for f in findings:
            print(f"  {f}", flush=True)
        failed |= bool(findings)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

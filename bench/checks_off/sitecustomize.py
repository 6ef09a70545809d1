"""Benchmark harness only (`bench/batch.py --floor`): with this folder first on PYTHONPATH,
every Python process of a run (the command and its spawned workers) switches off the checks
named in WSIDEID_BENCH_SKIP (`barcodes`, `verify`, `reader`), to measure what they cost. Not a
feature of the tool: nothing in the package reads this variable."""
import os

_skip = os.environ.get("WSIDEID_BENCH_SKIP", "")
if _skip:
    import wsideid.pipeline as _pipeline

    if "barcodes" in _skip:
        import wsideid.images.barcodes as _barcodes
        import wsideid.images.overview as _overview

        _barcodes.decode_all = _overview.decode_all = lambda *args, **kwargs: []
    if "verify" in _skip:
        _pipeline.verify = lambda *args, **kwargs: []
    if "reader" in _skip:
        import wsideid.verify.reader as _reader

        _reader.openslide_view = _pipeline.openslide_view = lambda *args, **kwargs: None

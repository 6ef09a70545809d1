"""Convert a slide to DICOM WSI with wsidicomizer, de-identified in the same run.

The conversion writes to a hidden folder in OUTDIR without the source's confidential metadata
(no titles, barcodes, serials, dates), with UIDs derived from the key; the series then goes
through the same DICOM de-identification and verification as any DICOM input, and the
pseudonym becomes the patient and container identity. Tiles are not re-encoded: after
conversion every frame's compressed scan data is compared with the source tile's.
"""
from __future__ import annotations

import hashlib
import hmac
import shutil
import secrets
from pathlib import Path

import numpy as np

from .adapters import open_slide
from .dicom_pipeline import deidentify_series
from .errors import SlideError, VerificationError
from .pipeline import Result
from .policy import Policy
from .pseudonym import Keyring, fingerprint


def lossless_available() -> str | None:
    """None when tiles can be copied without re-encoding, else why not."""
    try:
        from turbojpeg import TurboJPEG

        TurboJPEG()
    except Exception as exc:  # noqa: BLE001 - PyTurboJPEG raises plain exceptions
        return f"libturbojpeg is not usable ({exc}); install libturbojpeg0"
    return None


class _KeyedUids:
    """Stable UIDs for one source: the same key and slide give the same UIDs on every run."""

    def __init__(self, key: bytes, source_fp: bytes):
        self.key, self.fp, self.n = key, source_fp, 0

    def __call__(self):
        from pydicom.uid import UID

        self.n += 1
        digest = hmac.new(self.key, self.fp + self.n.to_bytes(8, "big"), hashlib.sha256).digest()
        return UID("2.25." + str(int.from_bytes(digest[:16], "big")))


def convert(path: Path, policy: Policy, keyring: Keyring, outdir: Path,
            allow_transcode: bool = False) -> Result:
    from wsidicomizer import WsiDicomizer

    problem = lossless_available()
    if problem and not allow_transcode:
        raise SlideError(f"lossless conversion unavailable: {problem} (or pass --allow-transcode)")
    slide = open_slide(path)  # refuses what is not a supported slide, before writing anything
    try:
        source_tiles = _source_level0_tiles(slide)
    finally:
        slide.close()
    fp = fingerprint(path)
    staging = outdir / f".convert-{secrets.token_hex(4)}.partial"
    staging.mkdir()
    try:
        try:
            files = WsiDicomizer.convert(
                path, staging, include_label=policy.label == "keep",
                include_overview=policy.macro == "keep", include_confidential=False,
                uid_generator=_KeyedUids(keyring.key, fp), workers=1)
        except Exception as exc:  # noqa: BLE001 - wsidicomizer raises many types
            raise SlideError(f"wsidicomizer could not convert the slide: {exc}") from exc
        files = [Path(f) for f in files]
        if not allow_transcode:
            _check_not_reencoded(files, source_tiles)
        pseudonym = keyring.slide_pseudonym(fp)
        result = deidentify_series(files, policy, keyring, outdir, pseudonym=pseudonym,
                                   identity={"PatientID": pseudonym, "PatientName": pseudonym,
                                             "ContainerIdentifier": pseudonym})
        result.source = path
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _source_level0_tiles(slide) -> list[bytes]:
    """Scan data (after SOS for JPEG, after SOC for J2K) of the first few level-0 tiles."""
    ifd = slide.tiff.ifds[0]
    regions = ifd.data_regions(slide.bo)
    if regions is None or 322 not in ifd.tags:
        return []
    _, _, offs, cnts = regions
    picks = np.linspace(0, len(offs) - 1, min(16, len(offs))).astype(int).tolist()
    return [_scan_data(slide.tiff.read(int(offs[i]), int(cnts[i]))) for i in picks if cnts[i] > 0]


def _scan_data(stream: bytes) -> bytes:
    if stream[:2] == b"\xff\xd8":
        at = stream.find(b"\xff\xda")
        return stream[at:].rstrip(b"\x00") if at >= 0 else stream
    return stream.rstrip(b"\x00")


def _check_not_reencoded(files: list[Path], source_tiles: list[bytes]) -> None:
    """Every sampled source tile's compressed scan data must appear as a frame unchanged."""
    if not source_tiles:
        return
    from pydicom import dcmread
    from pydicom.encaps import generate_frames

    frames: set[bytes] = set()
    for f in files:
        ds = dcmread(f)
        if ds.ImageType[2] != "VOLUME" or not ds.file_meta.TransferSyntaxUID.is_encapsulated:
            continue
        for frame in generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames", 1))):
            frames.add(_scan_data(frame))
    missing = sum(1 for t in source_tiles if t not in frames)
    if missing:
        raise VerificationError(f"{missing} of {len(source_tiles)} sampled tiles were re-encoded "
                                "during conversion (pass --allow-transcode to accept that)")

"""The `wsideid` command: parses options, hands slides to the batch, prints what happened."""
from __future__ import annotations

import csv
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import adapters, batch
from . import needles as needle_search
from .containers.output import Target
from .errors import InstallError, SlideError
from .keyring import Keyring, load_key
from .model import Job, Result
from .pipeline import Settings, plan_job
from .policy import DATE_MODES, Policy
from .report import audit

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="De-identify whole-slide images.")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        sys.stdout.write(f"wsideid {__version__}\n")
        raise typer.Exit()


@app.callback()
def _options(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")) -> None:
    """De-identify whole-slide images."""
out = Console(width=None if sys.stdout.isatty() else 200)

EXIT_FINDINGS = 1
EXIT_INPUT = 2


def error_line(message: str) -> None:
    """One line on stderr, never wrapped: scripts grep for it."""
    sys.stderr.write(f"wsideid: error: {message}\n".replace("\r", " "))
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_INPUT) -> None:
    error_line(message)
    raise typer.Exit(code)


def slide_files(path: Path) -> list[Path]:
    """Every file a slide consists of (a MIRAX slide: NAME.mrxs and the files in NAME/)."""
    if path.name.lower().endswith(".mrxs") and path.is_file():
        folder = path.with_name(path.name[: -len(".mrxs")])
        return [path] + (sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [])
    return [path]


def parse_region(text: str | None) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        fail("--macro-region must be x0,y0,x1,y1 (fractions of the image)")
        raise
    return x0, y0, x1, y1


def make_policy(dates: str, keep_device_id: bool, label: str, macro: str,
                keyring: Keyring | None = None, **options) -> Policy:
    try:
        return Policy(dates=dates, keep_device_id=keep_device_id, label=label, macro=macro,
                      date_shift_days=keyring.date_shift_days() if keyring else 0, **options)
    except ValueError as exc:
        fail(str(exc))
        raise


def make_redaction(regions_file: Path | None, region: list[str] | None, region_level: int,
                   fill: int, required: bool = False):
    """The regions to redact (policy.Redaction), None when none is given. A file or rectangle
    that cannot be used is one error line (exit 2) before any slide is read."""
    if regions_file is None and not region:
        if required:
            fail("no region given: use --region x,y,w,h or --regions FILE")
        return None
    from .images.regions import RegionError, from_rectangles, read_geojson_parts, union
    from .policy import Redaction

    if not 0 <= fill <= 255:
        fail("--fill must be a grey value from 0 to 255")
    if region_level < 0:
        fail("--region-level must be 0 or more")
    parts = []
    if regions_file is not None:
        try:
            text = regions_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"{regions_file}: cannot read the regions file: "
                 f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'}")
        try:
            parts += read_geojson_parts(text)
        except RegionError as exc:
            fail(f"{regions_file}: {exc}")
    for n, rect in enumerate(region or [], 1):
        try:
            values = [float(v) for v in rect.split(",")]
        except ValueError:
            values = []
        try:
            parts.append(from_rectangles([values]))
        except RegionError as exc:
            fail(f"--region {rect}: {str(exc).replace('region 1: ', '')}")
    return Redaction(union(parts), tuple(parts), region_level, fill)


def job_of(file: Path) -> Job:
    """The slide one named file is (a DICOM instance alone)."""
    if file.is_dir():
        raise SlideError("is a folder, not a slide file")
    if not file.exists():
        raise SlideError("no such file")
    adapter = adapters.detect(file)
    if adapter is None:
        raise SlideError(batch.not_a_slide(file))
    return Job((file,), adapter.name)


def make_keyring(key_file: Path | None) -> Keyring:
    try:
        return Keyring(load_key(key_file))
    except (OSError, ValueError) as exc:
        fail(f"key: {exc}")
        raise


DatesOpt = typer.Option("remove", "--dates", help=f"Dates: {' | '.join(DATE_MODES)}.")
DeviceOpt = typer.Option(False, "--keep-device-id", help="Keep scanner serial numbers.")
LabelOpt = typer.Option("drop", "--label", help="Label image: drop | keep (after its checks) | replace (a synthesized label with the pseudonym).")
MacroOpt = typer.Option("drop", "--macro", help="Macro (overview) image: drop | keep (after its checks) | redact (label area blanked).")
StrictOpt = typer.Option(False, "--strict", help="A label or overview to be kept that shows a barcode or text fails the slide (instead of being dropped or redacted).")
MacroRegionOpt = typer.Option(None, "--macro-region", help="Where the label is in the overview: x0,y0,x1,y1 as fractions of the image (overrides detection).")
OcrOpt = typer.Option(True, "--ocr/--no-ocr", help="Read text on labels and overviews that are to be kept (needs the ocr extra and tesseract-ocr).")
MapOpt = typer.Option(None, "--map", help="Write original -> pseudonym CSV here (outside OUTDIR).")
RegionsOpt = typer.Option(None, "--regions", help="Redact the regions of this GeoJSON file (QuPath export; level-0 pixels) on every level.")
RegionOpt = typer.Option(None, "--region", help="Redact the rectangle x,y,w,h (level-0 pixels) on every level; repeatable.")
RegionLevelOpt = typer.Option(0, "--region-level", help="The regions are given in the pixels of this pyramid level.")
FillOpt = typer.Option(0, "--fill", help="Grey value painted over the regions (0 black .. 255 white).")
KeyOpt = typer.Option(None, "--key-file", help="Secret key for stable pseudonyms, UIDs and date shifts (created if missing).")


@app.command()
def deid(
    inputs: List[Path] = typer.Argument(..., help="Slide files or folders."),
    outdir: Optional[Path] = typer.Option(None, "-o", "--output", help="Output folder."),
    in_place: bool = typer.Option(False, "--in-place", help="Edit the inputs themselves."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    dates: str = DatesOpt,
    keep_device_id: bool = DeviceOpt,
    label: str = LabelOpt,
    macro: str = MacroOpt,
    strict: bool = StrictOpt,
    macro_region: Optional[str] = MacroRegionOpt,
    ocr: bool = OcrOpt,
    map_file: Optional[Path] = MapOpt,
    key_file: Optional[Path] = KeyOpt,
    retain_uids: bool = typer.Option(False, "--retain-uids", help="DICOM: PS3.15 Retain UIDs Option."),
    retain_institution: bool = typer.Option(False, "--retain-institution", help="DICOM: Retain Institution Identity Option."),
    retain_patient_characteristics: bool = typer.Option(False, "--retain-patient-characteristics", help="DICOM: Retain Patient Characteristics Option."),
    clean_descriptors: bool = typer.Option(False, "--clean-descriptors", help="DICOM: Clean Descriptors Option (descriptions that cannot be cleaned are removed)."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json; in place: beside the first slide)."),
    regions_file: Optional[Path] = RegionsOpt,
    region: Optional[List[str]] = RegionOpt,
    region_level: int = RegionLevelOpt,
    fill: int = FillOpt,
) -> None:
    """De-identify slides into OUTDIR (or in place)."""
    if in_place and outdir is not None:
        fail("use either -o OUTDIR or --in-place, not both")
    if not dry_run and not in_place and outdir is None:
        fail("missing -o OUTDIR (or --in-place)")
    redaction = make_redaction(regions_file, region, region_level, fill)
    keyring = make_keyring(key_file)
    policy = make_policy(dates, keep_device_id, label, macro, keyring, retain_uids=retain_uids,
                         retain_institution=retain_institution,
                         retain_patient_characteristics=retain_patient_characteristics,
                         clean_descriptors=clean_descriptors, strict=strict,
                         macro_region=parse_region(macro_region), ocr=ocr,
                         redaction=redaction)
    if map_file is not None and outdir is not None:
        if batch.inside(map_file, outdir):
            fail(f"{map_file}: the map must be kept outside the released folder {outdir}")
    if outdir is not None and not dry_run:
        prepare_outdir(outdir)
    found = batch.find(inputs, repair=not dry_run)
    for path in found.restored:
        sys.stderr.write(f"wsideid: warning: {path}: an interrupted in-place run had left it "
                         "half-changed: restored from its undo record\n")
    for path, why in found.problems:
        error_line(f"{path}: {why}")
    if not found.jobs and not found.problems:
        fail("no slides found in the given inputs")

    if dry_run:
        code = EXIT_INPUT if found.problems else 0
        for job in found.jobs:
            try:
                plan = plan_job(job, policy, keyring)
            except SlideError as exc:
                error_line(f"{job.path}: {exc}")
                code = EXIT_INPUT
                continue
            print_plan(job.path, plan, show_values=False)
        raise typer.Exit(code)

    settings = Settings(policy, keyring, Target(None if in_place else outdir))
    results = [Result(path, status="error", message=why) for path, why in found.problems
               if path.exists()]
    results += batch.run_all(found.jobs, settings, print_result)
    _summarise(results)
    # in place, the report goes beside the (renamed) slides of the first input
    first = found.jobs[0].path.parent if found.jobs else Path(".")
    written = _write_records(map_file, results, report_file or (outdir or first) / "wsideid-report.json",
                             {**policy.options(), "in_place": in_place})
    if not written or found.problems or any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FINDINGS)


def print_result(result: Result) -> None:
    """One slide's outcome on stderr: an error line naming what failed, and its warnings."""
    if result.status != "ok":
        error_line(f"{result.failed or result.source}: {result.message}")
    warnings = list(result.plan.warnings if result.plan else [])
    if result.status == "ok" and result.message:
        warnings.append(result.message)
    for warning in warnings:
        sys.stderr.write(f"wsideid: warning: {result.source}: {warning}\n")


def prepare_outdir(outdir: Path) -> None:
    """Create the output folder and make sure files can be created in it, before any slide
    is read: a read-only or missing-permission folder is one error naming the folder."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"{outdir}: cannot create output folder: {exc.strerror or exc}")
    try:
        probe = outdir / f".wsideid-probe-{os.getpid()}"
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        fail(f"{outdir}: cannot write to the output folder: {exc.strerror or exc}")


def _write_records(map_file: Path | None, results: list[Result], report_path: Path,
                   options: dict) -> bool:
    """The map and the audit report; a failure to write either is one error line naming
    the file (never the input). Returns False when one of them could not be written."""
    ok = True
    if map_file is not None:
        try:
            _write_map(map_file, results)
        except OSError as exc:
            error_line(f"{map_file}: cannot write the map: {exc.strerror or exc}")
            ok = False
    try:
        audit.write(report_path, audit.build(results, options))
    except OSError as exc:
        error_line(f"{report_path}: cannot write the audit report: {exc.strerror or exc}")
        ok = False
    return ok


def _summarise(results: list[Result], title: str = "wsideid deid") -> None:
    table = Table(title=title)
    for col in ("input", "output", "removed/replaced", "dates", "images dropped", "status"):
        table.add_column(col)
    for r in results:
        counts = r.plan.counts() if r.plan else {}
        dropped = sum(1 for i in r.plan.images if i.action == "drop") if r.plan else 0
        table.add_row(r.source.name, r.output.name if r.output else "-",
                      str(counts.get("remove", 0) + counts.get("clean", 0) + counts.get("replace", 0)),
                      str(counts.get("date", 0)), str(dropped), r.status)
    out.print(table)


def _write_map(map_file: Path, results: list[Result]) -> None:
    new = not map_file.exists()
    with open(map_file, "a", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        if new:
            writer.writerow(["source", "pseudonym", "output", "status"])
        for r in results:
            writer.writerow([str(r.source.resolve()), r.pseudonym, str(r.output or ""), r.status])


def print_plan(path: Path, plan, show_values: bool) -> None:
    table = Table(title=f"{path.name} ({plan.format})")
    for col in ("image", "role", "size", "codec", "action"):
        table.add_column(col)
    for img in plan.images:
        table.add_row(img.index, img.role, f"{img.width}x{img.height}", img.compression, img.action)
    out.print(table)
    fields = Table()
    cols = ("field", "location") + (("value",) if show_values else ()) + ("action", "new value" if show_values else "why")
    for col in cols:
        fields.add_column(col, overflow="fold")
    for f in plan.fields:
        row = [f.name, f.location]
        if show_values:
            row += [_short(f.value), f.action, _short(f.new_value or "")]
        else:
            row += [f.action, f.why]
        fields.add_row(*row)
    out.print(fields)
    print_regions(plan)
    for w in plan.warnings:
        out.print(f"warning: {w}", markup=False)


def print_regions(plan) -> None:
    """The regions a plan paints over, and what each image gets."""
    if not plan.regions:
        return
    for region in plan.regions:
        out.print(f"region {region['region']}: level-0 pixels {region['bounds']} "
                  f"(area {region['area']})", markup=False, highlight=False)
    table = Table(title="redacted")
    for col in ("image", "role", "level", "pixels", "pieces touched", "rewritten", "path"):
        table.add_column(col, overflow="fold")
    for r in plan.redactions():
        info = r.public()
        table.add_row(info["image"], info["role"], "-" if info["level"] is None else str(info["level"]),
                      str(info["bounds"]),
                      f"{info['pieces_touched']} of {info['pieces']}",
                      str(info["pieces_rewritten"]), info["path"])
    out.print(table)


def _short(text: str, limit: int = 120) -> str:
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "..."


@app.command()
def convert(
    inputs: List[Path] = typer.Argument(..., help="Slide files or folders (SVS, NDPI, OME-TIFF; MRXS with --allow-transcode)."),
    to: str = typer.Option("dicom", "--to", help="Target format (dicom)."),
    outdir: Path = typer.Option(..., "-o", "--output", help="Output folder."),
    dates: str = DatesOpt,
    keep_device_id: bool = DeviceOpt,
    label: str = LabelOpt,
    macro: str = MacroOpt,
    map_file: Optional[Path] = MapOpt,
    key_file: Optional[Path] = KeyOpt,
    allow_transcode: bool = typer.Option(False, "--allow-transcode", help="Accept re-encoded tiles when the lossless path is unavailable."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json)."),
) -> None:
    """Convert slides to de-identified DICOM WSI (tiles copied, not re-encoded)."""
    from .convert import convert as convert_slide

    if to != "dicom":
        fail("--to: only dicom is supported")
    keyring = make_keyring(key_file)
    policy = make_policy(dates, keep_device_id, label, macro, keyring)
    if map_file is not None and batch.inside(map_file, outdir):
        fail(f"{map_file}: the map must be kept outside the released folder {outdir}")
    prepare_outdir(outdir)
    found = batch.find(inputs)
    for path, why in found.problems:
        error_line(f"{path}: {why}")
    results = [Result(path, status="error", message=why) for path, why in found.problems
               if path.exists()]
    for job in found.jobs:
        result = batch.guarded(job.path, lambda: convert_slide(job, policy, keyring, outdir,
                                                               allow_transcode), outdir)
        print_result(result)
        results.append(result)
    _summarise(results, "wsideid convert --to dicom")
    written = _write_records(map_file, results, report_file or outdir / "wsideid-report.json",
                             {**policy.options(), "convert": "dicom",
                              "allow_transcode": allow_transcode})
    if not written or found.problems or any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FINDINGS)


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A slide file."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    dates: str = DatesOpt,
    keep_device_id: bool = DeviceOpt,
    label: str = LabelOpt,
    macro: str = MacroOpt,
    macro_region: Optional[str] = MacroRegionOpt,
    ocr: bool = OcrOpt,
    regions_file: Optional[Path] = RegionsOpt,
    region: Optional[List[str]] = RegionOpt,
    region_level: int = RegionLevelOpt,
    fill: int = FillOpt,
) -> None:
    """Every image with its role, every field with its value, location and planned action
    (barcodes found on the label, overview and thumbnail are fields too)."""
    policy = make_policy(dates, keep_device_id, label, macro, macro_region=parse_region(macro_region),
                         ocr=ocr, redaction=make_redaction(regions_file, region, region_level, fill))
    try:
        plan = plan_job(job_of(file), policy, Keyring(load_key(None)))
    except SlideError as exc:
        fail(f"{file}: {exc}")
    if as_json:
        doc = {"file": str(file), "format": plan.format,
               "images": [i.public() for i in plan.images],
               "fields": [{**f.public(), "value": f.value, "new_value": f.new_value} for f in plan.fields],
               "warnings": plan.warnings}
        if plan.regions:
            doc["regions"] = plan.regions
            doc["redacted"] = [r.public() for r in plan.redactions()]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_plan(file, plan, show_values=True)


@app.command()
def redact(
    inputs: List[Path] = typer.Argument(..., help="Slide files or folders."),
    outdir: Optional[Path] = typer.Option(None, "-o", "--output", help="Output folder."),
    in_place: bool = typer.Option(False, "--in-place", help="Edit the inputs themselves."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    region: Optional[List[str]] = RegionOpt,
    regions_file: Optional[Path] = RegionsOpt,
    region_level: int = RegionLevelOpt,
    fill: int = FillOpt,
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json; in place: beside the first slide)."),
) -> None:
    """Paint regions over every pyramid level, changing nothing else (no de-identification);
    the output keeps the input's name and goes through the same verification."""
    if in_place and outdir is not None:
        fail("use either -o OUTDIR or --in-place, not both")
    if not dry_run and not in_place and outdir is None:
        fail("missing -o OUTDIR (or --in-place)")
    redaction = make_redaction(regions_file, region, region_level, fill, required=True)
    policy = Policy(label="keep", macro="keep", redaction=redaction, deidentify=False)
    found = batch.find(inputs)
    for path, why in found.problems:
        error_line(f"{path}: {why}")
    if not found.jobs and not found.problems:
        fail("no slides found in the given inputs")
    if outdir is not None and not dry_run:
        names = [job.path.name if not adapters.by_name(job.format).multi_file
                 else f"{job.path.parent.name}-{job.path.stem}" for job in found.jobs]
        for job in found.jobs:
            if outdir.resolve() in (p.resolve().parent for p in job.paths):
                fail(f"{job.path}: the output folder holds the input; use --in-place to "
                     "redact the input itself")
        if len(set(names)) != len(names):
            fail("two inputs have the same name: their outputs would collide")
        prepare_outdir(outdir)
    keyring = Keyring(load_key(None))
    if dry_run:
        code = EXIT_INPUT if found.problems else 0
        for job in found.jobs:
            try:
                plan = plan_job(job, policy, keyring)
            except SlideError as exc:
                error_line(f"{job.path}: {exc}")
                code = EXIT_INPUT
                continue
            print_plan(job.path, plan, show_values=False)
        raise typer.Exit(code)
    settings = Settings(policy, keyring, Target(None if in_place else outdir))
    results = [Result(path, status="error", message=why) for path, why in found.problems
               if path.exists()]
    results += batch.run_all(found.jobs, settings, print_result)
    _summarise(results, "wsideid redact")
    first = found.jobs[0].path.parent if found.jobs else Path(".")
    written = _write_records(None, results, report_file or (outdir or first) / "wsideid-report.json",
                             {**policy.options(), "in_place": in_place})
    if not written or found.problems or any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FINDINGS)


@app.command()
def scan(
    paths: List[Path] = typer.Argument(..., help="Slide files or folders."),
    needles_file: Optional[Path] = typer.Option(None, "--needles", help="File with one identifier string per line to search for."),
) -> None:
    """Residual check: unsafe fields, associated images, given identifiers in the raw bytes."""
    targets: list[str] = []
    if needles_file is not None:
        try:
            targets = [line.strip() for line in needles_file.read_text(encoding="utf-8").splitlines() if line.strip()]
        except OSError as exc:
            fail(f"{needles_file}: {exc.strerror}")
    found = batch.find(paths, repair=False)
    for path, why in found.problems:
        error_line(f"{path}: {why}")
    findings = 0
    unreadable = bool(found.problems)
    keyring = Keyring(load_key(None))
    # every file on its own (a DICOM instance too): what each file holds is what is scanned
    files = [(path, job.format) for job in found.jobs for path in job.paths]
    for path, format_name in files:
        try:
            plan = plan_job(Job((path,), format_name), Policy(), keyring)
        except SlideError as exc:
            error_line(f"{path}: {exc}")
            unreadable = True
            continue
        # "replace" is how identifiers look after de-identification too (pseudonyms, new UIDs)
        lines = [f"{f.location}: {f.name} ({f.action})" for f in plan.fields
                 if f.action not in ("keep", "replace")]
        lines += [f"{i.index}: {i.role} image present" for i in plan.images if i.action != "keep"]
        for part in slide_files(path):
            lines += [f"identifier {n!r} found in the raw bytes of {part.name}"
                      for n in needle_search.find_in_file(part, targets)]
        for line in lines:
            out.print(f"{path}: {line}", markup=False, highlight=False)
        if not lines:
            out.print(f"{path}: clean", markup=False, highlight=False)
        findings += len(lines)
    if unreadable and not findings:
        raise typer.Exit(EXIT_INPUT)
    if findings:
        raise typer.Exit(EXIT_FINDINGS)


def main() -> None:
    from .library_warnings import withhold_everywhere

    withhold_everywhere()
    try:
        app()
    except InstallError as exc:
        error_line(f"installation: {exc}")
        sys.exit(EXIT_INPUT)


if __name__ == "__main__":
    main()

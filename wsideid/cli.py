"""The `wsideid` command: thin; parses options, calls the pipeline, prints."""
from __future__ import annotations

import csv
import errno
import json
import os
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import needles as needle_search
from . import report as audit
from .errors import InstallError, OutputError, SlideError, VerificationError
from .magic import is_dicom, is_mrxs, is_tiff
from .pipeline import Result, deidentify, plan_slide
from .policy import DATE_MODES, Policy
from .pseudonym import Keyring, load_key

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="De-identify whole-slide images.")
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


def looks_like_slide(path: Path) -> bool:
    return is_tiff(path) or is_dicom(path) or is_mrxs(path)


def slide_files(path: Path) -> list[Path]:
    """Every file a slide consists of (a MIRAX slide: NAME.mrxs and the files in NAME/)."""
    if is_mrxs(path):
        folder = path.with_name(path.name[: -len(".mrxs")])
        return [path] + (sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [])
    return [path]


def group_jobs(files: list[Path]) -> tuple[list[list[Path]], list[tuple[Path, str]]]:
    """One job per TIFF file; one job per DICOM series (instances found anywhere in the input)."""
    jobs: list[list[Path]] = []
    series: dict[str, list[Path]] = {}
    bad: list[tuple[Path, str]] = []
    for path in files:
        if is_dicom(path):
            from .adapters.dicom import series_uid  # pydicom only when DICOM is given

            try:
                series.setdefault(series_uid(path), []).append(path)
            except SlideError as exc:
                bad.append((path, str(exc)))
        else:
            jobs.append([path])
    jobs += list(series.values())
    return jobs, bad


def collect(inputs: List[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given; folders walked (files that do not start like a slide are skipped)."""
    files: list[Path] = []
    missing: list[tuple[Path, str]] = []
    for item in inputs:
        if item.is_dir():
            files += sorted(p for p in item.rglob("*")
                            if p.is_file() and not p.is_symlink() and looks_like_slide(p))
        elif item.is_file():
            files.append(item)
        else:
            missing.append((item, "no such file or folder"))
    return files, missing


def make_policy(dates: str, keep_device_id: bool, label: str, macro: str,
                keyring: Keyring | None = None, **dicom_options: bool) -> Policy:
    try:
        return Policy(dates=dates, keep_device_id=keep_device_id, label=label, macro=macro,
                      date_shift_days=keyring.date_shift_days() if keyring else 0, **dicom_options)
    except ValueError as exc:
        fail(str(exc))
        raise


DatesOpt = typer.Option("remove", "--dates", help=f"Dates: {' | '.join(DATE_MODES)}.")
DeviceOpt = typer.Option(False, "--keep-device-id", help="Keep scanner serial numbers.")
LabelOpt = typer.Option("drop", "--label", help="Label image: keep | drop.")
MacroOpt = typer.Option("drop", "--macro", help="Macro (overview) image: keep | drop.")
MapOpt = typer.Option(None, "--map", help="Write original -> pseudonym CSV here (outside OUTDIR).")
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
    map_file: Optional[Path] = MapOpt,
    key_file: Optional[Path] = KeyOpt,
    retain_uids: bool = typer.Option(False, "--retain-uids", help="DICOM: PS3.15 Retain UIDs Option."),
    retain_institution: bool = typer.Option(False, "--retain-institution", help="DICOM: Retain Institution Identity Option."),
    retain_patient_characteristics: bool = typer.Option(False, "--retain-patient-characteristics", help="DICOM: Retain Patient Characteristics Option."),
    clean_descriptors: bool = typer.Option(False, "--clean-descriptors", help="DICOM: Clean Descriptors Option (descriptions that cannot be cleaned are removed)."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json; in place: beside the first slide)."),
) -> None:
    """De-identify slides into OUTDIR (or in place)."""
    if in_place and outdir is not None:
        fail("use either -o OUTDIR or --in-place, not both")
    if not dry_run and not in_place and outdir is None:
        fail("missing -o OUTDIR (or --in-place)")
    try:
        keyring = Keyring(load_key(key_file))
    except (OSError, ValueError) as exc:
        fail(f"key: {exc}")
    policy = make_policy(dates, keep_device_id, label, macro, keyring, retain_uids=retain_uids,
                         retain_institution=retain_institution,
                         retain_patient_characteristics=retain_patient_characteristics,
                         clean_descriptors=clean_descriptors)
    if map_file is not None and outdir is not None:
        if _inside(map_file, outdir):
            fail(f"{map_file}: the map must be kept outside the released folder {outdir}")
    if outdir is not None and not dry_run:
        prepare_outdir(outdir)
    files, missing = collect(inputs)
    jobs, unreadable = group_jobs(files)
    missing += unreadable
    for path, why in missing:
        error_line(f"{path}: {why}")
    if not jobs and not missing:
        fail("no slides found in the given inputs")

    if dry_run:
        code = EXIT_INPUT if missing else 0
        for job in jobs:
            try:
                plan = _plan_job(job, policy, keyring)
            except SlideError as exc:
                error_line(f"{job[0]}: {exc}")
                code = EXIT_INPUT
                continue
            print_plan(job[0], plan, show_values=False)
        raise typer.Exit(code)

    results: list[Result] = []
    seen: dict[str, Path] = {}
    for job in jobs:
        if in_place and is_dicom(job[0]):
            result = Result(job[0], status="error", message="--in-place is not supported for DICOM")
            error_line(f"{job[0]}: {result.message}")
        else:
            result = _run_one(job, policy, keyring, outdir, in_place, seen)
        results.append(result)
    _summarise(results)
    written = _write_records(map_file, results, report_file or (outdir or jobs[0][0].parent) / "wsideid-report.json",
                             {**policy.options(), "in_place": in_place})
    if not written or missing or any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FINDINGS)


def _plan_job(job: list[Path], policy: Policy, keyring: Keyring):
    if is_dicom(job[0]):
        from .dicom_pipeline import plan_series

        return plan_series(job, policy, keyring)[0]
    if is_mrxs(job[0]):
        from .mrxs_pipeline import plan_mrxs

        return plan_mrxs(job[0], policy, keyring)
    return plan_slide(job[0], policy)


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


def _run_one(job: list[Path], policy: Policy, keyring: Keyring, outdir: Path | None,
             in_place: bool, seen: dict[str, Path]) -> Result:
    path = job[0]

    def work() -> Result:
        if is_dicom(path):
            from .dicom_pipeline import deidentify_series

            return deidentify_series(job, policy, keyring, outdir)
        if is_mrxs(path):
            from .mrxs_pipeline import deidentify_mrxs, deidentify_mrxs_in_place

            if in_place:
                return deidentify_mrxs_in_place(path, policy, keyring)
            return deidentify_mrxs(path, policy, keyring, outdir)
        return deidentify(path, policy, keyring, outdir, in_place)

    result = _attempt(path, work, outdir)
    if result.status == "ok" and result.pseudonym:
        if result.pseudonym in seen:
            result.status, result.message = "error", "same content as another input"
            error_line(f"{path}: {result.message}")
        seen[result.pseudonym] = path
    return result


OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _attempt(path: Path, work, outdir: Path | None) -> Result:
    """Run one slide's work; any failure becomes a Result and one line on stderr naming what
    failed: the input when the input is the problem, else the output folder. A broken
    installation stops the run."""
    failed = path
    try:
        result = work()
    except SlideError as exc:
        result = Result(path, status="error", message=str(exc))
    except VerificationError as exc:
        result = Result(path, status="failed", message=f"verification failed: {exc}")
    except InstallError as exc:
        fail(f"installation: {exc}")
        raise
    except OutputError as exc:
        result = Result(path, status="error", message=str(exc))
        failed = outdir or path
    except OSError as exc:
        result = Result(path, status="error", message=f"{exc.strerror or exc}")
        if outdir is not None and (exc.errno in OUTPUT_ERRNOS or _names_inside(exc, outdir)):
            result.message = f"cannot write the output: {exc.strerror or exc}"
            failed = outdir
    if result.status != "ok":
        error_line(f"{failed}: {result.message}")
    warnings = list(result.plan.warnings if result.plan else [])
    if result.status == "ok" and result.message:
        warnings.append(result.message)
    for warning in warnings:
        sys.stderr.write(f"wsideid: warning: {path}: {warning}\n")
    return result


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


def _names_inside(exc: OSError, folder: Path) -> bool:
    return any(name is not None and _inside(Path(os.fsdecode(name)), folder)
               for name in (exc.filename, exc.filename2))


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


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
    for w in plan.warnings:
        out.print(f"warning: {w}", markup=False)


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
    try:
        keyring = Keyring(load_key(key_file))
    except (OSError, ValueError) as exc:
        fail(f"key: {exc}")
    policy = make_policy(dates, keep_device_id, label, macro, keyring)
    if map_file is not None and _inside(map_file, outdir):
        fail(f"{map_file}: the map must be kept outside the released folder {outdir}")
    prepare_outdir(outdir)
    files, missing = collect(inputs)
    for path, why in missing:
        error_line(f"{path}: {why}")
    results = [_attempt(path, lambda: convert_slide(path, policy, keyring, outdir, allow_transcode),
                        outdir)
               for path in files]
    _summarise(results, "wsideid convert --to dicom")
    written = _write_records(map_file, results, report_file or outdir / "wsideid-report.json",
                             {**policy.options(), "convert": "dicom",
                              "allow_transcode": allow_transcode})
    if not written or missing or any(r.status == "error" for r in results):
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
) -> None:
    """Every image with its role, every field with its value, location and planned action."""
    policy = make_policy(dates, keep_device_id, label, macro)
    try:
        plan = _plan_job([file], policy, Keyring(load_key(None)))
    except SlideError as exc:
        fail(f"{file}: {exc}")
    if as_json:
        doc = {"file": str(file), "format": plan.format,
               "images": [i.public() for i in plan.images],
               "fields": [{**f.public(), "value": f.value, "new_value": f.new_value} for f in plan.fields],
               "warnings": plan.warnings}
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_plan(file, plan, show_values=True)


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
    files, missing = collect(paths)
    for path, why in missing:
        error_line(f"{path}: {why}")
    findings = 0
    unreadable = bool(missing)
    keyring = Keyring(load_key(None))
    for path in files:
        try:
            plan = _plan_job([path], Policy(), keyring)
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
    try:
        app()
    except InstallError as exc:
        error_line(f"installation: {exc}")
        sys.exit(EXIT_INPUT)


if __name__ == "__main__":
    main()

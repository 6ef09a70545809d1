"""The `wsideid` command: parses options, hands slides to the batch, prints what happened."""
from __future__ import annotations

import csv
import io
import json
import os
import signal
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import adapters, batch
from . import needles as needle_search
from .containers.output import Target
from .errors import INTERRUPTED, InstallError, SlideError
from .interrupt import exit_interrupted, terminated
from .journal import Busy, Journal, JournalError, Mismatch, Record, exclusive
from .keyring import Keyring, load_key
from .model import Job, Result
from .names import Mapping, MappingError, Namer, read_mapping
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


def one_line(text: str) -> str:
    """Text as one line of a terminal: control characters (a newline in a file name) are
    escaped, and bytes that are not UTF-8 (kept by Python as surrogates) are shown as \\xNN."""
    out = []
    for ch in text:
        code = ord(ch)
        if code < 0x20 or code == 0x7F or 0x80 <= code < 0xA0:
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{code:02x}"))
        elif 0xDC80 <= code <= 0xDCFF:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def error_line(message: str) -> None:
    """One line on stderr, never wrapped: scripts grep for it."""
    sys.stderr.write(f"wsideid: error: {one_line(str(message))}\n")
    sys.stderr.flush()


def warning_line(message: str) -> None:
    sys.stderr.write(f"wsideid: warning: {one_line(str(message))}\n")
    sys.stderr.flush()


def fail(message: str, code: int = EXIT_INPUT) -> None:
    error_line(message)
    raise typer.Exit(code)


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


def make_keyring(key_file: Path | None, dry_run: bool = False) -> Keyring:
    """The run's keyring; a key that cannot be read, created or used is one error line
    naming the key file (or WSIDEID_KEY). A dry run creates no key file: a missing one gives
    a key for this run only (and says so)."""
    if dry_run and key_file is not None and not os.path.lexists(key_file):
        warning_line(f"{key_file}: no such key file; a dry run creates none: the pseudonyms "
                     "shown come from a key made for this dry run only")
    try:
        return Keyring(load_key(key_file, create=not dry_run))
    except ValueError as exc:
        fail(str(exc))
        raise
    except OSError as exc:
        fail(f"{key_file}: cannot read or create the key file: {exc.strerror or exc}")
        raise


def check_paths(inputs: list[Path], outdir: Path | None, in_place: bool, *,
                key_file: Path | None = None, map_file: Path | None = None,
                report_file: Path | None = None) -> None:
    """Refuse, before anything is read or written, files the run would write (or a key it
    would create) where they do not belong: the key or the map inside the released folder
    (they would be handed over with the slides), any of them in place of an input slide or
    of one another, and (written into an input folder) changing the input outside
    --in-place; in place, the input folders are the release: the key and the map stay out."""
    def real(path: Path) -> Path:
        return Path(os.path.realpath(path))

    folders = [item for item in inputs if item.is_dir()]
    files = {real(item) for item in inputs if not item.is_dir()}
    written = [(report_file, "--report", "the audit report"), (map_file, "--map", "the map")]
    if key_file is not None:
        written.append((key_file, "--key-file", "the key"))
    seen: dict[Path, str] = {}
    for path, option, what in written:
        if path is None:
            continue
        where = real(path)
        if where in files:
            fail(f"{path}: {option} names an input slide; {what} would overwrite it")
        if where in seen:
            fail(f"{path}: {option} and {seen[where]} name the same file")
        seen[where] = option
        if outdir is not None and option != "--report" and batch.inside(path, outdir):
            fail(f"{path}: {what} must be kept outside the released folder {outdir}")
        creates = option != "--key-file" or not path.exists()
        for folder in folders:
            if not batch.inside(path, folder):
                continue
            if in_place and option != "--report":
                fail(f"{path}: {what} must be kept outside {folder}: in place, the input "
                     "folder is what is released")
            if not in_place and creates:
                fail(f"{path}: {what} would be written into the input folder {folder}: "
                     "keep it outside the inputs")


DatesOpt = typer.Option("remove", "--dates", help=f"Dates: {' | '.join(DATE_MODES)}.")
DeviceOpt = typer.Option(False, "--keep-device-id", help="Keep scanner serial numbers.")
LabelOpt = typer.Option("drop", "--label", help="Label image: drop | keep (after its checks) | replace (a synthesized label with the pseudonym).")
MacroOpt = typer.Option("drop", "--macro", help="Macro (overview) image: drop | keep (after its checks) | redact (label area blanked).")
StrictOpt = typer.Option(False, "--strict", help="A label or overview to be kept that shows a barcode or text fails the slide (instead of being dropped or redacted).")
MacroRegionOpt = typer.Option(None, "--macro-region", help="Where the label is in the overview: x0,y0,x1,y1 as fractions of the image (overrides detection).")
OcrOpt = typer.Option(True, "--ocr/--no-ocr", help="Read text on labels and overviews that are to be kept (needs the ocr extra and tesseract-ocr).")
MapOpt = typer.Option(None, "--map", help="Write original -> pseudonym CSV here (outside OUTDIR).", readable=False)
RegionsOpt = typer.Option(None, "--regions", help="Redact the regions of this GeoJSON file (QuPath export; level-0 pixels) on every level.", readable=False)
RegionOpt = typer.Option(None, "--region", help="Redact the rectangle x,y,w,h (level-0 pixels) on every level; repeatable.")
RegionLevelOpt = typer.Option(0, "--region-level", help="The regions are given in the pixels of this pyramid level.")
FillOpt = typer.Option(0, "--fill", help="Grey value painted over the regions (0 black .. 255 white).")
KeyOpt = typer.Option(None, "--key-file", help="Secret key for stable pseudonyms, UIDs and date shifts (created if missing).", readable=False)


@app.command()
def deid(
    inputs: List[Path] = typer.Argument(..., help="Slide files or folders (a folder's tree is mirrored under OUTDIR with pseudonymous names).", readable=False),
    outdir: Optional[Path] = typer.Option(None, "-o", "--output", help="Output folder.", readable=False),
    in_place: bool = typer.Option(False, "--in-place", help="Edit the inputs themselves."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (source, destination, fields, images); write nothing."),
    dates: str = DatesOpt,
    keep_device_id: bool = DeviceOpt,
    label: str = LabelOpt,
    macro: str = MacroOpt,
    strict: bool = StrictOpt,
    macro_region: Optional[str] = MacroRegionOpt,
    ocr: bool = OcrOpt,
    map_file: Optional[Path] = MapOpt,
    key_file: Optional[Path] = KeyOpt,
    mapping_file: Optional[Path] = typer.Option(None, "--mapping", help="CSV original,pseudonym: the lab's names for folders and slides (matched by folder name, file stem, barcode or accession number).", readable=False),
    jobs: int = typer.Option(0, "--jobs", "-j", show_default=False, help="Slides de-identified in parallel processes (default: the number of CPUs)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Address of a Dask distributed scheduler to run the slides on (needs the dask extra of wsideid)."),
    retain_uids: bool = typer.Option(False, "--retain-uids", help="DICOM: PS3.15 Retain UIDs Option."),
    retain_institution: bool = typer.Option(False, "--retain-institution", help="DICOM: Retain Institution Identity Option."),
    retain_patient_characteristics: bool = typer.Option(False, "--retain-patient-characteristics", help="DICOM: Retain Patient Characteristics Option."),
    clean_descriptors: bool = typer.Option(False, "--clean-descriptors", help="DICOM: Clean Descriptors Option (descriptions that cannot be cleaned are removed)."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json; in place: beside the first slide).", readable=False),
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
    if jobs < 0:
        fail("--jobs must be 1 or more")
    if mapping_file is not None and in_place:
        fail("--mapping names released folders and slides: it needs -o OUTDIR, not --in-place")
    if scheduler:   # the workers may start elsewhere: every path they are given is absolute
        inputs = [p.absolute() for p in inputs]
        outdir = outdir.absolute() if outdir is not None else None
    if outdir is not None:
        for item in inputs:
            if item.is_dir() and (batch.inside(outdir, item) or batch.inside(item, outdir)):
                fail(f"{outdir}: the output folder and the input folder {item} must not hold one another")
    check_paths(inputs, outdir, in_place, key_file=key_file, map_file=map_file,
                report_file=report_file)
    keyring = make_keyring(key_file, dry_run)
    policy = make_policy(dates, keep_device_id, label, macro, keyring, retain_uids=retain_uids,
                         retain_institution=retain_institution,
                         retain_patient_characteristics=retain_patient_characteristics,
                         clean_descriptors=clean_descriptors, strict=strict,
                         macro_region=parse_region(macro_region), ocr=ocr,
                         redaction=redaction)
    mapping = Mapping()
    if mapping_file is not None:
        try:
            mapping = read_mapping(mapping_file)
        except (OSError, MappingError) as exc:
            fail(f"{mapping_file}: the mapping cannot be used: {getattr(exc, 'strerror', None) or exc}")
    # the workers start (and import what slides need) while the inputs are walked
    executor, window, client = (None, 1, None) if dry_run else _executor(jobs, scheduler, inputs)
    journal = None
    created: list = []     # the map and the folders this run made: removed on an early exit
    try:
        found = batch.find(inputs, repair=not dry_run)
        for path in found.restored:
            warning_line(f"{path}: an interrupted in-place run had left it half-changed: "
                         "restored from its undo record")
        for path, why in found.problems:
            error_line(f"{path}: {why}")
        if in_place:    # a folder an earlier in-place run (killed or not) released slides in
            for item in [i for i in found.items if batch.released_already(i, policy, keyring)]:
                warning_line(f"{item.job.path}: released by wsideid already (a released name, "
                             "nothing left to remove): left as it is")
                found.released.append(item.job.path)
                found.items.remove(item)
            found.jobs = [i.job for i in found.items]
        if not found.items and not found.broken:
            if found.problems:    # each already said on its own line
                raise typer.Exit(input_code(found, 0))
            if found.released:
                raise typer.Exit(0)
            no_slides(inputs, found)
        executor, window = _one_slide_inline(executor, window, client, found)
        options = {**policy.options(), "in_place": in_place, "mapping": bool(mapping)}
        settings = Settings(policy, keyring, Target(None if in_place else outdir))
        namer = Namer(keyring, mapping)

        if dry_run:
            _dry_run(found, settings, namer, outdir)

        if report_file is None and in_place and found.items:
            # in place: beside the (renamed) slides of the first input
            report_file = found.items[0].job.path.parent / "wsideid-report.json"
            probe_folder(report_file.parent / "x", "", "the folder of the slides cannot be "
                         "written (in place, the slides are changed and renamed there)")
        report_path = report_file or (outdir / "wsideid-report.json" if outdir is not None else None)
        if report_path is not None and not (outdir is not None and batch.inside(report_path, outdir)):
            probe_folder(report_path, "cannot write the audit report")
        mapfile = None
        if map_file is not None:
            try:
                mapfile = MapFile(map_file)
            except OSError as exc:
                fail(f"{map_file}: cannot write the map: {exc.strerror or exc}")
            created.append(mapfile)
        if outdir is not None:
            created += prepare_outdir(outdir)
        if outdir is not None:
            journal = Journal(outdir)
            settings_digest = keyring.digest("settings", json.dumps(
                {**policy.options(), "mapping": mapping.digest}, sort_keys=True).encode())
            try:
                journal.open(keyring.digest("key-check", b""), settings_digest,
                             waiting=lambda: sys.stderr.write(
                                 "wsideid: waiting for slides an interrupted run is still writing\n"))
            except (Busy, Mismatch) as exc:
                journal.close()
                fail(f"{outdir}: {exc}")
            except OSError as exc:
                journal.close()
                fail(f"{outdir}: cannot write to the output folder: {exc.strerror or exc}")
        run = RunView(outdir, report_path, options, keyring, namer, found, mapfile)
        exporter = batch.Exporter(settings, outdir, namer, journal, executor, window,
                                  batch.Sink(planned=run.planned, finished=run.finished))
        run.exporter = exporter
    except BaseException as exc:
        # an early exit (an option or folder refused): the pool's workers, still starting,
        # are waited for, so that none of them dies noisily after this process
        if journal is not None:
            journal.close()
        undo_created(created)
        if client is not None:
            client.close()
        elif executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
        if isinstance(exc, KeyboardInterrupt):
            _say_interrupted()
            raise typer.Exit(130) from None
        raise
    interrupted = False
    journal_failed = ""
    try:
        slides = exporter.plan(found.items, survey=not in_place)
        if outdir is not None:
            _say_merged(slides, outdir)
            _say_moved(slides, outdir)
        run.slides = slides
        exporter.run(slides)
    except KeyboardInterrupt:
        interrupted = True
    except JournalError as exc:
        journal_failed = exc.strerror
    finally:
        # the slides are done or abandoned: a late SIGTERM must not cut the report short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        run.stop()
        if client is not None:
            client.close()     # its executor goes with it (pending tasks are released)
        else:
            executor.shutdown(wait=not interrupted, cancel_futures=interrupted)
    written = run.write_report(final=True)
    if not written:
        for s in run.slides:   # say plainly what was released without its audit report
            if s.outcome is not None and s.outcome.status == "ok" and s.outcome.output is not None:
                warning_line(f"{s.outcome.output}: released, but not listed in an audit report")
    written = written and run.map_ok
    if journal is not None:
        journal.close()
    _summarise(run)
    if journal_failed:
        fail(f"{journal_failed}; the run stopped (run it again when the folder can be written)")
    if interrupted:
        error_line(f"interrupted: {run.released} of {len(run.slides)} slides released; run the "
                   "same command again to finish")
        raise typer.Exit(130)
    raise typer.Exit(run.exit_code(written))


def _executor(jobs: int, scheduler: str | None, inputs: list[Path]):
    """Where the slides run: a Dask cluster, a pool of processes, or this process (`--jobs
    1`, or a single file)."""
    if scheduler:
        try:
            from dask.distributed import Client
        except ImportError:
            fail("--scheduler needs dask.distributed: pip install 'wsideid[dask]'")
        try:
            client = Client(scheduler, timeout="20s", set_as_default=False)
        except (OSError, TimeoutError) as exc:
            fail(f"--scheduler {scheduler}: cannot connect: {exc}")
        threads = sum(client.nthreads().values()) or 1
        return client.get_executor(pure=False), 2 * threads, client
    workers = jobs or os.cpu_count() or 1
    if workers <= 1 or (len(inputs) == 1 and not inputs[0].is_dir()):
        return batch.InlineExecutor(), 1, None
    # one worker starts while the inputs are walked; the others once more than one slide is
    # found (`_one_slide_inline`)
    return batch.process_pool(workers, warm=1), 2 * workers, None


def _one_slide_inline(executor, window: int, client, found):
    """A folder that holds a single slide (a DICOM series, a MIRAX slide) runs in this process,
    as a single file does: workers would only add their start-up. Otherwise the rest of the
    pool's workers start now."""
    if client is not None or executor is None or isinstance(executor, batch.InlineExecutor):
        return executor, window
    if len(found.items) + len(found.broken) <= 1:
        executor.shutdown(wait=False, cancel_futures=True)
        return batch.InlineExecutor(), 1
    batch.warm_up(executor, window // 2 - 1)     # the window is two slides per worker
    return executor, window


def _dry_run(found, settings: Settings, namer: Namer, outdir: Path | None) -> None:
    """Every slide's source and destination, fields and images; nothing is written."""
    exporter = batch.Exporter(settings, outdir, namer, None, batch.InlineExecutor(), 1, batch.Sink())
    slides = exporter.plan(found.items, survey=True)
    if not settings.target.in_place:
        _say_merged(slides, outdir)
    code = input_code(found, len(slides))
    alone = is_alone(found, len(slides))
    base = outdir if outdir is not None else Path("OUTDIR")
    for slide in slides:
        if slide.outcome is not None:
            error_line(f"{slide.source}: {slide.outcome.message}")
            code = max(code, EXIT_INPUT if slide.item.root is None or alone else EXIT_FINDINGS)
            continue
        try:
            naming, plan = batch.preview(slide, settings)
        except SlideError as exc:
            error_line(f"{slide.source}: {exc}")
            code = max(code, EXIT_INPUT if slide.item.root is None or alone else EXIT_FINDINGS)
            continue
        dest = base.joinpath(*slide.dest, naming.output_name)
        sys.stdout.write(one_line(f"{slide.source} -> {dest}") + "\n")
        sys.stdout.flush()
        print_plan(slide.source, plan, show_values=False)
    for item, why in found.broken:
        error_line(f"{item.job.path}: {why}")
    for path, _, why in found.others:
        sys.stdout.write(one_line(f"{path}: {why}: not copied") + "\n")
    raise typer.Exit(code)


def _say_merged(slides, outdir: Path | None) -> None:
    """A warning for every released folder that input folders of different names go into
    (a dry run without -o names it below OUTDIR)."""
    for dest, names in batch.merged_folders(slides):
        where = (outdir or Path("OUTDIR")).joinpath(*dest)
        warning_line(f"{where}: input folders of different names go into this one folder (one "
                     f"name once Unicode-normalized, or one pseudonym in the mapping): "
                     f"{', '.join(repr(n) for n in names)}")


def _say_moved(slides, outdir: Path) -> None:
    """A warning for every slide whose files an earlier run released from another folder."""
    for slide in slides:
        if slide.moved_from:
            warning_line(f"{slide.source}: the same file (name, size and time) was released "
                         f"by an earlier run from another folder, as {outdir / slide.moved_from}: "
                         "if the slide moved, that release is still there")


def is_alone(found: batch.Found, slides: int) -> bool:
    """Whether the run has one slide only (counting walked slides that cannot be grouped and
    walked files that cannot be read): its failure is the input's problem, exit 2."""
    return slides + len(found.broken) + len(found.walked_problems()) == 1


def input_code(found: batch.Found, slides: int) -> int:
    """The exit code the inputs alone give (fe229ac's rule): 2 for a named input that is not
    a readable slide, or a run's only one; 1 for what a batch walked past (a slide that
    cannot be grouped, a file or folder that cannot be read: the others went on); else 0."""
    walked = found.walked_problems()
    if found.named_problems() or (is_alone(found, slides) and (walked or found.broken)):
        return EXIT_INPUT
    return EXIT_FINDINGS if walked or found.broken else 0


class MapFile:
    """The re-identification map (`--map`, kept outside OUTDIR): one CSV row per released
    slide, per folder and per file left out, appended and flushed to disk as the run goes.
    A row already in the file (an earlier run of the same export) is not written again."""

    COLUMNS = ["source", "pseudonym", "output", "status", "kind"]

    def __init__(self, path: Path):
        self.path = path
        self.rows: set[tuple[str, ...]] = set()
        self.columns = self.COLUMNS
        self.created = not path.exists()
        if path.exists():
            data = path.read_bytes()
            end = data.rfind(b"\n") + 1
            if end != len(data):          # a row cut short by a kill: never acknowledged
                with open(path, "r+b") as fh:
                    fh.truncate(end)
            # names that are not UTF-8 are kept byte for byte (surrogateescape), quoted
            # newlines inside names stay inside their row
            rows = list(csv.reader(io.StringIO(data[:end].decode("utf-8", "surrogateescape"),
                                               newline="")))
            if rows:
                self.columns = rows[0]
                self.rows = {tuple(r) for r in rows[1:]}
        self.fh = open(path, "a", newline="", encoding="utf-8", errors="surrogateescape")
        if not self.rows and self.path.stat().st_size == 0:
            self._write(self.COLUMNS)

    def add(self, source: Path, pseudonym: str, output: Path | str, status: str, kind: str) -> None:
        row = [str(source), pseudonym, str(output), status, kind][: len(self.columns)]
        if tuple(row) in self.rows:
            return
        self.rows.add(tuple(row))
        self._write(row)

    def _write(self, row: list[str]) -> None:
        csv.writer(self.fh).writerow(row)
        self.fh.flush()
        os.fsync(self.fh.fileno())

    def close(self) -> None:
        self.fh.close()

    def discard_if_empty(self) -> None:
        """The run stopped before any row: a map this run created goes again."""
        self.close()
        if self.created and not self.rows:
            self.path.unlink(missing_ok=True)


class RunView:
    """What the command line shows and writes while a run goes on: progress, error lines,
    the map and the audit report (rewritten as slides finish, at most every few seconds)."""

    REPORT_EVERY = 5.0

    def __init__(self, outdir, report_path, options, keyring, namer, found, mapfile):
        self.outdir = outdir
        self.report_path = report_path
        self.options = options
        self.keyring = keyring
        self.namer = namer
        self.found = found
        self.mapfile = mapfile
        self.map_ok = True
        self.slides: list = []
        self.folders_mapped: set[tuple[str, ...]] = set()
        self.last_report = 0.0
        self.start = time.monotonic()
        self.done = 0
        self.done_bytes = 0
        self.total = 0
        self.total_bytes = 0
        self.progress = None
        self.task = None
        self.report_failed = False
        self.report_cost = 0.0
        self.exporter = None
        self._earlier = None

    # ---- events ----------------------------------------------------------------------------
    def planned(self, slides) -> None:
        self.slides = slides
        self.total = len(slides) + len(self.found.broken)
        self.total_bytes = sum(s.item.size for s in slides if s.outcome is None or not s.outcome.earlier)
        for path, root, why in self.found.others:
            warning_line(f"{path}: {why}" + ("" if "not copied" in why else ": not copied"))
            self._map(path, self._other_path(path, root), "", "not copied", "not a slide")
        for slide in slides:
            for extra in slide.extra if slide.outcome is None else []:
                folder = slide.item.job.path.with_name(slide.item.job.path.name[: -len(".mrxs")])
                warning_line(f"{folder / extra}: in a MIRAX slide's folder but not part of the "
                             "slide: not copied")
        for item, why in self.found.broken:
            error_line(f"{item.job.path}: {why}")
        if len(slides) > 1 and sys.stderr.isatty():
            from rich.progress import (BarColumn, Progress, TextColumn, TimeRemainingColumn,
                                       TransferSpeedColumn)

            self.progress = Progress(TextColumn("{task.fields[done]}/{task.fields[count]} slides"),
                                     BarColumn(), TransferSpeedColumn(), TimeRemainingColumn(),
                                     console=Console(stderr=True), transient=False)
            self.progress.start()
            self.task = self.progress.add_task("deid", total=max(self.total_bytes, 1), done=0,
                                               count=len(slides))

    def finished(self, slide) -> None:
        outcome = slide.outcome
        self.done += 1
        if not outcome.earlier:
            self.done_bytes += slide.item.size
        if outcome.status != "ok":
            error_line(f"{outcome.failed or slide.source}: {outcome.message}")
        for warning in outcome.warnings:
            warning_line(f"{slide.source}: {warning}")
        if outcome.status == "ok" and outcome.output is not None:
            self._map_folders(slide)
        self._map(slide.source, outcome.pseudonym, outcome.output or "", outcome.status
                  if not outcome.earlier else "ok", "slide")
        if self.progress is not None:
            self.progress.update(self.task, completed=self.done_bytes,
                                 done=sum(1 for s in self.slides if s.outcome is not None))
        elif len(self.slides) > 1:
            self._plain_line(slide)
        # at most every few seconds, and never more than 5% of the time (a report of tens of
        # thousands of slides takes a while to write)
        if time.monotonic() - self.last_report > max(self.REPORT_EVERY, 20 * self.report_cost):
            self.write_report()

    def _plain_line(self, slide) -> None:
        elapsed = max(time.monotonic() - self.start, 1e-6)
        rate = self.done_bytes / elapsed
        left = self.total_bytes - self.done_bytes
        eta = f", ETA {_clock(left / rate)}" if rate > 0 and left > 0 else ""
        where = slide.outcome.brief.get("path") or "-"
        note = " (released earlier)" if slide.outcome.earlier else ""
        sys.stderr.write(f"wsideid: {self.done}/{len(self.slides)} {slide.outcome.status} "
                         f"{where}{note}, {rate / 1e6:.1f} MB/s{eta}\n")
        sys.stderr.flush()

    def stop(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        if self.mapfile is not None:
            self.mapfile.close()

    # ---- the map and the report ------------------------------------------------------------
    def _map(self, source, pseudonym, output, status, kind) -> None:
        if self.mapfile is None or not self.map_ok:
            return
        try:
            self.mapfile.add(Path(source).resolve(), pseudonym,
                             Path(output).resolve() if output else "", status, kind)
        except OSError as exc:
            error_line(f"{self.mapfile.path}: cannot write the map: {exc.strerror or exc}")
            self.map_ok = False

    def _map_folders(self, slide) -> None:
        if self.outdir is None or slide.item.root is None:
            return
        for depth in range(1, len(slide.dest) + 1):
            if slide.dest[:depth] in self.folders_mapped:
                continue
            self.folders_mapped.add(slide.dest[:depth])
            source = slide.item.root.joinpath(*slide.item.parts[:depth])
            self._map(source, slide.dest[depth - 1], self.outdir.joinpath(*slide.dest[:depth]),
                      "ok", "folder")

    def _other_path(self, path: Path, root: Path) -> str:
        parts = path.relative_to(root).parts
        return "/".join(self.namer.folders(parts[:-1]) + (self.keyring.file_pseudonym(parts[-1]),))

    def others(self) -> list[dict]:
        """Files left out, by pseudonymous paths: walked files that are not slides, and files
        in a MIRAX slide's folder that the slide does not use."""
        others = [{"path": self._other_path(path, root), "size": path.stat().st_size if path.exists() else 0,
                   "why": why} for path, root, why in self.found.others]
        for s in self.slides:
            if s.outcome is not None and s.outcome.status == "ok" and s.survey.get("extra"):
                where = (s.outcome.brief.get("path") or "")[: -len(".mrxs")]
                others += [{"path": f"{where}/{x}", "size": None,
                            "why": "in a MIRAX slide's folder but not part of the slide"}
                           for x in s.survey["extra"]]
        return others

    def entries(self):
        """(how many, the slides' report entries in the report's order): released slides by
        path, then failures; an entry the journal holds is read back only when written."""
        done = [s for s in self.slides if s.outcome is not None]
        broken = [{"path": None, "pseudonym": None, "status": "error", "output": None,
                   "message": batch.without_source(why, item.job.path),
                   "verification": {"result": "not run"}, "zeroed_bytes": 0}
                  for item, why in self.found.broken]
        keyed = [((s.outcome.brief.get("path") is None, s.outcome.brief.get("path") or "",
                   s.outcome.brief.get("message") or ""), s) for s in done]
        keyed += [((True, "", e["message"]), e) for e in broken]
        earlier = self.earlier()
        keyed += [((False, r.brief.get("path") or "", ""), r) for r in earlier]
        keyed.sort(key=lambda pair: pair[0])
        briefs = [s.outcome.brief for s in done] + broken + [r.brief for r in earlier]
        summary = {"ok": sum(b.get("status") == "ok" for b in briefs),
                   "failed": sum(b.get("status") != "ok" for b in briefs)}
        catalogs = sorted({c for b in briefs for c in b.get("catalogs") or []})

        def each():
            for _, item in keyed:
                if isinstance(item, dict):
                    yield item
                elif isinstance(item, Record):
                    yield self.exporter.journal.entry(item.job)
                else:
                    yield self.exporter.entry(item)
        return summary, catalogs, each()

    def earlier(self) -> list:
        """Slides earlier runs released into OUTDIR that this run does not touch (other
        inputs), still there as written: the report covers everything released in OUTDIR."""
        if self._earlier is None:
            journal = self.exporter.journal if self.exporter is not None else None
            mine = {s.job_id for s in self.slides}
            self._earlier = [] if journal is None else [
                r for job, r in journal.records.items()
                if job not in mine and r.intact(self.outdir)]
        return self._earlier

    def write_report(self, final: bool = False) -> bool:
        start = self.last_report = time.monotonic()
        if self.report_path is None or (self.report_failed and not final):
            return True
        summary, catalogs, slides = self.entries()
        try:
            audit.write_stream(self.report_path, self.options, catalogs, slides, summary,
                               self.others())
            self.report_cost = time.monotonic() - start
            return True
        except OSError as exc:
            if not self.report_failed:
                error_line(f"{self.report_path}: cannot write the audit report: {exc.strerror or exc}")
            self.report_failed = True
            return False

    # ---- the end ---------------------------------------------------------------------------
    @property
    def released(self) -> int:
        return sum(1 for s in self.slides if s.outcome is not None and s.outcome.status == "ok")

    def failures(self) -> list[tuple[Path, str]]:
        """(what failed, why) for every slide that failed, and every file or folder of a batch
        that could not be read."""
        out = [(s.outcome.failed or s.source, s.outcome.message)
               for s in self.slides if s.outcome is not None and s.outcome.status != "ok"]
        out += [(item.job.path, why) for item, why in self.found.broken]
        return out + self.found.walked_problems()

    def exit_code(self, written: bool) -> int:
        """2: a usage or environment problem (the output folder, the report, the map), a file
        named on the command line that is not a readable slide, or the one slide of a run
        that could not be de-identified (the input is the problem); 1: in a batch, a slide
        found in a folder that failed (the others were released: issue 13 asks exit 1 with
        the list), or any slide that failed verification; else 0."""
        bad = [s for s in self.slides if s.outcome is not None and s.outcome.status != "ok"]
        alone = is_alone(self.found, len(self.slides))
        code = input_code(self.found, len(self.slides))
        if (not written or code == EXIT_INPUT or any(s.outcome.failed is not None for s in bad)
                or any((s.item.root is None or alone) and s.outcome.status == "error"
                       for s in bad)):
            return EXIT_INPUT
        if bad or code == EXIT_FINDINGS:
            return EXIT_FINDINGS
        return 0


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def _summarise(run: RunView) -> None:
    slides = [s for s in run.slides if s.outcome is not None]
    if len(slides) <= 50:
        table = Table(title="wsideid deid")
        for col in ("input", "output", "removed/replaced", "dates", "images dropped", "status"):
            table.add_column(col)
        for s in slides:
            o = s.outcome
            counts = o.brief.get("actions") or {}
            dropped = o.brief.get("dropped", 0)
            where = o.brief.get("path") or (o.output.name if o.output else "-")
            table.add_row(one_line(s.source.name), where,
                          str(counts.get("remove", 0) + counts.get("clean", 0) + counts.get("replace", 0)),
                          str(counts.get("date", 0)), str(dropped),
                          o.status + (" (earlier run)" if o.earlier else ""))
        out.print(table)
    count = len(slides) + len(run.found.broken) + len(run.found.walked_problems())
    if count > 1:
        by_format: dict[str, list[int]] = {}
        for s in slides:
            row = by_format.setdefault(s.outcome.brief.get("format") or "(unread)", [0, 0, 0, 0])
            row[0 if s.outcome.status == "ok" and not s.outcome.earlier else
                1 if s.outcome.earlier else 2] += 1
            row[3] += s.item.size
        totals = Table(title="summary")
        for col in ("format", "released", "released earlier", "failed", "input GB"):
            totals.add_column(col)
        for name, (ok, earlier, bad, size) in sorted(by_format.items()):
            totals.add_row(name, str(ok), str(earlier), str(bad), f"{size / 1e9:.2f}")
        out.print(totals)
        elapsed = time.monotonic() - run.start
        out.print(f"{run.released} of {count} slides released, "
                  f"{len(run.found.others)} files not slides (not copied); "
                  f"{run.done_bytes / 1e9:.2f} GB de-identified in {elapsed:.1f} s "
                  f"({run.done_bytes / 1e6 / max(elapsed, 1e-6):.1f} MB/s)", markup=False, highlight=False)
        failures = run.failures()
        if failures:
            error_line(f"{len(failures)} of {count} slides failed:")
            for what, why in failures:
                error_line(f"{what}: {why}")


def print_result(result: Result) -> None:
    """One slide's outcome on stderr: an error line naming what failed, and its warnings."""
    if result.status != "ok":
        error_line(f"{result.failed or result.source}: {result.message}")
    warnings = list(result.plan.warnings if result.plan else [])
    if result.status == "ok" and result.message:
        warnings.append(result.message)
    for warning in warnings:
        warning_line(f"{result.source}: {warning}")


def prepare_outdir(outdir: Path) -> list[Path]:
    """Create the output folder and make sure files can be created in it, before any slide
    is read: a read-only or missing-permission folder is one error naming the folder (and
    the folders made for it are removed again). Returns the folders it made."""
    made = [p for p in [outdir, *outdir.absolute().parents] if not os.path.lexists(p)][::-1]
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        undo_created(made)
        fail(f"{outdir}: cannot create output folder: {exc.strerror or exc}")
    try:
        probe_folder(outdir / "x", "")
    except typer.Exit:
        undo_created(made)
        raise
    return made


def probe_folder(path: Path, what: str, folder_problem: str = "cannot write to the output folder") -> None:
    """Fail (one line naming `path`, or its folder when `what` is empty) unless a file can
    be created beside `path`."""
    probe = path.parent / f".wsideid-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
        probe.unlink()
    except OSError as exc:
        if what:
            fail(f"{path}: {what}: {exc.strerror or exc}")
        fail(f"{path.parent}: {folder_problem}: {exc.strerror or exc}")


def undo_created(created: list) -> None:
    """An early exit: remove the map (when it holds no row yet) and the folders this run
    made (when nothing is in them), newest first."""
    for item in reversed(created):
        try:
            if isinstance(item, MapFile):
                item.discard_if_empty()
            else:
                item.rmdir()
        except OSError:
            pass
    created.clear()


@contextmanager
def holding(outdir: Path | None):
    """A command without a journal (convert, redact) holds OUTDIR's lock while it writes
    there, after removing what an interrupted run left half-written."""
    if outdir is None:
        yield
        return
    hold = exclusive(outdir)
    try:
        hold.__enter__()
    except Busy as exc:
        fail(f"{outdir}: {exc}")
    except OSError as exc:
        fail(f"{outdir}: cannot write to the output folder: {exc.strerror or exc}")
    try:
        yield
    finally:
        hold.__exit__(None, None, None)


def no_slides(inputs: list[Path], found) -> None:
    """Fail: nothing among the inputs is a slide (naming the input when there is one)."""
    what = f"{inputs[0]}: " if len(inputs) == 1 else ""
    where = "" if len(inputs) == 1 else " in the given inputs"
    others = len(found.others)
    fail(f"{what}no slides found{where}" + (f" ({others} file{'s' if others != 1 else ''} "
                                             "that are not slides)" if others else ""))


def _write_records(map_file: Path | None, results: list[Result], report_path: Path,
                   options: dict, outdir: Path | None) -> bool:
    """The map and the audit report of a conversion; a failure to write either is one error
    line naming the file (never the input). Returns False when one could not be written."""
    ok = True
    if map_file is not None:
        try:
            mapfile = MapFile(map_file)
            for r in results:
                mapfile.add(r.source.resolve(), r.pseudonym, r.output or "", r.status, "slide")
            mapfile.close()
        except OSError as exc:
            error_line(f"{map_file}: cannot write the map: {exc.strerror or exc}")
            ok = False
    try:
        audit.write(report_path, audit.build([batch.entry_of(r, outdir) for r in results], options))
    except OSError as exc:
        error_line(f"{report_path}: cannot write the audit report: {exc.strerror or exc}")
        ok = False
    return ok


def _summarise_results(results: list[Result], title: str) -> None:
    table = Table(title=title)
    for col in ("input", "output", "removed/replaced", "dates", "images dropped", "status"):
        table.add_column(col)
    for r in results:
        counts = r.plan.counts() if r.plan else {}
        dropped = sum(1 for i in r.plan.images if i.action == "drop") if r.plan else 0
        table.add_row(one_line(r.source.name), r.output.name if r.output else "-",
                      str(counts.get("remove", 0) + counts.get("clean", 0) + counts.get("replace", 0)),
                      str(counts.get("date", 0)), str(dropped), r.status)
    out.print(table)


def print_plan(path: Path, plan, show_values: bool) -> None:
    table = Table(title=one_line(f"{path.name} ({plan.format})"))
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
    inputs: List[Path] = typer.Argument(..., help="Slide files or folders (SVS, NDPI, OME-TIFF; MRXS with --allow-transcode).", readable=False),
    to: str = typer.Option("dicom", "--to", help="Target format (dicom)."),
    outdir: Path = typer.Option(..., "-o", "--output", help="Output folder.", readable=False),
    dates: str = DatesOpt,
    keep_device_id: bool = DeviceOpt,
    label: str = LabelOpt,
    macro: str = MacroOpt,
    strict: bool = StrictOpt,
    macro_region: Optional[str] = MacroRegionOpt,
    ocr: bool = OcrOpt,
    map_file: Optional[Path] = MapOpt,
    key_file: Optional[Path] = KeyOpt,
    allow_transcode: bool = typer.Option(False, "--allow-transcode", help="Accept re-encoded tiles when the lossless path is unavailable."),
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json).", readable=False),
) -> None:
    """Convert slides to de-identified DICOM WSI (tiles copied, not re-encoded)."""
    from .convert import convert as convert_slide

    if to != "dicom":
        fail("--to: only dicom is supported")
    if dates in ("shift", "keep-year"):
        # wsidicomizer writes a placeholder acquisition date (1970-01-01), not the scan's:
        # shifting or keeping its year would release a made-up date marked as the slide's
        fail(f"--dates {dates}: the conversion does not carry the scan date into the DICOM "
             "series; convert with dates removed (the default), or keep the slide's format "
             "and use `wsideid deid`")
    for item in inputs:
        if item.is_dir() and (batch.inside(outdir, item) or batch.inside(item, outdir)):
            fail(f"{outdir}: the output folder and the input folder {item} must not hold one another")
    check_paths(inputs, outdir, False, key_file=key_file, map_file=map_file,
                report_file=report_file)
    keyring = make_keyring(key_file)
    policy = make_policy(dates, keep_device_id, label, macro, keyring, strict=strict,
                         macro_region=parse_region(macro_region), ocr=ocr)
    prepare_outdir(outdir)
    found = batch.find(inputs)
    for path, why in found.problems:
        error_line(f"{path}: {why}")
    results = [Result(path, status="error", message=why) for path, why in found.problems
               if path.exists()]
    with holding(outdir):
        for job in found.jobs:
            result = batch.guarded(job.path, lambda: convert_slide(job, policy, keyring, outdir,
                                                                   allow_transcode), outdir)
            print_result(result)
            results.append(result)
    _summarise_results(results, "wsideid convert --to dicom")
    written = _write_records(map_file, results, report_file or outdir / "wsideid-report.json",
                             {**policy.options(), "convert": "dicom",
                              "allow_transcode": allow_transcode}, outdir)
    if not written or found.problems or any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FINDINGS)


@app.command()
def inspect(
    file: Path = typer.Argument(..., help="A slide file.", readable=False),
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
        _, plan = plan_job(job_of(file), policy, make_keyring(None))
    except SlideError as exc:
        fail(f"{file}: {exc}")
    if as_json:
        doc = {"file": str(file), "format": plan.format,
               "images": [i.public() for i in plan.images],
               "fields": [{**f.public(), "value": f.value, "new_value": f.new_value} for f in plan.fields],
               "warnings": plan.warnings + plan.library_log}
        if plan.regions:
            doc["regions"] = plan.regions
            doc["redacted"] = [r.public() for r in plan.redactions()]
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        print_plan(file, plan, show_values=True)


@app.command()
def redact(
    inputs: List[Path] = typer.Argument(..., help="Slide files or folders.", readable=False),
    outdir: Optional[Path] = typer.Option(None, "-o", "--output", help="Output folder.", readable=False),
    in_place: bool = typer.Option(False, "--in-place", help="Edit the inputs themselves."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan; write nothing."),
    region: Optional[List[str]] = RegionOpt,
    regions_file: Optional[Path] = RegionsOpt,
    region_level: int = RegionLevelOpt,
    fill: int = FillOpt,
    report_file: Optional[Path] = typer.Option(None, "--report", help="Audit report path (default OUTDIR/wsideid-report.json; in place: beside the first slide).", readable=False),
) -> None:
    """Paint regions over every pyramid level, changing nothing else (no de-identification);
    the output keeps the input's name and goes through the same verification."""
    if in_place and outdir is not None:
        fail("use either -o OUTDIR or --in-place, not both")
    if not dry_run and not in_place and outdir is None:
        fail("missing -o OUTDIR (or --in-place)")
    redaction = make_redaction(regions_file, region, region_level, fill, required=True)
    check_paths(inputs, outdir, in_place, report_file=report_file)
    policy = Policy(label="keep", macro="keep", redaction=redaction, deidentify=False)
    found = batch.find(inputs)
    for path, why in found.problems:
        error_line(f"{path}: {why}")
    if not found.jobs and not found.problems:
        no_slides(inputs, found)
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
    keyring = make_keyring(None)
    if dry_run:
        code = EXIT_INPUT if found.problems else 0
        for job in found.jobs:
            try:
                _, plan = plan_job(job, policy, keyring)
            except SlideError as exc:
                error_line(f"{job.path}: {exc}")
                code = EXIT_INPUT
                continue
            print_plan(job.path, plan, show_values=False)
        raise typer.Exit(code)
    settings = Settings(policy, keyring, Target(None if in_place else outdir))
    results = [Result(path, status="error", message=why) for path, why in found.problems
               if path.exists()]
    with holding(outdir):
        for job in found.jobs:   # one at a time, in this process: a region edit is small
            results.append(batch.attempt(job, settings))
            print_result(results[-1])
    _summarise_results(results, "wsideid redact")
    first = found.jobs[0].path.parent if found.jobs else Path(".")
    written = _write_records(None, results, report_file or (outdir or first) / "wsideid-report.json",
                             {**policy.options(), "in_place": in_place}, outdir)
    if not written or found.problems or any(r.status == "error" for r in results):
        raise typer.Exit(EXIT_INPUT)
    if any(r.status == "failed" for r in results):
        raise typer.Exit(EXIT_FINDINGS)


@app.command()
def scan(
    paths: List[Path] = typer.Argument(..., help="Slide files or folders.", readable=False),
    needles_file: Optional[Path] = typer.Option(None, "--needles", help="File with one identifier string per line to search for.", readable=False),
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
    for path, _, why in found.others:   # left by an interrupted run: may hold identifiers
        if why in (batch.TEMPORARY_WHY, batch.UNDO_WHY):
            out.print(one_line(f"{path}: {why}"), markup=False, highlight=False)
            findings += 1
    keyring = make_keyring(None)
    # every file on its own (a DICOM instance too): what each file holds is what is scanned
    files = [(path, job.format) for job in found.jobs for path in job.paths]
    for path, format_name in files:
        try:
            _, plan = plan_job(Job((path,), format_name), Policy(), keyring)
        except SlideError as exc:
            error_line(f"{path}: {exc}")
            unreadable = True
            continue
        # "replace" is how identifiers look after de-identification too (pseudonyms, new UIDs)
        lines = [f"{f.location}: {f.name} ({f.action})" for f in plan.fields
                 if f.action not in ("keep", "replace")]
        lines += [f"{i.index}: {i.role} image present" for i in plan.images if i.action != "keep"]
        for part in batch.slide_files(path):
            lines += [f"identifier {n!r} found in the raw bytes of {part.name}"
                      for n in needle_search.find_in_file(part, targets)]
        for line in lines:
            out.print(one_line(f"{path}: {line}"), markup=False, highlight=False)
        if not lines:
            out.print(one_line(f"{path}: clean"), markup=False, highlight=False)
        findings += len(lines)
    if unreadable and not findings:
        raise typer.Exit(EXIT_INPUT)
    if findings:
        raise typer.Exit(EXIT_FINDINGS)


@app.command("report")
def report_command(
    outdir: Path = typer.Argument(..., help="A released folder (with its wsideid-report.json).", readable=False),
    html_file: Path = typer.Option(..., "--html", help="Write the QC page (one row per slide, images embedded) here.", readable=False),
    before: Optional[Path] = typer.Option(None, "--before", help="Also write the IDENTIFYING page of the inputs' labels and overviews here: keep it with the map, never under OUTDIR (needs --map).", readable=False),
    map_file: Optional[Path] = typer.Option(None, "--map", help="The run's map (links released slides to their inputs, for --before).", readable=False),
    report_file: Optional[Path] = typer.Option(None, "--report", help="The audit report (default OUTDIR/wsideid-report.json).", readable=False),
) -> None:
    """Write the QC page of a released folder, for a reviewer to open in a browser."""
    from .report import html as qc

    report_path = report_file or outdir / "wsideid-report.json"
    try:
        doc = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        fail(f"{report_path}: cannot read the audit report: {getattr(exc, 'strerror', None) or exc}")
    if before is not None:
        if map_file is None:
            fail("--before needs the run's --map (to find the inputs)")
        if batch.inside(before, outdir):
            fail(f"{before}: the before page identifies patients: keep it outside the released folder {outdir}")
        if _same_file(before, html_file):
            fail(f"{before}: --before and --html name the same file (the QC page is shared, "
                 "the before page identifies patients)")
    sources = _sources(map_file, outdir) if before is not None else {}
    protected = [(report_path, "the audit report"), (map_file, "the map"),
                 *((source, "an input slide") for source in sources.values())]
    for page in (html_file, before):
        if page is not None:
            _check_page_target(page, protected)
    leftovers, foreign = qc.unreleased_files(doc, outdir, skip=(html_file,))
    for path in leftovers:
        error_line(f"{path}: a temporary file of an interrupted run (it may hold a slide's "
                   "identifiers): run the same deid command again to finish it")
    for path in foreign:
        error_line(f"{path}: no wsideid run released this file")
    pages = [(html_file, lambda: qc.qc_page(doc, outdir, unreleased=(len(leftovers), len(foreign))))]
    if before is not None:
        pages.append((before, lambda: qc.before_page(doc, sources)))
    for path, build in pages:
        try:
            text = build()
            tmp = path.with_name(f".{path.name}.partial")
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            fail(f"{path}: cannot write the page: {exc.strerror or exc}")
    out.print(f"{len(doc.get('slides', []))} slides: {html_file}" + (f", before: {before}" if before else ""),
              markup=False, highlight=False)
    if leftovers or foreign:
        raise typer.Exit(EXIT_FINDINGS)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def _check_page_target(page: Path, protected: list[tuple[Path | None, str]]) -> None:
    """A page is written over nothing but an earlier page of wsideid's: never over the report,
    the map, an input slide or any other file."""
    from .report import html as qc

    for other, what in protected:
        if other is not None and _same_file(page, Path(other)):
            fail(f"{page}: is {what}; a page is never written over it")
    if page.is_symlink() or (page.exists() and not page.is_file()):
        fail(f"{page}: not a regular file; a page is never written over it")
    if page.exists() and qc.page_kind(page) is None:
        fail(f"{page}: exists and is not a page wsideid wrote; it is not written over")


def _sources(map_file: Path, outdir: Path) -> dict[str, Path]:
    """Released path (relative to OUTDIR) -> input, from the map's slide rows."""
    try:
        rows = list(csv.DictReader(map_file.open(encoding="utf-8")))
    except OSError as exc:
        fail(f"{map_file}: cannot read the map: {exc.strerror or exc}")
    base = outdir.resolve()
    sources = {}
    for row in rows:
        if row.get("kind", "slide") != "slide" or row.get("status") != "ok" or not row.get("output"):
            continue
        try:
            rel = Path(row["output"]).resolve().relative_to(base).as_posix()
        except ValueError:
            continue
        sources[rel] = Path(row["source"])
    return sources


_said_interrupted = False


def _say_interrupted() -> None:
    global _said_interrupted
    _said_interrupted = True
    error_line(INTERRUPTED)


def main() -> None:
    from .library_warnings import withhold_everywhere

    withhold_everywhere()
    # SIGTERM (a batch scheduler's time limit, `kill`) ends a run as Ctrl-C does: the slides
    # being written are abandoned cleanly, the pool is shut down, and the run says how far
    # it got (a re-run finishes it); the default would end the process where it stands
    signal.signal(signal.SIGTERM, terminated)
    try:
        app()
    except KeyboardInterrupt:
        # an interrupt outside a command's own handling (while the command line is built, or
        # a second one while the first is being answered): one line, as Ctrl-C anywhere else
        if not _said_interrupted:
            error_line(INTERRUPTED)
        exit_interrupted()
    except SystemExit as exc:
        if exc.code == 130:     # the command answered an interrupt (see exit_interrupted)
            exit_interrupted()
        raise
    except InstallError as exc:
        error_line(f"installation: {exc}")
        sys.exit(EXIT_INPUT)
    except Exception as exc:  # noqa: BLE001 - a bug: one line, never a traceback
        error_line(f"internal error ({type(exc).__name__}: {exc}); please report it, with "
                   "WSIDEID_DEBUG=1 for the traceback")
        if os.environ.get("WSIDEID_DEBUG"):
            raise
        sys.exit(EXIT_INPUT)
    finally:
        # the command is over: a SIGTERM during the interpreter's shutdown would print a
        # KeyboardInterrupt or end the process by the signal after its work was done
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


if __name__ == "__main__":
    main()

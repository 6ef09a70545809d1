"""From what the user named to slides, their released names, and the loop over them.

Files are taken as given; folders are walked for files some format claims (a MIRAX slide
with its folder, a DICOM series whatever files and folders its instances are in: one slide
each), and the tree below a folder is mirrored under OUTDIR with every folder name replaced
by a pseudonym (names.py). Each slide is one task, a plain function of picklable data
(`run_task`), run in this process, in a pool of processes or on a Dask cluster: the very same
code everywhere. A failing slide never stops the others. Under OUTDIR a journal
(journal.py) records every released slide, so that a run that was stopped, killed or crashed
can be run again and finishes only the rest.
"""
from __future__ import annotations

import errno
import os
import re
import stat
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from . import adapters, associated, catalog
from .containers.output import Target
from .errors import InstallError, OutputError, SlideError, VerificationError
from .journal import Journal, Record, Superseded, brief_of, stat_outputs, task_lease
from .keyring import Keyring
from .model import Job, Result
from .names import IDENTIFIER_FIELDS, Namer
from .pipeline import Settings, plan_job, run

OUTPUT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


# ---- finding slides -----------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One slide found: its job, the input folder it was found under (None: a file named on
    the command line), and every file it consists of (a MIRAX slide's folder included)."""
    job: Job
    root: Path | None
    files: tuple[Path, ...]

    @property
    def parts(self) -> tuple[str, ...]:
        """The folders between the input folder and the slide (for a DICOM series spread
        over folders: down to the deepest folder that holds all its files)."""
        if self.root is None:
            return ()
        common = Path(os.path.commonpath([str(p.parent) for p in self.job.paths]))
        return common.relative_to(self.root).parts

    @property
    def size(self) -> int:
        return sum(_size(p) for p in self.files)


@dataclass
class Found:
    jobs: list[Job] = field(default_factory=list)
    problems: list[tuple[Path, str]] = field(default_factory=list)   # (what, why): a named input that is not a slide, or what cannot be read
    items: list[Item] = field(default_factory=list)
    others: list[tuple[Path, Path, str]] = field(default_factory=list)   # (file, input folder, why): walked files that are not slides, not copied
    broken: list[tuple[Item, str]] = field(default_factory=list)   # walked slides that cannot even be grouped
    restored: list[Path] = field(default_factory=list)   # inputs an interrupted in-place run had changed
    released: list[Path] = field(default_factory=list)   # in place: slides wsideid released earlier, left as they are
    named: set[Path] = field(default_factory=set)   # the inputs as given on the command line

    def walked_problems(self) -> list[tuple[Path, str]]:
        """Problems found inside a named folder (a file or folder that cannot be read, an
        undo record that cannot be used): the batch goes on without them."""
        return [(path, why) for path, why in self.problems if path not in self.named]

    def named_problems(self) -> list[tuple[Path, str]]:
        """Problems of the inputs named on the command line."""
        return [(path, why) for path, why in self.problems if path in self.named]


def find(inputs: list[Path], repair: bool = True) -> Found:
    """Every slide among the inputs: files as given, folders walked (a walked file that no
    format claims is not a slide: listed in `others`, not copied). A named input or a walked
    file that cannot be read (no permission, a FIFO or device, a folder that cannot be
    listed) is a problem of its own, never silently skipped. With `repair`, slides an
    interrupted in-place run left half-changed are restored first."""
    from .errors import NotASlide

    found = Found(named=set(inputs))
    if repair:
        found.restored = restore_interrupted(inputs, found.problems)
    files: list[tuple[Path, adapters.Adapter, Path | None]] = []
    seen: set[Path] = {p.resolve() for p, _ in found.problems}   # an undo record not usable
    for item in inputs:
        why = unusable(item)
        if why is not None:
            found.problems.append((item, why))
        elif item.is_dir():
            for path, root, why in _walk(item, found.problems):
                if why is not None:
                    found.others.append((path, root, why))
                    continue
                if path.resolve() in seen:
                    continue
                seen.add(path.resolve())
                why = unusable(path)
                if why is not None:     # a file that cannot be read may well be a slide
                    found.problems.append((path, why))
                    continue
                adapter = adapters.detect(path)
                if adapter is None:
                    found.others.append((path, root, not_a_slide(path)))
                else:
                    files.append((path, adapter, root))
        else:
            adapter = adapters.detect(item)
            if adapter is None:
                found.problems.append((item, not_a_slide(item)))
            elif item.resolve() not in seen:
                seen.add(item.resolve())
                files.append((item, adapter, None))
    groups: dict[tuple[str, str], list[tuple[Path, Path | None]]] = {}
    for path, adapter, root in files:
        if not adapter.multi_file:
            found.items.append(Item(Job((path,), adapter.name), root, tuple(slide_files(path))))
            continue
        try:
            groups.setdefault((adapter.name, adapter.group_key(path)), []).append((path, root))
        except NotASlide as exc:    # a DICOMDIR: an index of the export, not a slide
            if root is None:
                found.problems.append((path, f"not a slide: {exc}"))
            else:
                found.others.append((path, root, f"{exc}, not a slide"))
        except SlideError as exc:
            if root is None:
                found.problems.append((path, str(exc)))
            else:
                found.broken.append((Item(Job((path,), adapter.name), root, (path,)), str(exc)))
    for (name, _), members in groups.items():
        paths = tuple(p for p, _ in members)
        roots = {r for _, r in members}
        # a series named file by file, or found under several input folders, lands in OUTDIR
        root = roots.pop() if len(roots) == 1 else None
        found.items.append(Item(Job(paths, name), root, paths))
    found.jobs = [i.job for i in found.items]
    return found


FILE_KINDS = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
              stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def unusable(path: Path) -> str | None:
    """Why a named or walked input cannot be used (None: a readable file or a listable
    folder). Nothing is opened that could block (a FIFO) or never end (a device)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return "no such file or folder" if not os.path.islink(path) else \
            "a symbolic link to nothing (no such file or folder)"
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    if stat.S_ISDIR(st.st_mode):
        if not os.access(path, os.R_OK | os.X_OK):
            return "the folder cannot be read: Permission denied"
        return None
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file ({FILE_KINDS.get(stat.S_IFMT(st.st_mode), 'a special file')}): not a slide"
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        return f"cannot be read: {exc.strerror or exc}"
    return None


def restore_interrupted(inputs: list[Path], problems: list | None = None) -> list[Path]:
    """Slides an in-place run was killed while changing are put back first, from the undo
    records beside them (before anything looks at their content). A record that cannot be
    used is a problem of its slide (nothing is changed)."""
    from .containers.files import UNDO_SUFFIX, restore

    records = []
    for item in inputs:
        try:
            if item.is_dir():
                records += sorted(item.rglob(f".*{UNDO_SUFFIX}"))
            else:
                record = item.with_name(f".{item.name}{UNDO_SUFFIX}")
                if os.path.lexists(record):
                    records.append(record)
        except OSError:
            continue     # reported when the input is walked
    restored = []
    for record in records:
        slide = record.with_name(record.name[1:-len(UNDO_SUFFIX)])
        try:
            if restore(record):
                restored.append(slide)
        except (SlideError, OSError) as exc:
            if problems is None:
                raise
            why = str(exc) if isinstance(exc, SlideError) else \
                f"cannot restore it from its undo record: {exc.strerror or exc}"
            problems.append((slide, why))
    return restored


def _walk(folder: Path, problems: list | None = None):
    """(file, input folder, None) for every file below `folder` in name order, and (path,
    input folder, why) for what is not followed or not taken (symbolic links, FIFOs and
    devices, temporary files an interrupted run left). The folder of a MIRAX slide (NAME/
    beside NAME.mrxs) is the slide's, not a folder of the tree: it is not walked. A folder
    that cannot be listed goes to `problems`."""
    from .containers.files import UNDO_SUFFIX

    def unreadable(exc: OSError) -> None:
        if problems is not None:
            where = Path(exc.filename) if exc.filename else folder
            problems.append((where, f"the folder cannot be read: {exc.strerror or exc}"))

    for here, dirs, names in os.walk(folder, onerror=unreadable):
        dirs.sort()
        base = Path(here)
        mirax = {n[: -len(".mrxs")] for n in names if n.lower().endswith(".mrxs")}
        for d in list(dirs):
            if d.endswith(UNDO_SUFFIX):   # an in-place run's undo record, not part of the tree
                dirs.remove(d)
                yield base / d, folder, UNDO_WHY
            elif (base / d).is_symlink():
                dirs.remove(d)
                yield base / d, folder, "a symbolic link to a folder: not followed"
            elif temporary(d):
                dirs.remove(d)
                yield base / d, folder, TEMPORARY_WHY
            elif d in mirax:
                dirs.remove(d)
        for name in sorted(names):
            path = base / name
            if path.is_symlink():
                yield path, folder, "a symbolic link: not followed"
            elif temporary(name):
                yield path, folder, TEMPORARY_WHY
            elif path.is_file():
                yield path, folder, None
            elif not path.is_dir():
                yield path, folder, unusable(path) or "not a regular file: not a slide"


UNDO_WHY = ("the undo record of an interrupted in-place run (the slide beside it is "
            "half-changed until a run restores it): not copied")
TEMPORARY_WHY = ("a temporary file an interrupted wsideid run left (it may hold the "
                 "identifiers of a slide): not copied; delete it")


def temporary(name: str) -> bool:
    """A hidden name the file layer gives what it is still writing (`.NAME.xxxx.partial`,
    `.n.xxxx.renaming`, probes): never a slide of its own."""
    from .journal import TEMPORARY_PREFIXES, TEMPORARY_SUFFIXES

    return name.startswith(".") and (name.endswith(TEMPORARY_SUFFIXES)
                                     or name.startswith(TEMPORARY_PREFIXES))


RELEASED_NAME = re.compile(r"wsi-[a-z2-7]{16}")


def released_already(item: Item, policy, keyring: Keyring) -> bool:
    """Whether a slide found for an in-place run is one wsideid released (an earlier run on
    the same folder, killed or not): its name is a released name (`wsi-` and 16 letters; a
    DICOM series: its folder's) and its metadata, planned as this run would, leaves nothing
    to remove, clean or drop. Such a slide is left as it is: de-identifying it again would
    give it a new pseudonym and lose the link the map holds."""
    job = item.job
    adapter = adapters.by_name(job.format)
    name = job.path.parent.name if adapter.multi_file and adapter.container == "dicom" \
        else job.path.name.split(".", 1)[0]
    if not RELEASED_NAME.fullmatch(name):
        return False
    try:
        _, plan = plan_job(job, policy, keyring, screen=False)
    except (SlideError, OSError):
        return False
    if plan.empty is not None:
        return False
    if any(f.action not in ("keep", "replace", "date") for f in plan.fields):
        return False
    return all(img.action == "keep" for img in plan.images)


def slide_files(path: Path) -> list[Path]:
    """Every file a slide consists of (a MIRAX slide: NAME.mrxs and the files in NAME/)."""
    if path.name.lower().endswith(".mrxs") and path.is_file():
        folder = path.with_name(path.name[: -len(".mrxs")])
        return [path] + (sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else [])
    return [path]


def not_a_slide(path: Path) -> str:
    size = path.stat().st_size
    why = "too short" if size < 8 else "it does not start like one"
    return f"not a TIFF, DICOM or MIRAX slide ({why})"


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


# ---- one slide ----------------------------------------------------------------------------

def attempt(job: Job, settings: Settings) -> Result:
    return guarded(job.path, lambda: run(job, settings), settings.target.outdir)


def guarded(source: Path, work: Callable[[], Result], outdir: Path | None) -> Result:
    """One slide's work; any failure becomes a Result that says what failed: the input when
    the input is the problem, else the output folder. A broken installation stops the run
    (raised)."""
    try:
        return work()
    except SlideError as exc:
        return Result(source, status="error", message=str(exc))
    except VerificationError as exc:
        return Result(source, status="failed", message=f"verification failed: {exc}")
    except InstallError:
        raise
    except OutputError as exc:
        return Result(source, status="error", message=str(exc), failed=outdir)
    except OSError as exc:
        result = Result(source, status="error", message=f"{exc.strerror or exc}")
        if outdir is not None and (exc.errno in OUTPUT_ERRNOS or _names_inside(exc, outdir)):
            result.message = f"cannot write the output: {exc.strerror or exc}"
            result.failed = outdir
        return result


def _names_inside(exc: OSError, folder: Path) -> bool:
    return any(name is not None and inside(Path(os.fsdecode(name)), folder)
               for name in (exc.filename, exc.filename2))


def inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def without_source(message: str, source: Path) -> str:
    """A failure message as a report may keep it: the input's path and name (which a
    library's message may quote) replaced by <input>."""
    stem = source.name.split(".")[0]
    for text in (str(source), str(source.parent), source.name, stem):
        if len(text) >= 3:
            message = message.replace(text, "<input>")
    return message


def released_files(output: Path) -> list[Path]:
    """Every file of a released slide: the file, a DICOM slide's folder, or NAME.mrxs with
    its folder NAME/."""
    if output.is_dir():
        return sorted(p for p in output.rglob("*") if p.is_file())
    files = [output]
    if output.name.lower().endswith(".mrxs"):
        folder = output.with_name(output.name[: -len(".mrxs")])
        if folder.is_dir():
            files += sorted(p for p in folder.rglob("*") if p.is_file())
    return files


def entry_of(result: Result, outdir: Path | None, subject: str = "") -> dict:
    """A slide's report entry: where it was released, what was done to every field and
    image, the catalogs that decided, and the verification. Never an original name or value."""
    where = result.output
    path = None
    if where is not None:
        path = where.relative_to(outdir).as_posix() if outdir is not None and inside(where, outdir) else where.name
    entry: dict = {"path": path, "pseudonym": result.pseudonym or None, "status": result.status,
                   "output": where.name if where is not None else None}
    if result.status != "ok":
        entry["message"] = without_source(result.message, result.source)
    plan = result.plan
    if plan is not None:
        entry["format"] = plan.format
        entry["images"] = [img.public() for img in plan.images]
        entry["fields"] = [f.public() for f in plan.fields]
        entry["actions"] = plan.counts()
        entry["warnings"] = plan.warnings + plan.library_log
        entry["catalogs"] = catalog.catalogs_of(f.name for f in plan.fields)
        if plan.regions:
            entry["regions"] = plan.regions
            entry["redacted"] = [e.public() for e in plan.redactions()]
        pictures = associated.report_entries(plan)
        if pictures:
            entry["associated"] = pictures
    if result.status == "ok" and result.plan is not None and result.plan.empty is None:
        entry["verification"] = {"result": "passed"}
    elif result.status == "failed":
        entry["verification"] = {"result": "failed", "problems": entry["message"]}
    else:
        entry["verification"] = {"result": "not run"}
    if subject:
        entry["date_subject"] = subject
    entry["zeroed_bytes"] = result.zeroed_bytes
    return entry


# ---- tasks: the same picklable functions in this process, a process pool or Dask ---------

@dataclass(frozen=True)
class Task:
    index: int
    job: Job
    settings: Settings
    outdir: Path | None = None      # the output folder (None: in place)
    dest: tuple[str, ...] = ()      # the released folders below it
    run_id: str = ""                # the journal's current run ("" without a journal)
    subject: str = ""


@dataclass
class Outcome:
    """What one slide task reports back (small and picklable: no plan, no open files)."""
    index: int
    status: str                     # ok | failed | error (and, set by the loop: done earlier)
    message: str = ""
    failed: Path | None = None      # what failed when it is not the input (the output folder)
    pseudonym: str = ""
    output: Path | None = None
    outputs: list[list] = field(default_factory=list)   # [path under OUTDIR, size, mtime_ns]
    entry: dict | None = field(default_factory=dict)   # None once the journal holds it
    warnings: list[str] = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    dropped: int = 0
    seconds: float = 0.0
    earlier: bool = False           # released by an earlier run (found in the journal)
    brief: dict = field(default_factory=dict)   # what the summary needs of the entry
    undo: str = ""                  # in place: the undo record to forget once the map has its row

    def __post_init__(self) -> None:
        if not self.brief and self.entry:
            self.brief = brief_of(self.entry)


def run_task(task: Task) -> Outcome:
    """De-identify one slide into its released folder; never raises for the slide's own
    failure (a broken installation does raise)."""
    start = time.monotonic()
    if task.outdir is not None and task.run_id:
        try:
            with task_lease(task.outdir, task.run_id):
                return _run(task, start)
        except Superseded as exc:
            return Outcome(task.index, "error", str(exc), failed=task.outdir)
    return _run(task, start)


def _run(task: Task, start: float) -> Outcome:
    target = task.settings.target
    if target.outdir is not None and task.dest:
        try:
            make_folders(task.outdir, task.dest)
        except OSError as exc:
            return Outcome(task.index, "error", f"cannot create the output folder: "
                           f"{exc.strerror or exc}", failed=target.outdir)
    result = attempt(task.job, task.settings)
    outcome = Outcome(task.index, result.status, result.message, result.failed, result.pseudonym,
                      result.output, entry=entry_of(result, task.outdir, task.subject))
    if result.plan is not None:
        outcome.warnings = list(result.plan.warnings)
        outcome.counts = result.plan.counts()
        outcome.dropped = sum(1 for i in result.plan.images if i.action == "drop")
    if result.status == "ok" and result.message:
        outcome.warnings.append(result.message)
    if result.undo is not None:
        outcome.undo = str(result.undo)
    if result.status == "ok" and result.output is not None and task.outdir is not None:
        outcome.outputs = stat_outputs(task.outdir, released_files(result.output))
    outcome.brief = brief_of(outcome.entry)
    outcome.seconds = time.monotonic() - start
    return outcome


def make_folders(outdir: Path, parts: tuple[str, ...]) -> None:
    """Create the released folders of a slide; each new folder's entry is made durable."""
    from .containers.files import fsync_dir

    here = outdir
    for part in parts:
        parent, here = here, here / part
        try:
            here.mkdir()
        except FileExistsError:
            continue
        fsync_dir(parent)


@dataclass(frozen=True)
class SurveyTask:
    index: int
    job: Job
    keyring: Keyring
    policy: Any
    identifiers: bool               # read barcodes and accession numbers (for a mapping)


def survey_task(task: SurveyTask) -> dict:
    """How a slide will be named, before anything is written: its keyed pseudonym and output
    name, the identifiers a mapping may match (read from its metadata only), and the files
    in its folder that it does not use. {"error": ...} when it cannot be read. Libraries'
    warnings are withheld (a DICOM header is decoded whole when read: pydicom quotes the
    values it cannot decode); the slide's own run counts them in its plan."""
    from .library_warnings import withheld

    holder: dict = {}

    def work() -> Result:
        adapter = adapters.by_name(task.job.format)
        slide = adapter.read(task.job)
        try:
            naming = adapter.naming(slide, task.keyring)
            holder.update(pseudonym=naming.pseudonym, output_name=naming.output_name,
                          folder=adapter.container == "mirax",
                          extra=list(getattr(slide, "extra_files", lambda: [])()))
            if task.identifiers:
                plan = adapter.plan(slide, task.policy, naming, screen=False)
                holder["identifiers"] = [f.value.strip() for f in plan.fields
                                         if f.name in IDENTIFIER_FIELDS and f.value.strip()]
        finally:
            slide.close()
        return Result(task.job.path)

    with withheld():
        result = guarded(task.job.path, work, None)
    if result.status != "ok":
        return {"index": task.index, "error": result.message, "status": result.status}
    return {"index": task.index, **holder}


# ---- executors ----------------------------------------------------------------------------

class InlineExecutor:
    """Runs each task at once, in this process (`--jobs 1`)."""

    def submit(self, fn, *args) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed over like a pool's future
            future.set_exception(exc)
            if isinstance(exc, KeyboardInterrupt):
                raise
        return future

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def _worker_started(parent: int) -> None:
    """In each pool process: die with the parent (a `kill -9` of the run must not leave
    slides being written behind it). A warning outside a slide's run is one line without its
    text, as in the command line's own process."""
    from .library_warnings import withhold_everywhere

    withhold_everywhere()
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(1)


def process_pool(jobs: int, warm: int | None = None):
    """A pool of `jobs` fresh processes (spawned, not forked: they inherit neither the
    output folder's lock nor anything else of this process). `warm` of them (all by
    default) start now and import what slides need; the others start as slides arrive."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    pool = ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_worker_started, initargs=(os.getpid(),))
    warm_up(pool, jobs if warm is None else warm)
    return pool


def warm_up(pool, workers: int) -> None:
    """Start `workers` more of the pool's processes (an idle one takes a warm-up first)."""
    for _ in range(workers):
        pool.submit(_warm_up)


def _warm_up() -> None:
    """Import what every slide needs once per worker, before the first slide arrives."""
    import numpy  # noqa: F401
    import openslide  # noqa: F401

    from . import verify  # noqa: F401

    adapters.adapters()


def run_tasks(executor, fn, tasks: list, window: int, on_done: Callable[[Any, Any], None]) -> None:
    """Every task through the executor, at most `window` at a time; `on_done(task, result)`
    in this process as each finishes (any order). A task that raised hands its exception to
    on_done."""
    pending: dict[Future, Any] = {}
    queue = iter(tasks)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < window:
                task = next(queue, None)
                if task is None:
                    exhausted = True
                    break
                pending[executor.submit(fn, task)] = task
            if not pending:
                return
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                try:
                    value = future.result()
                except InstallError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a dead worker is that slide's failure
                    value = exc
                on_done(task, value)
    finally:
        for future in pending:
            future.cancel()


# ---- a whole run --------------------------------------------------------------------------

@dataclass
class Slide:
    """One slide of a run as planned: where it goes, under which name, and what happened."""
    index: int
    item: Item
    job_id: str = ""
    state: str = ""
    stamp: str = ""                 # its files' names, sizes and times (not where they are)
    moved_from: str = ""            # the released path of the same files from another folder
    survey: dict = field(default_factory=dict)
    dest: tuple[str, ...] = ()
    name: str = ""                  # its released name when a mapping gives one
    subject: str = ""
    outcome: Outcome | None = None
    extra: list[str] = field(default_factory=list)   # files in its folder it does not use (names as found)

    @property
    def source(self) -> Path:
        return self.item.job.path


@dataclass
class Sink:
    """What the command line wants to hear while a run goes on."""
    planned: Callable[[list[Slide]], None] = lambda slides: None
    finished: Callable[[Slide], None] = lambda slide: None


class Exporter:
    """A batch run: name every slide, skip what an earlier run released, run the rest, and
    record each release in the journal as it happens."""

    def __init__(self, settings: Settings, outdir: Path | None, namer: Namer,
                 journal: Journal | None, executor, window: int, sink: Sink):
        self.settings = settings
        self.outdir = outdir
        self.namer = namer
        self.journal = journal
        self.executor = executor
        self.window = max(1, window)
        self.sink = sink

    # ---- planning --------------------------------------------------------------------------
    def plan(self, items: list[Item], survey: bool = True) -> list[Slide]:
        """Every slide with its released folder, name and subject; slides released earlier
        (intact, same inputs) come with their outcome."""
        keyring = self.settings.keyring
        slides = [Slide(n, item) for n, item in enumerate(items)]
        for slide in slides:
            paths = "\0".join(sorted(str(p.resolve()) for p in slide.item.job.paths))
            slide.job_id = keyring.digest("job", os.fsencode(paths))
            state, stamp = _state(slide.item.files)
            slide.state = keyring.digest("state", os.fsencode(state))
            slide.stamp = keyring.digest("stamp", os.fsencode(stamp))
            record = self.journal.done(slide.job_id, slide.state) if self.journal else None
            if record is not None:
                slide.survey = record.survey
                brief = record.brief
                slide.outcome = Outcome(slide.index, "ok", outputs=record.outputs, entry=None,
                                        earlier=True, brief=brief,
                                        pseudonym=brief.get("pseudonym") or "",
                                        output=self.outdir / brief["path"] if brief.get("path") else None)
        if survey:
            todo = [SurveyTask(s.index, s.item.job, keyring, self.settings.policy, bool(self.namer.mapping))
                    for s in slides if s.outcome is None]
            run_tasks(self.executor, survey_task, sorted(todo, key=lambda t: -slides[t.index].item.size),
                      self.window * 4, lambda task, value: self._surveyed(slides[task.index], value))
        self._name(slides)
        if self.journal is not None:
            jobs = {s.job_id for s in slides}
            for slide in slides:
                if slide.outcome is None:
                    other = self.journal.moved(slide.job_id, slide.stamp, jobs)
                    slide.moved_from = (other.brief.get("path") or "") if other else ""
        return slides

    def _surveyed(self, slide: Slide, value) -> None:
        if isinstance(value, BaseException):
            value = {"error": f"the slide could not be read: {value}", "status": "error"}
        if "error" in value:
            slide.outcome = Outcome(slide.index, value["status"], value["error"],
                                    entry={"path": None, "pseudonym": None, "status": value["status"],
                                           "output": None,
                                           "message": without_source(value["error"], slide.source),
                                           "verification": {"result": "not run"}, "zeroed_bytes": 0})
            return
        slide.extra = value["extra"]
        # the journal keeps the survey: names of files the slide does not use only as pseudonyms
        slide.survey = {k: value[k] for k in ("pseudonym", "output_name", "folder")}
        slide.survey["extra"] = [self.settings.keyring.file_pseudonym(x) for x in value["extra"]]
        # a DICOM series has no file name of its own: only what is read from it can match
        named = not adapters.by_name(slide.item.job.format).multi_file
        slide.survey["mapped"] = self.namer.slide(slide.source.name if named else None,
                                                  value.get("identifiers", []))

    def _name(self, slides: list[Slide]) -> None:
        """Released folders, names and subjects; slides whose released name is taken (the same
        content twice in one folder, a mapping that gives two slides or a slide and a folder
        the same name) fail here, before anything is written."""
        claims: dict[tuple[str, ...], str] = {}
        for slide in slides:
            slide.dest = self.namer.folders(slide.item.parts)
            for depth in range(1, len(slide.dest) + 1):
                claims.setdefault(slide.dest[:depth], "folder")
        shared: dict[tuple[tuple[str, ...], str], int] = {}
        for slide in slides:
            mapped = slide.survey.get("mapped", "")
            if mapped:
                shared[(slide.dest, mapped)] = shared.get((slide.dest, mapped), 0) + 1
        for slide in slides:
            survey = slide.survey
            if not survey:
                continue
            mapped = survey.get("mapped", "")
            if mapped and shared[(slide.dest, mapped)] > 1:
                # several slides of one folder match one pseudonym (an accession number shared
                # by a case's slides): each keeps it, followed by a part of its keyed pseudonym
                mapped = f"{mapped}-{survey['pseudonym'].split('-', 1)[-1][:8]}"
            slide.name = mapped
            slide.subject = self.namer.subject(slide.item.parts, survey.get("mapped", ""))
            base = mapped or survey["pseudonym"]
            extension = survey["output_name"][len(survey["pseudonym"]):]
            entries = [base + extension] + ([base] if survey.get("folder") else [])
            if slide.outcome is not None:   # released by an earlier run: its names stay taken
                for e in entries:
                    claims.setdefault(slide.dest + (e,), str(slide.index))
                continue
            taken = [claims.get(slide.dest + (e,)) for e in entries]
            other = next((t for t in taken if t is not None), None)
            if other is not None:
                why = ("the same content as another slide" if other != "folder" and not mapped
                       and slides[int(other)].survey.get("pseudonym") == survey["pseudonym"]
                       else "its released name is already taken in its folder (by another "
                            "slide or a folder): check the mapping")
                if other != "folder":
                    why += f" ({slides[int(other)].source})"
                slide.outcome = Outcome(slide.index, "error", why, entry={
                    "path": None, "pseudonym": None, "status": "error", "output": None,
                    "message": without_source(why.split(" (")[0], slide.source),
                    "verification": {"result": "not run"}, "zeroed_bytes": 0})
                continue
            for e in entries:
                claims[slide.dest + (e,)] = str(slide.index)

    # ---- running ---------------------------------------------------------------------------
    def run(self, slides: list[Slide]) -> None:
        self.sink.planned(slides)
        for slide in slides:
            if slide.outcome is not None:
                self.sink.finished(slide)
        tasks = [self._task(s) for s in slides if s.outcome is None]
        tasks.sort(key=lambda t: -slides[t.index].item.size)   # the largest first: shortest run
        run_tasks(self.executor, run_task, tasks, self.window,
                  lambda task, value: self._finished(slides[task.index], value))
        if self.journal is not None:
            self.journal.tidy()
            self._remove_empty_folders(slides)

    def _task(self, slide: Slide) -> Task:
        policy = self.settings.policy
        if policy.dates == "shift" and slide.subject:
            policy = replace(policy, date_shift_days=self.settings.keyring.date_shift_days(slide.subject))
        if self.outdir is None:
            target = Target(None)
        else:
            target = Target(self.outdir.joinpath(*slide.dest))
        # in place, a slide's undo record is forgotten only after its map row is written
        # (here, in _finished): a crash in between puts the old slide back, never loses the link
        settings = replace(self.settings, policy=policy, target=target, name=slide.name,
                           keep_undo=self.outdir is None)
        return Task(slide.index, slide.item.job, settings, self.outdir, slide.dest,
                    self.journal.run_id if self.journal else "",
                    slide.subject if policy.dates == "shift" else "")

    def _finished(self, slide: Slide, value) -> None:
        if isinstance(value, BaseException):
            value = Outcome(slide.index, "error", f"the process working on it died ({value!r})",
                            entry={"path": None, "pseudonym": None, "status": "error", "output": None,
                                   "message": "the process working on it died",
                                   "verification": {"result": "not run"}, "zeroed_bytes": 0})
        slide.outcome = value
        if value.status == "ok" and value.outputs and self.journal is not None:
            stale = self.journal.append(Record(slide.job_id, slide.state, value.outputs,
                                               slide.survey, value.entry, stamp=slide.stamp))
            value.entry = None          # the journal holds it from now on
            self._remove_stale(stale)
        self.sink.finished(slide)
        if value.undo:
            from .containers.files import forget

            forget(Path(value.undo))

    def entry(self, slide: Slide) -> dict:
        """A finished slide's report entry (from the journal once it is recorded there)."""
        if slide.outcome.entry is not None:
            return slide.outcome.entry
        return self.journal.entry(slide.job_id)

    def _remove_stale(self, paths: list[str]) -> None:
        """Files of an earlier release of a slide whose inputs have changed since (its new
        release has another name): they are no longer part of the tree."""
        base = self.outdir.resolve()
        for rel in paths:
            path = self.outdir / rel
            if ".." in Path(rel).parts or not inside(path, base):
                continue
            path.unlink(missing_ok=True)
            parent = path.parent
            while parent != self.outdir and inside(parent, base):
                try:
                    parent.rmdir()
                except OSError:
                    break
                parent = parent.parent

    def _remove_empty_folders(self, slides: list[Slide]) -> None:
        """Folders made for slides that then failed: removed when nothing is in them."""
        folders = {s.dest[:d] for s in slides for d in range(1, len(s.dest) + 1)}
        for parts in sorted(folders, key=len, reverse=True):
            try:
                self.outdir.joinpath(*parts).rmdir()
            except OSError:
                pass


def _state(files) -> tuple[str, str]:
    """Each file's size and time of last change, after its path (the state: the same input
    unchanged) and after its name only (the stamp: the same files in another folder)."""
    state, stamp = [], []
    for path in files:
        try:
            st = path.stat()
            facts = f"{st.st_size}\t{st.st_mtime_ns}"
        except OSError:
            facts = "-"
        state.append(f"{path.resolve()}\t{facts}")
        stamp.append(f"{path.name}\t{facts}")
    return "\n".join(sorted(state)), "\n".join(sorted(stamp))


def merged_folders(slides: list[Slide]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Released folders that input folders of different names go into: names equal once
    Unicode-normalized (NFC and NFD spellings of one name), or given one pseudonym by the
    mapping (`JOHN DOE/` and `john doe/`). Folders of one name go into one released folder by
    design (a case's pseudonym is the same everywhere) and are not listed. Each: the released
    folder and the input folder names."""
    names: dict[tuple[str, ...], set[str]] = {}
    for slide in slides:
        for depth in range(1, len(slide.dest) + 1):
            names.setdefault(slide.dest[:depth], set()).add(slide.item.parts[depth - 1])
    return [(dest, sorted(found)) for dest, found in sorted(names.items()) if len(found) > 1]


def preview(slide: Slide, settings: Settings):
    """A slide's naming and plan as a run would make them (dry run; nothing is written)."""
    policy = settings.policy
    if policy.dates == "shift" and slide.subject:
        policy = replace(policy, date_shift_days=settings.keyring.date_shift_days(slide.subject))
    return plan_job(slide.item.job, policy, settings.keyring, slide.name)

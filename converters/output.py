"""Output directories of every command that writes: inputs are never touched, the old output is replaced only
by a complete new one, and an interrupted or killed run leaves nothing that the next run cannot recognise.

- `check_output` refuses an output that is, contains or lies inside an input (compared by device and inode
  of every ancestor, so symlinks, `..`, relative paths and bind mounts all resolve to the same answer), a
  non-empty output without `force`, an output that cannot be replaced by a rename (the current
  directory or one above it, a mount point), an old output holding a mount point (deleting it would descend
  into the mount), and a place that cannot be written. `check_output_file` does the same for a one-file output.
- `staged_output` yields a staging directory beside the output, marked by a file (`MARKER_NAME`) naming this
  process; the old output is renamed aside, the new one renamed in, then the old one deleted. Any failure
  before the new one is in place renames the old one back, untouched.
- SIGINT, SIGTERM and SIGHUP raise `Interrupted` while a staged output is open (the previous handlers come
  back afterwards), so the staging directory is removed and the CLI exits 128 + the signal number. A signal
  that lands in the import system's own code is delivered again a moment later (`redeliver_outside_imports`).
- Directories left by a killed run are recognised by their marker (written by this module, naming a process
  that no longer runs on this host and the output it was for) and removed, or, when the old output had been
  set aside and nothing took its place, renamed back (if something did, both stay). A directory without a
  valid marker is never deleted, whatever its name.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rembert_ref.errors import UserError

MARKER_NAME = ".rembert-convert-partial"
# staging: a new output being written; aside: an old output moved out of the way while the new one goes in;
# replaced: an old output whose replacement is in place (safe to delete).
STAGING_KIND, ASIDE_KIND, REPLACED_KIND = "staging", "aside", "replaced"
REDELIVERY_DELAY_S = 0.05
OUTPUT_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(BaseException):
    """A signal arrived while an output was being written; the partial output has been removed.

    A BaseException (like KeyboardInterrupt), so that no `except Exception` on the way swallows it."""

    def __init__(self, signum: int, committed: bool = False):
        self.signum = signum
        self.committed = committed
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        if self.committed:
            return f"interrupted by {name} after the output was complete; it is in place"
        return f"interrupted by {name}; the partial output was removed and the previous output (if any) is unchanged"


@dataclass(frozen=True)
class NamedInput:
    """An input a command reads: never written, replaced, or written into."""

    path: Path
    what: str  # "checkpoint folder", "config file", ... for the message


def inputs_of(pairs: Iterable[tuple[str | os.PathLike | None, str]]) -> list[NamedInput]:
    """(path or None, description) pairs -> the inputs that exist."""
    return [NamedInput(Path(p), what) for p, what in pairs if p is not None and os.path.lexists(p)]


def checkpoint_inputs(prefix: Path, named: str | os.PathLike | None = None) -> list[NamedInput]:
    """A checkpoint's files (index, data shards, `checkpoint` state) and the folder holding them, and the folder
    the user named (`named`: a directory, or a file's folder), which may be another one: its `checkpoint` file
    can point elsewhere (TensorFlow writes absolute paths), and a SavedModel keeps its variables a level down."""
    files = [NamedInput(p, "checkpoint file") for p in sorted(prefix.parent.glob(f"{prefix.name}.*"))]
    folders = [NamedInput(prefix.parent, "checkpoint folder")]  # the folder first: the clearest message
    if named is not None:
        named = Path(named)
        folders.append(NamedInput(named if named.is_dir() else named.parent, "checkpoint folder"))
    return [*folders, *files]


# -- where an output may go --------------------------------------------------------------------------------


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


def _self_and_ancestors(path: Path) -> list[Path]:
    """`path` (made absolute, symlinks resolved) and every directory above it."""
    real = Path(os.path.realpath(path))
    return [real, *real.parents]


def _ancestor_identities(path: Path) -> set[tuple[int, int]]:
    return {ident for p in _self_and_ancestors(path) if (ident := _identity(p)) is not None}


def overlap(output: Path, source: Path) -> str | None:
    """How `output` overlaps `source` ("is", "contains", "lies inside") or None. Compared by (device, inode)
    as well as by resolved path, so a bind mount of the same folder counts as the same folder."""
    real_out, real_src = Path(os.path.realpath(output)), Path(os.path.realpath(source))
    out_id, src_id = _identity(real_out), _identity(real_src)
    if real_out == real_src or (out_id is not None and out_id == src_id):
        return "is"
    if real_out in real_src.parents or (out_id is not None and out_id in _ancestor_identities(real_src)):
        return "contains"
    if real_src in real_out.parents or (src_id is not None and src_id in _ancestor_identities(real_out)):
        return "lies inside"
    return None


def check_output(output: str | os.PathLike, inputs: Sequence[NamedInput], *, force: bool,
                 option: str = "-o", probe: bool = True) -> Path:
    """Refuse an output that would touch an input, or that cannot be replaced atomically; return its real path.

    Checked before anything is read, so a mistake costs nothing. Leftovers of killed runs for this output are
    dealt with first (`recover_leftovers`), so an old output a killed run had set aside is back in place."""
    output = Path(output)
    recover_leftovers(Path(os.path.realpath(output)))
    _refuse_overlap(output, inputs, option)
    if os.path.lexists(output) and not output.is_dir():
        raise UserError(f"output {output} exists and is not a directory; choose another {option}")
    real = Path(os.path.realpath(output))
    check_writable_place(output, real.parent, option, probe=probe)
    cwd = Path(os.path.realpath(os.getcwd()))
    if real == cwd or real in cwd.parents:
        raise UserError(f"output {output} is the current directory or holds it, which cannot be replaced "
                        f"atomically; name a new folder, e.g. {option} {real.name or 'out'}-converted")
    if real.is_dir() and os.path.ismount(real):
        raise UserError(f"output {output} is a mount point, which cannot be replaced atomically; "
                        f"name a folder inside it with {option}")
    if real.is_dir() and any(real.iterdir()):
        if not force:
            raise UserError(f"output directory {output} is not empty; pass --force to replace it or choose "
                            f"another {option}")
        _refuse_mounts_inside(output, real, inputs, option)
    return real


def _refuse_overlap(output: Path, inputs: Sequence[NamedInput], option: str) -> None:
    for source in inputs:
        how = overlap(output, source.path)
        if how is not None:
            raise UserError(f"output {output} {how} the {source.what} {source.path}; inputs are never written or "
                            f"replaced, with or without --force: give {option} a place outside it")


def check_output_file(path: str | os.PathLike, inputs: Sequence[NamedInput], *, force: bool, option: str) -> Path:
    """Refuse, before any work, a one-file output (`verify --junit`) that is, or lies inside, an input, that is an
    input's file under another name (a hard link), an existing file without `force`, or a place that cannot be
    written. `write_file_atomically` then replaces the name, never the file behind it."""
    path = Path(path)
    _refuse_overlap(path, inputs, option)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name")
    identity = _identity(path)
    if identity is not None:
        for source in inputs:
            held = [source.path] if not source.path.is_dir() else [p for p in source.path.iterdir() if p.is_file()]
            same = next((p for p in held if _identity(p) == identity), None)
            if same is not None:
                raise UserError(f"{option} {path} is {same} of the {source.what} {source.path} under another name "
                                "(a hard link); inputs are never written: write it elsewhere")
        if not force:
            raise UserError(f"{option} {path} exists; pass --force to replace it or choose another file")
    check_writable_place(path, Path(os.path.realpath(path)).parent, option)
    return path


def write_file_atomically(path: Path, text: str) -> None:
    """Write a new file beside `path` and rename it over `path`: a reader never sees half of it, and another
    name for the old file (a hard link) keeps the old contents."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.parent / f".{path.name}.{secrets.token_hex(8)}"
    handle = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(exc, OSError) and exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path)) from exc
        raise


def _mount_points() -> list[Path]:
    """Every mount point of this process's view (Linux: /proc/self/mountinfo, whose 5th field is the mount point,
    octal-escaped); elsewhere none, and the device and inode checks below still apply."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8") as mounts:
            fields = [line.split() for line in mounts]
    except OSError:
        return []
    return [Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), f[4])) for f in fields if len(f) > 4]


def check_writable_place(output: Path, folder: Path, option: str, *, probe: bool = True) -> None:
    """The output goes into `folder` (made if missing): its nearest existing ancestor must be a folder this
    process may write in, else one line now rather than a failed write later."""
    existing = folder
    while not os.path.lexists(existing) and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{option} {output} cannot be made: {existing} is a file, not a folder; choose another "
                        f"{option}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{option} {output} cannot be made: {existing} is not writable (a read-only file system or "
                        f"no permission); choose another {option}")
    if probe:
        _probe_new_folder(output, existing, option)


PROBE_PREFIX = ".rembert-convert-probe-"


def _probe_new_folder(output: Path, existing: Path, option: str) -> None:
    """A folder may look writable and take no new entry (/proc, /sys): make one and remove it at once. Its
    name carries this process's id, so a later run removes it should this one be killed in between."""
    try:
        trial = tempfile.mkdtemp(prefix=f"{PROBE_PREFIX}{os.getpid()}-", dir=existing)
    except OSError as exc:
        if exc.errno in OUTPUT_FULL_ERRNOS:
            raise UserError(f"{option} {output} cannot be made: no free space in {existing} ({exc.strerror}); "
                            f"free some or choose another {option}") from None
        raise UserError(f"{option} {output} cannot be made: {existing} takes no new folder ({exc.strerror}); "
                        f"choose another {option}") from None
    try:
        os.rmdir(trial)
    except OSError as exc:
        raise UserError(f"the trial folder {trial} could not be removed ({exc.strerror}); remove it, or choose "
                        f"another {option}") from None


def _refuse_mounts_inside(output: Path, real: Path, inputs: Sequence[NamedInput], option: str) -> None:
    """Replacing an old output deletes it, and deleting a folder descends into what is mounted inside it: refuse
    an old output holding an input folder (a bind mount or a hard-linked directory) or another file system."""
    guarded: dict[tuple[int, int], NamedInput] = {}
    for source in inputs:  # the first input a folder holds names it: the checkpoint folder before its files
        for ident in _ancestor_identities(source.path):
            guarded.setdefault(ident, source)
    device = os.stat(real).st_dev
    for root, folders, _ in os.walk(real):  # symlinks are not followed (deleting one removes only the link)
        for name in folders:
            info = os.lstat(Path(root, name))
            if stat.S_ISLNK(info.st_mode):
                continue
            inside = Path(root, name).relative_to(real)
            source = guarded.get((info.st_dev, info.st_ino))
            if source is not None:
                raise UserError(f"output {output} holds {inside}, which is or holds the {source.what} "
                                f"{source.path} (mounted or linked there); replacing the output would delete it: "
                                f"unmount it or choose another {option}")
            if info.st_dev != device:
                raise UserError(f"output {output} holds {inside}, a mount point of another file system; replacing "
                                f"the output would delete what is mounted there: unmount it or choose another {option}")
    mounted = [point for point in _mount_points() if real in point.parents]  # a bind mount of the same file system
    if mounted:
        raise UserError(f"output {output} holds {mounted[0].relative_to(real)}, a mount point; replacing the output "
                        f"would delete what is mounted there: unmount it or choose another {option}")


# -- markers and leftovers of killed runs ------------------------------------------------------------------


def _write_marker(directory: Path, kind: str, target: Path) -> None:
    marker = {"tool": "rembert-convert", "kind": kind, "pid": os.getpid(), "host": socket.gethostname(),
              "token": secrets.token_hex(16), "target": str(target)}
    (directory / MARKER_NAME).write_text(json.dumps(marker) + "\n", encoding="utf-8")


def _read_marker(directory: Path) -> dict | None:
    """The marker of a directory this module made, or None for anything else (never deleted then)."""
    path = directory / MARKER_NAME
    try:
        if directory.is_symlink() or not stat.S_ISREG(os.lstat(path).st_mode) or os.lstat(path).st_size > 4096:
            return None
        marker = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    keys = {"tool", "kind", "pid", "host", "token", "target"}
    if not isinstance(marker, dict) or set(marker) != keys or marker["tool"] != "rembert-convert" or \
            marker["kind"] not in (STAGING_KIND, ASIDE_KIND, REPLACED_KIND) or not isinstance(marker["pid"], int) or \
            isinstance(marker["pid"], bool) or marker["pid"] <= 0:
        return None
    return marker


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


def _prefixes(real: Path) -> tuple[str, str]:
    return f".{real.name}.partial-", f".{real.name}.old-"


def recover_leftovers(real: Path) -> list[Path]:
    """Deal with what a killed run left beside `real`: a staging directory is removed; an old output set aside
    is renamed back if no output took its place (else removed). Only directories whose marker names a
    process of this host that is gone and this very output qualify. Returns the directories handled."""
    parent = real.parent
    if not parent.is_dir():
        return []
    handled = []
    for candidate in sorted(parent.iterdir()):
        if candidate.name.startswith(PROBE_PREFIX):  # an empty trial folder of a run killed while it checked
            pid = candidate.name[len(PROBE_PREFIX):].split("-", 1)[0]
            if pid.isdigit() and _process_gone(int(pid)):
                with contextlib.suppress(OSError):  # only ever an empty folder
                    os.rmdir(candidate)
                    handled.append(candidate)
            continue
        if not candidate.name.startswith(_prefixes(real)):
            continue
        marker = _read_marker(candidate)
        if marker is None or marker["target"] != str(real) or marker["host"] != socket.gethostname() or \
                not _process_gone(marker["pid"]):
            continue
        if marker["kind"] == ASIDE_KIND:
            old = candidate / "old"
            if os.path.lexists(real):
                # Killed between renaming the new output in and marking the old one replaced, or something
                # else appeared at the output since: which one the user wants is unknown, so both stay.
                continue
            if old.is_dir():
                os.rename(old, real)  # the killed run had moved the old output aside: put it back
        shutil.rmtree(candidate)
        handled.append(candidate)
    return handled


# -- signals -----------------------------------------------------------------------------------------------


_REDELIVERIES: set[int] = set()  # signals set aside by redeliver_outside_imports, not delivered yet


def redeliver_outside_imports(signum: int, frame: Any) -> bool:
    """A signal handler's first step: if the signal landed in the import system's own code, send it again a
    moment later and return True (the handler then does nothing now). An exception raised there can leave the
    global import lock held for good (CPython 3.11), and the next import in another thread (the one importing
    torch ahead) then waits for ever, and with it the process."""
    if frame is None or not frame.f_code.co_filename.startswith("<frozen importlib"):
        return False
    if signum not in _REDELIVERIES:
        _REDELIVERIES.add(signum)
        timer = threading.Timer(REDELIVERY_DELAY_S, _redeliver, (signum,))
        timer.daemon = True  # never kept waiting for at exit: `pending_redelivery` reports it instead
        timer.start()
    return True


def _redeliver(signum: int) -> None:
    try:
        _REDELIVERIES.remove(signum)  # atomic: either this or `pending_redelivery` takes it, never both
    except KeyError:
        return
    os.kill(os.getpid(), signum)


def pending_redelivery() -> int | None:
    """A signal set aside by `redeliver_outside_imports` and not delivered yet (the command ended first): the
    caller exits as that signal would have made it; it will not be delivered any more."""
    try:
        return _REDELIVERIES.pop()
    except KeyError:
        return None


def occupy_closed_standard_descriptors() -> None:
    """Open the null device on descriptors 0, 1 and 2 where the process started with them closed (`2>&-`). Else
    the next file opened takes that number, perhaps an output file, and any message a library writes to
    stderr at the C level (TensorFlow's notices, torch's warnings) would land inside it."""
    for descriptor in (0, 1, 2):
        try:
            os.fstat(descriptor)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # takes the lowest free number: this one, the lower ones being open


def interrupt_outside_imports(signum: int, frame: Any) -> None:
    """Python's own SIGINT handler (KeyboardInterrupt), but never inside the import system's code."""
    if not redeliver_outside_imports(signum, frame):
        signal.default_int_handler(signum, frame)


class _SignalGuard:
    """While open, SIGINT/SIGTERM/SIGHUP raise Interrupted (deferred while `critical`); the previous handlers
    are restored on close. Only the main thread can set handlers; elsewhere this guard does nothing."""

    def __init__(self) -> None:
        self.previous: dict[int, object] = {}
        self.critical = False
        self.pending: int | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if self.critical:
            self.pending = signum
            return
        if redeliver_outside_imports(signum, frame):
            return
        raise Interrupted(signum)

    def __enter__(self) -> _SignalGuard:
        if threading.current_thread() is threading.main_thread():
            for signum in HANDLED_SIGNALS:
                self.previous[signum] = signal.getsignal(signum)
                signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self.previous.clear()


# -- the staged write --------------------------------------------------------------------------------------


@contextmanager
def staged_output(output: str | os.PathLike, inputs: Sequence[NamedInput] = (), *, force: bool,
                  option: str = "-o") -> Iterator[Path]:
    """Yield a marked staging directory beside `output`; when the block succeeds, put it in place of `output`.

    On any exception or signal inside the block the staging directory is removed and the old output stays
    as it was. Leftovers of earlier killed runs for the same output are dealt with first."""
    real = check_output(output, inputs, force=force, option=option, probe=False)  # the staging folder tries
    with _SignalGuard() as guard:
        real.parent.mkdir(parents=True, exist_ok=True)
        staging_prefix, aside_prefix = _prefixes(real)
        # The marker sits beside the new files, not among them: `staging / "new"` becomes the output.
        holder = Path(tempfile.mkdtemp(prefix=staging_prefix, dir=real.parent))
        staging = holder / "new"
        try:
            _write_marker(holder, STAGING_KIND, real)
            staging.mkdir()
            yield staging
            check_output(real, inputs, force=force, option=option, probe=False)  # nothing appeared meanwhile
            guard.critical = True  # a signal now waits until the new output is in place or the old one back
            _commit(staging, real, aside_prefix)
        except OSError as exc:
            guard.critical = True
            # Say where in the user's terms: a write names no file, or names a staged file about to be removed.
            where = Path(os.fsdecode(exc.filename)) if isinstance(exc.filename, (str, bytes)) else None
            staged = where is not None and where.is_relative_to(holder)
            if exc.errno in OUTPUT_FULL_ERRNOS and (exc.filename is None or staged):
                raise OSError(exc.errno, exc.strerror, str(output)) from exc
            if staged:  # the same file under the output's name
                inside = where.relative_to(staging) if where.is_relative_to(staging) else Path()
                raise OSError(exc.errno, exc.strerror, str(Path(output, inside))) from exc
            raise
        except BaseException:
            guard.critical = True
            raise
        finally:
            shutil.rmtree(holder, ignore_errors=True)
            guard.critical = False
        if guard.pending is not None:
            raise Interrupted(guard.pending, committed=True)


def _commit(staging: Path, real: Path, aside_prefix: str) -> None:
    if not os.path.lexists(real):
        os.rename(staging, real)
        return
    holder = Path(tempfile.mkdtemp(prefix=aside_prefix, dir=real.parent))
    try:
        _write_marker(holder, ASIDE_KIND, real)
        os.rename(real, holder / "old")
    except BaseException:
        shutil.rmtree(holder, ignore_errors=True)  # the old output was not moved
        raise
    try:
        os.rename(staging, real)
    except BaseException:
        # The old output comes back as it was. Should even that fail, it stays in `holder` with its marker,
        # and the next run for this output renames it back (`recover_leftovers`).
        os.rename(holder / "old", real)
        shutil.rmtree(holder, ignore_errors=True)
        raise
    _write_marker(holder, REPLACED_KIND, real)  # from here on the old output may go, even if we are killed
    shutil.rmtree(holder, ignore_errors=True)


def require_existing_dir(path: str | os.PathLike, what: str) -> Path:
    """A folder the command reads: a missing one says so (not what it lacks)."""
    path = Path(path)
    if not os.path.lexists(path):
        raise UserError(f"{what} {path} does not exist; check the path")
    if not path.is_dir():
        raise UserError(f"{what} {path} is not a directory; pass the folder")
    return path

"""Files a user names: read only when they are plain files of a sane size, written so
that no failure leaves half a file or destroys the one that was there.

Reading: a FIFO, device or socket would block `open()` (or never end), a folder is not
a file, and a file of hundreds of megabytes would take minutes and gigabytes to parse;
each gets one clear line before anything is read. Writing: the bytes go to a temporary
file beside the target, are flushed to disk, then renamed over it (`os.replace`, atomic
on one filesystem), so a full disk or a crash mid-write leaves the old file intact.
Every reader and writer of user files goes through here: one rule, one place.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from pathlib import Path
from typing import Callable

from .errors import MuseBridgeError

_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


def _kind(mode: int) -> str:
    """What a non-regular file is, in words a user knows."""
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _mb(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def read_file_bytes(path: str | Path, what: str, max_bytes: int,
                    error: type[MuseBridgeError] = MuseBridgeError) -> bytes:
    """The whole of a regular file of at most `max_bytes`, or `error` in one line.

    The path is stat'ed before it is opened, so a FIFO never blocks us; it is opened
    non-blocking and checked again on the open descriptor, so a file swapped for a FIFO
    in between cannot block either; at most `max_bytes + 1` bytes are ever read, so a
    file that grows while read cannot exhaust memory.
    """
    path = Path(path)

    def check(st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise error(f"{what} {path} is a folder, not a file; give the path of a file")
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{what} {path} is {_kind(st.st_mode)}, not a regular file; save it to a file and give that path")
        if st.st_size > max_bytes:
            too_big(st.st_size)

    def too_big(size: int) -> None:
        raise error(f"{what} {path} is {_mb(size)}, over the {_mb(max_bytes)} limit; "
                    "give a smaller file (split it or export a shorter part)")

    try:
        check(os.stat(path))
        with os.fdopen(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as f:
            check(os.fstat(f.fileno()))
            data = f.read(max_bytes + 1)
    except FileNotFoundError:
        raise error(f"{what} {path} not found") from None
    except PermissionError:
        raise error(f"cannot read {what} {path} (permission denied); check its permissions") from None
    except OSError as e:
        raise error(f"cannot read {what} {path} ({e.strerror or e}); check the file and the disk") from None
    if len(data) > max_bytes:  # it grew after the stat
        too_big(len(data))
    return data


def write_atomic(path: str | Path, write: Callable[[str], object],
                 error: type[MuseBridgeError] = MuseBridgeError) -> None:
    """`write(tmp)` a temp file beside `path`, flush it to disk, then rename it there.

    A reader (another process opening the same model) never sees half a file, and a
    write that fails part-way (a full disk, an exception in `write`) leaves the file
    that was at `path` untouched and no temp file behind. An existing target that is
    not a regular file (a folder, a device, a FIFO) is refused, never replaced; a
    symlink is followed, so the file it names is the one replaced. Failure is one line.
    """
    shown, path = path, Path(os.path.realpath(path))
    try:
        mode = 0o644
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(st.st_mode):
                raise error(f"cannot write {shown}: it is {_kind(st.st_mode)}; choose a file name")
            mode = stat.S_IMODE(st.st_mode)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            write(tmp)
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)  # a full disk shows here at the latest, before the old file is gone
            finally:
                os.close(fd)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        finally:
            if os.path.lexists(tmp):
                os.unlink(tmp)
    except OSError as e:
        todo = "free some disk space or choose another folder" if e.errno in _NO_SPACE else "check the folder is writable"
        raise error(f"cannot write {shown} ({e.strerror or e}); {todo}") from None

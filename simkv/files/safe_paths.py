"""Every results file is written here: names that come from data (scenario, variant and sweep
names, sweep values, sweep.json) become plain file names, and writes never follow a symbolic link.

- `plain_name` / `folder_name`: a label used as one file or folder name under the results
  folder: never empty, `.` or `..`, never with a path separator or a control character, at most
  255 bytes. `folder_names` maps several labels at once and refuses two that would land in the
  same folder (or on a file the folder also holds) instead of letting one overwrite the other.
- `write_file`: the bytes go to a temporary file in the destination folder, then `os.replace`
  puts it in place (atomic: a reader sees the old file or the new one). A destination that is a
  symbolic link, or a folder on the way from the results folder (the root) down to it that is
  one, is refused with a SimkvError. Folders are opened one level at a time with O_NOFOLLOW
  relative to their parent, so a link planted while writing is refused too.
- The root itself (the CLI's -o folder) is created if missing, but only when its parent exists;
  folders under it are created as needed.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from pathlib import Path

from simkv.errors import SimkvError

MAX_NAME_BYTES = 255
_LINK_FIX = "remove the link (simkv never writes through one), or choose another -o folder"


def _mapped(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label)


def folder_name(label: object, *, file: str | None = None, field: str | None = None) -> str:
    """The file/folder name for a label: letters, digits, `-`, `_` and `.` kept, anything else
    (`/`, `\\`, spaces, `=`, NUL, control characters, ...) becomes `_`; refused when that leaves
    nothing, `.`/`..`, or more than 255 bytes."""
    text = str(label)
    name = _mapped(text)
    _check(name, text, file, field)
    return name


def plain_name(label: object, *, file: str | None = None, field: str | None = None) -> str:
    """`label` itself when it is already a safe single file or folder name (spaces allowed); else a
    SimkvError. For names read from files (sweep.json) or a folder named after the scenario."""
    text = str(label)
    bad = [c for c in text if c in "/\\" or not c.isprintable()]
    if bad:
        raise SimkvError(f"{text!r} is used as a file or folder name but contains {bad[0]!r}", file=file, field=field,
                         fix="use letters, digits, '-', '_' and '.' (no path separators or control characters)")
    _check(text, text, file, field)
    return text


def _check(name: str, text: str, file: str | None, field: str | None) -> None:
    if name in ("", ".", ".."):
        raise SimkvError(f"{text!r} cannot be a file or folder name", file=file, field=field,
                         fix="give a name with at least one letter or digit")
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > MAX_NAME_BYTES:
        raise SimkvError(f"{text[:40]!r}... is {size} bytes as a file name; the limit is {MAX_NAME_BYTES}",
                         file=file, field=field, fix="give a shorter name")


def folder_names(labels: list[tuple[object, str, str]], *, what: str, file: str | None = None,
                 reserved: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """The folder name of each (label, field, label as shown) triple, in order; a SimkvError when
    two labels map to the same folder (`a/b` and `a_b`, the sweep values 5 and '5') or one maps
    onto a name in `reserved` (a file written next to these folders). Case matters (Linux)."""
    names, seen = [], {}
    for label, field, shown in labels:
        name = folder_name(label, file=file, field=field)
        if name in reserved:
            raise SimkvError(f"{what} {shown} would be written to {name}, a file of the results folder", file=file,
                             field=field, fix=f"rename the {what} (these names are taken: {', '.join(sorted(reserved))})")
        if name in seen:
            raise SimkvError(f"{what}s {seen[name]} and {shown} would both be written to the folder {name}", file=file,
                             field=field, fix=f"make the {what}s differ in a letter or digit, not only in punctuation or type")
        seen[name] = shown
        names.append(name)
    return names


# ---------------------------------------------------------------- writing


def check_root(root: str | Path) -> Path:
    """Refuse, before anything runs, a results folder that cannot be written: a symbolic link,
    a file, or missing with a missing parent. Creates nothing."""
    root = Path(root)
    if os.path.islink(root):
        raise SimkvError("is a symbolic link", file=str(root), field="output folder", fix=_LINK_FIX)
    if os.path.lexists(root) and not root.is_dir():
        raise SimkvError("is a file, not a folder", file=str(root), field="output folder",
                         fix="move it away, or choose another -o folder")
    if not os.path.lexists(root) and not root.parent.is_dir():
        raise SimkvError(f"the folder it would be created in, {root.parent}, does not exist", file=str(root),
                         field="output folder", fix=f"create {root.parent} first, or choose another -o folder")
    return root


def prepare_folder(folder: str | Path, root: str | Path | None = None) -> Path:
    """Create `folder` (the root, or a folder under it) if missing; refuse symbolic links from the
    root down. `root` defaults to `folder`."""
    folder = Path(folder)
    os.close(_open_folder(folder, Path(root) if root is not None else folder))
    return folder


def write_file(path: str | Path, data: bytes | str, *, root: str | Path | None = None) -> Path:
    """Write `data` (text is UTF-8) to `path` atomically, never through a symbolic link; folders
    between `root` (default: the file's folder) and the file are created. The path."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    name = plain_name(path.name, file=str(path), field="file name")
    dfd = _open_folder(path.parent, Path(root) if root is not None else path.parent)
    try:
        _refuse_existing(dfd, name, path)
        tmp = f".simkv-{secrets.token_hex(8)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666,
                     dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            _refuse_existing(dfd, name, path)
            # os.replace never follows a link at the destination: it would replace the link itself
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    except OSError as err:
        raise SimkvError(f"cannot write: {err.strerror or err}", file=str(path), field="output file",
                         fix="check the folder's permissions and free space") from None
    finally:
        os.close(dfd)
    return path


def _refuse_existing(dfd: int, name: str, path: Path) -> None:
    try:
        st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SimkvError("is a symbolic link", file=str(path), field="output file", fix=_LINK_FIX)
    if not stat.S_ISREG(st.st_mode):
        raise SimkvError("is in the way: simkv writes a file here", file=str(path), field="output file",
                         fix="move it away, or choose another -o folder")


_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def _open_folder(folder: Path, root: Path) -> int:
    """A file descriptor of `folder`, reached from `root` one real (non-link) folder at a time."""
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        raise SimkvError(f"is not inside the results folder {root}", file=str(folder), field="output folder",
                         fix="write only under the results folder") from None
    if any(p in ("..", ".") for p in parts):
        raise SimkvError(f"leads out of the results folder {root}", file=str(folder), field="output folder",
                         fix="use plain folder names")
    if not os.path.lexists(root):
        check_root(root)
        try:
            os.mkdir(root)
        except FileExistsError:
            pass
        except OSError as err:
            raise SimkvError(f"cannot create the results folder: {err.strerror}", file=str(root), field="output folder",
                             fix="choose a folder you can write to") from None
    fd = _open_dir(root, None, root)
    current = root
    for part in parts:
        current = current / part
        try:
            try:
                os.mkdir(part, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as err:
                raise SimkvError(f"cannot create the folder: {err.strerror}", file=str(current), field="output folder",
                                 fix="check the folder's permissions") from None
            child = _open_dir(part, fd, current)
        finally:
            os.close(fd)
        fd = child
    return fd


def _open_dir(name: str | Path, dir_fd: int | None, shown: Path) -> int:
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except OSError as err:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode) or err.errno == errno.ELOOP:
            raise SimkvError("is a symbolic link", file=str(shown), field="output folder", fix=_LINK_FIX) from None
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise SimkvError("is a file, not a folder", file=str(shown), field="output folder",
                             fix="move it away, or choose another -o folder") from None
        raise SimkvError(f"cannot open the folder: {err.strerror}", file=str(shown), field="output folder",
                         fix="check the folder's permissions") from None

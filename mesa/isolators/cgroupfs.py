"""The cgroup filesystem, v1 and v2: where hierarchies are mounted, and one cgroup's files.

**v1** (one hierarchy per controller, e.g. ``/sys/fs/cgroup/memory``) goes through cgroupspy's
typed controllers (``CpuController.shares``, ``MemoryController.limit_in_bytes`` …): they read
and write the kernel's files with the right parsing (``-1`` is "unlimited", ``memory.stat`` is a
dict). cgroupspy has no ``pids`` or ``freezer`` controller, builds whole trees eagerly and speaks
bytes paths, so it is used only as that typed layer: each :class:`V1Cgroup` wraps one controller
object bound to one directory (built on first use), and the isolators read their statistics
through it. What every container goes through — ``mkdir``, limit writes, ``cgroup.procs``,
``freezer.state``, ``rmdir`` — is plain ``os.open``/``os.read``/``os.write`` on the files
(:meth:`V1Cgroup.read`/:meth:`~V1Cgroup.write`): a task on a busy agent makes and removes a
container, and cgroupspy's per-access ``open()`` and text parsing were most of its cost.

**v2** (one unified tree, ``cgroup2``) has no library worth the name; :class:`V2Cgroup` reads and
writes the unified files (``cpu.weight``, ``cpu.max``, ``memory.max``, ``memory.events``,
``pids.max``, ``cgroup.kill``, ``cgroup.events``) directly. A controller must be enabled in the
``cgroup.subtree_control`` of every ancestor before a cgroup gets its files.

Everything here is synchronous and fast (cgroupfs lives in kernel memory): isolators call it from
their handlers. Paths are overridable (:class:`Mounts`), so tests can drive the file-level logic
against a fake tree in a temporary directory.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

__all__ = [
    "Mounts",
    "Parent",
    "V1Cgroup",
    "V2Cgroup",
    "kill_and_remove",
    "make_dirs",
    "mounts",
    "purge",
    "remove_tree_upwards",
]

MOUNTINFO = "/proc/self/mountinfo"
_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


@dataclass(frozen=True)
class Mounts:
    """Where cgroup hierarchies are mounted: v1 per controller, and the v2 unified tree."""

    v1: dict[str, Path] = field(default_factory=dict)
    v1_writable: frozenset[str] = frozenset()
    v2: Path | None = None
    v2_writable: bool = False

    def v2_controllers(self) -> set[str]:
        """Controllers the unified tree's root can hand down (empty when none)."""
        if self.v2 is None:
            return set()
        try:
            return set((self.v2 / "cgroup.controllers").read_text().split())
        except OSError:
            return set()


def mounts(mountinfo: str = MOUNTINFO) -> Mounts:
    """Read ``/proc/self/mountinfo``: each ``cgroup`` mount names its controllers in its super
    options (``rw,cpu,cpuacct``); a ``cgroup2`` mount is the unified tree. The first mount of a
    controller wins (bind mounts repeat them)."""
    v1: dict[str, Path] = {}
    writable: set[str] = set()
    v2: Path | None = None
    v2_writable = False
    try:
        lines = Path(mountinfo).read_text().splitlines()
    except OSError:
        return Mounts()
    for line in lines:
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 6 or len(tail) < 3:
            continue
        point = Path(_unescape(fields[4]))
        mount_rw = "rw" in fields[5].split(",")
        fstype, super_opts = tail[0], tail[2].split(",")
        if fstype == "cgroup2" and v2 is None:
            v2 = point
            v2_writable = mount_rw and "rw" in super_opts
        elif fstype == "cgroup":
            for opt in super_opts:
                if opt in ("rw", "ro") or "=" in opt or opt.startswith("name"):
                    continue
                if opt not in v1:
                    v1[opt] = point
                    if mount_rw and "rw" in super_opts:
                        writable.add(opt)
    writable = {c for c in writable if os.access(v1[c], os.W_OK)}
    if v2 is not None and not os.access(v2, os.W_OK):
        v2_writable = False
    return Mounts(v1=v1, v1_writable=frozenset(writable), v2=v2, v2_writable=v2_writable)


_READ_CHUNK = 65536


def own_v1_cgroups(cgroup: str = "/proc/self/cgroup", mountinfo: str = MOUNTINFO) -> dict[str, str]:
    """Each cgroup v1 mount point -> this process's own cgroup directory under it.

    Empty when some v1 hierarchy does not show this process's cgroup (a mount of a subtree it is
    not in): a thread of it moved into a container's cgroup could then not come back.
    """
    own: dict[frozenset[str], str] = {}
    for line in Path(cgroup).read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers:  # (the v2 line has none)
            own[frozenset(controllers.split(","))] = path
    homes: dict[str, str] = {}
    for line in Path(mountinfo).read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _source, superopts = ([*right.split(), "", "", ""])[:3]
        if fstype != "cgroup":
            continue
        fields = left.split()
        root, mount = _unescape(fields[3]), _unescape(fields[4])
        opts = set(superopts.split(","))
        path = next((p for c, p in own.items() if c <= opts), None)
        if path is None or not (path + "/").startswith(root.rstrip("/") + "/"):
            return {}
        rel = os.path.relpath(path, root)
        homes[mount] = mount if rel == "." else os.path.join(mount, rel)
    return homes


def read_file(path: str, dir_fd: int | None = None) -> str:
    """The whole of a (small, kernel-made) file, with plain syscalls: no buffered text layer,
    which costs more than the read itself for cgroup files. ``path`` is relative to
    ``dir_fd`` when one is given (see :class:`Parent`)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, _READ_CHUNK)
        if data:  # seq files may hand out less than asked: read on to EOF
            chunks = [data]
            while chunk := os.read(fd, _READ_CHUNK):
                chunks.append(chunk)
            if len(chunks) > 1:
                data = b"".join(chunks)
    finally:
        os.close(fd)
    return data.decode()


def write_file(path: str, value: object, create: bool = False, dir_fd: int | None = None) -> None:
    """Write ``str(value)`` to ``path`` (relative to ``dir_fd`` when given) with plain syscalls
    (a cgroup file takes its value in one ``write``; the loop only guards a short one).
    ``O_TRUNC`` costs next to nothing on cgroupfs and keeps a regular file standing in for one
    (a test's fake tree) exact; ``create`` also makes a missing file there, as
    ``open(path, "w")`` would."""
    data = str(value).encode()
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        if not create:
            raise
        fd = os.open(path, flags | os.O_CREAT, 0o644, dir_fd=dir_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _parse_pids(text: str) -> list[int]:
    return [int(p) for p in text.split()]


def parse_keyed(text: str, strict: bool = False) -> dict[str, int]:
    """A flat keyed file (``memory.events``, ``cpu.stat``, ``memory.oom_control``): ``key
    value`` per line. ``strict``: a malformed line raises ValueError (as cgroupspy's dict files
    do) instead of being skipped."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2:
            try:
                out[parts[0]] = int(parts[1])
            except ValueError:
                if strict:
                    raise
        elif strict and parts:
            raise ValueError(f"not a keyed line: {line!r}")
    return out


def make_dir(path: str) -> None:
    """``mkdir`` of one cgroup whose parent normally exists (the agent's root, made by
    ``recover``): one syscall; falls back to :func:`make_dirs` when the parent went away."""
    try:
        os.mkdir(path)
    except FileExistsError:
        if not os.path.isdir(path):
            raise
    except FileNotFoundError:
        make_dirs(Path(path))


def make_dirs(path: Path) -> None:
    """``mkdir -p`` that tolerates another agent removing an empty shared parent (``mesa``)
    between our steps: try again a few times."""
    for attempt in range(5):
        try:
            path.mkdir(parents=True, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == 4:
                raise


def remove_tree_upwards(path: Path, stop: Path) -> None:
    """Remove ``path`` and then each empty parent up to (not including) ``stop``; quietly stop
    at the first that is busy or not empty (another agent's root, a live container)."""
    current = path
    while current != stop and stop in current.parents:
        try:
            current.rmdir()
        except FileNotFoundError:
            pass
        except OSError:
            return
        current = current.parent


def purge(root: str, where: Mounts | None = None, timeout: float = 5.0) -> list[Path]:
    """Kill every process in every cgroup under ``<hierarchy>/<root>`` (v1 and v2) and remove
    them all, deepest first; then the empty parents of ``root``. For tools and test teardown
    (an agent killed with SIGKILL leaves its cgroups behind until it starts again). Returns
    what could not be removed."""
    import time

    where = where if where is not None else mounts()
    tops = {point / root.strip("/") for point in where.v1.values()}
    if where.v2 is not None:
        tops.add(where.v2 / root.strip("/"))
    failed: list[Path] = []
    for top in sorted(tops):
        if not top.is_dir():
            continue
        dirs = sorted((Path(d) for d, _, _ in os.walk(top)), key=lambda p: -len(p.parts))
        for path in dirs:
            deadline = time.monotonic() + timeout
            while not kill_and_remove(path):
                if time.monotonic() > deadline:
                    failed.append(path)
                    break
                time.sleep(0.01)
        mount = next(m for m in [*where.v1.values(), where.v2] if m and m in top.parents)
        remove_tree_upwards(top.parent, mount)
    return failed


def kill_and_remove(path: Path) -> bool:
    """One attempt at a cgroup nobody should be using any more (what a dead agent left): thaw
    it, SIGKILL its members, ``rmdir`` it. True when it is gone; False while the kernel still
    holds it (try again a moment later)."""
    pids = _procs_of(path)
    if pids:
        for name, thawed in (("freezer.state", "THAWED"), ("cgroup.freeze", "0")):
            if (path / name).exists():
                with contextlib.suppress(OSError):
                    (path / name).write_text(thawed)
        if (path / "cgroup.kill").exists():
            with contextlib.suppress(OSError):
                (path / "cgroup.kill").write_text("1")
        _kill_pids(pids)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError:
        return False
    return True


def _procs_of(path: Path) -> list[int]:
    try:
        return _parse_pids(read_file(os.path.join(path, "cgroup.procs")))
    except (OSError, ValueError):
        return []


def _read_int(text: str) -> int | None:
    text = text.strip()
    return None if text in ("max", "") else int(text)


def _kill_pids(pids: list[int] | set[int]) -> int:
    killed = 0
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


class Parent:
    """A directory of cgroups (an agent's root in one hierarchy), held open.

    Every path the kernel resolves is walked one component at a time, and on cgroupfs each
    step is dear (a dentry revalidation and a permission check on kernfs):
    ``/sys/fs/cgroup/memory/mesa/agent-…/<id>/cgroup.procs`` is seven of them. A profile of a
    busy agent under cgroups had a tenth of its CPU in those walks. Reached from an ``O_PATH``
    descriptor of the root, a container's file is two steps away and the container itself one
    (for ``rename``, ``stat``, ``mkdir`` and ``rmdir``). The descriptor names the directory
    itself, not its path, so it is opened after the root is made and closed before it is
    removed (:meth:`close`); from then on its cgroup objects go by their whole paths. A root
    removed behind the agent's back is found out when a cgroup cannot be made in it: the
    descriptor is closed then, and the owner opens the root anew once it is made again.
    """

    def __init__(self, path: str) -> None:
        self.path = path.rstrip("/")
        self.fd: int | None = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


class _CgroupDir:
    """What a v1 and a v2 cgroup share: a directory, its files, its members. Paths are kept as
    strings (the per-task path uses them), a ``Path`` made only when asked for. Given the
    :class:`Parent` it is in, its files are reached from the parent's descriptor."""

    _create_files = False  # whether a write may create a missing file (v2's fake test trees)

    def __init__(self, path: Path | str, parent: Parent | None = None) -> None:
        self._parent = parent
        self._dir = os.fspath(path)
        self._name = os.path.basename(self._dir)
        self._path = path if isinstance(path, Path) else None
        self._written: dict[str, str] = {}  # what this object last wrote to each file

    def _at(self, name: str = "") -> tuple[str, int | None]:
        """``(path, dir_fd)`` of the file ``name`` (of the directory itself for ""): from the
        parent's descriptor while it is open, else the whole path."""
        parent = self._parent
        if parent is not None and (fd := parent.fd) is not None:
            return (self._name + "/" + name if name else self._name), fd
        return (self._dir + "/" + name if name else self._dir), None

    def moved_to(self, path: str, name: str | None = None) -> None:
        """The directory was renamed to ``path`` (a spare cgroup changing hands; ``name``, its
        last component, when the caller has it): the object follows it, and still knows what
        it wrote there."""
        self._dir = path
        self._name = name if name is not None else os.path.basename(path)
        self._path = None

    @property
    def dir(self) -> str:
        """The cgroup's directory, as the string it is kept as."""
        return self._dir

    @property
    def path(self) -> Path:
        """The cgroup's directory."""
        if self._path is None:
            self._path = Path(self._dir)
        return self._path

    def file(self, name: str) -> str:
        """The path of one of this cgroup's files."""
        return os.path.join(self._dir, name)

    def exists(self) -> bool:
        return os.path.isdir(self._dir)

    def create(self) -> None:
        path, fd = self._at()
        if fd is not None:
            try:
                os.mkdir(path, dir_fd=fd)
                return
            except FileExistsError:
                if not os.path.isdir(self._dir):
                    raise
                return
            except FileNotFoundError:
                # The root held open was removed since (by an operator, a purge): stop going
                # through it (its owner opens the root anew), and make the path again.
                assert self._parent is not None
                self._parent.close()
        make_dir(self._dir)

    def subdirs(self) -> int:
        """How many cgroups this one has under it: a directory's link count is 2 plus its
        subdirectories."""
        path, fd = self._at()
        return os.stat(path, dir_fd=fd).st_nlink - 2

    def write(self, name: str, value: object) -> None:
        text = str(value)
        self._written.pop(name, None)  # (unknown if the write fails)
        path, fd = self._at(name)
        write_file(path, text, create=self._create_files, dir_fd=fd)
        self._written[name] = text

    def set(self, name: str, value: object) -> None:
        """:meth:`write` a setting (a limit), unless this object last wrote the same value
        there: a spare cgroup that held a container of the same size has it already."""
        text = str(value)
        if self._written.get(name) != text:
            self.write(name, text)

    def procs(self) -> list[int]:
        try:
            return _parse_pids(read_file(*self._at("cgroup.procs")))
        except FileNotFoundError:
            return []

    def add(self, pid: int) -> None:
        path, fd = self._at("cgroup.procs")
        write_file(path, pid, create=self._create_files, dir_fd=fd)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            path, fd = self._at()
            os.rmdir(path, dir_fd=fd)


class V1Cgroup(_CgroupDir):
    """One cgroup in one v1 hierarchy (``subsystem``).

    Files are read and written with plain syscalls; :attr:`controller` (cgroupspy's typed
    controller for the subsystem, built on first use) is there for the statistics, which need
    its parsing. Isolators make one per container and hierarchy at ``prepare`` and keep it
    until ``cleanup``, so the path strings are built once.
    """

    _TYPED: ClassVar[dict[str, str]] = {
        "cpu": "CpuController",
        "cpuacct": "CpuAcctController",
        "memory": "MemoryController",
    }

    def __init__(self, subsystem: str, path: Path | str, parent: Parent | None = None) -> None:
        super().__init__(path, parent)
        self.subsystem = subsystem
        self._controller: Any = None

    def __repr__(self) -> str:
        return f"V1Cgroup({self.subsystem}:{self._dir})"

    def moved_to(self, path: str, name: str | None = None) -> None:
        super().moved_to(path, name)
        self._controller = None  # (cgroupspy's node holds the old path)

    @property
    def controller(self) -> Any:
        """cgroupspy's controller for this directory (``CpuController``, ``MemoryController``
        …; the generic ``Controller`` for the others)."""
        if self._controller is None:
            from cgroupspy import controllers
            from cgroupspy.nodes import Node

            cls = getattr(controllers, self._TYPED.get(self.subsystem, "Controller"))
            self._controller = cls(Node(os.fsencode(self._dir)))
        return self._controller

    def read(self, name: str) -> str:
        """A file's content, stripped (as cgroupspy's ``get_property`` returns it)."""
        return read_file(*self._at(name)).strip()

    def read_keyed(self, name: str) -> dict[str, int]:
        """A keyed file (``memory.oom_control``); ValueError when it is not one."""
        return parse_keyed(read_file(*self._at(name)), strict=True)

    def sweep(self) -> int:
        """SIGKILL every process in the cgroup once; returns how many were signalled."""
        return _kill_pids(self.procs())

    # freezer ------------------------------------------------------------------------

    def freeze(self) -> None:
        self.write("freezer.state", "FROZEN")

    def thaw(self) -> None:
        self.write("freezer.state", "THAWED")

    def freezer_state(self) -> str:
        return self.read("freezer.state")


class V2Cgroup(_CgroupDir):
    """One cgroup of the unified (v2) tree; plain reads and writes of its interface files.

    Writes create a missing file (``open(…, "w")`` semantics) so that the isolators' file
    logic runs against a fake tree of regular files; the kernel refuses that on cgroupfs, as
    it always did. ``cgroup.kill`` and ``cgroup.freeze`` are only ever written when present.
    """

    _create_files = True

    def __repr__(self) -> str:
        return f"V2Cgroup({self._dir})"

    def read(self, name: str) -> str:
        return read_file(*self._at(name))

    def read_int(self, name: str) -> int | None:
        """An integer file, with ``max`` as None."""
        return _read_int(self.read(name))

    def read_keyed(self, name: str) -> dict[str, int]:
        """A flat keyed file (``memory.events``, ``cpu.stat``, ``cgroup.events``)."""
        return parse_keyed(self.read(name))

    def populated(self) -> bool:
        """From ``cgroup.events`` (which also counts descendants), else from ``cgroup.procs``."""
        try:
            return bool(self.read_keyed("cgroup.events").get("populated", 0))
        except FileNotFoundError:
            return bool(self.procs())

    def kill(self) -> None:
        """Kill everything in the cgroup and its descendants at once: ``cgroup.kill`` (Linux
        5.14+) is atomic against forks. Older kernels: freeze, SIGKILL each, thaw. Nothing to
        do when the cgroup is gone (each step then finds no file)."""
        try:
            write_file(os.path.join(self._dir, "cgroup.kill"), 1)
            return
        except FileNotFoundError:
            pass  # no cgroup.kill (or no cgroup)
        except OSError as e:
            if e.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                raise
        freeze = os.path.join(self._dir, "cgroup.freeze")
        frozen = False
        with contextlib.suppress(OSError):
            write_file(freeze, 1)
            frozen = True
        _kill_pids(self.procs())
        if frozen:
            with contextlib.suppress(OSError):
                write_file(freeze, 0)

    def enable(self, controllers: set[str] | list[str], mount: Path) -> None:
        """Enable ``controllers`` in ``cgroup.subtree_control`` from the mount root down to
        this cgroup's parent, so this cgroup gets their interface files."""
        if not controllers:
            return
        chain = [p for p in reversed(self.path.parents) if p == mount or mount in p.parents]
        for node in chain:
            control = node / "cgroup.subtree_control"
            try:
                enabled = set(control.read_text().split())
            except FileNotFoundError:
                enabled = set()
            missing = [c for c in controllers if c not in enabled]
            if missing:
                with open(control, "w") as f:
                    f.write(" ".join(f"+{c}" for c in missing))

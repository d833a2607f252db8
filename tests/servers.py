"""Throwaway PostgreSQL and Redis servers for tests and benchmarks.

Each server runs from a fresh temporary directory on a free port of
127.0.0.1 and listens nowhere else.  They are plain classes, free of pytest,
so benchmarks and crash tests can use them too::

    with PostgresServer() as pg, RedisServer() as redis:
        engine = sa.create_engine(pg.url())
        client = redis_py.Redis.from_url(redis.url)

A server is stopped by :meth:`stop` (or by leaving the ``with`` block), at
interpreter exit if it was not, and on Linux also when the thread that started
it dies (``PR_SET_PDEATHSIG``), so a killed test run leaves no server behind.
Start servers from a long-lived thread (the main thread, normally).

PostgreSQL refuses to run as root: as root, ``initdb`` and ``postgres`` run as
the ``postgres`` user, or ``nobody`` if there is none.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "HOST",
    "PostgresServer",
    "RedisServer",
    "ServerError",
    "find_postgres_bindir",
    "find_redis_server",
    "free_port",
    "search_path_of",
]

#: the only address servers listen on and clients connect to
HOST = "127.0.0.1"

_START_TIMEOUT = 60.0
_STOP_TIMEOUT = 15.0
_PG_PROGRAMS = ("initdb", "pg_ctl", "postgres")
_INSTALL_HINT = (
    "`./dev test` installs it; or install it yourself "
    "(Debian/Ubuntu: apt-get install postgresql redis-server)"
)


class ServerError(RuntimeError):
    """A server program is missing, or a server failed to start."""


# --- discovery ---------------------------------------------------------------


def _has_pg_programs(bindir: Path) -> bool:
    return all(os.access(bindir / name, os.X_OK) for name in _PG_PROGRAMS)


def _version_key(path: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))


def _postgres_bindir_candidates() -> list[Path]:
    candidates: list[Path] = []
    if override := os.environ.get("DBEVENTS_PG_BINDIR"):
        candidates.append(Path(override))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
            if out:
                candidates.append(Path(out))
    candidates.extend(
        sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
    )
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).parent)
    return candidates


def find_postgres_bindir() -> Path:
    """The directory holding PostgreSQL's ``initdb``, ``pg_ctl`` and ``postgres``.

    Looks in ``$DBEVENTS_PG_BINDIR``, ``pg_config --bindir``, the highest
    ``/usr/lib/postgresql/*/bin``, then next to ``initdb`` on ``PATH``.

    :raises ServerError: when none of them has all three programs.
    """
    candidates = _postgres_bindir_candidates()
    for bindir in candidates:
        if _has_pg_programs(bindir):
            return bindir
    looked = ", ".join(str(c) for c in candidates) or "nowhere"
    raise ServerError(
        f"PostgreSQL server programs ({', '.join(_PG_PROGRAMS)}) not found "
        f"(looked in: {looked}); {_INSTALL_HINT}"
    )


def find_redis_server() -> Path:
    """The ``redis-server`` program, from ``PATH`` or ``/usr/bin``.

    :raises ServerError: when there is none.
    """
    found = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin")
    if not found:
        raise ServerError(f"redis-server not found on PATH or in /usr/bin; {_INSTALL_HINT}")
    return Path(found)


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# --- process plumbing --------------------------------------------------------


def _die_with_parent_hook(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the child get ``sig`` when our thread dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    signum = ctypes.c_ulong(int(sig))

    def hook() -> None:
        prctl(pr_set_pdeathsig, signum, 0, 0, 0)

    return hook


def _tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _traversable_by_others(path: Path) -> bool:
    for part in (path, *path.parents):
        try:
            if not part.stat().st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


_OWNER_FILE = "owner.pid"


def _remove_stale_dirs(parent: Path, prefix: str) -> None:
    """Remove our temp dirs whose creating process is gone (a killed run)."""
    for path in parent.glob(prefix + "*"):
        try:
            pid = int((path / _OWNER_FILE).read_text())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _make_base_dir(prefix: str, *, for_others: bool = False) -> Path:
    parent = Path(tempfile.gettempdir())
    if for_others and not _traversable_by_others(parent):
        parent = Path("/tmp")
        if not _traversable_by_others(parent):
            raise ServerError(f"no temporary directory that another user can reach ({parent})")
    _remove_stale_dirs(parent, prefix)
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    (base / _OWNER_FILE).write_text(str(os.getpid()))
    return base


class _Server:
    """A server process started by us, with its temporary directory."""

    name = "server"

    def __init__(self, prefix: str, *, for_others: bool = False) -> None:
        self.host = HOST
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stopped = False
        #: the server's private temporary directory, removed by :meth:`stop`
        self.dir = _make_base_dir(prefix, for_others=for_others)
        atexit.register(self.stop)

    # subclasses: how to stop gracefully enough
    _stop_signal = signal.SIGTERM

    def _spawn(
        self,
        argv: list[str],
        log: Path,
        *,
        user: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen[bytes]:
        group: int | None = None
        if user is not None:
            group = pwd.getpwnam(user).pw_gid
        with open(log, "ab") as log_file:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=None if env is None else dict(env),
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                # terminal signals (Ctrl-C) must not reach the server before our teardown
                start_new_session=True,
                preexec_fn=_die_with_parent_hook(self._stop_signal),
            )

    def _halt(self, sig: signal.Signals | None = None) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig or self._stop_signal)
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        """Stop the server and remove its directory.  Safe to call twice."""
        atexit.unregister(self.stop)
        if self._stopped:
            return
        self._stopped = True
        try:
            self._halt()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.host}:{self.port} dir={self.dir}>"


# --- PostgreSQL --------------------------------------------------------------


def _postgres_user() -> str | None:
    """The user PostgreSQL runs as: ourselves, or a non-root user when we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise ServerError("running as root, and there is no `postgres` or `nobody` user to run as")


class PostgresServer(_Server):
    """A private PostgreSQL cluster, superuser ``postgres``, trust authentication.

    Started by the constructor.  Tuned for tests, not for durability: no fsync,
    no synchronous commit, no full-page writes.

    :param bindir: where ``initdb`` and ``postgres`` are; found by
        :func:`find_postgres_bindir` when omitted.
    :param settings: extra ``postgresql.conf`` settings, overriding ours.
    """

    name = "PostgreSQL"
    user = "postgres"
    # immediate shutdown: we throw the cluster away anyway
    _stop_signal = signal.SIGQUIT

    #: ``postgresql.conf`` settings of every server (``settings`` adds to them)
    default_settings: dict[str, str] = {
        "listen_addresses": f"'{HOST}'",
        "max_connections": "200",
        "fsync": "off",
        "synchronous_commit": "off",
        "full_page_writes": "off",
        "max_parallel_workers_per_gather": "0",
        "log_min_messages": "warning",
        "log_timezone": "'UTC'",
        "timezone": "'UTC'",
    }

    def __init__(
        self, *, bindir: Path | None = None, settings: Mapping[str, str] | None = None
    ) -> None:
        self.bindir = bindir if bindir is not None else find_postgres_bindir()
        self._run_as = _postgres_user()
        super().__init__("dbevents-pg-", for_others=self._run_as is not None)
        try:
            self.datadir = self.dir / "data"
            self.log_path = self.dir / "postgres.log"
            if self._run_as is not None:
                entry = pwd.getpwnam(self._run_as)
                os.chown(self.dir, entry.pw_uid, entry.pw_gid)
            self._env = {
                **os.environ,
                "LC_ALL": "C",
                "LANG": "C",
                "TZ": "UTC",
                "PGTZ": "UTC",
            }
            self._initdb({**self.default_settings, **(settings or {})})
            self.start()
        except BaseException:
            self.stop()
            raise

    def _initdb(self, settings: Mapping[str, str]) -> None:
        argv = [
            str(self.bindir / "initdb"),
            "--pgdata",
            str(self.datadir),
            "--username",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        ]
        result = subprocess.run(
            argv,
            cwd=self.dir,
            env=self._env,
            capture_output=True,
            text=True,
            user=self._run_as,
            group=None if self._run_as is None else pwd.getpwnam(self._run_as).pw_gid,
            extra_groups=None if self._run_as is None else [],
            check=False,
        )
        if result.returncode != 0:
            raise ServerError(
                f"initdb failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        # the socket goes into our private dir, never a shared one like /var/run/postgresql
        conf = {**settings, "unix_socket_directories": f"'{self.dir}'"}
        with open(self.datadir / "postgresql.conf", "a") as f:
            f.write("\n# dbevents test server\n")
            f.writelines(f"{key} = {value}\n" for key, value in conf.items())

    def start(self, *, attempts: int = 3) -> None:
        """Start the server (the constructor does); again on its old port when that is free."""
        if self.running:
            return
        for attempt in range(attempts):
            if not self.port or attempt:
                self.port = free_port()
            argv = [str(self.bindir / "postgres"), "-D", str(self.datadir), "-p", str(self.port)]
            log_start = self.log_path.stat().st_size if self.log_path.exists() else 0
            self._process = self._spawn(argv, self.log_path, user=self._run_as, env=self._env)
            error = self._wait_ready()
            if error is None:
                return
            self._halt()
            log = self.log_path.read_bytes()[log_start:].decode(errors="replace")
            if "could not bind" not in log and "already in use" not in log:
                break
        raise ServerError(
            f"PostgreSQL did not start on {self.host}:{self.port}: {error}\n"
            f"--- {self.log_path}\n{_tail(self.log_path)}"
        )

    def _wait_ready(self) -> str | None:
        assert self._process is not None
        pid_file = self.datadir / "postmaster.pid"
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"postgres exited with code {self._process.returncode}"
            with contextlib.suppress(OSError):
                lines = pid_file.read_text().splitlines()
                # line 1 is the postmaster's pid, line 8 its status (PostgreSQL >= 10)
                if (
                    len(lines) >= 8
                    and lines[0].strip() == str(self._process.pid)
                    and lines[7].strip() == "ready"
                ):
                    return None
            time.sleep(0.02)
        return f"not ready after {_START_TIMEOUT:.0f}s"

    def restart(self, *, crash: bool = False) -> None:
        """Stop and start again, on the same port if it is still free.

        :param crash: stop at once (immediate shutdown: no checkpoint, crash
            recovery at start).  With the default ``synchronous_commit = off``
            the last commits, of about half a second, may then be lost, as
            PostgreSQL documents; pass ``settings={"synchronous_commit": "on"}``
            to the constructor for crash tests that need them.  Otherwise a
            fast shutdown, which keeps every commit.
        """
        self._halt(signal.SIGQUIT if crash else signal.SIGINT)
        self.start()

    def url(self, driver: str = "psycopg", database: str = "postgres") -> str:
        """A SQLAlchemy URL, e.g. ``postgresql+psycopg://postgres@127.0.0.1:PORT/postgres``.

        ``driver=""`` gives a plain ``postgresql://`` URL, for libpq, psycopg or asyncpg.
        """
        scheme = f"postgresql+{driver}" if driver else "postgresql"
        return f"{scheme}://{self.user}@{self.host}:{self.port}/{database}"

    def schema_url(self, schema: str, driver: str = "psycopg", database: str = "postgres") -> str:
        """:meth:`url` with ``search_path`` set to ``schema`` (a plain identifier).

        The setting travels as libpq ``options``, which psycopg understands;
        for asyncpg, pass ``search_path_of(url)`` in ``server_settings``.
        """
        return f"{self.url(driver, database)}?options=-csearch_path%3D{schema}"

    def execute(self, *statements: str, database: str = "postgres") -> None:
        """Run SQL statements in autocommit mode, on a connection of their own."""
        import psycopg

        with psycopg.connect(self.url(driver="", database=database), autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def fetch(
        self, query: str, *params: object, database: str = "postgres"
    ) -> list[tuple[object, ...]]:
        """Rows of one query, on a connection of its own."""
        import psycopg

        with psycopg.connect(self.url(driver="", database=database), autocommit=True) as conn:
            return list(conn.execute(query.encode(), params or None))

    def create_database(self, name: str) -> str:
        """Create an empty database; returns its URL (psycopg driver)."""
        self.execute(f"CREATE DATABASE {_quote_ident(name)}")
        return self.url(database=name)

    def drop_database(self, name: str) -> None:
        """Drop a database, closing its connections first."""
        self.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")

    def drop_schema(self, name: str, *, lock_timeout: float = 5.0) -> list[int]:
        """Drop a schema and all in it.

        When connections still hold locks in it (a transaction left open),
        they are terminated after ``lock_timeout`` seconds and the drop is
        retried.  Returns the pids of the terminated backends.
        """
        import psycopg
        import psycopg.errors

        ident = _quote_ident(name)
        with psycopg.connect(self.url(driver=""), autocommit=True) as conn:
            conn.execute(f"SET lock_timeout = '{int(lock_timeout * 1000)}ms'".encode())
            try:
                conn.execute(f"DROP SCHEMA IF EXISTS {ident} CASCADE".encode())
                return []
            except psycopg.errors.LockNotAvailable:
                pass
            rows = conn.execute(
                """
                SELECT DISTINCT l.pid, pg_terminate_backend(l.pid)
                FROM pg_locks l
                LEFT JOIN pg_class c ON l.locktype = 'relation' AND c.oid = l.relation
                LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE l.pid <> pg_backend_pid() AND l.granted
                  AND (n.nspname = %(name)s
                       OR (l.locktype = 'object'
                           AND l.classid = 'pg_namespace'::regclass
                           AND l.objid = (SELECT oid FROM pg_namespace
                                          WHERE nspname = %(name)s)))
                """,
                {"name": name},
            ).fetchall()
            conn.execute("SET lock_timeout = 0")
            conn.execute(f"DROP SCHEMA IF EXISTS {ident} CASCADE".encode())
            return [int(pid) for pid, _ in rows]


def search_path_of(url: str) -> str:
    """The ``search_path`` in the ``options`` of a URL made by :meth:`PostgresServer.schema_url`."""
    for options in parse_qs(urlsplit(url).query).get("options", []):
        for option in options.split():
            if option.startswith("-csearch_path="):
                return option.removeprefix("-csearch_path=")
    raise ValueError(f"no search_path in the options of {url!r}")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


# --- Redis -------------------------------------------------------------------


class RedisServer(_Server):
    """A private ``redis-server``: no persistence, database 0 at :attr:`url`.

    Started by the constructor.

    :param executable: the ``redis-server`` program; found by
        :func:`find_redis_server` when omitted.
    :param args: extra command-line settings, e.g. ``["--maxmemory", "10mb"]``.
    """

    name = "Redis"
    _stop_signal = signal.SIGTERM

    def __init__(self, *, executable: Path | None = None, args: Iterable[str] = ()) -> None:
        self.executable = executable if executable is not None else find_redis_server()
        self._extra_args = list(args)
        super().__init__("dbevents-redis-")
        try:
            self.log_path = self.dir / "redis.log"
            self.start()
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``"""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, *, attempts: int = 3) -> None:
        if self.running:
            return
        error = ""
        for _ in range(attempts):
            self.port = free_port()
            argv = [
                str(self.executable),
                "--bind",
                self.host,
                "--port",
                str(self.port),
                "--dir",
                str(self.dir),
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--protected-mode",
                "yes",
                *self._extra_args,
            ]
            self._process = self._spawn(argv, self.log_path)
            error = self._wait_ready()
            if not error:
                return
            self._halt()
        raise ServerError(
            f"redis-server did not start on {self.host}:{self.port}: {error}\n"
            f"--- {self.log_path}\n{_tail(self.log_path)}"
        )

    def _wait_ready(self) -> str:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return f"redis-server exited with code {self._process.returncode}"
            try:
                with socket.create_connection((self.host, self.port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return ""
            except OSError:
                pass
            time.sleep(0.02)
        return f"not ready after {_START_TIMEOUT:.0f}s"

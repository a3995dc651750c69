"""A throwaway PostgreSQL + PostGIS cluster for the matcher benchmark.

Debian packages: ``postgresql`` and ``postgresql-15-postgis-3`` (``apt-get
install postgresql postgis``).  The cluster lives in a temporary directory,
listens only on a Unix socket in that directory and on a free TCP port of
127.0.0.1, and is stopped and deleted afterwards.  PostgreSQL refuses to run
as root, so as root the cluster is run as the ``postgres`` system user
(``runuser``).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class PostgisUnavailable(RuntimeError):
    """PostgreSQL/PostGIS binaries, psycopg or the postgres user are missing."""


def _bindir() -> Path:
    for cand in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(cand, "initdb").exists():
            return Path(cand)
    which = shutil.which("initdb")
    if which:
        return Path(which).resolve().parent
    raise PostgisUnavailable("initdb not found (apt-get install postgresql postgis)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """``with Cluster() as pg: conn = pg.connect()``."""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.port = _free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-pg-"))
        self.data = self.tmp / "data"
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            try:
                import pwd

                pw = pwd.getpwnam("postgres")
            except KeyError as exc:
                raise PostgisUnavailable("running as root and there is no 'postgres' user") from exc
            os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
            self.user = "postgres"
        else:
            import getpass

            self.user = getpass.getuser()

    def _run(self, *args: str) -> None:
        subprocess.run([*self.as_user, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                       cwd=self.tmp)

    def __enter__(self) -> "Cluster":
        try:
            import psycopg  # noqa: F401
        except ImportError as exc:
            raise PostgisUnavailable("psycopg is not installed (pip install -e '.[bench]')") from exc
        try:
            self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", self.user,
                      "--no-sync", "-E", "UTF8")
            opts = (f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 -c fsync=off "
                    "-c shared_buffers=256MB -c max_parallel_workers_per_gather=0")
            self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-o", opts, "-w", "-l",
                      str(self.tmp / "log"), "start")
        except subprocess.CalledProcessError as exc:
            self.__exit__()
            raise PostgisUnavailable(f"cannot start PostgreSQL: {exc.stderr.decode(errors='replace')[-500:]}") from exc
        conn = self.connect()
        try:
            conn.execute("CREATE EXTENSION postgis")
        except Exception as exc:
            conn.close()
            self.__exit__()
            raise PostgisUnavailable(f"PostGIS extension missing (apt-get install postgis): {exc}") from exc
        conn.close()
        return self

    def connect(self):
        import psycopg

        return psycopg.connect(host=str(self.tmp), port=self.port, user=self.user, dbname="postgres",
                               autocommit=True)

    def version(self) -> str:
        with self.connect() as c:
            return c.execute("SELECT version() || ' / PostGIS ' || postgis_lib_version()").fetchone()[0]

    def __exit__(self, *exc) -> None:
        if self.data.exists():
            subprocess.run([*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp)
        shutil.rmtree(self.tmp, ignore_errors=True)

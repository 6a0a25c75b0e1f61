"""The team set-up on one machine: PostgreSQL plus an MLflow tracking server on it, both bound to
127.0.0.1, with an artifact folder. ``python -m prunelab.tracking.team_server`` (``make team-server``)
starts them, prints the ``tracking.uri`` to pass, and stops both cleanly on Ctrl-C or SIGTERM;
the tests and the tracking load benchmark start it the same way.

Needs PostgreSQL's server programs (Debian: ``apt-get install postgresql``) and a driver
(``pip install 'prunelab[team]'``). PostgreSQL refuses to run as root: as root the database is
made by and run as the ``postgres`` user, in a temporary folder that goes away on stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .servers import HOST as DEFAULT_HOST
from .servers import ServerError, free_port, mlflow_server, start, stop, wait_until
from .ui import experiments_url


class TeamServerError(RuntimeError):
    """PostgreSQL is missing."""


@dataclass
class TeamServer:
    uri: str  # tracking.uri=...
    database: str  # the backend store MLflow writes to
    artifacts: Path


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL server's bin folder (Debian's layout), or None."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) if Path("/usr/lib/postgresql").is_dir() else []
    return found[-1].parent if found else None


def _as_postgres(argv: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def team_server(folder: Path, port: int | None = None, host: str = DEFAULT_HOST) -> Iterator[TeamServer]:
    """PostgreSQL and ``mlflow server`` on ``host``; artifacts (and, unless root, the database)
    under ``folder``. Yields the addresses once the server answers; stops both at exit."""
    pg = postgres_bin()
    if pg is None:
        raise TeamServerError("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    ephemeral = os.geteuid() == 0  # root's folders are closed to the postgres user
    pgdata = Path(tempfile.mkdtemp(prefix="prunelab-pgdata-")) if ephemeral else folder / "pgdata"
    if ephemeral:
        shutil.chown(pgdata, "postgres", "postgres")
    postgres = None
    try:
        if not (pgdata / "PG_VERSION").exists():
            subprocess.run(
                _as_postgres([str(pg / "initdb"), "-D", str(pgdata), "-U", "mlflow", "--auth=trust"]),
                check=True,
                capture_output=True,
            )
        pg_port = free_port(host)
        postgres = start(
            _as_postgres([str(pg / "postgres"), "-D", str(pgdata), "-h", host, "-p", str(pg_port), "-k", str(pgdata)]),
            folder / "postgres.log",
        )
        ready = [str(pg / "pg_isready"), "-q", "-h", host, "-p", str(pg_port)]
        wait_until(lambda: subprocess.run(ready).returncode == 0, postgres, 60, "PostgreSQL")
        subprocess.run(
            [str(pg / "createdb"), "-h", host, "-p", str(pg_port), "-U", "mlflow", "mlflow"], capture_output=True
        )  # exists already when the folder is reused
        database = f"postgresql+psycopg://mlflow@{host}:{pg_port}/mlflow"
        with mlflow_server(
            database, port, host, artifacts=folder / "artifacts", log=folder / "mlflow-server.log", cwd=folder
        ) as uri:
            yield TeamServer(uri, database, folder / "artifacts")
    finally:
        stop(postgres)
        if ephemeral:
            shutil.rmtree(pgdata, ignore_errors=True)


def _interrupt(*_signal_args):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m prunelab.tracking.team_server", description=__doc__.splitlines()[0])
    p.add_argument("--dir", type=Path, default=Path("team-store"), help="artifacts (and database) folder")
    p.add_argument("--port", type=int, default=5000)
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with team_server(args.dir, args.port) as team:
            print(
                f"MLflow server on PostgreSQL: {team.uri}  (artifacts in {team.artifacts})\n"
                f"  python -m prunelab tracking.uri={team.uri} ...\n"
                f"  UI: {experiments_url(team.uri)}   Ctrl-C stops both.",
                flush=True,
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        print("stopped", flush=True)
    except (TeamServerError, ServerError, subprocess.CalledProcessError) as e:
        print(f"prunelab: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

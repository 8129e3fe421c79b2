"""Start a site's roles the way an operator does: the Procfile's own lines.

Each role runs its Procfile command through a shell, in a fresh empty working
directory, with no ``SYNC_HOME`` and a ``HOME`` that does not exist, so a role
that needs a folder nobody made fails here as it would in production.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.helpers import DBSYNC

ROOT = Path(__file__).resolve().parents[2]
BIN = str(Path(DBSYNC).parent)


def procfile() -> dict[str, str]:
    """The Procfile's roles and their commands, in file order."""
    roles: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            role, command = line.split(":", 1)
            roles[role.strip()] = command.strip()
    return roles


def operator_env(workdir: Path, **env: str) -> dict[str, str]:
    """The machine's environment minus every SYNC_* setting, plus ``env``.

    ``dbsync`` is found on PATH (the project's environment first), as an
    operator's shell finds it once the package is installed.
    """
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SYNC_") and k not in ("PORT", "WEB_CONCURRENCY")
    }
    base["PATH"] = f"{BIN}{os.pathsep}{base.get('PATH', '')}"
    base["HOME"] = str(workdir / "no-home")  # never created
    base["SYNC_BIND_HOST"] = "127.0.0.1"  # tests listen on loopback only
    base.update(env)
    return base


def empty_folder(parent: Path, role: str) -> Path:
    """A new empty working directory for one start of ``role``."""
    parent.mkdir(parents=True, exist_ok=True)
    n = 1
    while (parent / f"{role}-{n}").exists():
        n += 1
    folder = parent / f"{role}-{n}"
    folder.mkdir()
    return folder


def spawn_role(
    role: str, env: dict[str, str], run_dir: Path, log: Path
) -> subprocess.Popen[bytes]:
    """Start the Procfile's ``role`` in its own session and a fresh empty folder."""
    command = procfile()[role]
    with open(log, "ab") as out:
        return subprocess.Popen(
            ["/bin/sh", "-c", f"exec {command}"],
            env=env,
            cwd=empty_folder(run_dir, role),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

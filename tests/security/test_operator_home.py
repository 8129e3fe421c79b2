"""SYNC_HOME holds every token hash: it is private to its user, or refused.

Plays a local user who reads a site's embedded state (the folder and files an
earlier version made 0755/0644 under a 022 umask) or who owns or can write the
folder a site is pointed at. Drives the real ``dbsync`` command.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.helpers import DBSYNC, eventually, free_port


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(SYNC_HOME=str(home), SYNC_ALLOW_PRIVATE_URLS="true", **extra)
    return env


def _loose_umask() -> None:
    os.umask(0o022)  # the usual login umask: files 0644, folders 0755


def _dbsync(
    home: Path, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [DBSYNC, *args],
        env=_env(home),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=home.parent,
        preexec_fn=_loose_umask,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _modes(folder: Path) -> dict[str, int]:
    return {p.name: _mode(p) for p in folder.iterdir()}


def test_a_running_embedded_site_keeps_its_folder_0700_and_files_0600(
    tmp_path: Path,
) -> None:
    home = tmp_path / "sites" / "site"  # neither exists yet
    port = free_port()
    with open(tmp_path / "up.log", "wb") as log:
        proc = subprocess.Popen(
            [DBSYNC, "up", "--port", str(port)],
            env=_env(home, SYNC_SITE_URL=f"http://127.0.0.1:{port}"),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
            preexec_fn=_loose_umask,
        )
    try:

        def live() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/livez", timeout=1).is_success
            except httpx.HTTPError:
                return False

        eventually(live, timeout=60)
        # beat wrote its schedule; the worker made the broker's tables.
        eventually(lambda: list(home.glob("celerybeat-schedule*")), timeout=60)
        eventually(lambda: (home / "broker.sqlite3").stat().st_size > 0, timeout=60)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    assert _mode(home) == 0o700
    modes = _modes(home)
    assert {"dbsync.sqlite3", "broker.sqlite3"} <= modes.keys()
    assert any(name.startswith("celerybeat-schedule") for name in modes)
    assert modes == {name: 0o600 for name in modes}


def test_a_folder_an_earlier_version_left_open_is_closed(tmp_path: Path) -> None:
    home = tmp_path / "site"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    for name in ("dbsync.sqlite3", "broker.sqlite3", "celerybeat-schedule"):
        (home / name).touch()
        (home / name).chmod(0o644)
    result = _dbsync(home, "db", "upgrade")
    assert (result.returncode, result.stdout) == (0, "database is up to date\n")
    assert _mode(home) == 0o700
    assert _modes(home) == {
        "dbsync.sqlite3": 0o600,
        "broker.sqlite3": 0o600,
        "celerybeat-schedule": 0o600,
    }


REFUSING_COMMANDS = [
    ("db", "upgrade"),
    ("status",),
    ("connections", "list"),
    ("serve", "--port", "9"),
    ("worker",),
    ("beat",),
]


@pytest.mark.parametrize("args", REFUSING_COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    ("mode", "message"),
    [
        (
            0o770,
            "SYNC_HOME {home} is writable by its group (mode 0770):"
            " run `chmod 700 {home}` or use another folder",
        ),
        (
            0o1777,
            "SYNC_HOME {home} is writable by others (mode 1777), a shared folder:"
            " use a folder of your own (e.g. under $HOME, or made by `mktemp -d`)",
        ),
    ],
    ids=["group-writable", "shared-tmp"],
)
def test_a_folder_others_can_write_is_refused(
    tmp_path: Path, args: tuple[str, ...], mode: int, message: str
) -> None:
    home = tmp_path / "site"
    home.mkdir()
    home.chmod(mode)
    result = _dbsync(home, *args, timeout=30)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (f"Error: configuration: {message.format(home=home)}\n")
    assert list(home.iterdir()) == []  # nothing was written into it
    assert _mode(home) == mode


def test_a_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        home = tmp_path / "theirs"
        home.mkdir(mode=0o700)
        os.chown(home, 65534, 65534)
        owner = 65534
    else:
        home, owner = Path("/"), 0  # root's, and no one else's
    result = _dbsync(home, "db", "upgrade", timeout=30)
    me = os.geteuid()
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == (
        f"Error: configuration: SYNC_HOME {home} belongs to uid {owner}, not to"
        f" this user (uid {me}): its owner could read or replace this site's"
        " state; use a folder of your own\n"
    )
    if owner == 65534:
        assert list(home.iterdir()) == []

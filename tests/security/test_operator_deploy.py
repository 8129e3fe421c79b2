"""The deployment files: least-privilege roles, secrets in files, locked installs.

No container engine runs here, so the files are read as data (the compose file
parsed as YAML with compose's own ``${VAR:-default}`` interpolation, the
Dockerfile and the lock file as text) and their parts run for real where a
local program can: the init SQL through psql against the test PostgreSQL
(then dbsync migrates as the role it made), the Redis command through the
local redis-server, the secrets script through sh.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tomllib
import uuid
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from psycopg2.errors import InsufficientPrivilege
from sqlalchemy import create_engine, text
from sqlalchemy.exc import ProgrammingError

from tests.helpers import DBSYNC, PG_ADMIN_URL, eventually, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
APP_SERVICES = ("migrate", "web", "worker", "beat")
CREDENTIAL_SETTINGS = ("SYNC_DATABASE_URL", "SYNC_DATA_DATABASE_URL", "SYNC_BROKER_URL")
# The image: Debian's CPython 3.11 on Linux (x86_64 or arm64).
IMAGE_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.14",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_machine": "x86_64",
}


# ------------------------------------------------------------ compose


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's interpolation: ``$$`` is ``$``, ``${X:-d}`` is X or d."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group() == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        return env.get(name) or (default or "")

    return re.sub(r"\$\$|\$\{(\w+)(?::-([^}]*))?\}", one, value)


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    raw = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    return interpolate(raw, {})


@pytest.fixture(scope="module")
def secrets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The secrets docker/make-secrets writes, in a folder of this test."""
    folder = tmp_path_factory.mktemp("secrets-parent") / "secrets"
    result = subprocess.run(
        ["sh", str(DOCKER / "make-secrets"), str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stderr
    assert result.stdout == f"make-secrets: wrote {folder}\n"
    return folder


def _secret(folder: Path, name: str) -> str:
    return (folder / name).read_text().strip()


def test_make_secrets_writes_private_consistent_secrets_once(secrets: Path) -> None:
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    names = sorted(p.name for p in secrets.iterdir())
    assert names == [
        "broker_url",
        "data_database_url",
        "data_db_password",
        "postgres_password",
        "redis_password",
        "state_database_url",
        "state_db_password",
    ]
    assert {stat.S_IMODE((secrets / n).stat().st_mode) for n in names} == {0o444}
    passwords = [
        _secret(secrets, n)
        for n in names
        if n.endswith("_password")  # four, all different, 48 hex digits each
    ]
    assert len(set(passwords)) == 4
    assert all(re.fullmatch("[0-9a-f]{48}", p) for p in passwords)
    assert _secret(secrets, "state_database_url") == (
        f"postgresql://dbsync_state:{_secret(secrets, 'state_db_password')}"
        "@postgres:5432/dbsync_state"
    )
    assert _secret(secrets, "data_database_url") == (
        f"postgresql://dbsync_data:{_secret(secrets, 'data_db_password')}"
        "@postgres:5432/dbsync_data"
    )
    assert _secret(secrets, "broker_url") == (
        f"redis://:{_secret(secrets, 'redis_password')}@redis:6379/0"
    )
    before = {n: _secret(secrets, n) for n in names}
    again = subprocess.run(
        ["sh", str(DOCKER / "make-secrets"), str(secrets)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (again.returncode, again.stdout) == (1, "")
    assert again.stderr.startswith(f"make-secrets: {secrets} exists; remove it first")
    assert {n: _secret(secrets, n) for n in names} == before


def test_every_secret_is_a_file_that_make_secrets_writes(
    compose: dict[str, Any], secrets: Path
) -> None:
    declared = compose["secrets"]
    assert declared == {
        name: {"file": f"./secrets/{name}"} for name in sorted(os.listdir(secrets))
    }
    for name, service in compose["services"].items():
        for secret in service.get("secrets", []):
            assert secret in declared, (name, secret)


def test_no_credential_is_written_in_the_compose_file(compose: dict[str, Any]) -> None:
    url_with_password = re.compile(r"://[^/@\s]*:[^/@\s]+@")
    for name, service in compose["services"].items():
        environment = service.get("environment", {})
        for key, value in environment.items():
            assert not url_with_password.search(str(value)), (name, key)
            assert not key.endswith(("PASSWORD", "_USER")), (name, key)
            if key.endswith("_FILE"):
                secret = str(value).removeprefix("/run/secrets/")
                assert secret in service["secrets"], (name, key)
        assert "POSTGRES_PASSWORD" not in environment
    for name in APP_SERVICES:
        environment = compose["services"][name]["environment"]
        for setting in CREDENTIAL_SETTINGS:
            assert setting not in environment, (name, setting)
            assert environment[setting + "_FILE"].startswith("/run/secrets/")
    assert not url_with_password.search((DOCKER / "compose.yaml").read_text())


def test_the_app_never_gets_the_superuser(
    compose: dict[str, Any], secrets: Path
) -> None:
    services = compose["services"]
    assert services["postgres"]["environment"] == {
        "POSTGRES_PASSWORD_FILE": "/run/secrets/postgres_password"
    }
    for name in APP_SERVICES:
        service = services[name]
        assert "postgres_password" not in service["secrets"]
        for setting in ("SYNC_DATABASE_URL_FILE", "SYNC_DATA_DATABASE_URL_FILE"):
            secret = service["environment"][setting].removeprefix("/run/secrets/")
            user = re.match(r"postgresql://([^:@]+)", _secret(secrets, secret))
            assert user is not None and user.group(1) in ("dbsync_state", "dbsync_data")
        state = service["environment"]["SYNC_DATABASE_URL_FILE"]
        data = service["environment"]["SYNC_DATA_DATABASE_URL_FILE"]
        assert state != data  # state and data in two databases, two roles
        assert service.get("user") in (None, "dbsync", "10001")
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert service["security_opt"] == ["no-new-privileges:true"]


def test_ports_are_published_on_loopback_only(compose: dict[str, Any]) -> None:
    published = {
        name: service["ports"]
        for name, service in compose["services"].items()
        if service.get("ports")
    }
    assert published == {"web": ["127.0.0.1:8000:8000"]}
    assert compose["networks"]["backend"] == {"internal": True}
    for name in ("postgres", "redis"):
        assert compose["services"][name]["networks"] == ["backend"]


def test_redis_needs_a_password_and_is_checked_with_it(compose: dict[str, Any]) -> None:
    service = compose["services"]["redis"]
    assert service["secrets"] == ["redis_password"]
    script = service["command"][2]
    assert "requirepass $(cat /run/secrets/redis_password)" in script
    assert "--requirepass" not in script  # arguments show in `ps`
    check = service["healthcheck"]["test"]
    assert check[0] == "CMD-SHELL"
    assert check[1].startswith('REDISCLI_AUTH="$(cat /run/secrets/redis_password)"')


def test_every_long_running_service_has_a_healthcheck(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    for name in ("postgres", "redis", "web"):
        assert services[name]["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL")
    assert services["postgres"]["healthcheck"]["test"][:4] == [
        "CMD",
        "pg_isready",
        "-h",
        "127.0.0.1",
    ]
    assert "/livez" in services["web"]["healthcheck"]["test"][-1]
    for name in ("migrate", "worker", "beat"):
        assert services[name]["healthcheck"] == {"disable": True}


@pytest.fixture
def redis_from_compose(
    compose: dict[str, Any], secrets: Path, tmp_path: Path
) -> Iterator[tuple[int, str]]:
    """The compose file's Redis command, run by sh with the secrets mounted here."""
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is needed (scripts/services runs one)")
    port = free_port()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # The container listens on 6379 in its own network; here, a free port.
    (bin_dir / "redis-server").write_text(
        "#!/bin/sh\n"
        f'exec {shutil.which("redis-server")} "$@" --port {port} --bind 127.0.0.1'
        ' --save "" --appendonly no\n'
    )
    (bin_dir / "redis-server").chmod(0o755)
    argv = compose["services"]["redis"]["command"]
    argv = [a.replace("/run/secrets/", f"{secrets}/") for a in argv]
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    with open(tmp_path / "redis.log", "wb") as log:
        proc = subprocess.Popen(
            argv, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT
        )
    password = _secret(secrets, "redis_password")
    try:
        yield port, password
    finally:
        try:
            redis.Redis(port=port, password=password).shutdown(nosave=True)
        except redis.RedisError:
            pass
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_redis_as_compose_runs_it_refuses_a_client_without_the_password(
    redis_from_compose: tuple[int, str],
) -> None:
    port, password = redis_from_compose

    def answers() -> bool:
        try:
            return bool(redis.Redis(port=port, password=password).ping())
        except redis.ConnectionError:
            return False

    eventually(answers, timeout=20, every=0.2)
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port).ping()
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(port=port, password="wrong").ping()


# ------------------------------------------------------------ PostgreSQL roles


@pytest.fixture
def roles(secrets: Path, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Run the init SQL as the postgres image would, under names of this test."""
    if shutil.which("psql") is None:
        pytest.fail("psql is needed (it comes with PostgreSQL)")
    tag = uuid.uuid4().hex[:8]
    names = {"dbsync_state": f"dbsync_state_{tag}", "dbsync_data": f"dbsync_data_{tag}"}
    sql = (DOCKER / "postgres" / "10-dbsync-roles.sql").read_text()
    sql = sql.replace("/run/secrets/", f"{secrets}/")
    for name, unique in names.items():
        sql = re.sub(rf"\b{name}\b", unique, sql)
    script = tmp_path / "roles.sql"
    script.write_text(sql)
    admin = PG_ADMIN_URL.replace("postgresql+psycopg2://", "postgresql://")
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        result = subprocess.run(
            [
                "psql",
                "-X",
                "-v",
                "ON_ERROR_STOP=1",
                "--no-password",
                "-d",
                admin,
                "-f",
                str(script),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        yield names
    finally:
        with engine.connect() as conn:
            for unique in names.values():
                conn.execute(text(f'DROP DATABASE IF EXISTS "{unique}" WITH (FORCE)'))
            for unique in names.values():
                conn.execute(text(f'DROP ROLE IF EXISTS "{unique}"'))
            # The script closes the `postgres` database to PUBLIC; give the
            # test server's other users back what they had.
            conn.execute(text("GRANT CONNECT ON DATABASE postgres TO PUBLIC"))
        engine.dispose()


def _as(role: str, database: str) -> str:
    base = PG_ADMIN_URL.rsplit("@", 1)[1].rsplit("/", 1)[0]
    return f"postgresql+psycopg2://{role}@{base}/{database}"


def test_the_init_sql_makes_two_unprivileged_owners(roles: dict[str, str]) -> None:
    state, data = roles["dbsync_state"], roles["dbsync_data"]
    engine = create_engine(PG_ADMIN_URL)
    try:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole,"
                    " rolreplication, rolbypassrls, rolcanlogin,"
                    " rolpassword LIKE 'SCRAM-SHA-256$%'"
                    " FROM pg_authid WHERE rolname IN (:s, :d) ORDER BY rolname"
                ),
                {"s": state, "d": data},
            ).all()
            assert [tuple(r) for r in found] == [
                (data, False, False, False, False, False, True, True),
                (state, False, False, False, False, False, True, True),
            ]
            memberships = conn.scalars(
                text(
                    "SELECT b.rolname FROM pg_auth_members m"
                    " JOIN pg_roles r ON r.oid = m.member"
                    " JOIN pg_roles b ON b.oid = m.roleid WHERE r.rolname IN (:s, :d)"
                ),
                {"s": state, "d": data},
            ).all()
            assert memberships == []
            owners = conn.execute(
                text(
                    "SELECT datname, pg_get_userbyid(datdba) FROM pg_database"
                    " WHERE datname IN (:s, :d) ORDER BY datname"
                ),
                {"s": state, "d": data},
            ).all()
            assert [tuple(r) for r in owners] == [(data, data), (state, state)]
            may_connect = conn.execute(
                text(
                    "SELECT has_database_privilege(:s, :d, 'CONNECT'),"
                    " has_database_privilege(:d, :s, 'CONNECT'),"
                    " has_database_privilege(:s, 'postgres', 'CONNECT'),"
                    " has_database_privilege(:d, 'postgres', 'CONNECT')"
                ),
                {"s": state, "d": data},
            ).one()
            assert tuple(may_connect) == (False, False, False, False)
    finally:
        engine.dispose()


def test_dbsync_migrates_as_the_state_role_and_neither_role_runs_programs(
    roles: dict[str, str], tmp_path: Path
) -> None:
    state, data = roles["dbsync_state"], roles["dbsync_data"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNC_")}
    env.update(
        SYNC_DATABASE_URL=_as(state, state),
        SYNC_DATA_DATABASE_URL=_as(data, data),
        SYNC_HOME=str(tmp_path / "home"),
    )
    result = subprocess.run(
        [DBSYNC, "db", "upgrade"], env=env, capture_output=True, text=True, timeout=120
    )
    assert (result.returncode, result.stdout) == (0, "database is up to date\n")
    for role in (state, data):
        engine = create_engine(_as(role, role))
        try:
            with engine.connect() as conn:
                assert conn.scalar(text("SELECT current_user")) == role
                for refused in (
                    "COPY (SELECT 1) TO PROGRAM 'true'",
                    "SELECT pg_read_file('/etc/passwd')",
                    "CREATE ROLE intruder SUPERUSER",
                ):
                    with pytest.raises(ProgrammingError) as caught:
                        conn.execute(text(refused))
                    assert isinstance(caught.value.orig, InsufficientPrivilege)
                    conn.rollback()
                # What a receiver does in its data database: tables, staging.
                conn.execute(text("CREATE TABLE t (id int PRIMARY KEY)"))
                conn.execute(text("CREATE TEMP TABLE s (id int) ON COMMIT DROP"))
                conn.rollback()
        finally:
            engine.dispose()
    engine = create_engine(_as(state, state))
    try:
        with engine.connect() as conn:
            owners = conn.scalars(
                text(
                    "SELECT DISTINCT tableowner FROM pg_tables"
                    " WHERE tablename LIKE 'dbsync_%' OR tablename = 'alembic_version'"
                )
            ).all()
            assert owners == [state]
    finally:
        engine.dispose()


# ------------------------------------------------------------ image and lock


def _lock() -> dict[str, tuple[str, str | None, list[str]]]:
    """requirements.lock as {name: (version, marker, hashes)}; every entry pinned."""
    entries: dict[str, tuple[str, str | None, list[str]]] = {}
    text_ = (ROOT / "requirements.lock").read_text()
    for block in re.split(r"\n(?=\S)", text_):
        first = block.split("\n", 1)[0]
        if not first or first.startswith("#"):
            continue
        spec = first.rstrip(" \\")
        requirement, _, marker = spec.partition(";")
        name, sep, version = requirement.strip().partition("==")
        assert sep == "==" and re.fullmatch(r"[\w.!+]+", version), first
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        assert hashes, f"{name} has no sha256"
        entries[canonicalize_name(name)] = (version, marker.strip() or None, hashes)
    return entries


def _applies(marker: str | None, extras: set[str] | None = None) -> bool:
    if marker is None:
        return True
    parsed = Marker(marker)
    if extras is None:
        return parsed.evaluate({**IMAGE_ENV, "extra": ""})
    return any(parsed.evaluate({**IMAGE_ENV, "extra": e}) for e in extras or {""})


def test_the_lock_pins_and_hashes_every_runtime_and_build_dependency() -> None:
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = [Requirement(r) for r in project["project"]["dependencies"]]
    build = [Requirement(r) for r in project["build-system"]["requires"]]
    build_in = [
        Requirement(line)
        for line in (DOCKER / "build-requirements.in").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(map(str, build_in)) == sorted(map(str, build))
    for requirement in wanted + build:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not in requirements.lock"
        version = lock[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock has {name}=={version}, pyproject wants {requirement}"
        )


def test_the_lock_is_closed_under_the_dependencies_of_what_it_pins() -> None:
    """Every package a locked package needs in the image is locked too.

    The requirements of each package are read from its installed metadata;
    the project's environment is installed from the same pyproject.toml.
    """
    lock = _lock()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras: dict[str, set[str]] = {}
    for raw in project["project"]["dependencies"]:
        requirement = Requirement(raw)
        extras.setdefault(canonicalize_name(requirement.name), set()).update(
            requirement.extras
        )
    missing: set[str] = set()
    grew = True
    while grew:  # until no package gains a requirement or an extra
        grew = False
        for name in list(extras):
            for raw in metadata.requires(name) or []:
                requirement = Requirement(raw)
                marker = str(requirement.marker) if requirement.marker else None
                if not _applies(marker, extras[name] | {""}):
                    continue
                needed = canonicalize_name(requirement.name)
                if needed not in lock:
                    missing.add(f"{needed} (needed by {name})")
                elif not _applies(lock[needed][1]):
                    missing.add(f"{needed} is locked for other platforms only")
                if needed not in extras or not requirement.extras <= extras[needed]:
                    extras.setdefault(needed, set()).update(requirement.extras)
                    grew = True
    assert sorted(missing) == []
    unused = {n for n, (_, marker, _) in lock.items() if _applies(marker)} - set(extras)
    assert unused <= {"setuptools", "wheel"}


def test_the_image_installs_the_lock_with_hashes_and_nothing_else() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    commands = [
        " ".join(c.split())
        for c in re.findall(r"^RUN (.*?)(?<!\\)$", dockerfile, re.M | re.S)
    ]
    installs = [
        part.strip()
        for command in commands
        for part in re.split(r"&&", command.replace("\\", " "))
        if "pip install" in part
    ]
    assert installs == [
        "pip install --require-hashes --no-deps --only-binary :all: -r requirements.lock",
        "pip install --no-deps --no-build-isolation .",
    ]
    assert dockerfile.index("COPY requirements.lock") < dockerfile.index(
        "--require-hashes"
    )
    assert "pip check" in dockerfile
    assert re.search(r"^USER dbsync$", dockerfile, re.M)
    assert not re.search(r"^ADD ", dockerfile, re.M)

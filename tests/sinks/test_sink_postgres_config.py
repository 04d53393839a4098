"""PostgresConfig: validation, and the password never shown anywhere."""

from __future__ import annotations

import subprocess
import sys
import traceback

import pytest
from pg import free_port

from servomexd.errors import ServomexSinkDependencyError, ServomexSinkWriteError
from servomexd.sinks import PostgresConfig, PostgresSink

SECRET = "s3cr3t-Pa55"


def test_defaults_exactly_as_specified() -> None:
    config = PostgresConfig(host="db")
    assert (config.dsn, config.host, config.port, config.user, config.password) == (
        None, "db", 5432, None, None,
    )
    assert (config.database, config.schema, config.table) == (None, "public", "samples")
    assert (config.pool_min_size, config.pool_max_size) == (1, 4)
    assert (config.statement_timeout_ms, config.command_timeout_s) == (30000, 10.0)
    assert (config.create_table, config.use_copy) == (False, True)
    with pytest.raises(AttributeError):
        config.table = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"dsn": "postgresql://u@h/db", "host": "h"},
        {"dsn": "mysql://u@h/db"},
        {"dsn": "postgresql://u@h:notaport/db"},
        {"dsn": "postgresql://u@h/db", "user": "u"},
        {"host": ""},
        {"host": "h", "port": 0},
        {"host": "h", "port": 70000},
        {"host": "h", "schema": "public; DROP TABLE x"},
        {"host": "h", "table": 'samples"--'},
        {"host": "h", "table": "a" * 64},
        {"host": "h", "table": "servomexd_checkpoints"},
        {"host": "h", "pool_min_size": 5, "pool_max_size": 4},
        {"host": "h", "pool_max_size": 0},
        {"host": "h", "pool_min_size": -1},
        {"host": "h", "statement_timeout_ms": -1},
        {"host": "h", "command_timeout_s": 0},
        {"host": "h", "command_timeout_s": float("inf")},
    ],
)
def test_invalid_configs_rejected(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PostgresConfig(**kwargs)  # type: ignore[arg-type]


def test_dsn_with_password_field_allowed() -> None:
    config = PostgresConfig(dsn="postgresql://servomexd@db.example/plant", password=SECRET)
    assert config.password == SECRET


def test_target_is_log_safe() -> None:
    assert PostgresConfig(
        host="db.example", port=5433, user="u", password=SECRET, database="plant",
        schema="gas", table="o2",
    ).target() == "db.example:5433/plant.gas.o2"
    assert (
        PostgresConfig(dsn=f"postgresql://u:{SECRET}@db.example/plant").target()
        == "db.example:5432/plant.public.samples"
    )
    assert PostgresConfig(host="db").target() == "db:5432/?.public.samples"
    assert PostgresConfig(dsn="postgresql:///plant").target() == "?:5432/plant.public.samples"


@pytest.mark.parametrize(
    "config",
    [
        PostgresConfig(host="db", user="u", password=SECRET, database="plant"),
        PostgresConfig(dsn=f"postgresql://u:{SECRET}@db.example:5432/plant"),
        PostgresConfig(dsn=f"postgresql://u@db.example/plant?password={SECRET}&sslmode=require"),
        PostgresConfig(dsn="postgresql://u@db.example/plant", password=SECRET),
    ],
)
def test_password_never_in_repr_str_target(config: PostgresConfig) -> None:
    for text in (repr(config), str(config), config.target(), f"{config}", f"{config!r}"):
        assert SECRET not in text
    assert "***" in repr(config)
    assert "db" in repr(config)


def test_invalid_dsn_error_does_not_echo_the_dsn() -> None:
    with pytest.raises(ValueError) as caught:
        PostgresConfig(dsn=f"mysql://u:{SECRET}@h/db")
    assert SECRET not in str(caught.value)


async def test_password_not_in_connection_errors() -> None:
    port = free_port()  # nothing listens there
    for config in (
        PostgresConfig(dsn=f"postgresql://u:{SECRET}@127.0.0.1:{port}/db", command_timeout_s=2),
        PostgresConfig(host="127.0.0.1", port=port, user="u", password=SECRET, database="db",
                       command_timeout_s=2),
    ):
        with pytest.raises(ServomexSinkWriteError) as caught:
            await PostgresSink(config).open()
        rendered = "".join(traceback.format_exception(caught.value))
        assert SECRET not in rendered
        assert f"127.0.0.1:{port}/db.public.samples" in str(caught.value)


async def test_missing_asyncpg_raises_dependency_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "asyncpg", None)
    with pytest.raises(ServomexSinkDependencyError, match=r"servomexd\[postgres\]"):
        await PostgresSink(PostgresConfig(host="127.0.0.1")).open()


def test_importing_sinks_needs_no_optional_dependency() -> None:
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "sys.modules['pyarrow'] = None\n"
        "import servomexd.sinks as s\n"
        "assert 'asyncpg' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "print(sorted(s.__all__))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "SqliteSink" in result.stdout

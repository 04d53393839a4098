"""servomexd/config.py: schema, sources (file, env, credentials), check-config output."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from servomexd.check import check_config
from servomexd.config import (
    EX_CONFIG,
    ConfigInvalid,
    DeviceConfig,
    Settings,
    effective_config,
    load_settings,
    to_toml,
)
from servomexd.errors import ServomexConfigError, ServomexValidationError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "etc" / "servomexd" / "servomexd.toml"

MINIMAL = '[[devices]]\nname = "a"\nport = "/dev/ttyX"\n'


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("SERVOMEXD_") or key == "CREDENTIALS_DIRECTORY":
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the example documents every key, and only real keys ---------------------------------


def _model_keys(model: type[BaseModel], prefix: str) -> set[str]:
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        path = f"{prefix}.{key}" if prefix else key
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        target = inner[0] if inner and name == "devices" else annotation
        if isinstance(target, type) and issubclass(target, BaseModel):
            keys |= _model_keys(target, path)
        else:
            keys.add(path)
    return keys


def _documented_keys(text: str) -> set[str]:
    """Active and commented-out ``key = value`` lines, qualified by their table."""
    keys: set[str] = set()
    table = ""
    header = re.compile(r"^\[\[?([A-Za-z0-9_.]+)\]\]?\s*(#.*)?$")
    for raw in text.splitlines():
        line = raw.strip()
        if match := header.match(line):
            table = match.group(1)
            continue
        candidate = line[2:] if line.startswith("# ") else line
        if not re.match(r"^[a-z_]+ = ", candidate):
            continue
        try:
            parsed = tomllib.loads(candidate)
        except tomllib.TOMLDecodeError:
            continue
        (key,) = parsed
        keys.add(f"{table}.{key}" if table else key)
    return keys


def test_example_documents_every_key_and_only_real_keys() -> None:
    documented = _documented_keys(EXAMPLE.read_text())
    model = _model_keys(Settings, "")
    assert documented - model == set(), "documented keys that do not exist"
    assert model - documented == set(), "settings missing from the example"


def test_example_passes_check_config(capsys: pytest.CaptureFixture[str]) -> None:
    assert check_config(str(EXAMPLE)) == 0
    out = capsys.readouterr().out
    # The printed config is itself valid TOML that loads to the same settings.
    printed = tomllib.loads(out)
    assert Settings(**printed) == load_settings(EXAMPLE)


def test_example_commented_defaults_are_the_model_defaults() -> None:
    """Each `# key = value` line shows the real default, so uncommenting changes nothing."""
    settings = load_settings(EXAMPLE)
    defaults = {
        "devices": DeviceConfig(name="x", port="/dev/x").model_dump(),
        **{k: v for k, v in Settings.model_construct().model_dump(by_alias=True).items()},
    }
    table = ""
    for raw in EXAMPLE.read_text().splitlines():
        line = raw.strip()
        if line.startswith("["):
            table = line.strip("[]")
            continue
        if not line.startswith("# ") or not re.match(r"^[a-z_]+ = ", line[2:]):
            continue
        try:
            parsed = tomllib.loads(line[2:])
        except tomllib.TOMLDecodeError:
            continue
        ((key, value),) = parsed.items()
        if key in {"dsn", "host", "user", "database", "password", "password_file",
                   "retention", "rollup_retention",
                   "sslmode", "sslrootcert", "sslcert", "sslkey",
                   "web_config", "tls_cert", "tls_key", "client_ca"}:
            continue  # examples of optional values, default None
        if (table, key) == ("daemon", "site"):
            assert settings.daemon.site == socket.gethostname()  # the default: the host name
            continue
        node: Any = defaults
        for part in table.split("."):
            node = node[part]
        expected = node[key]
        if isinstance(expected, Path):
            expected = str(expected)
        assert value == expected, f"{table}.{key}"
    assert settings.devices[0].protocol == "continuous"


# --- validation ---------------------------------------------------------------------------


def test_minimal_config_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.sink.type == "sqlite"
    assert settings.metrics.listen == "127.0.0.1:9723"
    assert settings.spool.synchronous == "FULL"
    assert settings.devices[0].baudrate == 19200


@pytest.mark.parametrize(
    ("text", "loc", "reason"),
    [
        (MINIMAL + "baud_rate = 9600\n", "devices[0].baud_rate", "unknown key"),
        (MINIMAL + "baudrate = 0\n", "devices[0].baudrate", "must be one of"),
        (MINIMAL + "baudrate = 1920\n", "devices[0].baudrate", "must be one of"),
        (MINIMAL + 'parity = "X"\n', "devices[0].parity", "'N', 'E' or 'O'"),
        (MINIMAL + "address = 248\n", "devices[0].address", "less than or equal to 247"),
        (MINIMAL + '[sink]\ntype = "mongo"\n', "sink.type", "sqlite"),
        (MINIMAL + '[sink]\ntable = "x; drop"\n', "sink.table", "identifier"),
        # "$" in a regex matches before a final newline: the sink then refused the table
        # at every open while the daemon ran on, spooling forever.
        (MINIMAL + '[sink]\ntable = "samples\\n"\n', "sink.table", "identifier"),
        (MINIMAL + '[sink.postgres]\ntable = "samples\\n"\n', "sink.postgres.table",
         "identifier"),
        ('[[devices]]\nname = "a\\n"\nport = "/dev/ttyX"\n', "devices[0].name", ""),
        (MINIMAL + '[metrics]\nlisten = "9723"\n', "metrics.listen", "host:port"),
        (MINIMAL + '[spool]\nmax_bytes = 10\n', "spool.max_bytes", "greater than"),
        (MINIMAL + '[lgo]\nlevel = "info"\n', "lgo", "unknown key"),
        ('[sink]\ntype = "sqlite"\n', "devices", "required"),
        (
            MINIMAL + 'protocol = "modbus_rtu"\npoll_interval = 5.0\nsilence_timeout = 5.0\n',
            "devices[0]",
            "must be longer than poll_interval",
        ),
    ],
)
def test_invalid_field_named(tmp_path: Path, text: str, loc: str, reason: str) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, text))
    assert any(p[0] == loc and reason in p[2] for p in info.value.problems), info.value.problems


def test_every_invalid_field_reported(tmp_path: Path) -> None:
    text = MINIMAL + "baudrate = -1\nstopbits = 3\n[log]\nlevel = \"loud\"\n"
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, text))
    locs = {p[0] for p in info.value.problems}
    assert {"devices[0].baudrate", "devices[0].stopbits", "log.level"} <= locs


def test_duplicate_device_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, MINIMAL + MINIMAL.replace("ttyX", "ttyY")))
    assert "used twice" in info.value.lines()[0]


def test_shared_port_rules(tmp_path: Path) -> None:
    two_continuous = MINIMAL + '[[devices]]\nname = "b"\nport = "/dev/ttyX"\n'
    with pytest.raises(ConfigInvalid, match=r"invalid") as info:
        load_settings(write(tmp_path, two_continuous))
    assert "only Modbus" in info.value.lines()[0]
    bus = (
        '[[devices]]\nname = "a"\nport = "/dev/rs485"\nprotocol = "modbus_rtu"\naddress = 1\n'
        '[[devices]]\nname = "b"\nport = "/dev/rs485"\nprotocol = "modbus_rtu"\naddress = {a}\n'
        "baudrate = {b}\n"
    )
    assert len(load_settings(write(tmp_path, bus.format(a=2, b=19200))).devices) == 2
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, bus.format(a=1, b=19200)))
    assert "distinct Modbus addresses" in info.value.lines()[0]
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, bus.format(a=2, b=9600)))
    assert "must share baudrate" in info.value.lines()[0]
    first, _, second = bus.format(a=2, b=19200).rpartition("modbus_rtu")
    mixed = first + "modbus_ascii" + second  # device b speaks ASCII, device a RTU
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, mixed))
    assert "share one protocol" in info.value.lines()[0]


def test_postgres_needs_exactly_one_target(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid, match="invalid"):
        load_settings(write(tmp_path, MINIMAL + '[sink]\ntype = "postgres"\n'))
    text = MINIMAL + '[sink]\ntype = "postgres"\n[sink.postgres]\nhost = "db"\ndatabase = "p"\n'
    assert load_settings(write(tmp_path, text)).sink.postgres.host == "db"


# --- file errors: one line, EX_CONFIG ------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "needle"),
    [(None, "not found"), ("[[devices]\n", "TOML syntax error"), (b"\xff\xfe", "not UTF-8")],
)
def test_file_errors_one_line(tmp_path: Path, content: str | bytes | None, needle: str) -> None:
    path = tmp_path / "c.toml"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ServomexConfigError, match=needle):
        load_settings(path)
    proc = subprocess.run(
        [sys.executable, "-m", "servomexd", "check-config", "--config", str(path)],
        capture_output=True, text=True, check=False,
    )
    assert proc.returncode == EX_CONFIG
    assert needle in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ServomexConfigError, match="is a directory"):
        load_settings(tmp_path)


# --- sources --------------------------------------------------------------------------------


def test_env_overrides_win_over_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL + '[sink]\nbatch_size = 10\npath = "/x.sqlite"\n')
    monkeypatch.setenv("SERVOMEXD_SINK__BATCH_SIZE", "99")
    monkeypatch.setenv("SERVOMEXD_LOG__LEVEL", "DEBUG")
    monkeypatch.setenv("SERVOMEXD_SINK__POSTGRES__SCHEMA", "plant")
    settings = load_settings(path)
    assert settings.sink.batch_size == 99
    assert str(settings.sink.path) == "/x.sqlite"  # the file's sibling key survives
    assert settings.log.level == "debug"
    assert settings.sink.postgres.schema_ == "plant"


def test_env_invalid_value_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVOMEXD_SINK__FLUSH_INTERVAL", "-1")
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, MINIMAL))
    assert info.value.problems[0][0] == "sink.flush_interval"


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVOMEXD_CONFIG", str(write(tmp_path, MINIMAL)))
    assert load_settings(None).devices[0].name == "a"


PG = MINIMAL + '[sink]\ntype = "postgres"\n[sink.postgres]\nhost = "db"\n'


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(write(tmp_path, PG)).sink.postgres.resolve_password() is None
    inline = load_settings(write(tmp_path, PG + 'password = "s3cret"\n'))
    assert inline.sink.postgres.resolve_password() == "s3cret"
    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    from_file = load_settings(write(tmp_path, PG + f'password_file = "{secret}"\n'))
    assert from_file.sink.postgres.resolve_password() == "from-file"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pg-password").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_settings(write(tmp_path, PG)).sink.postgres.resolve_password() == (
        "from-credential"
    )
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, PG + f'password_file = "{tmp_path / "missing"}"\n'))
    assert info.value.problems[0][0] == "sink.postgres.password_file"


# --- secrets never printed ------------------------------------------------------------------


def test_check_config_masks_secrets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = MINIMAL + (
        '[sink]\ntype = "postgres"\n[sink.postgres]\n'
        'dsn = "postgresql://u:hunter2@h/db"\npassword = "hunter3"\n'
    )
    assert check_config(str(write(tmp_path, text))) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out and "hunter3" not in out
    assert "postgresql://u:***@h/db" in out
    printed = tomllib.loads(out)
    assert printed["sink"]["postgres"]["password"] == "***"


def test_invalid_secret_value_masked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = MINIMAL + '[sink.postgres]\npassword = 12345678\ndsn = ["postgresql://u:hunter2@h"]\n'
    assert check_config(str(write(tmp_path, text))) == EX_CONFIG
    err = capsys.readouterr().err
    assert "sink.postgres.password" in err and "sink.postgres.dsn" in err
    assert "12345678" not in err and "hunter2" not in err


def test_repr_hides_password(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, PG + 'password = "s3cret"\n'))
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings)
    assert "s3cret" not in to_toml(effective_config(settings))


@pytest.mark.parametrize("baudrate", [1200, 9600, 19200, 230400, 1920, 192000, 0])
def test_configuration_and_serial_link_accept_the_same_baudrates(baudrate: int) -> None:
    from servomexd.link.serial import SerialSettings

    try:
        SerialSettings("/dev/ttyX", baudrate)
        link_accepts = True
    except ServomexValidationError:
        link_accepts = False
    try:
        DeviceConfig(name="a", port="/dev/ttyX", baudrate=baudrate)
        config_accepts = True
    except ValidationError:
        config_accepts = False
    assert config_accepts == link_accepts == (baudrate in (1200, 9600, 19200, 230400))


def test_sink_path_default_follows_type(tmp_path: Path) -> None:
    csv = load_settings(write(tmp_path, MINIMAL + '[sink]\ntype = "csv"\n'))
    assert str(csv.sink.path) == "/var/lib/servomexd/samples.csv"
    explicit = load_settings(write(tmp_path, MINIMAL + '[sink]\ntype = "csv"\npath = "/x.csv"\n'))
    assert str(explicit.sink.path) == "/x.csv"


def test_device_list_env_override_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVOMEXD_DEVICES__0__PORT", "/dev/ttyZ")
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, MINIMAL))
    assert "SERVOMEXD_DEVICES='[{...}]'" in info.value.lines()[0]
    monkeypatch.delenv("SERVOMEXD_DEVICES__0__PORT")
    monkeypatch.setenv("SERVOMEXD_DEVICES", '[{"name": "env", "port": "/dev/ttyZ"}]')
    assert load_settings(write(tmp_path, MINIMAL)).devices[0].name == "env"


@pytest.mark.parametrize(
    ("keys", "reason"),
    [
        ('dsn = "host=h user=u password=hunter2 dbname=d"', "expected postgresql://"),
        ('dsn = "postgresql://u:hunter2@h:notaport/db"', "expected postgresql://"),
        ('dsn = "mysql://u:hunter2@h/db"', "expected postgresql://"),
        ('dsn = "postgresql://u:hunter2@h/db"\nuser = "x"', "put user and database in the dsn"),
    ],
)
def test_dsn_the_sink_cannot_use_is_a_config_error(
    tmp_path: Path, keys: str, reason: str
) -> None:
    """The sink's own rules apply at load time, not when the running daemon opens it."""
    text = MINIMAL + f'[sink]\ntype = "postgres"\n[sink.postgres]\n{keys}\n'
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, text))
    ((loc, shown, message),) = info.value.problems
    assert loc == "sink" and message.startswith("sink.postgres.") and reason in message
    assert "hunter2" not in shown + message


def test_loaded_secrets_registered_for_log_redaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from servomexd import redaction

    monkeypatch.setattr(redaction, "_KNOWN_SECRETS", set())
    pw = tmp_path / "pw"
    pw.write_text("from-file-pw\n")
    load_settings(write(tmp_path, PG + f'password_file = "{pw}"\n'))
    dsn = MINIMAL + '[sink]\ntype = "postgres"\n[sink.postgres]\ndsn = "postgresql://u:in-dsn-pw@h/d"\n'
    load_settings(write(tmp_path, dsn, "d.toml"))
    assert redaction.mask_text("x from-file-pw in-dsn-pw y") == "x *** *** y"


# --- operator messages (issue 10) -----------------------------------------------------------


def test_error_from_an_environment_variable_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVOMEXD_LOG__LEVLE", "debug")
    monkeypatch.setenv("SERVOMEXD_SINK__BATCH_SIZE", "0")
    path = write(tmp_path, MINIMAL + "[log]\nlevle = 'x'\n")
    with pytest.raises(ConfigInvalid) as info:
        load_settings(path)
    lines = info.value.lines()
    assert "environment variable SERVOMEXD_SINK__BATCH_SIZE: sink.batch_size: " in "\n".join(lines)
    # log.levle is in both: the environment wins, and is blamed
    assert any(line.startswith("environment variable SERVOMEXD_LOG__LEVLE: log.levle: unknown key")
               for line in lines), lines  # fmt: skip
    assert not any(line.startswith(f"{path}: log.levle") for line in lines), lines


def test_single_bracket_devices_says_double_brackets(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, '[devices]\nname = "a"\nport = "/dev/ttyX"\n'))
    (line,) = info.value.lines()
    assert line == (
        f"{tmp_path / 'c.toml'}: devices: each analyser is a [[devices]] table: write "
        "[[devices]] (double brackets) above each analyser's keys, not [devices] "
        "(got a table with keys name, port)"
    )


def test_no_message_ends_in_a_bare_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, MINIMAL + "[sink]\npostgres = 5\n[log]\nlevel = {a = 1}\n"))
    assert not [line for line in info.value.lines() if line.endswith("(got {...})")]


def test_password_file_errors_name_the_field_once_and_the_path(tmp_path: Path) -> None:
    pg = MINIMAL + '[sink]\ntype = "postgres"\n[sink.postgres]\nhost = "db"\n'
    missing = tmp_path / "missing-pw"
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, pg + f'password_file = "{missing}"\n'))
    (line,) = info.value.lines()
    assert line == (
        f"{tmp_path / 'c.toml'}: sink.postgres.password_file: cannot read {missing}: "
        "No such file or directory"
    )
    empty = tmp_path / "empty-pw"
    empty.write_text("\n")
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, pg + f'password_file = "{empty}"\n'))
    assert info.value.lines() == [
        f"{tmp_path / 'c.toml'}: sink.postgres.password_file: {empty} is empty: write the "
        "password into it, or remove the setting"
    ]


def test_password_source_never_the_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from servomexd.config import password_source

    pg = MINIMAL + '[sink]\ntype = "postgres"\n[sink.postgres]\n'
    assert password_source(load_settings(write(tmp_path, pg + 'host = "db"\n'))).startswith(
        "none configured"
    )
    inline = load_settings(write(tmp_path, pg + 'host = "db"\npassword = "Inl1ne-pw"\n'))
    assert password_source(inline) == "sink.postgres.password (in the configuration)"
    pw = tmp_path / "pw"
    pw.write_text("F1le-pw\n")
    from_file = load_settings(write(tmp_path, pg + f'host = "db"\npassword_file = "{pw}"\n'))
    assert password_source(from_file) == f"sink.postgres.password_file {pw}"
    dsn = load_settings(write(tmp_path, pg + 'dsn = "postgresql://u:Dsn-pw@db/plant"\n'))
    assert password_source(dsn) == "the password inside sink.postgres.dsn"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "pg-password").write_text("Cr3d-pw")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    credential = password_source(load_settings(write(tmp_path, pg + 'host = "db"\n')))
    assert credential == (
        f"systemd credential pg-password ($CREDENTIALS_DIRECTORY/pg-password = "
        f"{creds / 'pg-password'})"
    )
    (creds / "pg-password").write_text("")
    with pytest.raises(ConfigInvalid) as info:
        load_settings(write(tmp_path, pg + 'host = "db"\n'))
    assert info.value.lines()[0].endswith(
        "$CREDENTIALS_DIRECTORY/pg-password: systemd credential pg-password: "
        f"{creds / 'pg-password'} is empty: write the password into it, or remove the setting"
    )


def test_check_config_port_checks_and_no_port_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    path = write(tmp_path, f'[[devices]]\nname = "a"\nport = "{tmp_path / "file"}"\n')
    assert check_config(path) == EX_CONFIG
    assert "error: device a: port" in capsys.readouterr().err
    assert check_config(path, port_check=False) == 0
    assert capsys.readouterr().err == ""


def test_to_sink_config_carries_every_setting() -> None:
    from servomexd.config import PostgresSettings
    from servomexd.sinks.postgres_config import PostgresConfig

    settings = PostgresSettings(
        host="db", port=6543, user="u", database="plant", schema="lab", table="t1",
        pool_min_size=2, pool_max_size=5, statement_timeout_ms=1500, command_timeout_s=3.5,
        create_table=False, use_copy=False, partition="week", retention="30d",
        rollups=["1m"], rollup_retention="1y",
    )  # fmt: skip
    assert settings.to_sink_config("pw") == PostgresConfig(
        host="db", port=6543, user="u", password="pw", database="plant", schema="lab",
        table="t1", pool_min_size=2, pool_max_size=5, statement_timeout_ms=1500,
        command_timeout_s=3.5, create_table=False, use_copy=False, partition="week",
        retention="30d", rollups=("1m",), rollup_retention="1y",
    )  # fmt: skip
    # the daemon partitions the tables it creates by month unless told otherwise
    assert PostgresSettings(host="db").to_sink_config(None).partition == "month"
    dsn = PostgresSettings(dsn="postgresql://u@db/plant").to_sink_config(None)
    assert dsn.dsn == "postgresql://u@db/plant" and dsn.host is None and dsn.password is None


# --- fleet: [daemon] site and the Postgres layout keys ---------------------------------------


def test_site_defaults_to_the_host_name_and_check_config_shows_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert check_config(str(write(tmp_path, MINIMAL))) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["daemon"]["site"] == socket.gethostname()


def test_site_reaches_the_postgres_sink_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = MINIMAL + (
        '[daemon]\nsite = "plant-a/line-2"\n[sink]\ntype = "postgres"\n'
        '[sink.postgres]\nhost = "db"\npartition = "day"\nretention = "400d"\n'
        'rollups = ["1m", "1h"]\nrollup_retention = "10y"\n'
    )
    path = write(tmp_path, text)
    settings = load_settings(path)
    config = settings.sink.postgres.to_sink_config(password=None)
    assert (config.site, config.partition, config.retention) == ("plant-a/line-2", "day", "400d")
    assert (config.rollups, config.rollup_retention) == (("1m", "1h"), "10y")
    assert check_config(str(path)) == 0
    shown = tomllib.loads(capsys.readouterr().out)
    assert shown["daemon"]["site"] == "plant-a/line-2"
    assert "site" not in shown["sink"]["postgres"]  # one place to set it: [daemon]


@pytest.mark.parametrize(
    ("extra", "where"),
    [
        ('[daemon]\nsite = ""\n', "daemon.site"),
        ('[daemon]\nsite = "a\\nb"\n', "daemon.site"),
        ('[sink]\ntype = "postgres"\n[sink.postgres]\nhost = "db"\nretention = "soon"\n',
         "sink.postgres.retention"),
        ('[sink]\ntype = "postgres"\n[sink.postgres]\nhost = "db"\nrollups = ["7m"]\n',
         "sink.postgres.rollups"),
        ('[sink.postgres]\npartition = "hour"\n', "sink.postgres.partition"),
        ('[sink.postgres]\nsite = "x"\n', "sink.postgres.site"),
    ],
)
def test_bad_fleet_settings_are_config_errors(tmp_path: Path, extra: str, where: str) -> None:
    with pytest.raises(ConfigInvalid) as caught:
        load_settings(write(tmp_path, MINIMAL + extra))
    assert any(where in line for line in caught.value.lines()), caught.value.lines()

"""check-config's transport-security review (servomexd/tls_check.py), through check_config."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
from tlscerts import CertificateAuthority

from servomexd import tls_check
from servomexd.check import check_config
from servomexd.config import EX_CONFIG

DEVICE = '[[devices]]\nname = "a"\nport = "/dev/ttyX"\n'


@pytest.fixture(scope="module")
def certs() -> Iterator[Path]:
    """A CA, a client certificate and key, and a server pair, in a 0755 directory."""
    directory = Path(tempfile.mkdtemp(prefix="servomexd-tlscheck-"))
    directory.chmod(0o755)
    ca = CertificateAuthority()
    ca.write(directory)
    ca.issue("servomexd", client=True).write(directory, "client")
    ca.issue("127.0.0.1", hosts=("127.0.0.1",)).write(directory, "server")
    ca.issue("other", client=True).write(directory, "other")
    yield directory
    for path in directory.iterdir():
        path.unlink()
    directory.rmdir()


def run_check(
    tmp_path: Path, body: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    path = tmp_path / "servomexd.toml"
    path.write_text(DEVICE + body)
    code = check_config(str(path), port_check=False)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def postgres(host: str, **keys: str) -> str:
    lines = ['[sink]\ntype = "postgres"\n[sink.postgres]', f'host = "{host}"']
    lines += [f'{key} = "{value}"' for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def key_body(path: Path) -> list[str]:
    """The key's base64 in 12-character pieces: none may appear anywhere."""
    body = "".join(line for line in path.read_text().splitlines() if "-----" not in line)
    return [body[i : i + 12] for i in range(0, len(body) - 11, 12)]


def test_verify_full_with_readable_files_passes_and_never_prints_the_key(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_check(tmp_path, postgres(
        "db.plant.example", sslmode="verify-full", sslrootcert=str(certs / "ca.crt"),
        sslcert=str(certs / "client.crt"), sslkey=str(certs / "client.key"),
    ), capsys)
    assert code == 0, err
    assert err == ""
    assert f'sslkey = "{certs / "client.key"}"' in out
    body = key_body(certs / "client.key")
    assert body and not any(line in out + err for line in body)


def test_weak_sslmode_to_a_remote_host_is_a_warning(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_check(tmp_path, postgres("db.plant.example", sslmode="require"), capsys)
    assert code == 0
    assert (
        "servomexd: warning: sink.postgres.sslmode is 'require' for the remote host "
        "db.plant.example: the server's identity is not verified"
    ) in err
    code, _, err = run_check(tmp_path, postgres("10.0.0.5"), capsys)
    assert "sslmode is 'prefer' for the remote host 10.0.0.5" in err
    code, _, err = run_check(tmp_path, postgres("2001:db8::5", sslmode="verify-ca"), capsys)
    assert "sslmode is 'verify-ca' for the remote host 2001:db8::5" in err
    for local in ("127.0.0.1", "localhost", "/run/postgresql", "::1"):
        code, _, err = run_check(tmp_path, postgres(local), capsys)
        assert (code, err) == (0, ""), local


def test_sslmode_in_the_dsn_is_reviewed_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.postgresql/root.crt
    body = '[sink]\ntype = "postgres"\n[sink.postgres]\n' \
        'dsn = "postgresql://servomexd@db.plant.example/plant?sslmode=verify-ca"\n'
    code, _, err = run_check(tmp_path, body, capsys)
    assert code == EX_CONFIG  # verify-ca without sslrootcert (and no ~/.postgresql/root.crt)
    assert "sslmode is 'verify-ca' for the remote host db.plant.example" in err


def test_missing_and_mismatched_files_fail(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "absent-ca.crt"
    code, out, err = run_check(tmp_path, postgres(
        "127.0.0.1", sslmode="verify-full", sslrootcert=str(missing)
    ), capsys)
    assert code == EX_CONFIG
    assert out == ""
    assert f"sink.postgres.sslrootcert: cannot read {missing} (No such file or directory)" in err

    code, _, err = run_check(tmp_path, postgres(
        "127.0.0.1", sslmode="verify-full", sslrootcert=str(certs / "ca.crt"),
        sslcert=str(certs / "client.crt"), sslkey=str(certs / "other.key"),
    ), capsys)
    assert code == EX_CONFIG
    assert "sink.postgres.sslkey: sslcert" in err and "KEY_VALUES_MISMATCH" in err
    assert not any(line in err for line in key_body(certs / "other.key"))


def test_dsn_and_setting_that_disagree_fail(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = '[sink]\ntype = "postgres"\n[sink.postgres]\nsslmode = "verify-full"\n' \
        'dsn = "postgresql://u@127.0.0.1/x?sslmode=require"\n'
    code, _, err = run_check(tmp_path, body, capsys)
    assert code == EX_CONFIG
    assert "sink.postgres.sslmode: given both in the dsn and as a setting" in err


def test_world_readable_key_is_a_warning(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "open.key"
    key.write_bytes((certs / "client.key").read_bytes())
    key.chmod(0o644)
    code, _, err = run_check(tmp_path, postgres(
        "127.0.0.1", sslmode="require", sslcert=str(certs / "client.crt"), sslkey=str(key)
    ), capsys)
    assert code == 0
    assert f"sink.postgres.sslkey: {key} is readable by every user (mode 0644)" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="the service-user check runs as root only")
def test_file_the_service_user_cannot_read_is_a_warning(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tls_check, "SERVICE_USER", "nobody")
    ca = certs / "ca.crt"
    ca.chmod(0o600)
    try:
        code, _, err = run_check(
            tmp_path, postgres("127.0.0.1", sslmode="verify-full", sslrootcert=str(ca)), capsys
        )
    finally:
        ca.chmod(0o644)
    assert code == 0
    assert f"the service user 'nobody' cannot read {ca}" in err
    code, _, err = run_check(
        tmp_path, postgres("127.0.0.1", sslmode="verify-full", sslrootcert=str(ca)), capsys
    )
    assert (code, err) == (0, "")


def test_metrics_exposed_without_tls_or_auth_is_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_check(tmp_path, '[metrics]\nlisten = "0.0.0.0:9723"\n', capsys)
    assert code == 0
    assert (
        "servomexd: warning: metrics.listen 0.0.0.0:9723 is reachable from the network "
        "without TLS or authentication"
    ) in err


def test_metrics_web_config_is_loaded_and_its_files_checked(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web-config.yml"
    web.write_text(
        f"tls_server_config:\n  cert_file: {certs / 'server.crt'}\n"
        f"  key_file: {certs / 'server.key'}\nbasic_auth_users:\n  prometheus: '{hashed}'\n"
    )
    body = f'[metrics]\nlisten = "0.0.0.0:9723"\nweb_config = "{web}"\n'
    code, out, err = run_check(tmp_path, body, capsys)
    assert (code, err) == (0, "")
    assert hashed not in out
    assert not any(line in out for line in key_body(certs / "server.key"))

    web.write_text("tls_server_config:\n  cert_file: nowhere.crt\n  key_file: nowhere.key\n")
    code, _, err = run_check(tmp_path, body, capsys)
    assert code == EX_CONFIG
    assert f"metrics cert_file: cannot read {tmp_path / 'nowhere.crt'}" in err

    web.write_text("tls_server_config:\n  cert_file: a.crt\n")
    code, _, err = run_check(tmp_path, body, capsys)
    assert code == EX_CONFIG
    assert "metrics: web_config" in err and "needs both cert_file and key_file" in err


def test_inline_basic_auth_hashes_are_masked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    code, out, err = run_check(
        tmp_path, f'[metrics]\nbasic_auth_users = {{ prometheus = "{hashed}" }}\n', capsys
    )
    assert (code, err) == (0, "")
    assert hashed not in out
    assert "prometheus" in out and 'prometheus = "***"' in out


@pytest.mark.parametrize(
    ("table", "key"),
    [("sink.postgres", "sslkey"), ("sink.postgres", "sslcert"), ("metrics", "tls_key")],
)
def test_pasted_pem_instead_of_a_path_is_refused_without_echo(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str], table: str, key: str
) -> None:
    pem = (certs / "client.key").read_text()
    body = f"[{table}]\n{key} = '''{pem}'''\n"
    if key == "tls_key":
        body += f'tls_cert = "{certs / "server.crt"}"\n'
    code, out, err = run_check(tmp_path, body, capsys)
    assert code == EX_CONFIG
    assert f"{table}.{key}: must be the path of a PEM file, not its contents" in err
    assert not any(line in out + err for line in key_body(certs / "client.key"))


def test_pasted_pem_in_the_web_config_is_refused_without_echo(
    tmp_path: Path, certs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pem = (certs / "server.key").read_text()
    web = tmp_path / "web-config.yml"
    indented = "".join(f"    {line}\n" for line in pem.splitlines())
    web.write_text(f"tls_server_config:\n  cert_file: a.crt\n  key_file: |\n{indented}")
    code, out, err = run_check(tmp_path, f'[metrics]\nweb_config = "{web}"\n', capsys)
    assert code == EX_CONFIG
    assert "tls_server_config.key_file must be the path of a PEM file" in err
    assert not any(line in out + err for line in key_body(certs / "server.key"))

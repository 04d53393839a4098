"""webconfig: the exporter-toolkit web-config file, the inline [metrics] keys, basic auth."""

from __future__ import annotations

import base64
import ssl
from pathlib import Path

import bcrypt
import pytest
from pydantic import ValidationError

from servomexd.config import MetricsSettings
from servomexd.errors import ServomexConfigError
from servomexd.webconfig import (
    BasicAuth,
    WebSecurity,
    exposure_gaps,
    load_web_config,
    web_security,
)

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "web-config.yml"
    path.write_text(text)
    return path


def test_full_web_config_resolves_relative_paths(tmp_path: Path) -> None:
    path = write(tmp_path, f"""
tls_server_config:
  cert_file: certs/metrics.crt
  key_file: /etc/ssl/metrics.key
  client_ca_file: scrapers-ca.crt
  client_auth_type: RequireAndVerifyClientCert
  min_version: TLS13
basic_auth_users:
  prometheus: '{HASH}'
http_server_config:
  http2: false
""")
    security = load_web_config(path)
    assert security.cert_file == tmp_path / "certs" / "metrics.crt"
    assert security.key_file == Path("/etc/ssl/metrics.key")
    assert security.client_ca_file == tmp_path / "scrapers-ca.crt"
    assert security.client_auth == "required"
    assert security.min_version is ssl.TLSVersion.TLSv1_3
    assert security.users == {"prometheus": HASH.encode()}
    assert security.tls and security.authenticates
    assert security.public_paths == frozenset({"/healthz"})


def test_empty_web_config_means_plain_http(tmp_path: Path) -> None:
    security = load_web_config(write(tmp_path, ""))
    assert not security.tls and not security.authenticates


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tls_server_config:\n  cert_file: a\n", "needs both cert_file and key_file"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  cipher_suites: [x]\n",
         "cipher_suites is not supported by servomexd"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  clent_ca_file: c\n",
         "unknown key 'clent_ca_file'"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  client_ca_file: c\n",
         "client_ca_file is set without a client_auth_type"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n"
         "  client_auth_type: RequireAnyClientCert\n  client_ca_file: c\n",
         "RequireAnyClientCert is not supported"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n"
         "  client_auth_type: RequireAndVerifyClientCert\n",
         "needs client_ca_file"),
        ("tls_server_config:\n  cert_file: a\n  key_file: b\n  min_version: TLS1.2\n",
         "TLS version must be one of TLS10, TLS11, TLS12, TLS13"),
        ("basic_auth_users:\n  prometheus: hunter2\n", "must be a bcrypt hash"),
        ("basic_auth_users: [a, b]\n", "basic_auth_users must map user names"),
        ("tls_server_config: [\n", "not valid YAML at line 2"),
        ("- a\n", "must be a mapping"),
        ("http_server_config:\n  headers: {X-Frame-Options: deny}\n", "only http2"),
    ],
)
def test_web_config_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ServomexConfigError) as caught:
        load_web_config(write(tmp_path, text))
    assert message in caught.value.message
    assert caught.value.message.startswith(f"web_config {tmp_path / 'web-config.yml'}: ")
    assert "hunter2" not in caught.value.message


def test_unreadable_web_config(tmp_path: Path) -> None:
    with pytest.raises(ServomexConfigError, match=r"cannot read \(No such file or directory\)"):
        load_web_config(tmp_path / "absent.yml")


def test_inline_settings() -> None:
    settings = MetricsSettings(
        tls_cert=Path("/c.crt"), tls_key=Path("/c.key"), client_ca=Path("/ca.crt"),
        basic_auth_users={"prometheus": HASH}, public_paths=["/healthz", "/readyz"],
    )
    security = web_security(settings)
    assert security == WebSecurity(
        cert_file=Path("/c.crt"), key_file=Path("/c.key"), client_ca_file=Path("/ca.crt"),
        client_auth="required", users={"prometheus": HASH.encode()},
        public_paths=frozenset({"/healthz", "/readyz"}), source="[metrics]",
    )
    assert web_security(MetricsSettings()) == WebSecurity(source="[metrics]")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"web_config": "/w.yml", "tls_cert": "/c", "tls_key": "/k"},
         "give web_config or the inline tls_cert, tls_key, not both"),
        ({"tls_cert": "/c"}, "tls_cert and tls_key go together"),
        ({"client_ca": "/ca"}, "client_ca (mutual TLS) needs tls_cert and tls_key"),
        ({"public_paths": ["/secret"]}, "Input should be '/metrics', '/healthz' or '/readyz'"),
    ],
)
def test_inline_settings_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        MetricsSettings(**values)  # type: ignore[arg-type]
    assert message in str(caught.value)


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_basic_auth_verdicts() -> None:
    auth = BasicAuth({"prometheus": HASH.encode()})
    assert await auth.check(header("prometheus", "s3cret")) == "ok"
    assert await auth.check(header("prometheus", "s3cret")) == "ok"  # remembered
    assert await auth.check(header("prometheus", "S3cret")) == "invalid"
    assert await auth.check(header("grafana", "s3cret")) == "invalid"
    assert await auth.check(header("prometheus", "x" * 100)) == "invalid"
    assert await auth.check(None) == "missing"
    assert await auth.check("Bearer abc") == "missing"
    assert await auth.check("Basic !!!") == "missing"
    assert await auth.check("Basic " + base64.b64encode(b"no-colon").decode()) == "missing"


def test_exposure_gaps() -> None:
    tls = WebSecurity(cert_file=Path("c"), key_file=Path("k"))
    both = WebSecurity(cert_file=Path("c"), key_file=Path("k"), users={'u': HASH.encode()})
    mutual = WebSecurity(
        cert_file=Path("c"), key_file=Path("k"), client_ca_file=Path("ca"),
        client_auth="required",
    )
    assert exposure_gaps("127.0.0.1", WebSecurity()) == []
    assert exposure_gaps("::1", WebSecurity()) == []
    assert exposure_gaps("0.0.0.0", WebSecurity()) == ["TLS", "authentication"]
    assert exposure_gaps("", WebSecurity()) == ["TLS", "authentication"]
    assert exposure_gaps("10.1.2.3", tls) == ["authentication"]
    assert exposure_gaps("metrics.plant", WebSecurity(users={'u': HASH.encode()})) == ["TLS"]
    assert exposure_gaps("10.1.2.3", both) == []
    assert exposure_gaps("10.1.2.3", mutual) == []

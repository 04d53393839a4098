"""deploy/logrotate/servomexd with the real logrotate: it parses, and a forced rotation in
a scratch directory renames the JSONL files (no copytruncate, no new empty file: the
daemon reopens its own on SIGHUP) and runs the reload once for all of them."""

from __future__ import annotations

from pathlib import Path

from deploy_helpers import DEPLOY, require_tool, run

CONFIG = DEPLOY / "logrotate" / "servomexd"
STATE_DIR = "/var/lib/servomexd"
RELOAD = "/bin/systemctl reload 'servomexd.service' 'servomexd@*.service'"


def _logrotate() -> str:
    return require_tool("logrotate", "apt-get install logrotate")


def test_config_parses(tmp_path: Path) -> None:
    result = run([_logrotate(), "--debug", "--state", tmp_path / "state", CONFIG])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "error" not in (result.stdout + result.stderr).lower()


def test_forced_rotation_renames_and_reloads_once(tmp_path: Path) -> None:
    text = CONFIG.read_text()
    assert STATE_DIR in text and RELOAD in text
    state = tmp_path / "lib"
    (state / "stack-1").mkdir(parents=True)
    main_file = state / "samples.jsonl"
    instance_file = state / "stack-1" / "samples.jsonl"
    other_file = state / "samples.sqlite"
    for f in (main_file, instance_file, other_file):
        f.write_text('{"device": "stack-1"}\n')
    marker = tmp_path / "reloaded"
    config = tmp_path / "servomexd.logrotate"
    config.write_text(
        text.replace(STATE_DIR, str(state)).replace(RELOAD, f"echo reload >> {marker};")
    )
    config.chmod(0o644)  # logrotate refuses group/world-writable configuration

    result = run([_logrotate(), "--force", "--state", tmp_path / "state", config])
    assert result.returncode == 0, result.stdout + result.stderr

    for rotated in (main_file, instance_file):
        assert not rotated.exists(), "nocreate: the daemon reopens the file itself"
        siblings = [p.name for p in rotated.parent.iterdir() if p.name != "stack-1"]
        assert any(n.startswith("samples.jsonl-") for n in siblings), siblings
    assert other_file.read_text() == '{"device": "stack-1"}\n'  # only *.jsonl is touched
    assert marker.read_text() == "reload\n"  # sharedscripts: one reload for all files

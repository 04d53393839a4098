"""deploy/udev/99-servomex.rules and deploy/modules-load.d/servomexd.conf.

systemd 252 has no `udevadm verify` (it arrived in 254) and `udevadm test` needs the
device present, so the rules are checked against udev's grammar here: every token is a
known key with an operator that key accepts, and each rule names a tty, a servomex-*
symlink, group dialout and mode 0660. The module list is checked against the device
classes the unit allows.
"""

from __future__ import annotations

import re

from deploy_helpers import DEPLOY, UNIT_DIR, parse_unit

RULES = DEPLOY / "udev" / "99-servomex.rules"
MODULES = DEPLOY / "modules-load.d" / "servomexd.conf"

# udev(7): keys that only match, keys that only assign, keys that do either.
MATCH_ONLY = {
    "ACTION", "DEVPATH", "KERNEL", "KERNELS", "SUBSYSTEM", "SUBSYSTEMS", "DRIVER", "DRIVERS",
    "ATTRS", "TAGS", "TEST", "PROGRAM", "RESULT", "SYSCTL", "CONST", "NAME", "SYMLINK",
}  # fmt: skip
ASSIGN_ONLY = {"OWNER", "GROUP", "MODE", "RUN", "IMPORT", "LABEL", "GOTO", "OPTIONS",
               "SECLABEL", "WAIT_FOR"}  # fmt: skip
BOTH = {"ATTR", "ENV", "TAG", "NAME", "SYMLINK"}
WITH_ATTRIBUTE = {"ATTR", "ATTRS", "ENV", "TEST", "SYSCTL", "IMPORT", "RUN", "CONST",
                  "SECLABEL"}  # fmt: skip
TOKEN = re.compile(r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]*)\})?(?P<op>==|!=|\+=|-=|:=|=)"'
                   r'(?P<value>[^"]*)"\s*(?:,|$)')  # fmt: skip


def parse_rule(line: str) -> list[tuple[str, str | None, str, str]]:
    tokens: list[tuple[str, str | None, str, str]] = []
    pos = 0
    while pos < len(line):
        m = TOKEN.match(line, pos)
        assert m, f"cannot parse rule at {line[pos:]!r}"
        tokens.append((m["key"], m["attr"], m["op"], m["value"]))
        pos = m.end()
    return tokens


def rules() -> list[list[tuple[str, str | None, str, str]]]:
    parsed = []
    for raw in RULES.read_text().splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            assert not line.endswith("\\"), "keep each rule on one line"
            parsed.append(parse_rule(line))
    return parsed


def token_problem(key: str, attr: str | None, op: str) -> str | None:
    """What udev would reject (or silently misread) in one key/operator pair."""
    if key not in MATCH_ONLY | ASSIGN_ONLY | BOTH:
        return f"unknown udev key {key}"
    if (attr is not None) != (key in WITH_ATTRIBUTE):
        return f"{key}{{{attr}}}: attribute given where none is taken, or missing"
    if op in ("==", "!=") and key not in MATCH_ONLY | BOTH:
        return f"{key} cannot be matched ({op})"
    if op not in ("==", "!=") and key not in ASSIGN_ONLY | BOTH:
        # The classic mistake: SUBSYSTEM="tty" is not a match.
        return f"{key}{op} assigns a match-only key"
    return None


def test_rules_follow_the_udev_grammar() -> None:
    assert rules(), "no rule in the example"
    for rule in rules():
        for key, attr, op, _value in rule:
            assert token_problem(key, attr, op) is None


def test_each_rule_names_a_serial_port_for_dialout() -> None:
    symlinks: list[str] = []
    for rule in rules():
        by_key = {(k, a, op): v for k, a, op, v in rule}
        assert by_key.get(("SUBSYSTEM", None, "==")) == "tty"
        identity = {a for k, a, op, _ in rule if op == "==" and k in ("ATTRS", "ENV")}
        # vendor + product + serial, by sysfs attribute or by the usb_id properties
        assert {"idVendor", "idProduct", "serial"} <= identity or {
            "ID_VENDOR_ID", "ID_MODEL_ID", "ID_SERIAL_SHORT"
        } <= identity, rule  # fmt: skip
        assert by_key.get(("GROUP", None, "=")) == "dialout"
        assert by_key.get(("MODE", None, "=")) == "0660"
        link = by_key.get(("SYMLINK", None, "+="))
        assert link and re.fullmatch(r"servomex-[a-z0-9][a-z0-9-]*", link), link
        symlinks.append(link)
    assert len(symlinks) == len(set(symlinks)), "two rules create the same name"


def test_grammar_check_rejects_what_udev_rejects() -> None:
    """The grammar check above must be able to fail."""
    for bad in ('SUBSYSTEM="tty"', 'ATTRS=="0403"', 'FOO=="x"', 'GROUP=="dialout"'):
        ((key, attr, op, _),) = parse_rule(bad)
        assert token_problem(key, attr, op), bad
    for unparsable in ("SUBSYSTEM==tty", 'SUBSYSTEM=="tty" KERNEL=="ttyUSB*"'):
        try:
            parse_rule(unparsable)
        except AssertionError:
            continue
        raise AssertionError(f"parsed {unparsable!r}")


def test_modules_cover_the_allowed_device_classes() -> None:
    modules = [
        line.strip()
        for line in MODULES.read_text().splitlines()
        if line.strip() and not line.lstrip().startswith(("#", ";"))
    ]
    assert all(re.fullmatch(r"[a-z0-9_]+", m) for m in modules), modules
    # The driver that registers each class with /proc/devices; ttyS is built in.
    registers = {"char-ttyUSB": "usbserial", "char-ttyACM": "cdc_acm", "char-ttyS": None}
    for unit in ("servomexd.service", "servomexd@.service"):
        classes = [
            v.split()[0]
            for _s, k, v in parse_unit((UNIT_DIR / unit).read_text())
            if k == "DeviceAllow"
        ]
        assert classes
        for cls in classes:
            assert cls in registers, f"{unit}: no module known for {cls}"
            module = registers[cls]
            assert module is None or module in modules, f"{cls} needs {module} loaded at boot"

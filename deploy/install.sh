#!/usr/bin/env bash
# Install servomexd as a hardened systemd service on Debian/Ubuntu (run as root), or stage
# the same files under a temporary root for packaging and tests (--destdir / DESTDIR).
#
#   sudo deploy/install.sh                      install or upgrade from this source tree
#   sudo deploy/install.sh --wheel dist/servomexd-X-py3-none-any.whl
#   sudo deploy/install.sh --uninstall          remove the program; keep config and data
#   sudo deploy/install.sh --uninstall --purge  also remove config, data and the user
#
# Idempotent: running it again upgrades the program and the unit files and leaves the
# operator's configuration (/etc/servomexd/servomexd.toml) and udev rule alone.
# See docs/operations.md for what each installed file is for.
set -euo pipefail

readonly NAME=servomexd
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
src=$(cd "$here/.." && pwd)

usage() {
    cat <<EOF
Usage: $0 [options]

Install:
  --prefix DIR        where the virtualenv lives (default /opt/servomexd; the unit's
                      ExecStart= is rewritten to match)
  --wheel FILE        install this wheel instead of building the source tree
  --extras LIST       package extras, comma-separated (default postgres,parquet; "" for none)
  --python PATH       interpreter for the venv, Python >= 3.11 (default /usr/bin/python3)
  --skip-venv         do not create or update the virtualenv
  --enable            also enable servomexd.service at boot (does not start it)
Staging:
  --destdir DIR       install under DIR (also \$DESTDIR); implies --no-user --no-systemctl
  --no-user           do not create the servomexd system user
  --no-systemctl      do not touch the running system (systemctl, udevadm, modprobe)
Removal:
  --uninstall         remove program, units and module list; keep config, data, user
  --purge             with --uninstall: also remove /etc/servomexd, /var/lib/servomexd,
                      the credential, the udev rule and the user
Other:
  --dry-run           print the commands instead of running them
  -h, --help          this text
EOF
}

destdir=${DESTDIR:-}
prefix=/opt/servomexd
python=
wheel=
extras=postgres,parquet
manage_user=1
manage_system=1
make_venv=1
enable=0
uninstall=0
purge=0
dry_run=0

die() {
    printf '%s: error: %s\n' "$0" "$*" >&2
    exit 1
}
log() { printf 'install.sh: %s\n' "$*"; }

# Report a change: "did" after doing it, "would" under --dry-run (nothing was done).
did() { # past-tense message, present-tense message
    if ((dry_run)); then log "would $2"; else log "$1"; fi
}

need_arg() {
    [[ $# -ge 2 && -n $2 ]] || die "$1 needs an argument"
}

while [[ $# -gt 0 ]]; do
    case $1 in
    --prefix) need_arg "$@"; prefix=$2; shift ;;
    --prefix=*) prefix=${1#*=} ;;
    --destdir) need_arg "$@"; destdir=$2; shift ;;
    --destdir=*) destdir=${1#*=} ;;
    --wheel) need_arg "$@"; wheel=$2; shift ;;
    --wheel=*) wheel=${1#*=} ;;
    --extras) [[ $# -ge 2 ]] || die "--extras needs an argument"; extras=$2; shift ;;
    --extras=*) extras=${1#*=} ;;
    --python) need_arg "$@"; python=$2; shift ;;
    --python=*) python=${1#*=} ;;
    --skip-venv) make_venv=0 ;;
    --no-user) manage_user=0 ;;
    --no-systemctl) manage_system=0 ;;
    --enable) enable=1 ;;
    --uninstall) uninstall=1 ;;
    --purge) purge=1 ;;
    --dry-run) dry_run=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done

[[ $prefix == /* ]] || die "--prefix must be an absolute path: $prefix"
# It is written into ExecStart= (and through sed): keep to characters neither mangles.
[[ $prefix =~ ^/[A-Za-z0-9._/-]*$ ]] || die "--prefix may only use letters, digits and ._-/: $prefix"
((purge == 0 || uninstall == 1)) || die "--purge only goes with --uninstall"
if [[ -n $destdir ]]; then
    # A staging root is not a live system: no users, no systemctl, no udev, no modprobe.
    destdir=$(realpath -m -- "$destdir")
    [[ $destdir != / ]] || destdir=
fi
if [[ -n $destdir ]]; then
    manage_user=0
    manage_system=0
elif ((dry_run == 0)) && [[ $(id -u) -ne 0 ]]; then
    die "run as root (or stage into a directory with --destdir DIR)"
fi
if [[ -n $wheel ]]; then
    [[ -f $wheel ]] || die "no such wheel: $wheel"
    wheel=$(realpath -- "$wheel")
fi

# Installed paths, as seen on the target system (the staging root is prepended on use).
readonly venv=$prefix/venv
readonly unit_dir=/usr/local/lib/systemd/system
readonly units=("$NAME.service" "$NAME@.service")
readonly modules_conf=/etc/modules-load.d/$NAME.conf
readonly udev_rule=/etc/udev/rules.d/99-servomex.rules
readonly logrotate_conf=/etc/logrotate.d/$NAME
readonly conf_dir=/etc/$NAME
readonly conf_file=$conf_dir/$NAME.toml
readonly doc_dir=/usr/local/share/doc/$NAME
readonly state_dir=/var/lib/$NAME
readonly credential=/etc/credstore/$NAME-pg-password
readonly shipped_unit_exec=/opt/servomexd/venv/bin/servomexd
readonly bin_link=/usr/local/bin/$NAME
# uid and gid of the service account when free: the Docker image runs as 10001:10001, so
# a host /etc/servomexd (root:servomexd 0640) mounted into it is readable as it is.
readonly service_id=10001

# Run a command that changes something, or show it under --dry-run.
run() {
    if ((dry_run)); then
        printf '+'
        printf ' %q' "$@"
        printf '\n'
    else
        "$@"
    fi
}

# True when this is a live system booted with systemd (sd_booted()'s test).
systemd_running() { ((manage_system)) && [[ -d /run/systemd/system ]]; }

# Install a file from the source tree, replacing whatever is there.
install_file() { # mode source target
    run install -D -m "$1" -- "$2" "$destdir$3"
}

# Install a file only if the operator does not have one yet: never overwrite their edits.
install_once() { # mode source target
    if [[ -e $destdir$3 ]]; then
        log "keeping existing $3"
    else
        install_file "$@"
        did "installed $3 (edit it for your site)" "install $3 (edit it for your site)"
    fi
}

require_source() {
    local f
    for f in "$@"; do
        [[ -f $src/$f ]] || die "missing $src/$f: run this script from a servomexd source tree"
    done
}

create_user() {
    ((manage_user)) || return 0
    if ! getent group dialout >/dev/null; then
        run groupadd --system dialout
    fi
    if id -u "$NAME" >/dev/null 2>&1; then
        # Re-running the installer repairs a user that lost its dialout membership.
        if ! id -nG "$NAME" | tr ' ' '\n' | grep -qx dialout; then
            run usermod --append --groups dialout "$NAME"
        fi
        return 0
    fi
    if ! getent group "$NAME" >/dev/null; then
        if getent group "$service_id" >/dev/null; then
            run groupadd --system "$NAME"
        else
            run groupadd --system --gid "$service_id" "$NAME"
        fi
    fi
    local uid_opt=()
    getent passwd "$service_id" >/dev/null || uid_opt=(--uid "$service_id")
    run useradd --system "${uid_opt[@]}" --gid "$NAME" --groups dialout \
        --home-dir "$state_dir" --no-create-home \
        --shell /usr/sbin/nologin --comment "servomexd gas analyser recorder" "$NAME"
    did "created system user $NAME (groups: $NAME, dialout)" \
        "create system user $NAME (groups: $NAME, dialout)"
}

check_python() {
    if [[ -z $python ]]; then
        if [[ -x /usr/bin/python3 ]]; then python=/usr/bin/python3; else python=python3; fi
    fi
    command -v "$python" >/dev/null || die "no Python interpreter '$python' (apt-get install python3)"
    "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' ||
        die "$NAME needs Python >= 3.11; $python is $("$python" --version 2>&1)"
    "$python" -c 'import ensurepip, venv' 2>/dev/null ||
        die "$python cannot create virtualenvs (apt-get install python3-venv)"
}

install_venv() {
    ((make_venv)) || { log "skipping the virtualenv (--skip-venv)"; return 0; }
    check_python
    local target=$destdir$venv pkg spec
    if [[ ! -x $target/bin/python ]]; then
        run "$python" -m venv -- "$target"
    fi
    if [[ -n $wheel ]]; then
        pkg=$wheel
    else
        require_source pyproject.toml
        pkg=$src
    fi
    spec=$pkg
    [[ -z $extras ]] || spec="${pkg}[${extras}]"
    leftovers_before=()
    local d
    for d in build servomexd.egg-info; do
        [[ ! -d $src/$d ]] || leftovers_before+=("$d")
    done
    # First the package with its dependencies, then the package alone again so that a
    # rebuilt wheel with an unchanged version number really replaces the installed one.
    run "$target/bin/python" -m pip install --quiet --disable-pip-version-check -- "$spec"
    run "$target/bin/python" -m pip install --quiet --disable-pip-version-check \
        --no-deps --force-reinstall -- "$pkg"
    clean_build_leftovers
    if ((dry_run == 0)); then
        log "installed $("$target/bin/servomexd" --version) into $venv"
    fi
}

# setuptools leaves build/ and servomexd.egg-info/ in the source tree it installs from;
# remove those this run created (a developer's own build/ from before stays).
clean_build_leftovers() {
    [[ -z $wheel ]] || return 0
    local d
    for d in build servomexd.egg-info; do
        if [[ -d $src/$d ]] && [[ " ${leftovers_before[*]} " != *" $d "* ]]; then
            run rm -rf -- "${src:?}/$d"
        fi
    done
}

# The servomexd command on PATH, so the README's and the runbooks' commands work as written.
link_command() {
    local target=$destdir$bin_link
    if [[ -e $target && ! -L $target ]]; then
        log "warning: $bin_link exists and is not our link; leaving it (use $venv/bin/$NAME)"
        return 0
    fi
    run install -d -m 0755 -- "$destdir/usr/local/bin"
    run ln -sfn -- "$venv/bin/$NAME" "$target"
    did "linked $bin_link -> $venv/bin/$NAME" "link $bin_link -> $venv/bin/$NAME"
}

unlink_command() {
    local target=$destdir$bin_link
    if [[ -L $target && $(readlink -- "$target") == "$venv/bin/$NAME" ]]; then
        run rm -f -- "$target"
        did "removed $bin_link" "remove $bin_link"
    fi
}

install_units() {
    local unit tmp
    tmp=$(mktemp -d)
    # shellcheck disable=SC2064 # expand now: $tmp is local
    trap "rm -rf -- '$tmp'" EXIT
    for unit in "${units[@]}"; do
        sed "s#$shipped_unit_exec#$venv/bin/servomexd#g" "$src/deploy/systemd/$unit" >"$tmp/$unit"
        install_file 0644 "$tmp/$unit" "$unit_dir/$unit"
    done
}

# Give the service's group read access (the files are root:servomexd 0750/0640). Staged
# files keep the packager's ownership; a live system without the group gets a warning.
own_config() { # paths
    [[ -z $destdir ]] || return 0
    if ((manage_user)) || getent group "$NAME" >/dev/null; then
        run chown root:"$NAME" -- "$@"
    else
        log "warning: no group $NAME: the service cannot read $conf_dir until it exists"
    fi
}

install_config() {
    # The configuration may hold a DSN: readable by root and the service's group only.
    run install -d -m 0750 -- "$destdir$conf_dir"
    own_config "$destdir$conf_dir"
    if [[ -e $destdir$conf_file ]]; then
        log "keeping existing $conf_file"
        return 0
    fi
    install_file 0640 "$src/etc/servomexd/servomexd.toml" "$conf_file"
    own_config "$destdir$conf_file"
    did "installed $conf_file (edit it for your site)" "install $conf_file (edit it for your site)"
}

reload_system() {
    if ! systemd_running; then
        log "not reloading systemd/udev (staging root, --no-systemctl, or no systemd)"
        return 0
    fi
    run systemctl daemon-reload
    if udevadm control --ping >/dev/null 2>&1; then
        run udevadm control --reload
        run udevadm trigger --subsystem-match=tty --action=add
    fi
}

do_install() {
    require_source deploy/systemd/servomexd.service deploy/systemd/servomexd@.service \
        deploy/modules-load.d/servomexd.conf deploy/udev/99-servomex.rules \
        deploy/logrotate/servomexd \
        etc/servomexd/servomexd.toml docs/operations.md
    create_user
    install_venv
    link_command
    install_units
    install_file 0644 "$src/deploy/modules-load.d/servomexd.conf" "$modules_conf"
    install_once 0644 "$src/deploy/udev/99-servomex.rules" "$udev_rule"
    install_once 0644 "$src/deploy/logrotate/servomexd" "$logrotate_conf"
    install_config
    install_file 0644 "$src/docs/operations.md" "$doc_dir/operations.md"
    if systemd_running; then
        # Load the tty class drivers now, so DeviceAllow= resolves without a reboot.
        run modprobe -a usbserial cdc_acm || log "warning: could not load usbserial/cdc_acm"
    fi
    reload_system
    if ((enable)); then
        if systemd_running; then
            run systemctl enable "$NAME.service"
        else
            log "not enabling $NAME.service: no running systemd to enable it in"
        fi
    fi
    if systemd_running && systemctl is-active --quiet "$NAME.service"; then
        log "$NAME is running the previous version: systemctl restart $NAME"
    else
        log "next: edit $conf_file, run 'sudo -u $NAME $NAME check-config', then"
        log "      systemctl enable --now $NAME"
    fi
}

# Stop and disable the service and every enabled or running instance of the template.
stop_units() {
    systemd_running || return 0
    local names
    names=$(systemctl list-units --all --plain --no-legend "$NAME.service" "$NAME@*.service" |
        awk '{print $1}')
    names+=$'\n'$(systemctl list-unit-files --plain --no-legend "$NAME.service" "$NAME@*.service" |
        awk '$2 == "enabled" {print $1}')
    local name
    for name in $(printf '%s\n' "$names" | sort -u); do
        [[ $name == "$NAME@.service" ]] && continue
        run systemctl disable --now "$name" || log "warning: could not stop $name"
    done
}

remove() { # paths, relative to the target system
    local p
    for p in "$@"; do
        if [[ -e $destdir$p || -L $destdir$p ]]; then
            run rm -rf -- "$destdir$p"
            did "removed $p" "remove $p"
        fi
    done
}

remove_if_unchanged() { # shipped source, installed path
    if [[ -f $destdir$2 ]] && cmp -s -- "$src/$1" "$destdir$2"; then
        remove "$2"
    fi
}

do_uninstall() {
    stop_units
    unlink_command
    local unit p
    for unit in "${units[@]}"; do
        remove "$unit_dir/$unit"
    done
    remove "$modules_conf" "$doc_dir"
    # Only ever delete the venv we made, never a --prefix that holds other things.
    if [[ -x $destdir$venv/bin/servomexd || -f $destdir$venv/pyvenv.cfg ]]; then
        remove "$venv"
    fi
    if [[ -d $destdir$prefix ]] && [[ -z $(ls -A -- "$destdir$prefix") ]]; then
        run rmdir -- "$destdir$prefix"
    fi
    # The udev rule and logrotate entry are operator configuration once edited; untouched
    # copies of the shipped files go.
    remove_if_unchanged deploy/udev/99-servomex.rules "$udev_rule"
    remove_if_unchanged deploy/logrotate/servomexd "$logrotate_conf"
    if ((purge)); then
        remove "$conf_dir" "$state_dir" "$credential" "$udev_rule" "$logrotate_conf"
        if ((manage_user)) && id -u "$NAME" >/dev/null 2>&1; then
            run userdel "$NAME"
            did "removed user $NAME" "remove user $NAME"
        fi
    else
        for p in "$conf_dir" "$state_dir" "$udev_rule" "$logrotate_conf"; do
            if [[ -e $destdir$p ]]; then did "kept $p (--purge removes it)" "keep $p (--purge removes it)"; fi
        done
    fi
    reload_system
}

if ((uninstall)); then
    do_uninstall
else
    do_install
fi

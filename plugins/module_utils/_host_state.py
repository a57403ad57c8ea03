# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

# PRIVATE to the collection: the host_state module's readers. Every call to a host costs a round
# trip; the roles read what they need to decide in one call, then skip on the controller what is
# already as wanted.

from __future__ import annotations

import glob
import grp
import hashlib
import os
import pwd
import socket
import stat


def _name(lookup, ident):
    try:
        return lookup(ident)[0]
    except KeyError:
        return str(ident)


def file_state(path):
    """What a file task compares: whether the path exists, its type, mode, owner, group, and sha1 of a file."""
    try:
        st = os.lstat(path)
    except OSError:
        return {"exists": False}
    state = {
        "exists": True,
        "isdir": stat.S_ISDIR(st.st_mode),
        "isreg": stat.S_ISREG(st.st_mode),
        "islnk": stat.S_ISLNK(st.st_mode),
        "mode": "%04o" % stat.S_IMODE(st.st_mode),
        "owner": _name(pwd.getpwuid, st.st_uid),
        "group": _name(grp.getgrgid, st.st_gid),
    }
    if state["isreg"]:
        digest = hashlib.sha1()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(65536), b""):
                digest.update(block)
        state["checksum"] = digest.hexdigest()
    return state


def dpkg_versions(out):
    """{name: version} of the installed packages in `dpkg-query -W -f '${Package}\\t${db:Status-Status}\\t${Version}\\n'`."""
    versions = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[1] == "installed":
            versions[parts[0].split(":")[0]] = parts[2]
    return versions


def rpm_versions(out):
    """{name: version} from `rpm -q --qf '%{NAME}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n'` (lines of missing packages differ)."""
    versions = {}
    for line in out.splitlines():
        parts = line.split("\t")
        if len(parts) == 2:
            versions[parts[0]] = parts[1]
    return versions


def package_versions(module, names):
    """{name: installed version or None} for names, from dpkg or rpm, whichever the host has."""
    versions = {}
    if names:
        dpkg = module.get_bin_path("dpkg-query")
        rpm = module.get_bin_path("rpm")
        if dpkg:
            # exit code 1 when a name is not installed: its line is missing or not 'installed'
            rc, out, err = module.run_command([dpkg, "-W", "-f", "${Package}\t${db:Status-Status}\t${Version}\n"] + names)
            versions = dpkg_versions(out)
        elif rpm:
            rc, out, err = module.run_command([rpm, "-q", "--qf", "%{NAME}\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\n"] + names)
            versions = rpm_versions(out)
    return dict((name, versions.get(name)) for name in names)


def service_states(module, names):
    """{name: {active, enabled}} as `systemctl is-active` and `is-enabled` print them ('unknown' without systemd)."""
    states = {}
    systemctl = module.get_bin_path("systemctl")
    for name in names:
        if not systemctl:
            states[name] = {"active": "unknown", "enabled": "unknown"}
            continue
        rc, active, err = module.run_command([systemctl, "is-active", name])
        rc, enabled, err = module.run_command([systemctl, "is-enabled", name])
        states[name] = {"active": active.strip() or "unknown", "enabled": enabled.strip() or "unknown"}
    return states


def apt_lists():
    """How many package index files apt has (none on container images and minimal installs)."""
    return len(glob.glob("/var/lib/apt/lists/*_Packages*"))


def resolve(names):
    """{name: every address it resolves to on this host, sorted; [] when it does not resolve}."""
    found = {}
    for name in names:
        try:
            found[name] = sorted(set(a[4][0] for a in socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)))
        except socket.gaierror:
            found[name] = []
    return found


def text_of(path, limit=65536):
    """The text of a small file (a settings file to compare on the controller); None when it is missing,
    unreadable, not UTF-8 or larger than limit bytes."""
    try:
        if os.path.getsize(path) > limit:
            return None
        with open(path, "rb") as f:
            return f.read().decode("utf-8")
    except (IOError, OSError, UnicodeDecodeError):
        return None

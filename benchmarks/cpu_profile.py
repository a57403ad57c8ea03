#!/usr/bin/env python3
"""Where a long run's CPU goes, by kind of process: Linux process accounting around a command.

    benchmarks/cpu_profile.py [--acct FILE] -- COMMAND ...   run COMMAND with accounting on, then report
    benchmarks/cpu_profile.py --report FILE                  report on a file recorded before

Every process that ends while accounting is on is recorded with its name and CPU seconds, in this machine's
containers too (the host stand-ins, their Docker daemons and the vLLM servers inside them). The report groups
the names into kinds (vLLM servers, Ansible on the control node, Ansible's modules on the hosts, Docker, package
installs, pytest and molecule, ...) and prints CPU seconds and shares, with the machine's CPU time for the same
span from /proc/stat (the two differ by what was still running at the end, and by processes outside this run).
Needs root and `accton`/`sa` (Debian's `acct`). Not a test; docs/testing.md quotes its report of `make test`.
"""

import argparse
import collections
import os
import re
import subprocess
import sys
import time

# (kind, pattern on the process name as accounting records it: at most 15 characters)
KINDS = (
    ("lint, sanity, changelog", r"^(ansible-lint|ansible-doc|ansible-test|antsibull|yamllint|pylint|mypy|pycodestyle)"),
    ("vLLM servers", r"^(VLLM::|vllm$|ZMQbg/|pt_gloo|gloo_)"),
    ("Ansible on the control node", r"^ansible"),
    ("Ansible modules and Python on the hosts", r"^python3$|^python3\.11$"),
    ("pytest, molecule, the tests' Python", r"^(python|pytest|molecule|py\.test)$"),
    ("Docker (daemons, shims, runc, CLI)", r"^(dockerd|containerd|containerd-shim|runc|docker|docker-proxy|docker-init)$"),
    # dockerd unpacks a pulled layer in a re-executed copy of itself (/proc/self/exe), recorded as "exe"
    ("image layers (unpack, decompress, registry)", r"^(exe|unpigz|gzip|pigz|registry|docker-registry)$"),
    ("package installs (apt, dpkg)", r"^(apt|apt-get|apt-mark|dpkg|dpkg-deb|dpkg-split|http|store|gpgv|apt-config|dpkg-query|dpkg-trigger)"),
    ("HAProxy, Prometheus, exporters", r"^(haproxy|prometheus|node_exporter|prometheus-node)"),
    ("systemd", r"^(systemd|systemctl|journalctl)"),
    # torch's inductor compiling kernels in a vLLM server that does not run --enforce-eager
    ("C++ compiles", r"^(cc1plus|ld|as|g\+\+|collect2)$"),
)


def sa_rows(path):
    """(name, count, cpu seconds) per process name, from `sa` (its CPU figures are minutes)."""
    out = subprocess.run(["sa", "-a", "--separate-times", path], check=True, capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        # count re user[u] sys[s] avio k name   (the first line, the total, has no name)
        m = re.match(r"\s*(\d+)\s+[\d.]+re\s+([\d.]+)u\s+([\d.]+)s\s+\S+avio\s+\S+k\s+(.+)$", line)
        if not m:
            continue
        name = m.group(4).rstrip("*").strip()
        rows.append((name, int(m.group(1)), (float(m.group(2)) + float(m.group(3))) * 60))
    return rows


def kind_of(name):
    for kind, pattern in KINDS:
        if re.search(pattern, name):
            return kind
    return "other"


def machine_cpu():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    return busy / os.sysconf("SC_CLK_TCK")


def report(path, wall=None, machine=None):
    rows = sa_rows(path)
    total = sum(cpu for _, _, cpu in rows)
    names = collections.defaultdict(list)
    for name, count, cpu in rows:
        names[kind_of(name)].append((cpu, name, count))
    by_kind = dict((kind, sum(cpu for cpu, _, _ in listed)) for kind, listed in names.items())
    if wall is not None:
        print("wall %.0f s; the machine's CPU in that span %.0f s (%.2f cores busy on average)" % (wall, machine, machine / wall))
    print("recorded processes' CPU: %.0f s" % total)
    for kind, cpu in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        top = ", ".join("%s %.0f s (%d)" % (n, c, k) for c, n, k in sorted(names[kind], reverse=True)[:4])
        print("  %-42s %7.0f s  %5.1f %%   %s" % (kind, cpu, 100 * cpu / total if total else 0, top))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--acct", default="/var/log/llmops-cpu-profile.acct")
    parser.add_argument("--report", metavar="FILE")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.report:
        report(args.report)
        return 0
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run, after --")
    open(args.acct, "w").close()
    subprocess.run(["accton", args.acct], check=True, capture_output=True)
    began, cpu0 = time.monotonic(), machine_cpu()
    try:
        rc = subprocess.call(command)
    finally:
        wall, machine = time.monotonic() - began, machine_cpu() - cpu0
        subprocess.run(["accton", "off"], capture_output=True)
    print("\n%s: exit status %d" % (" ".join(command), rc))
    report(args.acct, wall, machine)
    return rc


if __name__ == "__main__":
    sys.exit(main())

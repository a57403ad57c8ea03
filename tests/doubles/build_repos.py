#!/usr/bin/env python3
"""Build the TEST DOUBLE package repositories (tests/doubles/README.md).

    build_repos.py OUTDIR DOCKER_IO_DEB DOCKER_CLI_DEB

writes, signed with a throwaway key generated on first use (OUTDIR/gnupg):

  OUTDIR/repos/nvidia/libnvidia-container/gpgkey                 the key, where NVIDIA publishes its own
  OUTDIR/repos/nvidia/libnvidia-container/stable/deb/amd64/      a flat apt repository, NVIDIA's layout, with
      nvidia-container-toolkit, nvidia-container-toolkit-base, libnvidia-container-tools and
      libnvidia-container1 at each of NVIDIA_VERSIONS, whose binaries are the fakes in nvidia/toolkit/
  OUTDIR/repos/docker/linux/debian/gpg                           the key, where Docker publishes its own
  OUTDIR/repos/docker/linux/debian/dists/bookworm/stable/...     an apt repository, Docker's layout, with
      docker-ce and docker-ce-cli at each of DOCKER_VERSIONS: Debian 13's docker.io and docker-cli
      packages (DOCKER_IO_DEB, DOCKER_CLI_DEB: the real engine and CLI 26.1.5, built by Debian)
      renamed, with Docker's package relations (docker-ce conflicts with docker.io and depends
      on docker-ce-cli and containerd.io); containerd.io (depends on Debian's containerd);
      docker-buildx-plugin (empty) and docker-compose-plugin (a fake CLI plugin)

Only dpkg-deb and gpg are needed. The packages are built with fixed timestamps; the
repositories are rebuilt only when a file they are made from changes (OUTDIR/.recipe).
"""

import gzip
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
NVIDIA_VERSIONS = ["1.17.8", "1.18.0", "1.18.1"]
DOCKER_VERSIONS = ["26.1.4", "26.1.5"]
DEBIAN_SUFFIX = "-1~debian.12~bookworm"
EPOCH = 1700000000  # fixed mtimes, so a rebuild gives the same packages
KEY_UID = "llmops test double repositories <test-double@llmops.invalid>"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def recipe_hash(extra):
    h = hashlib.sha256()
    for root, dirs, files in os.walk(HERE):
        dirs.sort()
        for name in sorted(files):
            if name.endswith((".pyc", ".md")):
                continue
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, HERE).encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
    h.update(repr((NVIDIA_VERSIONS, DOCKER_VERSIONS, DEBIAN_SUFFIX, extra)).encode())
    return h.hexdigest()


def build_deb(out_dir, name, version, depends, files, description, postinst=None, conffiles=()):
    """files: {path in package: (source file or bytes, mode)}. Returns the .deb path and its control text."""
    stage = tempfile.mkdtemp(prefix="deb-")
    try:
        os.makedirs(os.path.join(stage, "DEBIAN"))
        doc = "usr/share/doc/%s/README.test-double" % name
        files = dict(files)
        files[doc] = (("TEST DOUBLE built by llmops.vllm's tests/doubles/build_repos.py. Not the real %s.\n" % name).encode(), 0o644)
        for target, (source, mode) in files.items():
            path = os.path.join(stage, target)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            if isinstance(source, bytes):
                data = source
            else:
                with open(source, "rb") as f:
                    data = f.read()
            data = data.replace(b"@VERSION@", version.split(":")[-1].split("-")[0].encode())
            with open(path, "wb") as f:
                f.write(data)
            os.chmod(path, mode)
        control = [
            "Package: %s" % name,
            "Version: %s" % version,
            "Architecture: amd64",
            "Maintainer: llmops.vllm test doubles <test-double@llmops.invalid>",
            "Section: utils",
            "Priority: optional",
        ]
        if depends:
            control.append("Depends: %s" % ", ".join(depends))
        control.append("Description: TEST DOUBLE of %s\n %s" % (name, description))
        with open(os.path.join(stage, "DEBIAN", "control"), "w") as f:
            f.write("\n".join(control) + "\n")
        if conffiles:
            with open(os.path.join(stage, "DEBIAN", "conffiles"), "w") as f:
                f.write("".join("/%s\n" % c for c in conffiles))
        if postinst:
            path = os.path.join(stage, "DEBIAN", "postinst")
            with open(path, "w") as f:
                f.write(postinst)
            os.chmod(path, 0o755)
        for root, dirs, names in os.walk(stage):
            for entry in dirs + names:
                os.utime(os.path.join(root, entry), (EPOCH, EPOCH), follow_symlinks=False)
        deb = os.path.join(out_dir, "%s_%s_amd64.deb" % (name, version.split(":")[-1]))
        env = dict(os.environ, SOURCE_DATE_EPOCH=str(EPOCH))
        subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", stage, deb], check=True,
                       stdout=subprocess.DEVNULL, env=env)
        return deb, "\n".join(control)
    finally:
        shutil.rmtree(stage)


def packages_entry(control, deb, filename):
    size = os.path.getsize(deb)
    with open(deb, "rb") as f:
        md5 = hashlib.md5(f.read()).hexdigest()
    lines = control.split("\n")
    description = [i for i, line in enumerate(lines) if line.startswith("Description:")][0]
    fields = lines[:description] + ["Filename: %s" % filename, "Size: %d" % size, "MD5sum: %s" % md5,
                                    "SHA256: %s" % sha256(deb)] + lines[description:]
    return "\n".join(fields) + "\n"


def write_index(directory, entries):
    text = "\n".join(entries)
    with open(os.path.join(directory, "Packages"), "w") as f:
        f.write(text)
    with open(os.path.join(directory, "Packages.gz"), "wb") as f:
        buffer = io.BytesIO()
        with gzip.GzipFile(fileobj=buffer, mode="wb", mtime=EPOCH) as gz:
            gz.write(text.encode())
        f.write(buffer.getvalue())


def write_release(directory, fields, indexes, gnupg):
    lines = ["%s: %s" % kv for kv in fields]
    lines.append("Date: %s" % time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime()))
    lines.append("SHA256:")
    for relative in indexes:
        path = os.path.join(directory, relative)
        lines.append(" %s %d %s" % (sha256(path), os.path.getsize(path), relative))
    release = os.path.join(directory, "Release")
    with open(release, "w") as f:
        f.write("\n".join(lines) + "\n")
    gpg = ["gpg", "--homedir", gnupg, "--batch", "--yes", "--local-user", KEY_UID]
    subprocess.run(gpg + ["--clearsign", "-o", os.path.join(directory, "InRelease"), release], check=True)
    subprocess.run(gpg + ["--armor", "--detach-sign", "-o", os.path.join(directory, "Release.gpg"), release], check=True)


def ensure_key(gnupg):
    os.makedirs(gnupg, mode=0o700, exist_ok=True)
    listed = subprocess.run(["gpg", "--homedir", gnupg, "--batch", "--list-secret-keys", KEY_UID],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if listed.returncode != 0:
        subprocess.run(["gpg", "--homedir", gnupg, "--batch", "--passphrase", "", "--quick-gen-key", KEY_UID,
                        "rsa3072", "sign", "never"], check=True, stderr=subprocess.DEVNULL)
    return subprocess.run(["gpg", "--homedir", gnupg, "--batch", "--armor", "--export", KEY_UID],
                          check=True, stdout=subprocess.PIPE).stdout


def build_nvidia(out, gnupg, key):
    base = os.path.join(out, "nvidia", "libnvidia-container")
    repo = os.path.join(base, "stable", "deb", "amd64")
    os.makedirs(repo)
    with open(os.path.join(base, "gpgkey"), "wb") as f:
        f.write(key)
    toolkit = os.path.join(HERE, "nvidia", "toolkit")
    entries = []

    def add(deb_and_control):
        deb, control = deb_and_control
        entries.append(packages_entry(control, deb, "./" + os.path.basename(deb)))

    for version in NVIDIA_VERSIONS:
        full = version + "-1"
        add(build_deb(repo, "libnvidia-container1", full, [], {}, "NVIDIA container runtime library (empty double)"))
        add(build_deb(repo, "libnvidia-container-tools", full, ["libnvidia-container1 (>= %s)" % full], {
            "usr/bin/nvidia-container-cli": (os.path.join(toolkit, "nvidia-container-cli"), 0o755),
        }, "NVIDIA container runtime library, command-line tools (double)"))
        base_files = {
            "usr/bin/nvidia-ctk": (os.path.join(toolkit, "nvidia-ctk"), 0o755),
            "usr/bin/nvidia-container-runtime": (os.path.join(toolkit, "nvidia-container-runtime"), 0o755),
            "usr/bin/nvidia-cdi-hook": (os.path.join(toolkit, "nvidia-cdi-hook"), 0o755),
            "etc/nvidia-container-runtime/config.toml": (os.path.join(toolkit, "config.toml"), 0o644),
        }
        conffiles = ["etc/nvidia-container-runtime/config.toml"]
        postinst = None
        # From 1.18.0 the base package ships nvidia-cdi-refresh (units enabled at install).
        if tuple(int(p) for p in version.split(".")) >= (1, 18, 0):
            base_files.update({
                "lib/systemd/system/nvidia-cdi-refresh.service": (os.path.join(toolkit, "nvidia-cdi-refresh.service"), 0o644),
                "lib/systemd/system/nvidia-cdi-refresh.path": (os.path.join(toolkit, "nvidia-cdi-refresh.path"), 0o644),
                "etc/nvidia-container-toolkit/nvidia-cdi-refresh.env": (os.path.join(toolkit, "nvidia-cdi-refresh.env"), 0o644),
            })
            conffiles.append("etc/nvidia-container-toolkit/nvidia-cdi-refresh.env")
            postinst = (
                "#!/bin/sh\nset -e\n"
                "if [ \"$1\" = configure ] && [ -d /run/systemd/system ]; then\n"
                "  systemctl daemon-reload\n"
                "  systemctl enable nvidia-cdi-refresh.path nvidia-cdi-refresh.service >/dev/null 2>&1 || true\n"
                "  systemctl start nvidia-cdi-refresh.path || true\n"
                "fi\n"
            )
        add(build_deb(repo, "nvidia-container-toolkit-base", full, [], base_files,
                      "NVIDIA Container Toolkit base: nvidia-ctk, nvidia-container-runtime (double)",
                      postinst=postinst, conffiles=conffiles))
        add(build_deb(repo, "nvidia-container-toolkit", full, [
            "nvidia-container-toolkit-base (= %s)" % full,
            "libnvidia-container-tools (>= %s)" % full, "libnvidia-container-tools (<< 2.0.0)",
        ], {
            "usr/bin/nvidia-container-runtime-hook": (os.path.join(toolkit, "nvidia-container-runtime-hook"), 0o755),
        }, "NVIDIA Container Toolkit: the runtime hook (double)"))
    write_index(repo, entries)
    write_release(repo, [("Origin", "llmops test double of NVIDIA libnvidia-container"), ("Label", "libnvidia-container")],
                  ["Packages", "Packages.gz"], gnupg)


def repack(source_deb, pool, name, version, relations, more_depends=""):
    """A Debian package under Docker's name and relations: the same files and maintainer scripts.
    relations: {field: value} written as they are; more_depends is added to the source's Depends."""
    stage = tempfile.mkdtemp(prefix=name + "-")
    try:
        subprocess.run(["dpkg-deb", "-R", source_deb, stage], check=True)
        control_path = os.path.join(stage, "DEBIAN", "control")
        fields, current = [], None
        for line in open(control_path).read().splitlines():
            if line.startswith((" ", "\t")) and current is not None:
                fields[-1][1].append(line)
            else:
                field, _, value = line.partition(":")
                current = field
                fields.append([field, [value.strip()]])
        source = {field: lines for field, lines in fields}
        upstream = source["Version"][0]
        depends = ", ".join(d for d in (source.get("Depends", [""])[0], more_depends) if d)
        control = [
            "Package: %s" % name,
            "Version: %s" % version,
            "Architecture: amd64",
            "Maintainer: llmops.vllm test doubles <test-double@llmops.invalid>",
            "Installed-Size: %s" % source["Installed-Size"][0],
        ]
        if "Pre-Depends" in source:
            control.append("Pre-Depends: %s" % source["Pre-Depends"][0])
        if depends:
            control.append("Depends: %s" % depends)
        control += ["%s: %s" % relation for relation in relations.items()]
        control += [
            "Section: admin",
            "Priority: optional",
            "Description: TEST DOUBLE of %s: Debian's %s %s under Docker's package name" % (name, source["Package"][0], upstream),
            " Built by llmops.vllm's tests/doubles/build_repos.py from Debian's package; the software is %s," % upstream,
            " whatever version this package claims.",
        ]
        with open(control_path, "w") as f:
            f.write("\n".join(control) + "\n")
        md5sums = os.path.join(stage, "DEBIAN", "md5sums")
        if os.path.exists(md5sums):
            os.remove(md5sums)
        deb = os.path.join(pool, "%s_%s_amd64.deb" % (name, version.split(":")[-1]))
        subprocess.run(["dpkg-deb", "-Zgzip", "-z1", "--build", stage, deb], check=True, stdout=subprocess.DEVNULL)
        return deb, "\n".join(control)
    finally:
        shutil.rmtree(stage)


def build_docker(out, gnupg, key, docker_io, docker_cli):
    base = os.path.join(out, "docker", "linux", "debian")
    pool = os.path.join(base, "pool", "stable")
    index = os.path.join(base, "dists", "bookworm", "stable", "binary-amd64")
    os.makedirs(pool)
    os.makedirs(index)
    with open(os.path.join(base, "gpg"), "wb") as f:
        f.write(key)
    entries = []

    def add(deb_and_control):
        deb, control = deb_and_control
        entries.append(packages_entry(control, deb, os.path.relpath(deb, base)))

    for version in DOCKER_VERSIONS:
        full = "5:" + version + DEBIAN_SUFFIX
        add(repack(docker_cli, pool, "docker-ce-cli", full, {
            "Conflicts": "docker-cli, podman-docker", "Replaces": "docker-cli"}))
        add(repack(docker_io, pool, "docker-ce", full, {
            "Conflicts": "docker.io, docker-engine", "Replaces": "docker.io"}, more_depends="docker-ce-cli, containerd.io"))
    add(build_deb(pool, "containerd.io", "1.7.22-1", ["containerd"], {}, "containerd; the double depends on Debian's containerd"))
    add(build_deb(pool, "docker-buildx-plugin", "0.17.1" + DEBIAN_SUFFIX, [], {}, "Docker Buildx (empty double)"))
    add(build_deb(pool, "docker-compose-plugin", "2.29.7" + DEBIAN_SUFFIX, [], {
        "usr/libexec/docker/cli-plugins/docker-compose": (os.path.join(HERE, "docker", "docker-compose"), 0o755),
    }, "Docker Compose CLI plugin (answers `docker compose version` only)"))
    write_index(index, entries)
    write_release(os.path.join(base, "dists", "bookworm"), [
        ("Origin", "llmops test double of Docker"), ("Label", "Docker CE"), ("Suite", "bookworm"),
        ("Codename", "bookworm"), ("Architectures", "amd64"), ("Components", "stable"),
    ], ["stable/binary-amd64/Packages", "stable/binary-amd64/Packages.gz"], gnupg)


def main(out, docker_io, docker_cli):
    recipe = recipe_hash((os.path.basename(docker_io), os.path.basename(docker_cli)))
    stamp = os.path.join(out, ".recipe")
    if os.path.exists(stamp) and open(stamp).read().strip() == recipe:
        print("build_repos: %s is up to date" % out)
        return 0
    gnupg = os.path.join(out, "gnupg")
    key = ensure_key(gnupg)
    repos = os.path.join(out, "repos")
    shutil.rmtree(repos, ignore_errors=True)
    build_nvidia(repos, gnupg, key)
    build_docker(repos, gnupg, key, docker_io, docker_cli)
    with open(stamp, "w") as f:
        f.write(recipe + "\n")
    print("build_repos: built the NVIDIA and Docker repository doubles in %s" % out)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    sys.exit(main(*(os.path.abspath(arg) for arg in sys.argv[1:])))

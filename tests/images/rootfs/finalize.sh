#!/bin/bash
# Runs inside a fresh debootstrap chroot before it is imported as an image.
# Environment: DEBIAN_MIRROR, DEBIAN_SECURITY_MIRROR, SLIM (1: a Dockerfile base:
# no docs, no apt caches).
set -euo pipefail

# debootstrap only knows "bookworm main"; a test host also needs updates
# and security, as a real Debian 12 host has them.
cat >/etc/apt/sources.list <<SOURCES
deb ${DEBIAN_MIRROR} bookworm main
deb ${DEBIAN_MIRROR} bookworm-updates main
deb ${DEBIAN_SECURITY_MIRROR} bookworm-security main
SOURCES

if [ "${SLIM}" = 1 ]; then
  # Like debian:bookworm-slim: no docs, man pages or translations in images
  # that are only ever used as Dockerfile bases.
  cat >/etc/dpkg/dpkg.cfg.d/llmops-slim <<'DPKG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
DPKG
  # As in Docker's official debian images: no .deb files or package caches
  # left behind by an `apt-get install` in a Dockerfile.
  cat >/etc/apt/apt.conf.d/docker-clean <<'APT'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT
  echo 'Acquire::Languages "none";' >/etc/apt/apt.conf.d/docker-no-languages
  find /usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
  find /usr/share/doc -mindepth 1 -type d -empty -delete
  rm -rf /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian/*
fi

# Each container must get its own machine id (systemd creates one at boot
# when the file is empty); the build host's name must not leak into it.
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id
echo localhost >/etc/hostname

apt-get clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
  /var/log/apt/* /var/log/dpkg.log /var/log/bootstrap.log /tmp/* /var/tmp/*

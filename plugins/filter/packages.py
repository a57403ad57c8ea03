# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

from __future__ import annotations

# Package specs for the docker and nvidia_container_toolkit roles; how a package manager spells a
# pinned version is data of each OS (the roles' vars/<os>.yml), not a branch here.

from ansible.errors import AnsibleFilterError


def llmops_pin_packages(names, version, spelling, pinned=None):
    """The package names, those in pinned (all when None) spelled with version: '{name}={version}*' etc.

    An empty version pins nothing.
    """
    if not version:
        return list(names)
    if "{name}" not in str(spelling) or "{version}" not in str(spelling):
        raise AnsibleFilterError("a pin spelling names {name} and {version}, not %r" % (spelling,))
    return [spelling.format(name=n, version=version) if pinned is None or n in pinned else n for n in names]


class FilterModule(object):
    def filters(self):
        return {"llmops_pin_packages": llmops_pin_packages}

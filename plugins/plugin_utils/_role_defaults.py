# -*- coding: utf-8 -*-
# Copyright: llmops.vllm contributors
# Apache License 2.0 (see LICENSE)

# PRIVATE to the collection: no compatibility is promised to anyone who imports it.

"""The defaults of the collection's roles, read on the control node from their defaults/main.yml.

The one place that knows where a role's defaults are in the collection: a role that needs another
role's default (a host that leaves it unset, a role that is not in the play) asks here, through the
llmops.vllm.role_default lookup or the filters, instead of reading the other role's files by path.
"""

from __future__ import annotations

import functools
import os
import re

import yaml

# plugins/plugin_utils/ -> the collection's root, in a checkout and in an installed artifact alike.
COLLECTION_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ROLES_DIR = os.path.join(COLLECTION_ROOT, "roles")

_TEMPLATED = re.compile(r"{{|{%")


class RoleDefaultError(ValueError):
    """A role or a default that cannot be given."""


def defaults_file(role):
    """The path of a role's defaults/main.yml in the collection."""
    return os.path.join(ROLES_DIR, role, "defaults", "main.yml")


def roles():
    """The names of the collection's roles that have defaults."""
    return sorted(r for r in os.listdir(ROLES_DIR) if os.path.isfile(defaults_file(r)))


@functools.lru_cache(maxsize=None)
def _load(role):
    try:
        with open(defaults_file(role)) as f:
            return yaml.safe_load(f) or {}
    except OSError:
        raise RoleDefaultError("%s is not a role of llmops.vllm with defaults (%s)" % (role, ", ".join(roles())))


def role_defaults(role):
    """A role's defaults/main.yml as data; Jinja in it stays text."""
    return dict(_load(role))


def role_of(variable):
    """The role a public variable belongs to: the longest role name that prefixes it with an underscore."""
    owners = [r for r in roles() if str(variable).startswith(r + "_")]
    if not owners:
        raise RoleDefaultError("%s is not a variable of a role of llmops.vllm (their names start with one of %s)"
                               % (variable, ", ".join(r + "_" for r in roles())))
    return max(owners, key=len)


def role_default(variable):
    """The default of one public variable, which must be a plain value: outside its role, nothing templates it."""
    defaults = _load(role_of(variable))
    if variable not in defaults:
        raise RoleDefaultError("%s is not a default of the role %s" % (variable, role_of(variable)))
    value = defaults[variable]
    if _TEMPLATED.search(str(value)):
        raise RoleDefaultError("the default of %s is templated (%s); only a plain default can be read outside its role"
                               % (variable, value))
    return value

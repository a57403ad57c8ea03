"""No role reads another role's files by a path that climbs out of its own directory (issue 19): a default
another role needs comes from the collection (llmops.vllm.role_default, plugins/plugin_utils/)."""

import os
import re

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CLIMB = re.compile(r"role_path\s*[~+]\s*['\"]/?\.\./")


def test_no_role_reads_another_roles_files_by_path():
    found = []
    for directory, _, files in os.walk(os.path.join(ROOT, "roles")):
        for name in files:
            path = os.path.join(directory, name)
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except UnicodeDecodeError:
                continue
            found += ["%s:%d" % (os.path.relpath(path, ROOT), text.count("\n", 0, m.start()) + 1) for m in CLIMB.finditer(text)]
    assert found == []


def test_the_check_finds_a_climbing_path():
    assert CLIMB.search("{{ lookup('ansible.builtin.file', role_path ~ '/../vllm_server/defaults/main.yml') }}")
    assert not CLIMB.search("{{ query('ansible.builtin.fileglob', role_path ~ '/files/dashboards/*.yml') }}")

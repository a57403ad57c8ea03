"""Every task file of every role is reached: included or imported from the role's main.yml (directly
or through other task files), or named by tasks_from in a playbook or a molecule scenario. A file
nothing reaches is dead code that a reader would take for live (tasks/instance.yml was one)."""

import fnmatch
import os
import re

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
INCLUDES = {"include_tasks", "import_tasks"}
ROLE_INCLUDES = {"include_role", "import_role"}
# Where tasks_from is looked for outside the roles.
ENTRY_DIRS = ["playbooks", "molecule"]
ENTRY_FILES = ["site.yml", "verify.yml"]


def _action(task, names):
    for key in task:
        if key.rsplit(".", 1)[-1] in names and (key.startswith("ansible.builtin.") or "." not in key):
            return key
    return None


def _tasks(data):
    """Every task in a list of tasks or plays, blocks opened."""
    for item in data or []:
        if not isinstance(item, dict):
            continue
        for section in ("tasks", "pre_tasks", "post_tasks", "handlers", "block", "rescue", "always"):
            if isinstance(item.get(section), list):
                yield from _tasks(item[section])
        yield item


def _pattern(name):
    """A glob for a task file name, templated parts ({{ vllm_server_mode }}) matching anything."""
    name = re.sub(r"\{\{.*?\}\}", "*", str(name))
    return name if name.endswith((".yml", ".yaml")) else name + ".yml"


class _Loader(yaml.SafeLoader):
    """Safe YAML that skips Ansible's own tags (!vault, !unsafe) instead of refusing the file."""


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)


def _load(path):
    with open(path) as f:
        return yaml.load(f, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def role_task_files(roles_dir):
    """{role: [task file paths relative to the role's tasks/]}."""
    found = {}
    for role in sorted(os.listdir(roles_dir)):
        tasks = os.path.join(roles_dir, role, "tasks")
        if not os.path.isdir(tasks):
            continue
        found[role] = sorted(os.path.relpath(os.path.join(d, f), tasks)
                             for d, _, files in os.walk(tasks) for f in files if f.endswith((".yml", ".yaml")))
    return found


def tasks_from_entries(paths):
    """(role, tasks_from pattern) for every include_role/import_role naming tasks_from in these files."""
    entries = []
    for path in paths:
        data = _load(path)
        if not isinstance(data, list):
            continue
        for task in _tasks(data):
            key = _action(task, ROLE_INCLUDES)
            if key and isinstance(task[key], dict) and task[key].get("tasks_from"):
                role = task[key]["name"].rsplit(".", 1)[-1]
                entries.append((role, _pattern(task[key]["tasks_from"])))
    return entries


def orphans(roles_dir, entries):
    """Task files of each role that neither main.yml nor an entry reaches."""
    result = []
    for role, files in role_task_files(roles_dir).items():
        tasks_dir = os.path.join(roles_dir, role, "tasks")
        todo = [f for f in files if f in ("main.yml", "main.yaml")]
        todo += [f for r, pattern in entries if r == role for f in fnmatch.filter(files, pattern)]
        reached = set()
        while todo:
            current = todo.pop()
            if current in reached:
                continue
            reached.add(current)
            for task in _tasks(_load(os.path.join(tasks_dir, current))):
                key = _action(task, INCLUDES)
                if key:
                    args = task[key]
                    name = args.get("file") if isinstance(args, dict) else args
                    base = os.path.dirname(current)
                    todo += fnmatch.filter(files, os.path.normpath(os.path.join(base, _pattern(name))))
                key = _action(task, ROLE_INCLUDES)
                if key and isinstance(task[key], dict) and task[key].get("tasks_from"):
                    if task[key]["name"].rsplit(".", 1)[-1] == role:
                        todo += fnmatch.filter(files, _pattern(task[key]["tasks_from"]))
        result += ["roles/%s/tasks/%s" % (role, f) for f in files if f not in reached]
    return result


def _entry_paths():
    paths = [os.path.join(ROOT, f) for f in ENTRY_FILES]
    for directory in ENTRY_DIRS:
        for d, _, files in os.walk(os.path.join(ROOT, directory)):
            paths += [os.path.join(d, f) for f in files if f.endswith((".yml", ".yaml"))]
    return [p for p in paths if os.path.isfile(p)]


def test_every_task_file_is_reached():
    lost = orphans(os.path.join(ROOT, "roles"), tasks_from_entries(_entry_paths()))
    assert lost == [], "task files nothing includes (delete them, or include them): %s" % ", ".join(lost)


def test_templated_names_and_tasks_from_count_and_an_orphan_is_found(tmp_path):
    tasks = tmp_path / "roles" / "r" / "tasks"
    tasks.mkdir(parents=True)
    (tasks / "main.yml").write_text(yaml.safe_dump([
        {"name": "x", "ansible.builtin.include_tasks": {"file": "run-{{ mode }}.yml"}},
        {"name": "y", "block": [{"name": "z", "ansible.builtin.import_tasks": "step.yml"}]}]))
    for name in ("run-a.yml", "run-b.yml", "step.yml", "entry.yml", "orphan.yml"):
        (tasks / name).write_text("[]\n")
    entries = [("r", _pattern("entry"))]
    assert orphans(str(tmp_path / "roles"), entries) == ["roles/r/tasks/orphan.yml"]
    assert orphans(str(tmp_path / "roles"), []) == ["roles/r/tasks/entry.yml", "roles/r/tasks/orphan.yml"]

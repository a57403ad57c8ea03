"""Every file of plugins/module_utils/ is imported by a module of plugins/modules/, directly or through
another module_utils file (issue 19). Ansible ships module_utils to the managed host with the modules that
import them; code only filters, lookups or action plugins use runs on the controller and lives in
plugins/plugin_utils/ (docs/structure.md)."""

import ast
import os

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PACKAGE = "ansible_collections.llmops.vllm.plugins.module_utils"


def _imported_module_utils(path):
    """The names of the collection's module_utils files that the Python file at path imports."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            dotted = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # a relative import (from ..module_utils._x import y, from ._x import y) counts as well
            module = node.module or ""
            if node.level:
                module = ".".join(filter(None, [PACKAGE, module.split("module_utils", 1)[-1].lstrip(".")]))
            dotted = [module] + ["%s.%s" % (module, a.name) for a in node.names]
        else:
            continue
        for name in dotted:
            if name.startswith(PACKAGE + "."):
                names.add(name[len(PACKAGE) + 1:].split(".", 1)[0])
    return names


def unused_module_utils(plugins):
    """The module_utils files (names without .py) under plugins that no module imports, sorted."""
    def files(kind):
        directory = os.path.join(plugins, kind)
        return dict((name[:-3], os.path.join(directory, name)) for name in sorted(os.listdir(directory))
                    if name.endswith(".py") and name != "__init__.py")

    utils = files("module_utils")
    reached = set()
    todo = set()
    for path in files("modules").values():
        todo |= _imported_module_utils(path)
    while todo:
        name = todo.pop()
        if name in reached or name not in utils:
            continue
        reached.add(name)
        todo |= _imported_module_utils(utils[name])
    return sorted(set(utils) - reached)


def test_every_module_utils_file_is_imported_by_a_module():
    unused = unused_module_utils(os.path.join(ROOT, "plugins"))
    assert unused == [], (
        "plugins/module_utils/ holds %s, which no module under plugins/modules imports (directly or through "
        "another module_utils file): controller-only code belongs in plugins/plugin_utils/" % ", ".join(unused))


def _tree(tmp_path, modules, module_utils):
    for kind, sources in (("modules", modules), ("module_utils", module_utils)):
        (tmp_path / kind).mkdir()
        for name, source in sources.items():
            (tmp_path / kind / (name + ".py")).write_text(source)
    return str(tmp_path)


def test_the_check_finds_a_file_no_module_imports(tmp_path):
    plugins = _tree(tmp_path, {"m": "from %s._used import x\n" % PACKAGE, "n": "from ..module_utils._rel import z\n"},
                    {"_used": "x = 1\n", "_rel": "z = 3\n", "_controller_only": "y = 2\n", "__init__": ""})
    assert unused_module_utils(plugins) == ["_controller_only"]


def test_the_check_follows_imports_between_module_utils_files(tmp_path):
    plugins = _tree(tmp_path, {"m": "from %s import _first\n" % PACKAGE},
                    {"_first": "from ._second import y\nimport %s._third\n" % PACKAGE,
                     "_second": "from . import _fifth\n", "_third": "z = 3\n", "_fourth": "w = 4\n",
                     "_fifth": "v = 5\n"})
    assert unused_module_utils(plugins) == ["_fourth"]

#!/usr/bin/env python3
"""Render each role's meta/argument_specs.yml as Markdown tables into README.md.

    python3 tools/role_docs.py          rewrite the section between the markers
    python3 tools/role_docs.py --check  exit 1 when README.md is out of date
"""

import json
import os
import sys

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BEGIN = "<!-- BEGIN ROLE VARIABLES (tools/role_docs.py) -->"
END = "<!-- END ROLE VARIABLES -->"


def cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def value(v):
    if v is None:
        return "`null`"
    if v == "":
        return '`""`'
    if isinstance(v, bool):
        return "`%s`" % str(v).lower()
    if isinstance(v, (dict, list)):
        return "`%s`" % json.dumps(v) if len(json.dumps(v)) <= 80 else "see `defaults/main.yml`"
    return "`%s`" % v


def describe(text):
    import re

    if isinstance(text, list):
        text = " ".join(text)
    # ansible-doc markup to Markdown
    text = re.sub(r"\b[OCVE]\(([^)]*)\)", r"`\1`", text)
    text = re.sub(r"\bM\(([^)]*)\)", r"`\1`", text)
    return text


def render():
    out = [BEGIN, ""]
    for role in sorted(os.listdir(os.path.join(ROOT, "roles"))):
        path = os.path.join(ROOT, "roles", role, "meta", "argument_specs.yml")
        if not os.path.exists(path):
            continue
        with open(path) as f:
            specs = yaml.safe_load(f)["argument_specs"]
        spec = specs["main"]
        options = dict(spec["options"])
        entry_points = []
        for entry, other in specs.items():
            extra = dict((k, v) for k, v in other.get("options", {}).items() if k not in options)
            if entry != "main" and other is not spec:
                entry_points.append("`tasks_from: %s` (%s)" % (entry, describe(other["short_description"]).rstrip(".")))
            options.update(extra)
        out += ["### `llmops.vllm.%s`" % role, "", describe(spec["short_description"]), ""]
        if entry_points:
            out += ["Other entry points: %s." % "; ".join(entry_points), ""]
        out += ["| Variable | Default | Description |", "|---|---|---|"]
        for name, option in options.items():
            desc = describe(option.get("description", ""))
            if option.get("choices"):
                desc += " One of: %s." % ", ".join("`%s`" % c for c in option["choices"])
            out.append("| `%s` | %s | %s |" % (name, cell(value(option.get("default"))), cell(desc)))
        out.append("")
    out.append(END)
    return "\n".join(out)


def main():
    readme = os.path.join(ROOT, "README.md")
    with open(readme) as f:
        text = f.read()
    start, stop = text.index(BEGIN), text.index(END) + len(END)
    new = text[:start] + render() + text[stop:]
    if "--check" in sys.argv:
        if new != text:
            sys.exit("README.md's role variables are out of date: run python3 tools/role_docs.py")
        return
    with open(readme, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()

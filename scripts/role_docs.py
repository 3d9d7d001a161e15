#!/usr/bin/env python3
"""Regenerate each role README's variable table from meta/argument_specs.yml.

The table sits between ``<!-- BEGIN VARIABLES -->`` and ``<!-- END VARIABLES -->``.
``--check`` exits 1 (and names the files) when a README is out of date, so the
lint step catches a variable documented in one place and not the other.
"""

import argparse
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- BEGIN VARIABLES -->", "<!-- END VARIABLES -->"
MARKUP = re.compile(r"\b[OCIV]\(([^)]*)\)")


def plain(text):
    if isinstance(text, list):
        text = " ".join(text)
    return MARKUP.sub(r"`\1`", str(text)).replace("|", "\\|").replace("\n", " ").strip()


def table(specs):
    rows = []
    for entry, spec in specs["argument_specs"].items():
        rows.append("\n**Entry point `%s`**: %s\n" % (entry, plain(spec.get("short_description", ""))))
        rows.append("| Variable | Type | Default | Description |")
        rows.append("|---|---|---|---|")
        for name, opt in sorted(spec.get("options", {}).items()):
            kind = opt.get("type", "str")
            if kind == "list" and opt.get("elements"):
                kind = "list of %s" % opt["elements"]
            if opt.get("required"):
                default = "*required*"
            elif "default" in opt:
                default = "`%s`" % yaml.safe_dump(opt["default"], default_flow_style=True).strip().removesuffix("\n...").strip()
            else:
                default = ""
            desc = plain(opt.get("description", ""))
            if opt.get("choices"):
                desc += " Choices: %s." % ", ".join("`%s`" % c for c in opt["choices"])
            rows.append("| `%s` | %s | %s | %s |" % (name, kind, default, desc))
    return "\n".join(rows).strip("\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="only report stale READMEs")
    args = parser.parse_args()
    stale = []
    for spec_file in sorted(ROOT.glob("roles/*/meta/argument_specs.yml")):
        readme = spec_file.parent.parent / "README.md"
        if not readme.exists():
            stale.append("%s (missing)" % readme.relative_to(ROOT))
            continue
        text = readme.read_text(encoding="utf-8")
        if BEGIN not in text or END not in text:
            stale.append("%s (no variable markers)" % readme.relative_to(ROOT))
            continue
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        new = "%s%s\n%s\n%s%s" % (head, BEGIN, table(yaml.safe_load(spec_file.read_text(encoding="utf-8"))), END, tail)
        if new != text:
            if args.check:
                stale.append(str(readme.relative_to(ROOT)))
            else:
                readme.write_text(new, encoding="utf-8")
                print("updated %s" % readme.relative_to(ROOT))
    if stale:
        print("role READMEs out of date with meta/argument_specs.yml (run scripts/role_docs.py):", file=sys.stderr)
        for item in stale:
            print("  " + item, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Make the installed ``tensorrt-stubs`` (10.13.0.35.1) usable by mypy.

Its known defects: no ``py.typed`` marker (the stubs install as the ``tensorrt`` and
``tensorrt_bindings`` folders, so PEP 561 needs one), and signatures in
``tensorrt_bindings/tensorrt.pyi`` that are not valid Python: parameters named ``in`` (a keyword),
and a parameter without a default after defaulted ones (``add_scale_nd``'s ``channel_axis``).
This renames ``in`` to ``in_`` and gives such parameters a ``...`` default, then checks that every
stub file parses. Usage: python .ci/repair_tensorrt_stubs.py [site-packages folder]
"""

import ast
import re
import sys
import sysconfig
from pathlib import Path

PACKAGES = ("tensorrt", "tensorrt_bindings")


def _split_params(text: str):
    """Top-level comma-separated parameters of a signature's parameter list."""
    parts, depth, current = [], 0, ""
    for char in text:
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    if current.strip():
        parts.append(current)
    return parts


def repair_signature(line: str) -> str:
    match = re.match(r"^(\s*def \w+\()(.*)(\)\s*(->.*)?:.*)$", line)
    if not match:
        return line
    head, params, tail = match.group(1), match.group(2), match.group(3)
    fixed, seen_default = [], False
    for param in _split_params(params):
        name = param.strip()
        name = re.sub(r"^in(\s*:)", r"in_\1", name)
        if name.startswith("*"):
            seen_default = False if name.startswith("**") else seen_default
            fixed.append(name)
            continue
        if "=" in name:
            seen_default = True
        elif seen_default and name not in ("/",):
            name += " = ..."
        fixed.append(name)
    return head + ", ".join(fixed) + tail


def repair(site: Path) -> int:
    changed = 0
    for package in PACKAGES:
        folder = site / package
        if not folder.is_dir():
            raise SystemExit(f"{folder} not found: pip install --no-deps tensorrt-stubs first")
        marker = folder / "py.typed"
        if not marker.exists():
            marker.write_text("")
            changed += 1
        for stub in folder.glob("*.pyi"):
            lines = stub.read_text().splitlines(keepends=True)
            out = []
            for line in lines:
                body = line.rstrip("\n")
                new = repair_signature(body) if body.lstrip().startswith("def ") else body
                if new != body:
                    changed += 1
                out.append(new + ("\n" if line.endswith("\n") else ""))
            stub.write_text("".join(out))
            ast.parse(stub.read_text(), filename=str(stub))  # every stub must parse now
    return changed


if __name__ == "__main__":
    site = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(sysconfig.get_paths()["purelib"])
    print(f"tensorrt-stubs repaired in {site}: {repair(site)} changes")

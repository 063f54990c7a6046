"""A griffe extension for the API reference: the reStructuredText markup in docstrings.

hessinv's docstrings are written to read well in the source and in ``help()``: they refer to
other objects with Sphinx roles (``:func:`ihvp```, ``:class:`~hessinv.Info```,
``:mod:`hessinv.cost```) and introduce code with a literal block (``Example::`` and an
indented block). mkdocstrings renders Markdown, where a role would show up as ``:func:``
followed by code and ``Example::`` would keep its two colons. Before the docstrings are parsed,
this extension turns each literal block into a fenced Python block, and each role into

* a link to the object's entry in the API reference (``[`ihvp`][hessinv.ihvp]``) when the
  target is rendered there (a ``::: identifier`` block of ``docs/api.md``, or one of its public
  members);
* inline code otherwise (a private helper such as ``hessinv._pipeline.build``), so that no
  link can point nowhere and ``mkdocs build --strict`` stays clean.

Targets are resolved as Sphinx would: relative to the enclosing class and module first, then
from the ``hessinv`` package, then as an absolute path. ``~`` shows only the last component.
The docstrings themselves are not changed on disk.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|meth|class|mod|data|attr|obj|exc|const):`(~?)([\w.]+)(?:\(\))?`")
API_PAGE = Path(__file__).resolve().parents[1] / "api.md"
BLOCK = re.compile(r"^::: *([\w.]+) *$")


def rendered(page: Path = API_PAGE) -> list[tuple[str, bool]]:
    """``(identifier, with_members)`` for every ``::: identifier`` block of the API page."""
    lines, out = page.read_text().splitlines(), []
    for i, line in enumerate(lines):
        m = BLOCK.match(line.strip())
        if m:
            options = []
            for nxt in lines[i + 1 :]:
                if not nxt.startswith(" "):
                    break
                options.append(nxt.strip())
            out.append((m.group(1), "members: false" not in options))
    return out


def _lookup(collection, path: str):
    try:
        return collection.get_member(path)
    except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def _canonical(obj) -> str | None:
    try:
        return obj.final_target.path if obj.is_alias else obj.path
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return None


def literal_blocks(text: str) -> str:
    """``Title::``, a blank line and an indented block -> ``Title:`` and a fenced Python block."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and i + 2 < len(lines) and not lines[i + 1].strip():
            indent = len(line) - len(line.lstrip())
            j, block = i + 2, []
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                block.append(lines[j])
                j += 1
            while block and not block[-1].strip():
                block.pop()
                j -= 1
            if block:
                strip = min(len(b) - len(b.lstrip()) for b in block if b.strip())
                pad = " " * indent
                out += [line.rstrip()[:-1], "", pad + "```python"]
                out += [pad + b[strip:] if b.strip() else "" for b in block]
                out += [pad + "```"]
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class RestMarkup(griffe.Extension):
    """Rewrite literal blocks and ``:role:`target``` in every docstring of the ``hessinv`` package."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        if pkg.name != "hessinv":
            return
        self.collection = loader.modules_collection
        self.public = self._public(pkg)
        for obj in self._walk(pkg, set()):
            if obj.docstring is not None and ":" in obj.docstring.value:
                text = literal_blocks(obj.docstring.value)
                obj.docstring.value = ROLE.sub(lambda m, o=obj: self._replace(o, m), text)

    def _public(self, pkg: griffe.Module) -> dict[str, str]:
        """Canonical path -> documented path of every object that docs/api.md renders: each
        ``::: identifier`` there, a module's public members (unless its block says
        ``members: false``), and a class's public members (inherited ones link to the base)."""
        public, classes = {}, []

        def add(path: str, obj) -> None:
            canonical = _canonical(obj)
            if canonical is None:
                return
            public[canonical] = path
            target = obj.final_target if obj.is_alias else obj
            if target.is_class:
                classes.append((canonical, path, target))
                for name, m in target.members.items():  # documented where they are defined
                    if not name.startswith("_") and not m.is_alias:
                        public[f"{canonical}.{name}"] = f"{path}.{name}"

        for path, with_members in rendered():
            obj = _lookup(pkg.modules_collection, path)
            if obj is None:
                continue  # mkdocstrings itself reports an identifier it cannot find
            add(path, obj)
            target = obj.final_target if obj.is_alias else obj
            if target.is_module and with_members:
                for name, member in target.members.items():
                    if member.is_alias and not member.target_path.startswith("hessinv."):
                        continue  # an import such as `math` or `NamedTuple`
                    if not name.startswith("_") and not member.is_module and not member.is_alias:
                        add(f"{path}.{name}", member)
        for canonical, path, target in classes:  # inherited members: link to the base class's entry
            for name, m in target.inherited_members.items():
                if not name.startswith("_") and _canonical(m) in public:
                    public.setdefault(f"{canonical}.{name}", public[_canonical(m)])
        return public

    def _walk(self, obj, seen):
        if obj.path in seen or obj.is_alias:
            return
        seen.add(obj.path)
        yield obj
        for member in obj.members.values():
            if not member.is_alias:
                yield from self._walk(member, seen)

    def _resolve(self, obj, target: str) -> str | None:
        """The documented path of ``target`` as seen from ``obj``, or ``None``."""
        scopes = []
        scope = obj if (obj.is_class or obj.is_module) else obj.parent
        while scope is not None:
            scopes.append(scope.path)
            scope = scope.parent
        candidates = [f"{s}.{target}" for s in scopes] + [f"hessinv.{target}", target]
        for path in candidates:
            found = _lookup(self.collection, path)
            if found is None:
                continue
            canonical = _canonical(found)
            if canonical in self.public:
                return self.public[canonical]
            if path in self.public:
                return self.public[path]
            return None  # found, but not documented: show it as code
        return None

    def _replace(self, obj, match: re.Match) -> str:
        short, target = match.group(1), match.group(2)
        shown = target.rsplit(".", 1)[-1] if short else target
        documented = self._resolve(obj, target)
        return f"[`{shown}`][{documented}]" if documented else f"`{shown}`"

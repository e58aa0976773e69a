"""Griffe extension for the docs build: Sphinx roles in jmf's docstrings become Markdown.

jmf's docstrings follow numpydoc, which cross-references with Sphinx roles
(``:func:`jmf.fit```).  Rendered by mkdocstrings they would show as raw markup,
so this extension rewrites each role when the docstrings are loaded:

* a target documented on the API pages (a ``::: name`` line in ``docs/api/*.md``,
  or a member of such an object) becomes a link, ``[`jmf.fit`][jmf.fit]``;
* any other target (internal ``jmf._src`` names, other libraries) becomes code.

``.. math::`` blocks become code blocks, and the fields of a class (e.g. a
NamedTuple) that its ``Attributes`` section already documents are not listed a
second time as undocumented attributes.  The source files are not changed.
"""

from __future__ import annotations

import glob
import os
import re

import griffe

_HERE = os.path.dirname(os.path.abspath(__file__))
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj):`(~?)([^`<]*?)(?:\s*<([^>]+)>)?`")
_MATH = re.compile(r"^(\s*)\.\. math::[ \t]*(.*)$", re.M)


def _documented() -> set[str]:
    names = set()
    for page in glob.glob(os.path.join(_HERE, "api", "*.md")):
        with open(page, encoding="utf-8") as fh:
            names.update(m.group(1) for m in re.finditer(r"^::: ([\w.]+)\s*$", fh.read(), re.M))
    return names


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx cross-reference roles and ``.. math::`` in every docstring."""

    def __init__(self) -> None:
        super().__init__()
        self.documented = _documented()

    def _linkable(self, target: str) -> bool:
        if target in self.documented:
            return True
        parent = target.rsplit(".", 1)[0]  # a method or attribute of a documented class
        return "." in target and parent in self.documented and not target.rsplit(".", 1)[1].startswith("_")

    def _role(self, m: re.Match) -> str:
        tilde, text, explicit = m.groups()
        target = (explicit or text).strip()
        shown = text.strip() if explicit else (target.rsplit(".", 1)[-1] if tilde else target)
        if self._linkable(target):
            return f"[`{shown}`][{target}]"
        return f"`{shown}`"

    def rewrite(self, text: str) -> str:
        text = _ROLE.sub(self._role, text)

        def math(m: re.Match) -> str:
            indent, inline = m.groups()
            return f"{indent}```\n{indent}{inline}\n{indent}```" if inline else f"{indent}Formula:"

        return _MATH.sub(math, text)

    def on_instance(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = self.rewrite(obj.docstring.value)

    def on_class_members(self, *, cls: griffe.Class, **kwargs) -> None:
        doc = cls.docstring.value if cls.docstring is not None else ""
        if not re.search(r"^\s*Attributes\n\s*-{3,}", doc, re.M):
            return
        for name, member in list(cls.members.items()):
            if (not member.is_alias and member.is_attribute and member.docstring is None
                    and re.search(rf"^\s*{re.escape(name)}\b.*:", doc, re.M)):
                del cls.members[name]

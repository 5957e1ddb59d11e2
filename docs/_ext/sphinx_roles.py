"""A Griffe extension that turns the reStructuredText in prodkit's docstrings into Markdown.

prodkit's docstrings are Google style with two pieces of reStructuredText that Markdown shows
as written: cross-reference roles (``:class:`Stack```, ``:meth:`~Stack.build```) and literal
blocks introduced by ``::``. mkdocstrings renders Markdown, so before the reference pages are
rendered this extension rewrites, in every docstring of the package:

* a role naming a prodkit object into a mkdocstrings cross-reference,
  ``[`Stack.build()`][prodkit.stack.Stack.build]``, the name resolved from where the docstring
  is (as Sphinx does); a role naming anything else (the standard library, structlog) into
  inline code, ``:class:`asyncio.Task``` into `` `asyncio.Task` ``;
* ``Example::`` and the indented block after it into ``Example:`` and a fenced code block
  (``python`` when the block parses as Python, ``text`` otherwise).

The docstrings in the source are untouched: ``help()`` and editors show them as written.
mkdocs.yml loads this file as an extension of the mkdocstrings Python handler.
"""

from __future__ import annotations

import ast
import re
import textwrap
from pathlib import Path
from typing import Any

from griffe import (
    Alias,
    AliasResolutionError,
    Class,
    Extension,
    GriffeLoader,
    Module,
    NameResolutionError,
    Object,
)

#: The reference pages, each ``::: module``.
REFERENCE = Path(__file__).resolve().parent.parent / "reference"
IDENTIFIER = re.compile(r"^::: *(\S+)", re.MULTILINE)
#: ``:class:`Name```, ``:py:meth:`~Stack.build```, ``:func:`title <target>```.
ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|exc|obj|const|type):"
    r"`(?:(?P<title>[^`<]+?)\s*<(?P<explicit>[^`>]+)>|(?P<target>[^`]+))`"
)
#: The roles Sphinx shows with ``()`` after the name.
CALLABLE_ROLES = frozenset({"func", "meth"})
#: A line that introduces a literal block: ``Example::``, ``parameters::`` or a lone ``::``.
LITERAL_MARKER = re.compile(r"^(?P<indent>[ \t]*)(?P<text>.*?)(?P<space>\s?)::[ \t]*$")


class Rendered:
    """The objects the reference pages show, by canonical path and by name.

    The pages are docs/reference/*.md, one ``::: module`` each. A role links only to an object
    they show: a link to anything else (a private helper) would point nowhere. A role whose path
    names no object at all (``~prodkit.ShutdownCoordinator`` for
    ``prodkit.lifecycle.ShutdownCoordinator``) links to the one shown object of that name, if
    there is exactly one, and is inline code otherwise.
    """

    def __init__(self, package: Module) -> None:
        self.package = package
        self.paths: set[str] = set()
        self.by_name: dict[str, set[str]] = {}
        for page in sorted(REFERENCE.glob("*.md")):
            for path in IDENTIFIER.findall(page.read_text()):
                if path == package.path or path.startswith(f"{package.path}."):
                    self._module(package.modules_collection.get_member(path))

    def _module(self, module: Module) -> None:
        self.paths.add(module.path)
        exports = None if module.exports is None else {str(name) for name in module.exports}
        for name, member in module.members.items():
            shown = (name in exports) if exports is not None else not member.is_alias
            if name.startswith("_") or isinstance(member, Module) or not shown:
                continue  # a submodule has a page of its own, if any
            try:
                target = member.final_target if isinstance(member, Alias) else member
            except AliasResolutionError:
                continue  # an import from a package that was not loaded
            self._add(target)

    def _add(self, obj: Object) -> None:
        self.paths.add(obj.canonical_path)
        self.by_name.setdefault(obj.name, set()).add(obj.canonical_path)
        if isinstance(obj, Class):
            for name, member in obj.members.items():
                if not name.startswith("_") and isinstance(member, Object):
                    self._add(member)

    def link(self, path: str) -> str | None:
        """The canonical path of the shown object ``path`` names, if there is one."""
        try:
            found = self.package.modules_collection.get_member(path)
            target = found.final_target if isinstance(found, Alias) else found
        except (KeyError, AliasResolutionError):
            # No such object: a path written wrong, linked to the one shown object of its name.
            same_name = self.by_name.get(path.rsplit(".", 1)[-1], set())
            return next(iter(same_name)) if len(same_name) == 1 else None
        # An object that exists but is not shown (a private helper) gets no link.
        return target.canonical_path if target.canonical_path in self.paths else None


def _link_target(obj: Object, name: str) -> str | None:
    """The full path ``name`` stands for in ``obj``'s docstring, if it is in prodkit."""
    name = name.lstrip(".")
    if name == "prodkit" or name.startswith("prodkit."):
        return name
    head, _, rest = name.partition(".")
    try:
        base = obj.resolve(head)
    except NameResolutionError:
        return None  # a builtin, or a name the docstring's scope does not know
    path = f"{base}.{rest}" if rest else base
    return path if path.startswith("prodkit.") else None


def _role(rendered: Rendered, obj: Object, match: re.Match[str]) -> str:
    """One role as Markdown: a cross-reference to a shown prodkit object, else inline code."""
    target = (match["explicit"] or match["target"]).strip()
    short = target.startswith("~")
    target = target.removeprefix("~")
    if match["title"]:
        shown = match["title"].strip()
    else:
        shown = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
        if match["role"] in CALLABLE_ROLES and not shown.endswith(")"):
            shown += "()"
    path = _link_target(obj, target)
    link = rendered.link(path) if path is not None else None
    return f"[`{shown}`][{link}]" if link is not None else f"`{shown}`"


def _is_python(code: str) -> bool:
    flags = ast.PyCF_ONLY_AST | ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    try:
        compile(code, "<docstring>", "exec", flags=flags, dont_inherit=True)
    except SyntaxError:
        return False
    return True


def literal_blocks(text: str) -> str:
    """Rewrite each reStructuredText literal block (``text::`` + indented lines) as a fence."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        marker = LITERAL_MARKER.match(lines[i])
        after = i + 1
        while after < len(lines) and not lines[after].strip():
            after += 1
        indent = marker["indent"] if marker else ""
        block_starts = (
            marker is not None
            and after > i + 1  # a blank line first, as reStructuredText requires
            and after < len(lines)
            and len(lines[after]) - len(lines[after].lstrip()) > len(indent)
        )
        if marker is None or not block_starts:
            out.append(lines[i])
            i += 1
            continue
        # "Example::" shows "Example:", "parameters ::" shows "parameters", "::" shows nothing.
        lead = marker["text"]
        if lead:
            out += [f"{indent}{lead}{'' if marker['space'] else ':'}", ""]
        end = after
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > len(indent)
        ):
            end += 1
        while not lines[end - 1].strip():
            end -= 1
        code = textwrap.dedent("\n".join(lines[after:end]))
        language = "python" if _is_python(code) else "text"
        out.append(f"{indent}```{language}")
        out += [f"{indent}{line}" if line else "" for line in code.split("\n")]
        out.append(f"{indent}```")
        i = end
    return "\n".join(out)


def markdown(rendered: Rendered, obj: Object, text: str) -> str:
    """``text``, a docstring of ``obj``, with its roles and literal blocks as Markdown."""
    return ROLE.sub(lambda match: _role(rendered, obj, match), literal_blocks(text))


class SphinxRoles(Extension):
    """Rewrite every docstring of a package once it is loaded (names resolve across modules)."""

    def on_package(self, *, pkg: Module, loader: GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the docstrings of ``pkg`` and of everything it defines."""
        self._rewrite(Rendered(pkg), pkg)

    def _rewrite(self, rendered: Rendered, obj: Object) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(rendered, obj, obj.docstring.value)
        for member in obj.members.values():
            # An alias (an import) is skipped: its docstring is rewritten where it is defined.
            if isinstance(member, Object):
                self._rewrite(rendered, member)

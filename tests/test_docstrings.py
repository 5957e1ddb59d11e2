"""The reference is checked against the code: its examples run, its defaults and links are true.

Three rules for the docstrings of ``src/prodkit`` (the API reference renders them, see
``docs/_ext/sphinx_roles.py``):

* **Examples run.** Every ``Example::`` block, in any docstring, runs as written in this
  process (imports included; a block drives its app in-process with ``httpx.ASGITransport``
  and may end with assertions that show the behaviour). Every public middleware, ``Stack`` and
  ``recommended_stack`` has one.
* **Quoted defaults are the code's.** In an ``Arguments:`` section (``Attributes:`` for a
  dataclass), an argument's default is written in one of four forms, each checked against
  ``inspect.signature`` (the dataclass's fields)::

      header_name: the header (default ``"X-Request-ID"``).
      exclude_paths: paths never limited (default :data:`DEFAULT_EXCLUDE_PATHS`).
      format: ``"json"`` (default) or ``"console"``.
      registry: where the metrics go (default: prometheus-client's global ``REGISTRY``).

  The value in inline code is a Python literal or a name in the docstring's scope; a role names
  the default object itself; the last form, prose after ``default:``, is only for a ``None``
  default and says what ``None`` does. Any other "default" in an argument's text fails
  ("defaults to 5", "(default on)"), and so does an argument that quotes its default value
  without saying it is the default (``header_name: the header (X-Request-ID)`` in inline
  code): a default nobody checks goes stale. An entry must name a parameter that exists.
* **Cross-references resolve.** The target of every Sphinx role (``:class:`X```) is an
  importable object, found as Sphinx finds it: the class the docstring belongs to, its module
  (imports under ``TYPE_CHECKING`` included), builtins, then the full dotted path, imported.
  A public docstring's ``prodkit.…`` targets name the public path (``prodkit.asgi.X``), never
  a private module: the reference shows only public paths.

Modules whose docstrings are being rewritten on other branches are marked ``xfail(strict)``
below: once one passes, the mark must go.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import importlib
import inspect
import linecache
import pkgutil
import re
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import pytest

import prodkit

# -- What is documented ------------------------------------------------------------------------


def _modules() -> list[ModuleType]:
    """prodkit and every module under it, private ones included."""
    found = [prodkit]
    for info in pkgutil.walk_packages(prodkit.__path__, "prodkit."):
        found.append(importlib.import_module(info.name))
    return found


MODULES = _modules()


def _is_public(path: str) -> bool:
    return not any(part.startswith("_") for part in path.split("."))


@dataclass
class Documented:
    """One docstring and where it is: the module and class whose names it may use."""

    path: str  # where it is defined: ``prodkit.stack.Stack.build``
    obj: Any
    module: ModuleType
    cls: type | None
    public: bool  # shown in the reference

    @property
    def doc(self) -> str:
        # Its own docstring: inspect.getdoc would fall back to a base class's.
        return inspect.cleandoc(getattr(self.obj, "__doc__", None) or "")


def _definitions(module: ModuleType) -> Iterator[tuple[str, Any]]:
    """The classes and functions ``module`` defines (not those it imports), in source order."""
    tree = ast.parse(inspect.getsource(module))
    for node in tree.body:
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, getattr(module, node.name)


def _class_members(cls: type) -> Iterator[tuple[str, Any]]:
    """The methods (class, static, properties included) and classes defined in ``cls``."""
    for name, value in vars(cls).items():
        if isinstance(value, classmethod | staticmethod):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if inspect.isfunction(value) or inspect.isclass(value):
            yield name, value


def _exported() -> set[int]:
    """The ids of every object a public module lists in ``__all__``."""
    ids: set[int] = set()
    for module in MODULES:
        if _is_public(module.__name__):
            ids.update(id(getattr(module, name)) for name in getattr(module, "__all__", ()))
    return ids


def _documented() -> list[Documented]:
    exported = _exported()
    found: list[Documented] = []
    for module in MODULES:
        found.append(Documented(module.__name__, module, module, None, _is_public(module.__name__)))
        for name, obj in _definitions(module):
            public = id(obj) in exported
            cls = obj if inspect.isclass(obj) else None
            found.append(Documented(f"{module.__name__}.{name}", obj, module, cls, public))
            if cls is None:
                continue
            for member_name, member in _class_members(cls):
                shown = public and not member_name.startswith("_")
                path = f"{module.__name__}.{name}.{member_name}"
                found.append(Documented(path, member, module, cls, shown))
    return found


DOCUMENTED = _documented()


def public_name(obj: Any) -> str | None:
    """Where users import ``obj`` from: the first public module listing it (``prodkit`` first)."""
    for module in MODULES:
        if _is_public(module.__name__):
            for name in getattr(module, "__all__", ()):
                if getattr(module, name) is obj:
                    return f"{module.__name__}.{name}"
    return None


# -- Names as Sphinx finds them ----------------------------------------------------------------


class Unresolved(Exception):
    """A dotted name that names no object."""


def _import_map(module: ModuleType) -> dict[str, str]:
    """Names ``module`` imports at its top level (``if TYPE_CHECKING:`` too) -> full paths."""
    tree = ast.parse(inspect.getsource(module))
    nodes = list(tree.body)
    for node in tree.body:
        if isinstance(node, ast.If):
            nodes += node.body
    names: dict[str, str] = {}
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
    return names


IMPORTS = {module.__name__: _import_map(module) for module in MODULES}


def _attribute_path(obj: Any, rest: list[str]) -> Any:
    for part in rest:
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise Unresolved from None
    return obj


def import_path(path: str) -> Any:
    """The object a full dotted path names: the longest importable module, then attributes."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            module = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        return _attribute_path(module, parts[cut:])
    return _attribute_path(builtins, parts)


def _instance_attributes(cls: type) -> set[str]:
    """Names a class's methods assign on ``self`` (Sphinx documents those as attributes)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return set()
    return {
        node.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
        and isinstance(node.ctx, ast.Store)
    }


def resolve(name: str, module: ModuleType, cls: type | None) -> Any:
    """What ``name``, written in a docstring of ``cls`` (or of ``module``), names.

    Raises :class:`Unresolved` if it names nothing.
    """
    name = name.removeprefix("~").lstrip(".")
    head, *rest = name.split(".")
    if cls is not None:
        if hasattr(cls, head):
            return _attribute_path(getattr(cls, head), rest)
        if not rest and head in _instance_attributes(cls):
            return None  # an attribute set in __init__: it exists, with no object of its own
    if head in vars(module):
        return _attribute_path(vars(module)[head], rest)
    imported = IMPORTS[module.__name__].get(head)
    if imported is not None:
        return import_path(".".join([imported, *rest]))
    return import_path(name)


# -- Rule 3: roles resolve ---------------------------------------------------------------------

#: The roles the docs' Griffe extension turns into links (the same expression).
ROLE = re.compile(
    r":(?:py:)?(?P<role>class|func|meth|mod|data|attr|exc|obj|const|type):"
    r"`(?:(?P<title>[^`<]+?)\s*<(?P<explicit>[^`>]+)>|(?P<target>[^`]+))`"
)


def role_problems(item: Documented) -> list[str]:
    """What is wrong with the roles of one docstring (nothing: an empty list)."""
    problems = []
    for match in ROLE.finditer(item.doc):
        target = (match["explicit"] or match["target"]).strip()
        try:
            resolve(target, item.module, item.cls)
        except Unresolved:
            problems.append(f"{item.path}: {match[0]} names nothing importable")
            continue
        full = target.removeprefix("~")
        if item.public and full.startswith("prodkit.") and not _is_public(full):
            problems.append(
                f"{item.path}: {match[0]} names a private path; the reference shows public "
                "ones only (prodkit.asgi.X, prodkit.<concern>.X)"
            )
    return problems


#: Modules outside this change whose docstrings are being rewritten on their own branches
#: (issue 22): their references are known to be broken. The marks are strict: remove a module
#: here once it passes.
BEING_REWRITTEN = "docstrings being rewritten on another branch (issue 22)"
BROKEN_ROLES: set[str] = set()


def _by_module(broken: set[str]) -> list[Any]:
    names = [module.__name__ for module in MODULES]
    assert broken <= set(names), f"not modules: {broken - set(names)}"
    return [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(reason=BEING_REWRITTEN, strict=True)]
            if name in broken
            else [],
            id=name,
        )
        for name in names
    ]


@pytest.mark.parametrize("module", _by_module(BROKEN_ROLES))
def test_every_role_names_an_importable_object(module: str) -> None:
    problems = [
        p for item in DOCUMENTED if item.module.__name__ == module for p in role_problems(item)
    ]
    assert not problems, "\n".join(problems)


def test_roles_are_resolved_as_sphinx_resolves_them() -> None:
    from prodkit import stack

    assert resolve("Stack.build", stack, None) is stack.Stack.build
    assert resolve("aclose", stack, stack.Stack) is stack.Stack.aclose
    assert resolve("~prodkit.asgi.ClientAddressResolver", stack, None) is not None
    assert resolve("structlog.contextvars.bind_contextvars", stack, None) is not None
    assert resolve("str.format", stack, None) is str.format
    for wrong in ("prodkit.ShutdownCoordinator", "prodkit.route_template", "Stack.nothing"):
        with pytest.raises(Unresolved):
            resolve(wrong, stack, None)


def test_a_private_path_in_a_public_docstring_is_refused() -> None:
    def documented() -> None:
        """See :func:`prodkit._core.routing.route_template` and :class:`prodkit.asgi.Scope`."""

    item = Documented("here", documented, prodkit, None, public=True)
    [problem] = role_problems(item)
    assert "prodkit._core.routing.route_template" in problem
    assert not role_problems(dataclasses.replace(item, public=False))


# -- Rule 2: quoted defaults are the code's ----------------------------------------------------

SECTION = re.compile(r"^(?P<indent> *)(?P<title>Arguments|Args|Parameters|Attributes): *$")
ENTRY = re.compile(r"^(?P<names>\**\w+(?:, \**\w+)*)(?: \([^)]*\))?: ?(?P<text>.*)$")
# The four forms of a quoted default, in the module docstring's order, then any other word.
CODE_DEFAULT = re.compile(r"\bdefault ``(?P<code>[^`]+)``", re.IGNORECASE)
ROLE_DEFAULT = re.compile(rf"\bdefault (?P<shown>{ROLE.pattern})", re.IGNORECASE)
CODE_THEN_DEFAULT = re.compile(r"``(?P<code>[^`]+)`` \(default(?=[),;])", re.IGNORECASE)
PROSE_DEFAULT = re.compile(r"\bdefault:", re.IGNORECASE)
ANY_DEFAULT = re.compile(r"\bdefault(?:s|ed)?\b", re.IGNORECASE)
#: Inline code, a role: text in which "default" and values are not prose.
LITERAL = re.compile(rf"``[^`]+``|{ROLE.pattern}")
NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.])")
NO_DEFAULT = inspect.Parameter.empty


@dataclass
class Entry:
    """One argument of a docstring's ``Arguments:`` section: its names and its text."""

    names: list[str]
    text: str


def argument_sections(doc: str) -> Iterator[tuple[str, list[Entry]]]:
    """The ``Arguments:``-like sections of a Google-style docstring, entry by entry."""
    lines = doc.split("\n")
    i = 0
    while i < len(lines):
        section = SECTION.match(lines[i])
        i += 1
        if section is None:
            continue
        indent = len(section["indent"])
        entries: list[Entry] = []
        while i < len(lines):
            line = lines[i]
            depth = len(line) - len(line.lstrip())
            if line.strip() and depth <= indent:
                break
            entry = ENTRY.match(line.strip()) if depth == indent + 4 else None
            if entry is not None:
                names = [name.lstrip("*") for name in entry["names"].split(", ")]
                entries.append(Entry(names, entry["text"]))
            elif entries and line.strip():
                entries[-1].text += " " + line.strip()
            i += 1
        yield section["title"], entries


def _defaults(item: Documented, title: str) -> dict[str, Any] | None:
    """Each documented name's default (``NO_DEFAULT`` if required), or ``None``: not checked."""
    obj = item.obj
    if title == "Attributes":
        if not (inspect.isclass(obj) and dataclasses.is_dataclass(obj)):
            return None  # a class's attributes, not arguments
        defaults: dict[str, Any] = {}
        for field in dataclasses.fields(obj):
            if field.default is not dataclasses.MISSING:
                defaults[field.name] = field.default
            elif field.default_factory is not dataclasses.MISSING:
                defaults[field.name] = field.default_factory()
            else:
                defaults[field.name] = NO_DEFAULT
        return defaults
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return None
    defaults = {name: p.default for name, p in signature.parameters.items()}
    if dataclasses.is_dataclass(obj):  # a field's default_factory: what it makes
        for field in dataclasses.fields(obj):
            if field.default_factory is not dataclasses.MISSING and field.name in defaults:
                defaults[field.name] = field.default_factory()
    return defaults


def _value(code: str, item: Documented) -> Any:
    """The value ``code`` (a literal, or a dotted name in the docstring's scope) stands for."""
    try:
        return ast.literal_eval(code)
    except (ValueError, SyntaxError):
        pass
    if not re.fullmatch(r"[A-Za-z_][\w.]*", code):
        raise Unresolved(f"``{code}`` is neither a Python literal nor a name")
    try:
        return resolve(code, item.module, item.cls)
    except Unresolved:
        raise Unresolved(f"``{code}`` names nothing here") from None


def _same(quoted: Any, default: Any) -> bool:
    """Whether a quoted value is the default: the same object, or an equal one of its type."""
    if quoted is default:
        return True
    if callable(default) or isinstance(quoted, bool) or isinstance(default, bool):
        return False  # a function, True or False is the default only if it is that very one
    if isinstance(quoted, int | float) and isinstance(default, int | float):
        return quoted == default  # 2 is 2.0
    return type(quoted) is type(default) and bool(quoted == default)


def _quotes_value(text: str, default: Any) -> bool:
    """Whether ``text`` shows ``default``'s value (as inline code or a bare number)."""
    if default is NO_DEFAULT or default is None or isinstance(default, bool):
        return False
    shown = [match[0].strip("`") for match in LITERAL.finditer(text) if match[0][:1] == "`"]
    if isinstance(default, str) and default and default in shown:
        return True
    for code in shown:
        try:
            if _same(ast.literal_eval(code), default):
                return True
        except (ValueError, SyntaxError):
            continue
    if isinstance(default, int | float):
        return any(float(number) == default for number in NUMBER.findall(LITERAL.sub("", text)))
    return False


def default_problems(item: Documented) -> list[str]:
    """What is wrong with the arguments' defaults in one docstring (nothing: empty)."""
    problems = []
    for title, entries in argument_sections(item.doc):
        defaults = _defaults(item, title)
        if defaults is None:
            continue
        for entry in entries:
            problems += _entry_problems(item, entry, defaults)
    return problems


def _entry_problems(item: Documented, entry: Entry, defaults: dict[str, Any]) -> list[str]:
    where = f"{item.path}, argument {', '.join(entry.names)}"
    unknown = [name for name in entry.names if name not in defaults]
    if unknown:
        return [f"{where}: no parameter named {', '.join(unknown)}"]
    values = [defaults[name] for name in entry.names]
    actual = " / ".join("(required)" if v is NO_DEFAULT else f"``{v!r}``" for v in values)
    problems = []
    text = entry.text
    # (how the docstring shows it, the value or role target it quotes, whether it is a role)
    quoted = [(f"default ``{m['code']}``", m["code"], False) for m in CODE_DEFAULT.finditer(text)]
    quoted += [
        (f"``{m['code']}`` (default", m["code"], False) for m in CODE_THEN_DEFAULT.finditer(text)
    ]
    quoted += [
        (f"default {m['shown']}", m["explicit"] or m["target"], True)
        for m in ROLE_DEFAULT.finditer(text)
    ]
    for shown, code, is_role in quoted:
        try:
            found = resolve(code, item.module, item.cls) if is_role else _value(code, item)
        except Unresolved as exc:
            problems.append(f"{where}: {shown}: {exc or 'names nothing importable'}")
            continue
        if not all(_same(found, default) for default in values):
            problems.append(f"{where}: the docstring says {shown}, the code's default is {actual}")
    prose = PROSE_DEFAULT.findall(text)
    if prose and not all(value is None for value in values):
        problems.append(
            f"{where}: 'default: <prose>' is for a None default; the code's default is {actual}:"
            " write default ``<value>``"
        )
    # Every other "default" is prose nobody checks: it must be one of the forms above.
    rest = CODE_DEFAULT.sub("", ROLE_DEFAULT.sub("", CODE_THEN_DEFAULT.sub("", text)))
    rest = PROSE_DEFAULT.sub("", LITERAL.sub("", rest))
    loose = ANY_DEFAULT.findall(rest)
    for word in loose:
        problems.append(
            f"{where}: {word!r} in prose; write default ``<value>`` (the code's default is "
            f"{actual}), default: <what None does>, or reword"
        )
    if not (quoted or prose or loose) and any(_quotes_value(text, v) for v in values):
        problems.append(
            f"{where}: quotes its default value without saying so; write default ``<value>``"
            f" (the code's default is {actual})"
        )
    return problems


#: See :data:`BROKEN_ROLES`.
LOOSE_DEFAULTS: set[str] = set()


@pytest.mark.parametrize("module", _by_module(LOOSE_DEFAULTS))
def test_every_quoted_default_is_the_codes(module: str) -> None:
    problems = [
        p for item in DOCUMENTED if item.module.__name__ == module for p in default_problems(item)
    ]
    assert not problems, "\n".join(problems)


def _documented_function(doc: str) -> Documented:
    def function(
        header_name: str = "X-Request-ID",
        timeout: float = 0.5,
        registry: object = None,
        exclude: tuple[str, ...] = ("/metrics",),
        format: str = "json",
        *,
        required: int,
    ) -> None:
        pass

    function.__doc__ = doc
    return Documented("function", function, prodkit, None, public=True)


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        # The checked forms, true.
        ("header_name: the header (default ``'X-Request-ID'``).", None),
        ('header_name: the header (default ``"X-Request-ID"``).', None),
        ("timeout: seconds (default ``0.5``).", None),
        ("registry: where (default: the global one).", None),
        ("exclude: paths (default ``('/metrics',)``).", None),
        ('format: ``"json"`` (default) or ``"console"``.', None),
        ('format: ``"json"`` (default, a JSON object per line) or ``"console"``.', None),
        ("registry: where ``registry=`` (default: the global one).", None),
        ("required: a number, always given.", None),
        ("header_name: the ``default`` header is the one sent (default ``'X-Request-ID'``).", None),
        # The checked forms, stale: the reason this test exists.
        ("timeout: seconds (default ``1.0``).", "says default ``1.0``"),
        ("header_name: the header (default ``'X-Correlation-ID'``).", "'X-Request-ID'"),
        ('format: ``"console"`` (default) or ``"json"``.', 'says ``"console"`` (default'),
        ("exclude: paths (default ``['/metrics']``).", "says default"),
        ("required: a number (default ``1``).", "(required)"),
        ("registry: where (default ``REGISTRY``).", "names nothing here"),
        ("timeout: seconds (default: half a second).", "is for a None default"),
        # Unchecked prose, and quoted values that do not say they are the default.
        ("timeout: seconds (default 0.5).", "'default' in prose"),
        ("timeout: seconds. Defaults to 0.5.", "'Defaults' in prose"),
        ("header_name: the header (``X-Request-ID``).", "without saying so"),
        ("timeout: seconds (0.5).", "without saying so"),
        ("nothing: an argument the function does not take.", "no parameter named nothing"),
    ],
)
def test_the_defaults_check_reads_the_convention(entry: str, problem: str | None) -> None:
    item = _documented_function(f"A function.\n\nArguments:\n    {entry}\n")
    problems = default_problems(item)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1, problems
        assert problem in problems[0]


def test_argument_sections_follow_google_style() -> None:
    doc = (
        "Summary.\n\nArguments:\n    a: first,\n        continued.\n    b, c: together.\n"
        "    **options: the rest.\n\nExample::\n\n    x: not an argument\n"
    )
    [(title, entries)] = argument_sections(doc)
    assert title == "Arguments"
    assert [(e.names, e.text) for e in entries] == [
        (["a"], "first, continued."),
        (["b", "c"], "together."),
        (["options"], "the rest."),
    ]


# -- Rule 1: examples run ----------------------------------------------------------------------

EXAMPLE_MARKER = re.compile(r"^(?P<indent> *)Examples?::\s*$")


@dataclass
class Example:
    """One ``Example::`` block of a docstring."""

    where: str
    code: str


def examples(doc: str) -> list[str]:
    """The code of every ``Example::`` block (the indented lines after it), dedented."""
    lines = doc.split("\n")
    found = []
    for i, line in enumerate(lines):
        marker = EXAMPLE_MARKER.match(line)
        if marker is None:
            continue
        indent = len(marker["indent"])
        end = i + 1
        while end < len(lines) and (
            not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent
        ):
            end += 1
        code = textwrap.dedent("\n".join(lines[i + 1 : end])).strip("\n")
        if code:
            found.append(code + "\n")
    return found


def _examples() -> list[Example]:
    found = []
    for item in DOCUMENTED:
        name = public_name(item.obj) or item.path
        blocks = examples(item.doc)
        for number, code in enumerate(blocks, 1):
            suffix = f" #{number}" if len(blocks) > 1 else ""
            found.append(Example(name + suffix, code))
    return found


EXAMPLES = _examples()
#: Examples that do not run yet (being rewritten on another branch); strict, as above.
EXAMPLES_NOT_RUNNING: set[str] = set()


@pytest.mark.parametrize(
    "example",
    [
        pytest.param(
            example,
            marks=[pytest.mark.xfail(reason=BEING_REWRITTEN, strict=True)]
            if example.where in EXAMPLES_NOT_RUNNING
            else [],
            id=example.where,
        )
        for example in EXAMPLES
    ],
)
def test_example_runs_as_written(example: Example) -> None:
    filename = f"<example of {example.where}>"
    # Registered so that a failure's traceback shows the example's own lines.
    linecache.cache[filename] = (len(example.code), None, example.code.splitlines(True), filename)
    code = compile(example.code, filename, "exec", dont_inherit=True)
    # Our own docstrings, run in a namespace of their own: what a reader who pastes them gets.
    exec(code, {"__name__": "__example__"})  # noqa: S102


#: The entry points that must show an example: every public middleware, and the stack.
ENTRY_POINTS = sorted(
    {
        f"{module.__name__}.{name}"
        for module in MODULES
        if _is_public(module.__name__)
        for name in getattr(module, "__all__", ())
        if name.endswith("Middleware") and inspect.isclass(getattr(module, name))
    }
    | {"prodkit.Stack", "prodkit.recommended_stack", "prodkit.metrics.MetricsApp"}
)
#: Entry points without an example yet (being rewritten on another branch); strict, as above.
NO_EXAMPLE_YET: set[str] = set()


def _entry_points() -> list[Any]:
    # One id per object, under its public name (prodkit.cors.CORSMiddleware is prodkit's).
    objects = {public_name(import_path(path)): path for path in ENTRY_POINTS}
    assert set(objects) >= NO_EXAMPLE_YET, f"not entry points: {NO_EXAMPLE_YET - set(objects)}"
    return [
        pytest.param(
            name,
            marks=[pytest.mark.xfail(reason=BEING_REWRITTEN, strict=True)]
            if name in NO_EXAMPLE_YET
            else [],
            id=name,
        )
        for name in sorted(filter(None, objects))
    ]


@pytest.mark.parametrize("name", _entry_points())
def test_every_public_middleware_shows_an_example(name: str) -> None:
    doc = inspect.cleandoc(import_path(name).__doc__ or "")
    assert examples(doc), f"{name} has no Example:: block"


def test_examples_are_found_as_the_docs_show_them() -> None:
    doc = (
        "Summary.\n\nExample::\n\n    app = Stack()\n\n    async def main():\n"
        "        await app.aclose()\n\nArguments:\n    a: one.\n"
    )
    assert examples(doc) == ["app = Stack()\n\nasync def main():\n    await app.aclose()\n"]
    assert examples("No example::\n\n    text\n") == []

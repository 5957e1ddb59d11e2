"""The project's promises about itself: import hygiene, README and CI agree."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAMEWORKS_AND_DRIVERS = (
    "starlette",
    "fastapi",
    "litestar",
    "asyncpg",
    "redis",
    "uvicorn",
    "httpx",
)


def test_import_prodkit_imports_no_framework_or_driver() -> None:
    code = (
        "import sys, prodkit\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FRAMEWORKS_AND_DRIVERS!r})\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def _commands(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if ".venv/bin/python -m" in line]


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    test_commands = [c for c in _commands(readme) if "pytest" in c]
    assert len(test_commands) == 1, "the README shows exactly one test command"
    assert test_commands[0] in _commands(ci)


def test_readme_serves_the_example_with_one_command() -> None:
    readme = (ROOT / "README.md").read_text()
    assert any(re.search(r"-m examples\.funds\b", c) for c in _commands(readme))


def test_every_public_name_is_importable_and_documented() -> None:
    import prodkit

    for name in prodkit.__all__:
        obj = getattr(prodkit, name)
        if (
            callable(obj)
            and not name.startswith("_")
            and getattr(obj, "__module__", "").startswith("prodkit")
        ):
            assert obj.__doc__, f"prodkit.{name} has no docstring"


PUBLIC_MODULES = (
    "prodkit",
    "prodkit.asgi",
    "prodkit.stack",
    "prodkit.settings",
    "prodkit.requestid",
    "prodkit.errors",
    "prodkit.logging",
    "prodkit.metrics",
    "prodkit.health",
    "prodkit.lifecycle",
    "prodkit.shedding",
    "prodkit.ratelimit",
    "prodkit.cors",
    "prodkit.security_headers",
    "prodkit.idempotency",
    "prodkit.cache",
    "prodkit.timeouts",
    "prodkit.testing",
)


def test_every_public_module_has_an_api_page_in_the_site() -> None:
    import yaml

    mkdocs = (ROOT / "mkdocs.yml").read_text()
    # The config names Python objects with a YAML tag; only the nav matters here.
    config = yaml.safe_load(mkdocs[mkdocs.index("\nnav:") :])
    [reference] = [entry["API reference"] for entry in config["nav"] if "API reference" in entry]
    pages = {name: path for entry in reference for name, path in entry.items()}
    assert sorted(pages) == sorted(PUBLIC_MODULES)
    for module, path in pages.items():
        assert (ROOT / "docs" / path).read_text().count(f"::: {module}\n") == 1, path


def test_prodkit_is_imported_from_the_tree_under_test() -> None:
    # CI runs part of the suite against the installed wheel (.ci/run sets the variable): this
    # proves that run imported the wheel's files, and every other run the source tree.
    import prodkit

    where = Path(prodkit.__file__).resolve()
    if os.environ.get("PRODKIT_TEST_INSTALLED_WHEEL"):
        assert where.is_relative_to(Path(sys.prefix).resolve()), where
        assert not where.is_relative_to(ROOT), where
    else:
        assert where.is_relative_to(ROOT / "src"), where


def test_packaging_metadata_says_asgi_and_takes_the_version_from_the_tag() -> None:
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    classifiers = pyproject["project"]["classifiers"]
    assert not [c for c in classifiers if "WSGI" in c]
    assert "version" in pyproject["project"]["dynamic"]
    version = pyproject["tool"]["hatch"]["version"]
    assert version["source"] == "vcs"
    assert version["fallback-version"]  # a checkout without tags still installs


def test_the_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    import prodkit

    assert prodkit.__version__ == version("prodkit-asgi")


def _install_lines() -> list[tuple[str, str]]:
    # Every `pip install …` line of the README, the docs, the contributor guide and the
    # messages prodkit prints (a missing extra names the install line to run).
    sources = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").rglob("*.md"))]
    sources += sorted((ROOT / "src" / "prodkit").rglob("*.py"))
    lines = []
    for path in sources:
        for line in path.read_text().splitlines():
            if re.search(r"\bpip install\b", line) and "-e " not in line:
                lines.append((path.relative_to(ROOT).as_posix(), line))
    return lines


def test_every_install_line_names_the_distribution_in_pyproject() -> None:
    # The import name is `prodkit`; the distribution is not (`prodkit` on the package index is
    # another project), so `pip install prodkit` would install someone else's code.
    import tomllib

    import prodkit.__about__

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name != "prodkit"
    assert name == prodkit.__about__.DISTRIBUTION
    lines = _install_lines()
    assert len(lines) >= 4  # the getting-started page alone has four
    wrong = []
    for where, line in lines:
        for target in re.findall(r"pip install(?: -\w+)* ['\"]?([A-Za-z0-9_.\-]+)", line):
            if target.startswith("prodkit") and target != name:
                wrong.append((where, line.strip()))
    assert wrong == [], f"install lines must say {name!r}"
    # Extras that name the package itself (`all`, `dev`) use the same name.
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.findall(r'"prodkit\[', pyproject) == []


_PRIVATE_IMPORTS_ALLOWED: frozenset[str] = frozenset()
_PRIVATE_NAME = re.compile(r"prodkit\.([a-z][a-z0-9_]*)\.(_[A-Za-z0-9_]*)")


def _imported_names(tree: ast.AST, package: str) -> list[tuple[int, str]]:
    """Every module or name ``tree`` imports, patches by name or reaches by attributes.

    Import statements, ``import_module("...")``, ``monkeypatch.setattr("...", ...)`` and
    ``patch("...")`` targets, and dotted reads such as ``prodkit.logging._direct.writer``.
    """
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's package
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr)
            in ("import_module", "importorskip", "__import__", "setattr", "patch", "delattr")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            # An import by name, or a patch target ("prodkit.logging._direct.direct_writer").
            found.append((node.lineno, node.args[0].value))
        elif isinstance(node, ast.Attribute) and ast.unparse(node).startswith("prodkit."):
            found.append((node.lineno, ast.unparse(node)))  # a module reached by attributes
    return found


def _concern_of(relative: Path) -> str | None:
    """The concern a file belongs to: ``src/prodkit/<concern>/`` or ``tests/<concern>/``."""
    parts = relative.parts
    if parts[:2] == ("src", "prodkit") and len(parts) > 3:
        return parts[2]
    if parts[0] == "tests" and len(parts) > 2:
        return parts[1]
    return None


def test_no_module_imports_another_concerns_private_modules() -> None:
    # A concern's private modules (prodkit.<concern>._<name>) are its own business: its own
    # code and its own tests (src/prodkit/<concern>/, tests/<concern>/) may import them;
    # everything else uses the public names of prodkit.<concern>. prodkit._core is shared.
    offences: set[str] = set()
    for top in ("src", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / top).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative.as_posix() in _PRIVATE_IMPORTS_ALLOWED:
                continue
            package = ".".join(relative.with_suffix("").parts[1 if top == "src" else 0 : -1])
            owner = _concern_of(relative)
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, name in _imported_names(tree, package):
                match = _PRIVATE_NAME.match(name)
                if match and match.group(1) != owner:
                    offences.add(f"{relative}:{line}: {match.group(0)}")
    assert sorted(offences) == []


#: Underscored names of other packages that their documentation tells users to use.
_DOCUMENTED_UNDERSCORE_NAMES = {
    "os._exit": "the standard library's exit without clean-up, for a forked child",
    "slowapi._rate_limit_exceeded_handler": "slowapi's documented 429 handler (a peer benchmark)",
}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private_lookups(tree: ast.AST) -> list[tuple[int, str]]:
    """Where ``tree`` imports, or reads through an imported name, another package's private name.

    Also every ``__dict__`` read, and ``getattr``/``hasattr`` of a private name written out: a
    look into an object's private state, whoever owns it.
    """
    imported: dict[str, str] = {}  # local name -> the dotted name it was imported as
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                imported[(alias.asname or alias.name).split(".")[0]] = (
                    alias.name if alias.asname else alias.name.split(".")[0]
                )
                if not alias.name.startswith("prodkit") and any(
                    _private(part) for part in alias.name.split(".")
                ):
                    found.append((node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in ("prodkit", "tests", "benchmarks", "examples"):
                continue
            for alias in node.names:
                name = f"{node.module}.{alias.name}"
                imported[alias.asname or alias.name] = name
                if any(_private(part) for part in name.split(".")):
                    found.append((node.lineno, name))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr == "__dict__":
                found.append((node.lineno, f"{ast.unparse(node.value)}.__dict__"))
            elif _private(node.attr):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in imported:
                    dotted = ast.unparse(node).replace(root.id, imported[root.id], 1)
                    if not dotted.startswith("prodkit"):
                        found.append((node.lineno, dotted))
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("getattr", "hasattr")
            and len(node.args) > 1
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
            and _private(node.args[1].value)
            and not node.args[1].value.startswith("_prodkit")  # prodkit's own marker
        ):
            found.append((node.lineno, f"{node.func.id}(..., {node.args[1].value!r})"))
    return found


def test_no_module_reads_another_packages_private_names() -> None:
    # Only public APIs of dependencies (docs/contributing.md, "Fast paths"): no import of a
    # private module or name, no private attribute read through an imported name, no
    # ``__dict__`` and no getattr of a private name (the access log once looked for
    # structlog's ``_nop`` and in a lazy proxy's ``__dict__``).
    offences: set[str] = set()
    for top in ("src", "tests", "benchmarks", "examples"):
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for line, name in _private_lookups(tree):
                if name not in _DOCUMENTED_UNDERSCORE_NAMES:
                    offences.add(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert sorted(offences) == []

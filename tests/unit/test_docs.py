"""The documentation is tested: the configuration reference matches config.py, and the
examples in docs/*.md run.

Conventions for fenced blocks in docs/*.md:

- ```python blocks run, in order, in one namespace per document, inside
  ``sqsd.testing.queues()`` (sends go to memory, nothing reaches AWS or a daemon), with the
  receiver registry restored afterwards.
- ```python no-run blocks are skipped. Use them only for code that needs a running daemon,
  AWS or another library, and start them with a comment that says so.
- A python or toml block whose first line is a comment naming a file (``# receivers.py``,
  ``# sqsd.toml``) is saved under that name in a scratch working directory on ``sys.path``;
  a Python file is then imported as a module (instead of run), so later blocks can import
  it.
- Functions named ``test_*`` that a block defines are called afterwards, as pytest would:
  with the ``sqsd_queues`` fixture when they ask for it, honouring ``@pytest.mark.sqsd``.
- ```toml blocks must be valid sqsd configuration.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import re
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import sqsd.producer
import sqsd.testing
from sqsd import config as config_module
from sqsd.config import QUEUE_KEYS, SQSD_KEYS, QueueSettings, Settings
from sqsd.registry import REGISTRY

DOCS = Path(__file__).resolve().parents[2] / "docs"
FILE_COMMENT = re.compile(r"#\s*([\w-]+\.(?:py|toml))\b")
TABLE_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*[^|]*\|\s*`([^`]*)`\s*\|")


@dataclass
class Block:
    doc: str
    line: int  # line of the first code line in the document
    info: str  # the fence's info string: "python", "python no-run", "toml", ...
    text: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def runs(self) -> bool:
        return "no-run" not in self.info.split()

    @property
    def filename(self) -> str | None:
        first = self.text.lstrip("\n").partition("\n")[0]
        match = FILE_COMMENT.match(first)
        return match.group(1) if match else None

    def compile(self) -> Any:
        """Compiled so that tracebacks name the document and its line numbers."""
        return compile("\n" * (self.line - 1) + self.text, f"docs/{self.doc}", "exec")


def blocks(doc: Path) -> list[Block]:
    found: list[Block] = []
    info: str | None = None
    lines: list[str] = []
    start = 0
    for number, line in enumerate(doc.read_text().splitlines(), 1):
        if info is None and line.startswith("```"):
            info, lines, start = line[3:].strip(), [], number + 1
        elif info is not None and line.strip() == "```":
            found.append(Block(doc.name, start, info, "\n".join(lines) + "\n"))
            info = None
        elif info is not None:
            lines.append(line)
    assert info is None, f"docs/{doc.name}: a code block is not closed"
    return found


def documents_with(language: str) -> list[Path]:
    return [
        doc for doc in sorted(DOCS.glob("*.md")) if any(b.language == language for b in blocks(doc))
    ]


# -- (a) the configuration reference --------------------------------------------------------


def documented_keys() -> dict[str, dict[str, str]]:
    """``{"sqsd": {key: default}, "queue": {key: default}}`` from configuration.md's tables."""
    sections: dict[str, dict[str, str]] = {"sqsd": {}, "queue": {}}
    current: dict[str, str] | None = None
    for line in (DOCS / "configuration.md").read_text().splitlines():
        if line.startswith("## "):
            heading = line.lower()
            current = (
                sections["sqsd"]
                if "[sqsd]" in heading
                else sections["queue"]
                if "queue keys" in heading
                else None
            )
        elif current is not None and (match := TABLE_ROW.match(line)):
            key, default = match.groups()
            assert key not in current, f"configuration.md lists {key!r} twice"
            current[key] = default
    return sections


@pytest.mark.parametrize(
    ("section", "keys"), [("sqsd", SQSD_KEYS), ("queue", QUEUE_KEYS)], ids=["sqsd", "queue"]
)
def test_configuration_reference_lists_exactly_the_keys(section: str, keys: dict) -> None:
    documented = documented_keys()[section]
    missing, unknown = sorted(set(keys) - set(documented)), sorted(set(documented) - set(keys))
    assert not missing, f"keys missing from docs/configuration.md: {missing}"
    assert not unknown, f"docs/configuration.md lists keys that don't exist: {unknown}"


@pytest.mark.parametrize(
    ("section", "keys", "defaults"),
    [("sqsd", SQSD_KEYS, Settings()), ("queue", QUEUE_KEYS, QueueSettings(name="q"))],
    ids=["sqsd", "queue"],
)
def test_configuration_reference_defaults_match_the_code(
    section: str, keys: dict, defaults: Any
) -> None:
    for key, text in documented_keys()[section].items():
        value = tomllib.loads(f"value = {text}")["value"]
        with contextlib.suppress(ValueError):  # on_error's "" is outside its choices
            value = keys[key].convert(value)
        assert value == getattr(defaults, key), f"configuration.md: default of {key}"


# -- (b) the examples -------------------------------------------------------------------------


@pytest.fixture
def scratch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory on sys.path; the registry and the imported modules are restored."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sqsd.producer, "make_client", no_aws)
    saved = dict(REGISTRY)
    yield tmp_path
    REGISTRY.clear()
    REGISTRY.update(saved)


def no_aws(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("a runnable docs example reached for AWS; fence it as python no-run")


@pytest.mark.parametrize("doc", documents_with("python"), ids=lambda doc: doc.name)
def test_python_examples_run(doc: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    namespace: dict[str, Any] = {"__name__": f"docs_{doc.stem.replace('-', '_')}"}
    with sqsd.testing.queues() as backend:
        for block in blocks(doc):
            if block.language == "toml" and block.filename:
                (scratch / block.filename).write_text(block.text)
            if block.language != "python":
                continue
            if not block.runs:
                assert block.text.lstrip().startswith("#"), (
                    f"docs/{doc.name}:{block.line}: start a no-run block with a comment "
                    "saying why it cannot run"
                )
                continue
            defined = run_block(block, namespace, scratch, monkeypatch)
            for name, value in defined.items():
                if name.startswith("test_") and inspect.isfunction(value):
                    call_test(value)
            assert getattr(sqsd.producer._producer, "backend", None) is backend, (
                f"docs/{doc.name}:{block.line}: the example replaced the test-mode producer"
            )


def run_block(
    block: Block, namespace: dict[str, Any], scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """Run one block; return what it defined (a module's globals for a file block)."""
    filename = block.filename
    if filename is None:
        before = dict(namespace)
        exec(block.compile(), namespace)
        return {k: v for k, v in namespace.items() if before.get(k) is not v}
    (scratch / filename).write_text(block.text)
    module_name = filename.removesuffix(".py")
    monkeypatch.delitem(sys.modules, module_name, raising=False)
    importlib.invalidate_caches()
    module = importlib.import_module(module_name)
    assert Path(module.__file__ or "").parent == scratch, f"{module_name} shadowed"
    return vars(module)


def call_test(fn: Any) -> None:
    """Call a test function from the docs as pytest would, with sqsd_queues if it asks."""
    parameters = list(inspect.signature(fn).parameters)
    if not parameters:
        fn()
        return
    assert parameters == ["sqsd_queues"], f"{fn.__name__}: docs tests get only sqsd_queues"
    marks = [mark for mark in getattr(fn, "pytestmark", []) if mark.name == "sqsd"]
    with sqsd.testing.queues(**(marks[0].kwargs if marks else {})) as queues:
        fn(queues)


@pytest.mark.parametrize("doc", documents_with("toml"), ids=lambda doc: doc.name)
def test_toml_examples_are_valid_configuration(doc: Path) -> None:
    for block in blocks(doc):
        if block.language == "toml":
            where = f"docs/{doc.name}:{block.line}"
            config_module.parse(tomllib.loads(block.text), where)


def test_the_guides_have_runnable_examples() -> None:
    for name in ("getting-started.md", "api.md", "migration.md"):
        runnable = [b for b in blocks(DOCS / name) if b.language == "python" and b.runs]
        assert runnable, f"docs/{name} has no runnable python example"


SHARED_TMP_SOCKET = re.compile(r"/tmp/[\w.-]*\.sock\b")


def test_no_example_puts_the_control_socket_in_a_shared_directory() -> None:
    """Another local user could take a name in /tmp first (issue #11): the demo, the example
    configuration and the docs use a private directory."""
    root = DOCS.parent
    files = [*DOCS.glob("*.md"), root / "README.md", *root.glob("etc/*.toml"),
             root / "etc" / "demo.py"]
    found = [f"{path.relative_to(root)}:{number}: {line.strip()}"
             for path in files if path.exists()
             for number, line in enumerate(path.read_text().splitlines(), 1)
             if SHARED_TMP_SOCKET.search(line)]
    assert not found, "\n".join(found)

"""Every ```python block in README.md and docs/*.md runs: the documented API is the real one.

Each document's blocks run in order in one namespace (like a notebook: later blocks use earlier
names), in a temporary working directory so that examples writing files leave nothing behind.

A block may wait for code another branch brings: an HTML comment ``<!-- needs: NAME -->`` on
the line before its fence. Such a block is not run with its document; it gets a test of its own
that is skipped with the reason in :data:`WAITING_FOR`, and the marker is removed once the code
has landed. An unknown NAME fails, so a typo cannot hide a block.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
LIBRARY = DOCS / "library.md"

#: What a marked block waits for, and why: the pytest skip reason.
WAITING_FOR: dict[str, str] = {}  # none now: every block runs

_BLOCK = re.compile(
    r"(?:^<!--[ \t]*needs:[ \t]*(?P<needs>[\w.-]+)[ \t]*-->[ \t]*\n)?^```python[ \t]*\n(?P<code>.*?)^```[ \t]*$",
    re.S | re.M,
)


@dataclass(frozen=True)
class Block:
    """One ```python block: its code, its 1-based number in the document, what it waits for."""

    code: str
    number: int
    needs: str | None


def python_blocks(text: str) -> list[Block]:
    return [Block(m.group("code"), i + 1, m.group("needs")) for i, m in enumerate(_BLOCK.finditer(text))]


def documents_with_code() -> list[Path]:
    """README.md and every docs/*.md that holds at least one ```python block."""
    return [p for p in [README, *sorted(DOCS.glob("*.md"))] if python_blocks(p.read_text())]


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT))


def test_block_extraction_finds_only_python_fences_and_their_markers():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n<!-- needs: lib-merge -->\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == [Block("a = 1\n", 1, None), Block("b = a + 1\n", 2, "lib-merge")]
    # a marker further up (not on the line right before the fence) marks nothing
    assert python_blocks("<!-- needs: lib-merge -->\n\n```python\nc = 2\n```\n") == [Block("c = 2\n", 1, None)]


def test_readme_and_library_doc_have_code_that_runs():
    assert README in documents_with_code() and LIBRARY in documents_with_code()


def test_library_doc_shows_the_seed_api():
    text = LIBRARY.read_text()
    code = "".join(b.code for b in python_blocks(text))
    for name in ("create_bert_with_lora", "create_kaggle_lora_model", "create_multi_adapter_model",
                 "activate_adapter", "create_model_with_lora", "create_qlora_model", "LoRAConfig",
                 "merge_adapters", "export_peft", "import_peft"):
        assert name in code, f"docs/library.md runs no example of {name}"
    assert "from lora_tasks import create_kaggle_lora_model" in code


def test_every_marker_names_a_known_wait():
    for doc in documents_with_code():
        for block in python_blocks(doc.read_text()):
            assert block.needs is None or block.needs in WAITING_FOR, (
                f"{_name(doc)} block {block.number}: unknown marker 'needs: {block.needs}'; "
                f"known: {sorted(WAITING_FOR)}"
            )


@pytest.mark.parametrize("doc", documents_with_code(), ids=_name)
def test_every_python_block_runs(doc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "docs"}
    ran = 0
    for block in python_blocks(doc.read_text()):
        if block.needs is not None:
            continue  # test_blocks_waiting_for_other_code reports it
        try:
            exec(compile(block.code, f"{_name(doc)} block {block.number}", "exec"), namespace)
        except Exception as exc:
            pytest.fail(f"{_name(doc)} python block {block.number} failed: {type(exc).__name__}: {exc}\n---\n{block.code}")
        ran += 1
    assert ran, f"{_name(doc)}: every python block is waiting for other code"
    if doc == README:
        assert "trainable%: 0.5394" in capsys.readouterr().out  # the BERT-base number the README states


def _ci_test_command() -> str:
    """The command .ci/run runs after its '--- the README's test command, verbatim ---' line."""
    lines = (ROOT / ".ci" / "run").read_text().splitlines()
    marker = next(i for i, line in enumerate(lines) if "test command, verbatim" in line)
    return lines[marker + 1].strip()


def test_readme_test_command_is_the_one_ci_runs():
    command = _ci_test_command()
    assert "pytest" in command
    assert command in README.read_text().splitlines(), f"README.md must show .ci/run's test command verbatim:\n{command}"


def test_readme_main_job_installs_like_the_test_command():
    """The main job's install part equals the test command's, less the test extra."""
    test_command = _ci_test_command()
    main = next(line for line in README.read_text().splitlines()
                if line.startswith("python3 -m venv") and "flows/submit.py --competition demo" in line)
    install = test_command.rsplit("&&", 1)[0].replace('".[test]"', ".")
    assert main.startswith(install), f"{main}\nshould start with\n{install}"
    assert shlex.split(main)[-2:] == ["--competition", "demo"]


_LINK = re.compile(r"\]\((?!https?://|#)([^)#\s]+)")


@pytest.mark.parametrize("doc", [README, *sorted(DOCS.glob("*.md"))], ids=_name)
def test_relative_links_point_at_files_that_exist(doc):
    broken = [target for target in _LINK.findall(doc.read_text()) if not (doc.parent / target).exists()]
    assert not broken, f"{_name(doc)} links to missing files: {broken}"


def test_autoconfig_doc_lists_exactly_the_metrics_in_the_code():
    from lora_tasks.metrics import metrics_markdown

    doc = (DOCS / "autoconfig.md").read_text()
    block = doc.split("<!-- metrics:start -->")[1].split("<!-- metrics:end -->")[0]
    assert block.strip() == metrics_markdown().strip(), "regenerate docs/autoconfig.md's metric table from metrics_markdown()"


def _prose_words(text: str) -> list[str]:
    """The words outside fenced code blocks (commands may repeat; explanations may not)."""
    return re.sub(r"^```.*?^```[ \t]*$", " ", text, flags=re.S | re.M).split()


@pytest.mark.parametrize("doc", sorted(DOCS.glob("*.md")), ids=_name)
def test_docs_do_not_repeat_the_readme(doc):
    """The README is the short guide and docs/ the detail: a passage in both goes stale in one."""
    n = 12  # words: long enough that a shared phrase is a copied passage, not a common wording
    readme = _prose_words(README.read_text())
    text = " ".join(_prose_words(doc.read_text()))
    copied = {" ".join(readme[i:i + n]) for i in range(len(readme) - n + 1) if " ".join(readme[i:i + n]) in text}
    assert not copied, f"{_name(doc)} repeats README.md: {sorted(copied)[:3]}"

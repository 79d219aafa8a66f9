"""Every ```python block in README.md runs: the documented API is the real one.

Blocks run in order in one namespace (like a notebook: later blocks use earlier names), in a
temporary working directory so that examples writing files leave nothing behind.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def python_blocks(text: str) -> list[str]:
    return [m.group(1) for m in _BLOCK.finditer(text)]


def test_block_extraction_finds_only_python_fences():
    text = "x\n```python\na = 1\n```\n```bash\nls\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == ["a = 1\n", "b = a + 1\n"]


def test_readme_has_the_lora_api_section():
    text = README.read_text()
    start, end = text.index("<!-- lora-api:start -->"), text.index("<!-- lora-api:end -->")
    section = text[start:end]
    assert len(python_blocks(section)) >= 5
    for name in ("create_bert_with_lora", "LoRAConfig", "merge_adapters", "export_peft", "import_peft", "0.54%"):
        assert name in section, name


def test_every_python_block_in_the_readme_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {"__name__": "readme"}
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python blocks"
    for i, code in enumerate(blocks):
        try:
            exec(compile(code, f"README.md block {i + 1}", "exec"), namespace)
        except Exception as exc:  # noqa: BLE001 - report which block failed
            pytest.fail(f"README.md python block {i + 1} failed: {type(exc).__name__}: {exc}\n---\n{code}")
    out = capsys.readouterr().out
    assert "trainable%: 0.5394" in out  # the BERT-base number the README states

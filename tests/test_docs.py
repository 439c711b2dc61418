"""The documentation covers the command line: every subcommand is described in docs/cli.md."""

import argparse
from pathlib import Path

from sparsecircuits.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]


def subcommands(parser: argparse.ArgumentParser, prefix: str = "") -> list[str]:
    names = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = subcommands(sub, f"{full} ")
                names += nested or [full]
    return names


def test_every_subcommand_is_described_in_docs_cli():
    names = subcommands(build_parser())
    assert {"prepare", "bridge train", "tasks audit", "import-openai-circuit"} <= set(names)
    text = (ROOT / "docs" / "cli.md").read_text()
    missing = [name for name in names if f"sparsecircuits {name}" not in text]
    assert missing == []


def test_readme_is_short_and_every_doc_it_names_exists():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for doc in ("cli.md", "method.md", "formats.md", "performance.md", "results.md"):
        assert f"docs/{doc}" in readme and (ROOT / "docs" / doc).is_file(), doc


def test_nothing_in_the_package_cites_a_file_outside_the_repository():
    for path in (ROOT / "src" / "sparsecircuits").rglob("*"):
        if path.suffix in (".py", ".toml", ".js", ".html"):
            text = path.read_text()
            assert "METHOD.md" not in text, path


def test_the_api_reference_is_current_and_covers_every_public_name():
    import sparsecircuits
    from sparsecircuits.api_reference import reference

    text = reference()
    assert (ROOT / "docs" / "api.md").read_text() == text, "regenerate: python -m sparsecircuits.api_reference > docs/api.md"
    for name in sparsecircuits.__all__:
        assert f"## `{name}`" in text, name
    assert "(no docstring)" not in text

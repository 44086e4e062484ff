"""The documentation's API reference names every module (a new module cannot go undocumented), and
the README stays the front door (under 250 lines)."""

from __future__ import annotations

import re

from tests.conftest import ROOT


def modules(package: str) -> set[str]:
    found = set()
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            if not path.read_text().strip() or len(parts) == 2:
                continue  # an empty package marker, or the top package itself
            parts = parts[:-1]
        found.add(".".join(parts))
    return found


def test_the_api_reference_names_every_module():
    named = set()
    for page in (ROOT / "docs" / "reference").glob("*.md"):
        named |= set(re.findall(r"^::: ([\w.]+)$", page.read_text(), re.M))
    missing = (modules("components") | modules("flows")) - named
    assert not missing, f"add them to docs/reference/<layer>.md: {sorted(missing)}"


def test_the_readme_is_the_front_door():
    assert len((ROOT / "README.md").read_text().splitlines()) < 250

"""The documentation stays true: the config reference is regenerated from the code."""

from pathlib import Path

from asa_plugin.commands.config import reference

ROOT = Path(__file__).resolve().parents[1]


def test_config_reference_page_matches_the_code():
    page = (ROOT / "docs" / "config-reference.md").read_text()
    assert reference().strip() in page, "regenerate: advrobust config --reference (see docs/config-reference.md)"


def test_readme_links_resolve():
    import re

    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#]+)\)", readme):
        if not target.startswith("http"):
            assert (ROOT / target).exists(), f"README links to missing {target}"

"""mkdocs hook (mkdocs.yml `hooks`): the site's home page is the repository's README.md, so the
front page is written once. Its links into docs/ are rewritten to the site's own pages, and a
page's link to the README (`../README.md#...`, which works when browsing the repository) goes to
the home page."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File


def readme_as_page(text: str) -> str:
    """README.md's Markdown with `](docs/...)` links made relative to docs/."""
    return re.sub(r"\]\(docs/", "](", text)


def on_files(files, config):
    readme = Path(config["config_file_path"]).parent / "README.md"
    files.append(File.generated(config, "index.md", content=readme_as_page(readme.read_text(encoding="utf-8"))))
    return files


def on_page_markdown(markdown, page, config, files):
    depth = page.file.src_uri.count("/")  # folders between docs/ and the page
    return markdown.replace("](" + "../" * (depth + 1) + "README.md", "](" + "../" * depth + "index.md")

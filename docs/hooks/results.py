"""An mkdocs hook: the recorded benchmark figures, straight from ``benchmarks/results/``.

The pages in ``docs/`` link the figures as ``../benchmarks/results/NAME.png``, the path that
works when the Markdown is read in the repository. The site is built from ``docs/`` only, so
this hook adds the figures to the site as ``benchmarks/results/NAME.png`` (no copy is kept in
``docs/``, so the site always shows the figures that are committed) and rewrites those links to
match. A link to a figure that does not exist is left as it is, and ``mkdocs build --strict``
then reports it.
"""

from __future__ import annotations

import os
import re

from mkdocs.structure.files import File, Files

RESULTS = "benchmarks/results"
LINK = re.compile(r"\]\(\.\./" + re.escape(RESULTS) + "/")


def _root(config) -> str:
    return os.path.dirname(os.path.abspath(config["config_file_path"]))


def on_files(files: Files, config, **kwargs) -> Files:
    folder = os.path.join(_root(config), RESULTS)
    for name in sorted(os.listdir(folder)):
        if name.endswith((".png", ".svg")):
            files.append(File(f"{RESULTS}/{name}", _root(config), config["site_dir"], config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files, **kwargs) -> str:
    depth = page.file.src_uri.count("/")  # pages in a docs/ subfolder need one more ../ a level
    return LINK.sub("](" + "../" * depth + RESULTS + "/", markdown)

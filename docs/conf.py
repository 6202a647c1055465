"""Sphinx configuration for trio_producer."""

from __future__ import annotations

import os
import sys
from typing import Any

sys.path.insert(0, os.path.abspath(".."))

project = "trio_producer"
author = "the trio_producer developers"
copyright = "2026, the trio_producer developers"
release = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinxcontrib_trio",
    "myst_parser",  # only for including ../CHANGELOG.md in changelog.rst
]
source_suffix = {".rst": "restructuredtext"}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Parameters are described for the documented signature only (not for a hidden __init__).
autodoc_typehints_description_target = "documented_params"
autodoc_default_options = {"members": True, "undoc-members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

# The docs are built without network access, so the inventories are local files made by
# docs/_inv/make_inventories.py; the links they produce point at the real sites.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", "_inv/python.inv"),
    "trio": ("https://trio.readthedocs.io/en/stable", "_inv/trio.inv"),
}

html_theme = "furo"
html_title = "trio_producer"
exclude_patterns = ["_build", "_inv"]

# Classes that users get from the library and never construct: show them without the
# internal constructor's signature.
_NOT_CONSTRUCTED_BY_USERS = {"trio_producer.Producer"}


def _hide_constructor(
    app: object,
    what: str,
    name: str,
    obj: object,
    options: object,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str, str | None] | None:
    if what == "class" and name in _NOT_CONSTRUCTED_BY_USERS:
        return "", None
    return None


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _hide_constructor)

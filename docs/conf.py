"""Sphinx configuration for the coreopt documentation.

Build offline with ``make docs`` (``sphinx-build -W --keep-going -b html docs docs/_build/html``).
Warnings are errors, so every page and docstring must render cleanly. No intersphinx: the build
never touches the network.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Import the package from the source tree even when it is not installed (editable installs work
# either way); autodoc and the version below need it.
sys.path.insert(0, str(ROOT / "src"))

from coreopt._version import __version__  # noqa: E402

# -- Project -------------------------------------------------------------------------------------

project = "coreopt"
author = "coreopt developers"
copyright = "coreopt developers"
release = __version__
version = ".".join(__version__.split(".")[:2])

# -- General -------------------------------------------------------------------------------------

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinx.ext.mathjax",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
templates_path: list[str] = []
language = "en"

# -- MyST (markdown pages) -----------------------------------------------------------------------

myst_enable_extensions = [
    "amsmath",  # \begin{align} ... environments
    "dollarmath",  # $inline$ and $$display$$ math
    "colon_fence",  # ::: directive fences
    "deflist",
    "fieldlist",
    "smartquotes",
]
myst_heading_anchors = 3  # allow [text](page.md#a-heading) links
myst_dmath_double_inline = True

# -- autodoc / napoleon --------------------------------------------------------------------------

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
}
autodoc_typehints = "description"  # types in the parameter list, not the signature
autodoc_typehints_description_target = "documented"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = True

napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_include_init_with_doc = False
napoleon_include_private_with_doc = False
napoleon_include_special_with_doc = False
napoleon_use_admonition_for_examples = False
napoleon_use_admonition_for_notes = True
# "Attributes:" sections become :ivar: fields, so they never collide with the attribute entries
# that autodoc writes for dataclass fields and enum members (no duplicate object descriptions).
napoleon_use_ivar = True
napoleon_use_param = True
napoleon_use_rtype = True
napoleon_preprocess_types = False
napoleon_attr_annotations = True


def _drop_type_docstrings(app, what, name, obj, options, lines):
    """Hide the docstring a module-level alias inherits from its type.

    A type alias such as ``X = int | None`` has no docstring of its own; autodoc then shows the
    docstring of ``types.UnionType`` ("Represent a PEP 604 union type"). Drop it, so the entry shows
    the alias's value and whatever text the page adds.
    """
    if what not in ("data", "attribute") or isinstance(obj, type):
        return
    inherited = getattr(type(obj), "__doc__", None)
    if inherited and "\n".join(lines).strip() == inspect.cleandoc(inherited).strip():
        lines.clear()


def _resolve_coreopt_refs(app, env, node, contnode):
    """Resolve references that the Python domain cannot resolve on its own.

    * ``coreopt.minimize``, ``coreopt.Status``, ...: the lazily re-exported top-level names point
      to where they are documented (``coreopt.objective.minimize``, ``coreopt.status.Status``).
    * A bare name inside a docstring (``:data:`Params``` in ``coreopt.objective.protocol``) resolves
      when exactly one documented ``coreopt`` object has that name.
    """
    if node.get("refdomain") != "py":
        return None
    import coreopt

    target = node.get("reftarget", "")
    py = env.get_domain("py")
    candidates: list[str] = []
    lazy: dict[str, str] = getattr(coreopt, "_LAZY_ATTRS", {})
    head, _, name = target.rpartition(".")
    if head == "coreopt" and name in lazy:
        candidates.append(f"{lazy[name]}.{name}")
    elif "." not in target:
        found = [n for n in py.objects if n.startswith("coreopt.") and n.endswith("." + target)]
        if len(found) == 1:
            candidates += found
    for full in candidates:
        ref = py.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], full, node, contnode
        )
        if ref is not None:
            return ref
    return None


def setup(app):
    app.connect("autodoc-process-docstring", _drop_type_docstrings)
    app.connect("missing-reference", _resolve_coreopt_refs)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


# -- HTML ----------------------------------------------------------------------------------------

try:
    import furo  # noqa: F401
except ImportError:  # the docs extra is not installed: fall back to a theme that ships with Sphinx
    html_theme = "alabaster"
    html_theme_options: dict[str, object] = {}
else:
    html_theme = "furo"
    html_theme_options = {"navigation_with_keys": True}

html_title = f"coreopt {release}"
html_static_path: list[str] = ["_static"]
html_show_sourcelink = False

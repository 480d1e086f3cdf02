"""MkDocs hooks of the documentation site (``make docs``; ``hooks:`` in mkdocs.yml).

The site's pages are the Markdown files of ``docs/``, as GitHub shows them. Two pages live at the
top of the repository instead: the README (the site's home page) and CHANGELOG.md. They are added
to the site here, as generated pages, so each file keeps one copy: the README's links into
``docs/`` (``docs/user-guide.md``, right on GitHub from the top of the repository) are rewritten
to be relative to ``docs/`` (``user-guide.md``), where the home page sits on the site.

The docstrings cross-reference in Sphinx's roles (``:func:`fuse```), which the API reference
would show as they are written: :func:`plain_roles` shows the name alone, as code.

The API reference (mkdocstrings, which reads the source without importing it) needs the package
as it installs: the layer folders at the top of the repository are ``emfuse.pipeline`` and so on
(pyproject.toml's package-dir; ``emfuse/__init__.py`` finds them at run time, which a reader of
the source cannot see). :func:`on_config` lays that package out in ``build/docs-api/emfuse``
(this checkout's ``emfuse/*.py`` and links to its layer folders), and mkdocs.yml points mkdocstrings there.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent
#: the package as installed, for mkdocstrings (mkdocs.yml: paths)
API_SOURCE = ROOT / "build" / "docs-api"
#: installed name -> folder of the repository (pyproject.toml [tool.setuptools.package-dir])
LAYERS = {"pipeline": "pipeline", "stores": "stores", "cluster": "cluster", "flows": "flows"}
#: site page -> file at the top of the repository
TOP_LEVEL_PAGES = {"index.md": "README.md", "changelog.md": "CHANGELOG.md"}


def rebase_links(markdown: str) -> str:
    """Rewrite Markdown links into ``docs/`` as links relative to ``docs/``.

    Parameters
    ----------
    markdown : str
        A page written to be read from the top of the repository.

    Returns
    -------
    str
        The page with ``](docs/...)`` links as ``](...)``; other links unchanged.

    Examples
    --------
    >>> rebase_links("see [the guide](docs/user-guide.md) and [x](https://a.b/docs/c)")
    'see [the guide](user-guide.md) and [x](https://a.b/docs/c)'
    """
    return re.sub(r"\]\(docs/", "](", markdown)


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|data|mod|exc|obj|const):<code>(~?)([^<]*)</code>")


def plain_roles(html: str) -> str:
    """Show the Sphinx roles of rendered docstrings as the names they refer to.

    Parameters
    ----------
    html : str
        A rendered page.

    Returns
    -------
    str
        The page with ``:func:<code>name</code>`` as ``<code>name</code>`` (``~a.b.c``: ``c``).

    Examples
    --------
    >>> plain_roles(":func:<code>fuse</code> and :class:<code>~a.b.Normalisation</code>")
    '<code>fuse</code> and <code>Normalisation</code>'
    """
    return _ROLE.sub(lambda m: f"<code>{m[2].rsplit('.', 1)[-1] if m[1] else m[2]}</code>", html)


def on_page_content(html: str, page, config, files) -> str:
    return plain_roles(html)


def on_files(files: Files, config, **kwargs) -> Files:
    for page, source in TOP_LEVEL_PAGES.items():
        content = rebase_links((ROOT / source).read_text(encoding="utf-8"))
        files.append(File.generated(config, page, content=content))
    return files


def package_tree(target: Path) -> Path:
    """Lay out the installed ``emfuse`` package in ``target`` from this checkout.

    Parameters
    ----------
    target : pathlib.Path
        The folder to hold ``emfuse/``; what it held is replaced.

    Returns
    -------
    pathlib.Path
        ``target / "emfuse"``.
    """
    package = target / "emfuse"
    if package.exists():
        shutil.rmtree(package)
    package.mkdir(parents=True)
    for path in (ROOT / "emfuse").iterdir():
        if path.suffix == ".py":
            # copied: the reader resolves links, and would then look for the layers beside
            # the real emfuse/__init__.py
            shutil.copy2(path, package / path.name)
    for name, folder in LAYERS.items():
        (package / name).symlink_to(ROOT / folder, target_is_directory=True)
    return package


def on_config(config, **kwargs):
    package_tree(API_SOURCE)
    return config

"""Griffe extension: Sphinx roles in docstrings (``:class:`ChipConfig```) become links in the API pages.

The docstrings cross-reference with Sphinx roles (``:class:``, ``:func:``, ``:meth:``, ``:mod:``,
...). Each role becomes an optional mkdocs-autorefs reference: a link when its target is
documented on the site (names are resolved in the scope of the docstring's object), plain code
otherwise, so a role never breaks the strict build.
"""

from __future__ import annotations

import html
import re

import griffe

ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|attr|data|obj|exc|const):`(?P<target>[^`]+)`")


def _identifier(obj, target: str) -> str:
    """The full path of ``target`` seen from ``obj`` (``target`` itself if it cannot be resolved)."""
    if target.startswith("pcmjax"):
        return target
    head, _, rest = target.partition(".")
    scope = obj
    while scope is not None:
        try:
            path = scope.resolve(head)
        except Exception:  # noqa: BLE001 - griffe raises several kinds for unresolvable names
            scope = scope.parent
            continue
        return f"{path}.{rest}" if rest else path
    return target


def _convert(obj, text: str) -> str:
    def link(match: re.Match) -> str:
        target = match["target"].lstrip("!")
        short = target.startswith("~")
        target = target.lstrip("~")
        if "<" in target:  # "title <target>"
            title, target = (s.strip(" >") for s in target.split("<", 1))
        else:
            title = target.rsplit(".", 1)[-1] if short else target
        identifier = html.escape(_identifier(obj, target), quote=True)
        return f'<autoref identifier="{identifier}" optional><code>{html.escape(title)}</code></autoref>'

    return ROLE.sub(link, text)


def _walk(obj, seen: set):
    if obj.is_alias or obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None and ":" in obj.docstring.value:
        obj.docstring.value = _convert(obj, obj.docstring.value)
    for member in obj.members.values():
        _walk(member, seen)


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles once a package is loaded (names then resolve across its modules)."""

    def on_package(self, *, pkg, **kwargs) -> None:
        _walk(pkg, set())

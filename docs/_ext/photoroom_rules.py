"""``.. photoroom-rules:: edit|segment|render``: the spec rules the SDK checks, as a table.

The table is rendered from ``photoroom_bg._rules`` at build time, the same rules the options
and the emulator enforce, so the documentation cannot drift from the code. Options:
``:kind: value`` (one parameter's values) or ``:kind: combination`` (several parameters).
"""

from __future__ import annotations

from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from docutils.statemachine import StringList
from sphinx.util.docutils import SphinxDirective

OUTCOME = {"error": "refused", "warning": "sent, with a warning"}


def rule_rows(endpoint: str, kind: str | None) -> list[list[str]]:
    """``[[rule, requirement, outcome], ...]`` for an endpoint's rules (reStructuredText)."""
    from photoroom_bg import _rules

    rules = {
        "edit": _rules.EDIT_RULES,
        "segment": _rules.SEGMENT_RULES,
        "render": _rules.RENDER_RULES,
    }[endpoint]
    rows = []
    for rule in rules:
        if kind is not None and rule.kind != kind:
            continue
        value = rule.kind == "value"
        requirement = f"``{rule.params[0]}``: {rule.text}" if value else rule.text
        outcome = OUTCOME[rule.level]
        if rule.source == "docs":
            outcome += " (documentation, not the spec)"
        if rule.needs_request:
            outcome += "; checked per call"
        rows.append([f"``{rule.id}``", requirement, outcome])
    return rows


class PhotoroomRules(SphinxDirective):
    """Render one endpoint's rules as a list-table."""

    required_arguments = 1
    option_spec = {"kind": directives.unchanged}  # noqa: RUF012 - docutils' own API

    def run(self) -> list[nodes.Node]:
        rows = rule_rows(self.arguments[0], self.options.get("kind"))
        lines = [
            ".. list-table::",
            "   :header-rows: 1",
            "   :widths: 28 52 20",
            "",
            "   * - rule",
            "     - what the spec requires",
            "     - otherwise",
        ]
        for rule_id, requirement, outcome in rows:
            lines += [f"   * - {rule_id}", f"     - {requirement}", f"     - {outcome}"]
        container = nodes.container()
        self.state.nested_parse(StringList(lines, source="photoroom-rules"), 0, container)
        return container.children


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("photoroom-rules", PhotoroomRules)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

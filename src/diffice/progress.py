"""Progress bars only on a terminal.

rich draws a live bar on an interactive console; elsewhere (output piped to a file or a log, a
test's captured stdout) it draws nothing but still ends every bar with an empty line, so a run's
output began with blank lines. Every diffice bar is built with ``disable=not live()``.
"""

from __future__ import annotations


def live() -> bool:
    """True when rich's console is an interactive terminal (where a bar is drawn)."""
    import rich

    return bool(rich.get_console().is_interactive)

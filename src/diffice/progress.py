"""The one progress bar of diffice: drawn only on a terminal.

rich draws a live bar on an interactive console; elsewhere (output piped to a file or a log, a
test's captured stdout) it draws nothing but still ends every bar with an empty line, so a run's
output began with blank lines. Every diffice bar is a :class:`Bar` (or :func:`track`), which is
disabled unless the console is interactive, and leaves nothing behind when it ends.

Its columns: the label, the bar, done / total, a note (what is under way), the time remaining.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def live() -> bool:
    """True when rich's console is an interactive terminal (where a bar is drawn)."""
    import rich

    return bool(rich.get_console().is_interactive)


class Bar:
    """A transient bar of ``total`` steps (``done`` already), shown when ``enabled`` and on a terminal."""

    def __init__(self, label: str, total: int, *, done: int = 0, enabled: bool = True):
        self._p = None
        if enabled and total and live():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._p = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                               TimeRemainingColumn(), transient=True)
            self._p.start()
            self._task = self._p.add_task("", total=total, completed=done)

    def advance(self, n: int = 1) -> None:
        if self._p is not None:
            self._p.advance(self._task, n)

    def note(self, text: str) -> None:
        """Show ``text`` beside the bar (the item or step under way)."""
        if self._p is not None:
            self._p.update(self._task, description=text)

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None

    def __enter__(self) -> Bar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def track(items: Iterable[T], label: str, *, enabled: bool = True, total: int | None = None) -> Iterator[T]:
    """``items`` one by one, with a :class:`Bar` of ``total`` (default ``len(items)``) steps."""
    if total is None:
        total = len(items)  # type: ignore[arg-type]
    with Bar(label, total, enabled=enabled) as bar:
        for item in items:
            yield item
            bar.advance()

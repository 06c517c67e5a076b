"""The one exception a user can cause.

Anything a user can get wrong (a bad path, a config typo, a corrupt image, a checkpoint of
the wrong kind) is raised as :class:`UserError` with a message that names the file or key
and says what to do. The CLI turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

import os
import sys

EXIT_USER_ERROR = 2
# how torch.utils.data re-raises an error of a worker process in the main one ("Caught UserError in
# DataLoader worker process 0.\nOriginal Traceback ...\nUserError: <message>")
_WORKER = "Caught UserError in DataLoader worker process"


class UserError(Exception):
    """An error caused by the user's input; its message is shown as one line."""

    def __init__(self, message: str):
        text = str(message)
        if text.startswith(_WORKER):  # re-raised by a DataLoader worker's parent: the worker's own message
            text = text.rstrip().rsplit("UserError: ", 1)[-1]
        super().__init__(" ".join(text.split()))


def say_line(text: str, stream=None) -> None:
    """Write ``text`` and its newline to ``stream`` (stderr) in one ``write`` call. Under ``strategy=ddp``
    every process may report at once into one pipe; ``print`` writes the text and the newline separately,
    so two processes' lines can run together. One write of under 4 KiB to a pipe is atomic."""
    stream = sys.stderr if stream is None else stream
    stream.flush()
    data = (" ".join(str(text).split()) + "\n").encode(stream.encoding or "utf-8", "replace")
    try:
        os.write(stream.fileno(), data)
    except (AttributeError, OSError, ValueError):  # a stream with no file (pytest's capture, a notebook)
        stream.write(data.decode(stream.encoding or "utf-8", "replace"))

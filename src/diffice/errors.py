"""The one exception a user can cause.

Anything a user can get wrong (a bad path, a config typo, a corrupt image, a checkpoint of
the wrong kind) is raised as :class:`UserError` with a message that names the file or key
and says what to do. The CLI turns it into one line on stderr and exit status 2.
"""

from __future__ import annotations

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

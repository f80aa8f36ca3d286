"""The project's one base class for user errors.

Every error a user can cause and fix (a bad flag, a missing file, a store that cannot serve a
request) derives from :class:`UserError`. The commands catch exactly this class and print its
message as one line; anything else is a bug and keeps its traceback. Domain errors also derive
from the builtin they refine (``ValueError``, ``RuntimeError``...), so ``except ValueError`` in a
caller's code still works.
"""


class UserError(Exception):
    """Something the user asked for that cannot be done; the message says what to do instead."""

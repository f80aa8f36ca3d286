"""The project's one base class for user errors.

Every error a user can cause and fix (a bad flag, a missing file, a store that cannot serve a
request) derives from :class:`UserError`. The commands catch exactly this class, at one boundary
(:class:`featurestore.cli.OneLineUserErrors`), and print the first line of its message; anything
else is a bug and keeps its traceback. Domain errors also derive from the builtin they refine
(``ValueError``, ``RuntimeError``...), so ``except ValueError`` in a caller's code still works.
"""


class UserError(Exception):
    """Something the user asked for that cannot be done; the message says what to do instead."""


class StoreError(UserError, RuntimeError):
    """A store that cannot be written, opened, read or completed as asked; the message says why."""


class CorruptStoreError(StoreError, ValueError):
    """Bytes in a store that do not match their checksum: never decoded into a number."""


class MissingLayerError(StoreError, KeyError):
    """Hidden states asked of a store that does not hold them."""

    __str__ = Exception.__str__  # KeyError's would quote the message

"""The errors a user can cause in extraction (and in evaluation, which reuses the backbones and
tasks). Each derives from the project's :class:`~featurestore.errors.UserError`, which the
commands print as one line, and from the builtin it refines."""

from featurestore.errors import UserError


class BackboneError(UserError, ValueError):
    """A model, quantization, dtype or device that cannot be loaded, with what to do instead."""


class DataError(UserError, ValueError):
    """A dataset that cannot be loaded as asked; the message says what to do."""


class TemplateError(UserError, ValueError):
    """A template that cannot be used with this tokenizer; the message says what to do."""


class PlanError(UserError, ValueError):
    """A layer spec or length setting that cannot be planned; the message says what to do."""


class DistributedError(UserError, RuntimeError):
    """Another rank failed, so this one stops too; the message names the rank and its error."""


class RootError(UserError, OSError):
    """An extraction root that is not a directory this process can write."""

"""Training side networks (Ladder, xLadder) from a feature store, and using them:
``from train_side import SideModel`` (see :mod:`.inference.side_model`)."""

__all__ = ["SideModel"]


def __getattr__(name: str):
    """``SideModel`` is imported on first use: it loads transformers, which the commands' ``--help``
    and training never need."""
    if name == "SideModel":
        from .inference.side_model import SideModel

        return SideModel
    raise AttributeError(f"module 'train_side' has no attribute {name!r}")

"""Exception classes: every bad input raises one of these with a one-line message."""


class ParttokError(Exception):
    """Base class of every error parttok raises on purpose."""


class InputError(ParttokError, ValueError):
    """An input file or array is unusable; the message says which and why."""


class BVHError(InputError):
    """A BVH file cannot be parsed."""


class RigError(InputError):
    """A skeleton cannot be mapped onto the 22 SMPL body joints."""


class FeatureError(InputError):
    """An array is not valid HumanML3D 263-dimensional features or (T, 22, 3) joints."""


class OutputError(ParttokError):
    """An output cannot be written (a file where a folder should be, a read-only or full
    disk); not an InputError, so it stops the whole run instead of skipping one item."""


class CheckpointError(ParttokError):
    """A checkpoint is missing, damaged, or belongs to another model."""


class TokenFileError(InputError):
    """A token file is damaged, from a newer version, or from another checkpoint."""


class TokenParseError(InputError):
    """Text meant to hold motion tokens cannot be parsed."""

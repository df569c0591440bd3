"""User-facing errors.

Every mistake a user can make (a bad image, a tampered bundle, a wrong flag) raises a
subclass of `GlassfinderError` whose message names the file and the problem. The CLI
prints the message and exits with code 2 instead of showing a traceback.
"""


class GlassfinderError(Exception):
    """Base class: a clear, user-facing problem (not a bug)."""


class ImageError(GlassfinderError):
    """An input image cannot be used (corrupt, truncated, too large, not an image...)."""


class BundleError(GlassfinderError):
    """A bundle or one of its files is missing, tampered with, or of the wrong version."""


class GalleryError(BundleError):
    """A PQ gallery file is malformed (bad magic, truncated codes, ids out of range...)."""


class ConfigError(GlassfinderError):
    """Options that cannot be honoured together (e.g. an export knob a target does not support)."""

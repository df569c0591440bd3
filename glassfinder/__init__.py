"""glassfinder: training side of the on-device eyeglasses visual search kit."""

__version__ = "0.1.0"

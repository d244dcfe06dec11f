"""The one exception type of the calibration package."""

from __future__ import annotations


class ProfileError(ValueError):
    """A noise-profile file or object is unreadable, incomplete, inconsistent or from a newer format."""

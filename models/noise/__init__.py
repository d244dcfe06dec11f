"""Device-induced weight noise: the WeightNoise interface, paper families, profile-driven noise, application."""

from models.noise.base import WeightNoise

__all__ = ["WeightNoise"]

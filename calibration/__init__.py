"""Fitting device noise models from run files; the versioned noise-profile file format. No torch."""

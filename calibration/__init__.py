"""Fitting device noise models from measured datasets; the versioned noise-profile file format. No torch.

Entry points: ``calibration.profile`` (NoiseProfile, load_profile, save_profile, ProfileError),
``calibration.fit.fit_profile`` (datasets -> profile), ``calibration.datasets`` (the input arrays),
``calibration.aihwkit_export`` (aihwkit noise-model arguments). Schema: calibration/PROFILE.md.
"""

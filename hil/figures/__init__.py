"""Figures of run files (runs), noise profiles (profiles) and SWIM studies (swim), drawn on bare matplotlib Figures.

No module here imports pyplot or sets a backend, so importing them changes nothing for the program around them.
Run-file plotters register by procedure name in `hil.figures.runs.PLOTTERS`.
"""

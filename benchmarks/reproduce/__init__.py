"""Reproduction harness: each paper's protocol as a config, run end to end and judged claim by claim.

``python -m benchmarks.reproduce --config all`` runs every protocol's CPU stand-in (``--full``: the paper's
setting, on user data with --data-dir, on a GPU with --device cuda) and prints a claims table with paired
95 % CIs over seeds. configs/ holds one protocol per paper; config.py reads them, runner.py trains,
chooses on validation and reads the test split once, verdict.py judges, report.py writes the tables.
"""

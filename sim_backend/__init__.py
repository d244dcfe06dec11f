"""Simulated RRAM test board: 1T1R HfO2 array physics and firmware behind the real wire protocol."""

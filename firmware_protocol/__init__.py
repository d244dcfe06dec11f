"""Wire protocol between the host and the RRAM test board: framing, CRCs, messages. Pure Python, no I/O."""

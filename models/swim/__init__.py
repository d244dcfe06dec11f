"""SWIM: selective write-verify. Rank weights by the loss increase their programming error would cause."""

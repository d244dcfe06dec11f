"""Host side: transports, board client, instruments, measurement procedures, run files and the `rram` CLI."""

"""HANG_S: the one limit a test puts on a child process or a wait. It is a guard against a hung test, never a
measure: a loaded CI machine can take minutes for what takes seconds here, and no test may fail for being slow."""

HANG_S = 3600

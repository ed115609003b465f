"""The reference engine (``--engine reference``): Unicorn through its public API only, one instance shared by a
machine's vCPUs, Python hooks. Slower than the fast engine (viridian/machine/unicorn/), obviously correct, and
the oracle the fast engine is compared with (make diff-engines)."""

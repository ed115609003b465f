"""The fast Unicorn engine: one Uc per vCPU, compiled hot paths (csrc/), the engine patches and their hazards.

Everything here exists only for Unicorn; the engine-neutral machine core is viridian/machine/.
"""

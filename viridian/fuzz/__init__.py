"""Fuzzing harnesses for hostile guests (viridian fuzz, make fuzz)."""

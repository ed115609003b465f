"""partition layer."""

"""Code over Unicorn's public API (and capstone decoding) that both Unicorn engines share.

Not the engine-neutral core (viridian/machine/*.py never imports Unicorn or capstone) and not either engine:
the fast engine (viridian/machine/unicorn/) and the reference engine (viridian/machine/reference/) both import
these, so an SDM rule has one source of truth while the reference engine never imports the fast one.
"""

"""The exit-reduction lab: experiments, sweeps, tables, charts and the write-up (viridian measure)."""

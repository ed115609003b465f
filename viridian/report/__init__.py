"""Reports built from a finished run: the negotiation report and run comparisons."""

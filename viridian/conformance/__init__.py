"""The conformance suite on viridian (``viridian conformance``): run the multiboot suite image, parse its TAP,
group results by TLFS area, write JSON and JUnit XML."""

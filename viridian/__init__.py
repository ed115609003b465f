"""viridian: a model of Microsoft's Hyper-V enlightenment interface (TLFS) and an emulated vCPU loop."""

__version__ = "0.1.0"

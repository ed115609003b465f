"""Engine-free device models the machine wires up: local APICs and the bus between them."""

from viridian.devices.apic_bus import ApicBus
from viridian.devices.apic_timer import ApicTimer
from viridian.devices.lapic import LocalApic
from viridian.devices.lapic_defs import DeliveryMode, Shorthand, TimerMode

__all__ = ["ApicBus", "ApicTimer", "DeliveryMode", "LocalApic", "Shorthand", "TimerMode"]

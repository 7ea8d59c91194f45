"""How the node declares a parameter: one data-driven :class:`ParameterSpec` per entry of ``PARAMETERS``
(in :mod:`.node`), turned into an rclpy descriptor with its type, range and whether it may change
while the node runs."""

from dataclasses import dataclass
from typing import Optional, Tuple

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor

__all__ = ["ParameterSpec"]


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    default: object
    description: str
    constraints: str = ""
    integer_range: Optional[Tuple[int, int]] = None
    float_range: Optional[Tuple[float, float]] = None
    dynamic: bool = False  # may be set while the node runs; the others are read once, at start

    def descriptor(self) -> ParameterDescriptor:
        descriptor = ParameterDescriptor(name=self.name, description=self.description,
                                         additional_constraints=self.constraints, read_only=not self.dynamic)
        if self.integer_range:
            descriptor.integer_range = [IntegerRange(from_value=self.integer_range[0],
                                                     to_value=self.integer_range[1], step=1)]
        if self.float_range:
            descriptor.floating_point_range = [FloatingPointRange(from_value=self.float_range[0],
                                                                  to_value=self.float_range[1], step=0.0)]
        return descriptor

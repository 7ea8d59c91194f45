"""An integer given for a floating-point parameter is that number (``anomaly_threshold:=-3``).

rclpy types parameters strictly: ``ros2 param set /rpl_anomaly anomaly_threshold -3`` sends an
INTEGER, and a DOUBLE parameter refuses it ("expected '3' got '2'"), as does ``-p anomaly_threshold:=-3``
on the command line. Users mean -3.0: both paths convert integers to doubles for the node's
floating-point parameters before rclpy checks the type.
"""

from typing import Iterable, List

from rclpy.parameter import Parameter

__all__ = ["accept_integers_for_doubles"]


def _as_double(parameter: Parameter, names: frozenset) -> Parameter:
    if parameter.name in names and parameter.type_ == Parameter.Type.INTEGER:
        return Parameter(parameter.name, Parameter.Type.DOUBLE, float(parameter.value))
    return parameter


def accept_integers_for_doubles(node, names: Iterable[str]) -> None:
    """Call before declaring ``names`` (the node's DOUBLE parameters)."""
    names = frozenset(names)
    # command line and launch values: rclpy keeps them in the node until declare_parameter reads them
    overrides = getattr(node, "_parameter_overrides", None)
    if isinstance(overrides, dict):
        for name, parameter in list(overrides.items()):
            overrides[name] = _as_double(parameter, names)

    # run-time changes (ros2 param set): rclpy >= Iron lets a callback rewrite them before its type check
    def convert(parameters: List[Parameter]) -> List[Parameter]:
        return [_as_double(parameter, names) for parameter in parameters]

    if hasattr(node, "add_pre_set_parameters_callback"):
        node.add_pre_set_parameters_callback(convert)

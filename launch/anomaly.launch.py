"""Start the rpl_anomaly node, and RViz showing its overlay, colour mask, heatmap and obstacles.

    ros2 launch rpl_perception anomaly.launch.py image_topics:='[/cam/image_raw]' use_rviz:=true
    ros2 launch rpl_perception anomaly.launch.py name:=front_anomaly namespace:=front   # a second instance

Arguments left empty keep the values of ``params_file`` (the installed config/anomaly.yaml). The
launch ends when the node ends, with an error if the node failed (e.g. on a bad parameter).
``use_rviz:=true`` where rviz2 is not installed starts the node alone and says so.
"""

import os

import yaml
from ament_index_python.packages import PackageNotFoundError, get_package_prefix, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, RegisterEventHandler, Shutdown
from launch.conditions import IfCondition
from launch.event_handlers import OnProcessExit
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from rpl_perception.topics import sibling_topic

PACKAGE = "rpl_perception"
NODE_NAME = "rpl_anomaly"
#: the outputs RViz shows, under the topics config/anomaly.rviz names (those of input "/image")
RVIZ_OUTPUTS = ("overlay", "semantic_color", "anomaly", "obstacle_markers", "obstacle_points")


def parse_topics(text: str):
    """'[/a/image, /b/image]' (YAML list) or '/a/image,/b/image' → list of topics."""
    text = text.strip()
    if text.startswith("["):
        return [str(topic) for topic in yaml.safe_load(text)]
    return [topic.strip() for topic in text.split(",") if topic.strip()]


def topics_in_params_file(path: str, node_name: str = NODE_NAME):
    with open(path, encoding="utf-8") as f:
        params = yaml.safe_load(f) or {}
    for key in ("/**", node_name, f"/{node_name}"):
        topics = ((params.get(key) or {}).get("ros__parameters") or {}).get("image_topics")
        if topics:
            return list(topics)
    return ["image"]


def resolve(topic: str, namespace: str, node_name: str = NODE_NAME) -> str:
    """The absolute name of the node's topic ``topic`` (relative names live in its namespace)."""
    if topic.startswith("/"):
        return topic
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    if topic.startswith("~"):
        return f"{prefix}/{node_name}{topic[1:]}"
    return f"{prefix}/{topic}"


def installed(package: str) -> bool:
    try:
        get_package_prefix(package)
    except PackageNotFoundError:
        return False
    return True


def on_node_exit(event, context):
    """The launch lives as long as the node: a failed node fails the launch (exit code 1)."""
    name = LaunchConfiguration("name").perform(context)
    if event.returncode != 0:
        raise RuntimeError(f"{name} exited with code {event.returncode}; its log above says why")
    return [Shutdown(reason=f"{name} exited")]


def launch_setup(context):
    arg = {name: LaunchConfiguration(name).perform(context)
           for name in ("image_topics", "params_file", "model", "backend", "namespace", "name")}
    overrides = {name: arg[name] for name in ("model", "backend") if arg[name]}
    topics = parse_topics(arg["image_topics"])
    if topics:
        overrides["image_topics"] = topics
    else:
        topics = topics_in_params_file(arg["params_file"], arg["name"])
    node = Node(package=PACKAGE, executable="anomaly_node", name=arg["name"], namespace=arg["namespace"],
                parameters=[arg["params_file"]] + ([overrides] if overrides else []),
                output="screen", emulate_tty=True)
    actions = [node, RegisterEventHandler(OnProcessExit(target_action=node, on_exit=on_node_exit))]
    if not IfCondition(LaunchConfiguration("use_rviz")).evaluate(context):
        return actions
    if not installed("rviz2"):
        return actions + [LogInfo(msg="use_rviz:=true, but rviz2 is not installed here: starting without "
                                      "RViz (install ros-$ROS_DISTRO-rviz2 to see the overlay)")]
    # RViz shows the first camera: its config names the outputs of "/image", remapped here
    rviz_config = os.path.join(get_package_share_directory(PACKAGE), "config", "anomaly.rviz")
    return actions + [Node(package="rviz2", executable="rviz2", name="rviz2", arguments=["-d", rviz_config],
                           remappings=[(f"/{output}", resolve(sibling_topic(topics[0], output), arg["namespace"],
                                                               arg["name"])) for output in RVIZ_OUTPUTS])]


def generate_launch_description():
    default_params = os.path.join(get_package_share_directory(PACKAGE), "config", "anomaly.yaml")
    return LaunchDescription([
        DeclareLaunchArgument("image_topics", default_value="",
                              description="input image topics, '[/a/image_raw, /b/image_raw/compressed]'; "
                                          "empty: those of params_file"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="node parameters (YAML)"),
        DeclareLaunchArgument("model", default_value="",
                              description="model file or 'default'; empty: the one of params_file"),
        DeclareLaunchArgument("backend", default_value="",
                              description="auto, torch, onnxruntime or tensorrt; "
                                          "empty: the one of params_file"),
        DeclareLaunchArgument("namespace", default_value="", description="namespace of the node"),
        DeclareLaunchArgument("name", default_value=NODE_NAME,
                              description="name of the node (several instances: a name or namespace each)"),
        DeclareLaunchArgument("use_rviz", default_value="false",
                              description="also start rviz2 with config/anomaly.rviz (where installed)"),
        OpaqueFunction(function=launch_setup),
    ])

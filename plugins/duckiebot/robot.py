"""The DB21-like Duckiebot: dimensions, Duckietown's wheel kinematics, and its MJCF body.

The room, lights and track floor are built in ``world.py``; per-episode gains live in ``variants.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

WHEEL_RADIUS = 0.0318
WHEEL_HALF_WIDTH = 0.01
BASELINE = 0.1
# Duckietown's motor constant k: wheel speed (rad/s) at a duty cycle of 1, about 0.86 m/s at the rim.
MOTOR_CONSTANT = 27.0
# Forward speed (m/s) and yaw rate (rad/s) commanded by an action component of 1.
MAX_SPEED = 0.5
MAX_YAW_RATE = 5.0
CASTER_RADIUS = 0.0125
CASTER_X = -0.075
CHASSIS_X = (-0.09, 0.05)
CHASSIS_HALF_WIDTH = 0.045
CAMERA_X = 0.05
CAMERA_HEIGHT = 0.1
CAMERA_PITCH_DEG = 20.0
# Vertical field of view; the frame is square, so 120 degrees across too (about 135 on the diagonal).
CAMERA_FOVY_DEG = 120.0
# A third-person camera that rides behind the robot, for ``render()``.
CHASE_CAMERA_POSITION = (-0.45, 0.0, 0.3)
CHASE_CAMERA_PITCH_DEG = 30.0
CHASE_CAMERA_FOVY_DEG = 60.0
# Ground footprint (body frame, metres) whose corners must stay inside the lane.
FOOTPRINT = np.array(
    [
        [CHASSIS_X[1], BASELINE / 2 + WHEEL_HALF_WIDTH],
        [CHASSIS_X[1], -(BASELINE / 2 + WHEEL_HALF_WIDTH)],
        [CHASSIS_X[0], BASELINE / 2 + WHEEL_HALF_WIDTH],
        [CHASSIS_X[0], -(BASELINE / 2 + WHEEL_HALF_WIDTH)],
    ]
)


@dataclass(frozen=True)
class Calibration:
    """Duckietown's inverse-kinematics calibration (the ``kinematics_node`` parameters)."""

    gain: float = 1.0
    trim: float = 0.0
    k: float = MOTOR_CONSTANT
    limit: float = 1.0
    radius: float = WHEEL_RADIUS
    baseline: float = BASELINE

    def duty_cycles(self, speed: float, yaw_rate: float) -> tuple[float, float]:
        """Left and right duty cycles in [-limit, limit] for a forward speed and a yaw rate."""
        left_wheel = (speed - 0.5 * yaw_rate * self.baseline) / self.radius
        right_wheel = (speed + 0.5 * yaw_rate * self.baseline) / self.radius
        left = left_wheel * (self.gain - self.trim) / self.k
        right = right_wheel * (self.gain + self.trim) / self.k
        return (
            float(np.clip(left, -self.limit, self.limit)),
            float(np.clip(right, -self.limit, self.limit)),
        )


def _multiply(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Hamilton product of quaternions (w, x, y, z): rotate by ``second``, then by ``first``."""
    w1, x1, y1, z1 = first
    w2, x2, y2, z2 = second
    return np.array(
        [
            w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
            w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
            w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
        ]
    )


# A MuJoCo camera looks along its -z with +x to the image's right and +y up; this turns it to
# look along the body's +x (forward) with the image's right along -y.
_LEVEL_CAMERA = np.array([0.5, 0.5, -0.5, -0.5])


def camera_quaternion(pitch_deg: float, roll_deg: float = 0.0, yaw_deg: float = 0.0) -> np.ndarray:
    """MuJoCo camera orientation (w, x, y, z) in the body frame, looking forward and ``pitch`` down.

    Roll turns about the viewing direction, then pitch (positive down) and yaw (positive left).
    """
    pitch, roll, yaw = np.radians([pitch_deg, roll_deg, yaw_deg]) / 2
    about_x = np.array([np.cos(roll), np.sin(roll), 0.0, 0.0])
    about_y = np.array([np.cos(pitch), 0.0, np.sin(pitch), 0.0])
    about_z = np.array([np.cos(yaw), 0.0, 0.0, np.sin(yaw)])
    return _multiply(about_z, _multiply(about_y, _multiply(about_x, _LEVEL_CAMERA)))


def _wheel_mjcf(side: str, y: float) -> str:
    # A sphere touches the floor at one point and rolls cleanly; a cylinder's rim contacts chatter
    # and brake the wheel. The cylinder is only drawn.
    return f"""
      <body name="{side}_wheel" pos="0 {y} 0">
        <joint name="{side}_wheel" type="hinge" axis="0 1 0" damping="0.0002"/>
        <geom name="{side}_wheel" type="cylinder" size="{WHEEL_RADIUS} {WHEEL_HALF_WIDTH}" zaxis="0 1 0"
              mass="0.03" contype="0" conaffinity="0" group="1" rgba=".1 .1 .1 1"/>
        <geom name="{side}_tyre" type="sphere" size="{WHEEL_RADIUS}" mass="0.001" contype="2" conaffinity="1"
              condim="3" friction="1 0.005 0.0001" group="3"/>
      </body>"""


def robot_mjcf() -> tuple[str, str]:
    """The robot body (free joint, two driven wheels, a caster, the cameras) and its actuators.

    Returns the ``<body>`` for ``<worldbody>`` and the ``<actuator>``/``<sensor>`` blocks. The
    body's origin is the middle of the wheel axle; robot geoms are in group 1 so the onboard
    camera can leave them out. Only wheels and caster collide, and only with the floor; the
    caster's priority makes its frictionless contact win over the floor's friction.
    """
    chassis_centre = (CHASSIS_X[0] + CHASSIS_X[1]) / 2
    chassis_half = (CHASSIS_X[1] - CHASSIS_X[0]) / 2
    caster_z = CASTER_RADIUS - WHEEL_RADIUS
    camera_z = CAMERA_HEIGHT - WHEEL_RADIUS
    onboard_quaternion = " ".join(str(value) for value in camera_quaternion(CAMERA_PITCH_DEG))
    chase_x, chase_y, chase_z = CHASE_CAMERA_POSITION
    chase_quaternion = " ".join(str(value) for value in camera_quaternion(CHASE_CAMERA_PITCH_DEG))
    body = f"""
    <body name="duckiebot" pos="0 0 {WHEEL_RADIUS}">
      <freejoint name="root"/>
      <site name="imu" pos="0 0 0"/>
      <geom name="chassis" type="box" pos="{chassis_centre} 0 0.035" size="{chassis_half} {CHASSIS_HALF_WIDTH} 0.03"
            mass="1.0" contype="0" conaffinity="0" group="1" rgba=".15 .15 .18 1"/>
      <!-- The rubber duck every Duckiebot carries; only render() shows it. -->
      <geom name="duck" type="sphere" pos="-0.04 0 0.085" size="0.02" mass="0.01"
            contype="0" conaffinity="0" group="1" rgba="1 .85 0 1"/>
      <geom name="caster" type="sphere" pos="{CASTER_X} 0 {caster_z}" size="{CASTER_RADIUS}" mass="0.02"
            contype="2" conaffinity="1" condim="1" priority="1" group="1" rgba=".6 .6 .6 1"/>
      {_wheel_mjcf("left", BASELINE / 2)}
      {_wheel_mjcf("right", -BASELINE / 2)}
      <camera name="onboard" pos="{CAMERA_X} 0 {camera_z}" quat="{onboard_quaternion}" fovy="{CAMERA_FOVY_DEG}"/>
      <camera name="chase" pos="{chase_x} {chase_y} {chase_z}" quat="{chase_quaternion}"
              fovy="{CHASE_CAMERA_FOVY_DEG}"/>
    </body>"""
    # Velocity servos stand in for the DC motors: about 0.1 s to reach a new wheel speed.
    limit = 1.2 * MOTOR_CONSTANT
    servo = f'kv="0.01" ctrlrange="{-limit} {limit}" forcerange="-0.2 0.2"'
    actuators = f"""
    <actuator>
      <velocity name="left_motor" joint="left_wheel" {servo}/>
      <velocity name="right_motor" joint="right_wheel" {servo}/>
    </actuator>
    <sensor>
      <gyro name="gyro" site="imu"/>
      <velocimeter name="velocimeter" site="imu"/>
    </sensor>"""
    return body, actuators

"""The MuJoCo model of the room: floor with the track texture, walls, lights, cameras and the robot.

Only the static model is built here; per-episode looks are applied in ``env.py`` from ``variants.py``.
"""

from __future__ import annotations

import mujoco

from latent_residual_plugins.duckiebot.robot import robot_mjcf
from latent_residual_plugins.duckiebot.textures import TEXELS_PER_METRE
from latent_residual_plugins.duckiebot.track import Track

# 200 Hz physics: 20 substeps per 10 Hz control step cost about 0.15 ms and keep contacts calm.
PHYSICS_TIMESTEP = 0.005
ROOM_MARGIN = 0.6
WALL_HEIGHT = 3.0
WALL_HALF_THICKNESS = 0.02
RENDER_SIZE = 256
FLOOR_TEXTURE = "floor"
ONBOARD_CAMERA = "onboard"
CHASE_CAMERA = "chase"
LAMP = "lamp"
SUN = "sun"
WALLS = ("wall_north", "wall_south", "wall_east", "wall_west")


def room_extent(track: Track) -> tuple[float, float, float, float]:
    """(x_min, y_min, x_max, y_max) of the room: the tile grid plus a margin of bare floor."""
    width, height = track.size
    return -ROOM_MARGIN, -ROOM_MARGIN, width + ROOM_MARGIN, height + ROOM_MARGIN


def build_model(track: Track) -> mujoco.MjModel:
    """Compile the room, the track floor (a blank texture that ``env.py`` paints) and the robot.

    Cameras: ``onboard`` (the robot's, for observations) and ``chase`` (behind it, for
    ``render()``); both ride on the robot body.
    """
    x_min, y_min, x_max, y_max = room_extent(track)
    centre_x, centre_y = (x_min + x_max) / 2, (y_min + y_max) / 2
    half_x, half_y = (x_max - x_min) / 2, (y_max - y_min) / 2
    texture_width = round((x_max - x_min) * TEXELS_PER_METRE)
    texture_height = round((y_max - y_min) * TEXELS_PER_METRE)
    wall_z = WALL_HEIGHT / 2
    # Walls stop the wheels like the floor carries them, for episodes that go on off the lane.
    walls = {
        "wall_north": (centre_x, y_max, half_x, WALL_HALF_THICKNESS),
        "wall_south": (centre_x, y_min, half_x, WALL_HALF_THICKNESS),
        "wall_east": (x_max, centre_y, WALL_HALF_THICKNESS, half_y),
        "wall_west": (x_min, centre_y, WALL_HALF_THICKNESS, half_y),
    }
    wall_geoms = "\n".join(
        f'<geom name="{name}" type="box" pos="{x} {y} {wall_z}" size="{sx} {sy} {wall_z}" '
        'contype="1" conaffinity="2" rgba=".8 .8 .78 1"/>'
        for name, (x, y, sx, sy) in walls.items()
    )
    body, actuators = robot_mjcf()
    xml = f"""
<mujoco model="duckietown-loop">
  <option timestep="{PHYSICS_TIMESTEP}" integrator="implicitfast"/>
  <statistic extent="2" center="{centre_x} {centre_y} 0"/>
  <visual>
    <global offwidth="{RENDER_SIZE}" offheight="{RENDER_SIZE}"/>
    <quality shadowsize="0" offsamples="0"/>
    <map znear="0.005" zfar="30"/>
    <headlight ambient="0.3 0.3 0.3" diffuse="0.2 0.2 0.2" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="{FLOOR_TEXTURE}" type="2d" builtin="flat" width="{texture_width}" height="{texture_height}"
             rgb1=".5 .5 .5"/>
    <material name="floor" texture="{FLOOR_TEXTURE}" specular="0.15" shininess="0.3"/>
  </asset>
  <worldbody>
    <light name="{SUN}" directional="true" pos="{centre_x} {centre_y} 3" dir="0.3 0.2 -1" diffuse=".4 .4 .4"
           specular="0 0 0" castshadow="false"/>
    <light name="{LAMP}" pos="{centre_x} {centre_y} 2.5" dir="0 0 -1" diffuse=".5 .5 .5" specular=".2 .2 .2"
           attenuation="1 0.2 0" cutoff="80" castshadow="false"/>
    <geom name="floor" type="plane" pos="{centre_x} {centre_y} 0" size="{half_x} {half_y} 0.25" material="floor"
          contype="1" conaffinity="2" condim="3" friction="1 0.005 0.0001"/>
    {wall_geoms}
    {body}
  </worldbody>
  {actuators}
</mujoco>"""
    return mujoco.MjModel.from_xml_string(xml)

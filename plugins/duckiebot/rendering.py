"""Offscreen frames of the room: one GL context per environment and the one set of scene flags.

What the scene contains and how it is lit is decided in ``world.py`` and ``env.py``.
"""

from __future__ import annotations

import atexit
import weakref

import mujoco
import numpy as np

# Shadows, reflections and the skybox cost most of a frame on llvmpipe and carry no lane
# information. They change the pixels, so every frame (sim, real, docs) uses this one setting.
SCENE_FLAGS_OFF = (
    mujoco.mjtRndFlag.mjRND_SHADOW,
    mujoco.mjtRndFlag.mjRND_REFLECTION,
    mujoco.mjtRndFlag.mjRND_SKYBOX,
    mujoco.mjtRndFlag.mjRND_FOG,
    mujoco.mjtRndFlag.mjRND_HAZE,
)
ROBOT_GROUP = 1


class Renderer:
    """Renders square RGB frames from the model's fixed cameras.

    Each instance owns a GL context and makes it current before drawing, so several environments
    can render in one process. ``close`` frees the context; it also runs at interpreter exit.
    """

    def __init__(self, model: mujoco.MjModel) -> None:
        self._model = model
        size = max(model.vis.global_.offwidth, model.vis.global_.offheight)
        self._gl = mujoco.GLContext(size, size)
        self._gl.make_current()
        self._context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_100)
        mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN, self._context)
        self._scene = mujoco.MjvScene(model, maxgeom=64)
        for flag in SCENE_FLAGS_OFF:
            self._scene.flags[flag] = 0
        self._camera = mujoco.MjvCamera()
        self._camera.type = mujoco.mjtCamera.mjCAMERA_FIXED
        self._option = mujoco.MjvOption()
        # Free the context before the interpreter tears down the EGL bindings it needs.
        self._finalizer = weakref.finalize(self, _free, self._context, self._gl)
        # MuJoCo terminates the EGL display at exit, and freeing after that raises. Its exit hook
        # is registered when the first context is made, so one registered now runs before it.
        self._finalizer.atexit = False
        atexit.register(self._finalizer)

    def render(self, data: mujoco.MjData, camera: str, size: int, show_robot: bool = False) -> np.ndarray:
        """Return a new [size, size, 3] uint8 frame from the named camera."""
        self._gl.make_current()
        self._camera.fixedcamid = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        self._option.geomgroup[ROBOT_GROUP] = int(show_robot)
        mujoco.mjv_updateScene(
            self._model, data, self._option, None, self._camera, mujoco.mjtCatBit.mjCAT_ALL, self._scene
        )
        viewport = mujoco.MjrRect(0, 0, size, size)
        frame = np.empty((size, size, 3), dtype=np.uint8)
        mujoco.mjr_render(viewport, self._scene, self._context)
        mujoco.mjr_readPixels(frame, None, viewport, self._context)
        # OpenGL's rows run bottom-up.
        return frame[::-1].copy()

    def upload_texture(self, texture: str) -> None:
        """Send the model's current pixels of ``texture`` to the GPU."""
        self._gl.make_current()
        texture_id = mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_TEXTURE, texture)
        mujoco.mjr_uploadTexture(self._model, self._context, texture_id)

    def close(self) -> None:
        """Free the GL resources; safe to call more than once."""
        self._finalizer()
        atexit.unregister(self._finalizer)


def _free(context: mujoco.MjrContext, gl: mujoco.GLContext) -> None:
    gl.make_current()
    context.free()
    gl.free()

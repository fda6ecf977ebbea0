"""The one set of render settings behind every DMC frame, and a camera that renders with them.

Physics, observations and targets live in ``env.py`` and ``targets.py``; this only makes pixels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from dm_control.mujoco import Physics


@dataclass(frozen=True)
class RenderSettings:
    """Scene settings for offscreen frames.

    They change the pixels, so pretraining, target data and deployment must all use the same ones.
    """

    flag_overrides: Mapping[str, bool]
    # None keeps the model's own multisampling (4 samples in the suite XMLs).
    offscreen_samples: int | None


FAST_RENDER = RenderSettings(
    # On llvmpipe, shadows, reflections and the skybox cost most of a frame and carry no task state.
    flag_overrides=MappingProxyType({"shadow": False, "reflection": False, "skybox": False}),
    # Multisampling makes thin geometry slow on llvmpipe: ball_in_cup's string alone costs ~10 ms.
    offscreen_samples=0,
)


class FrameRenderer:
    """Renders square RGB frames of one physics from one camera.

    The camera (and its scene) is made once and reused: dm_control's ``Physics.render`` builds a
    new scene per call, which costs about 1 ms of a 64x64 frame here.
    """

    def __init__(
        self,
        physics: Physics,
        size: int,
        camera_id: int = 0,
        settings: RenderSettings = FAST_RENDER,
    ) -> None:
        from dm_control.mujoco.engine import Camera

        if settings.offscreen_samples is not None:
            # Read when the physics creates its GL context, i.e. on its first frame.
            physics.model.vis.quality.offsamples = settings.offscreen_samples
        self._settings = settings
        self._camera = Camera(physics, height=size, width=size, camera_id=camera_id)

    def render(self) -> np.ndarray:
        """Return the current frame as a new [size, size, 3] uint8 array."""
        # dm_control may add to the overrides it is given, so each call gets its own dict.
        frame = self._camera.render(render_flag_overrides=dict(self._settings.flag_overrides))
        # The camera returns a flipped view of its own buffer, which the next frame overwrites.
        return frame.copy()

    def close(self) -> None:
        """Free the camera's scene; the renderer must not be used afterwards."""
        self._camera.scene.free()

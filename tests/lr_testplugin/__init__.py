"""A third-party plugin used by the tests: a recurrent (GRU) backbone, a tiny environment and two adaptation methods.

It registers through the ``latent_residual`` entry-point group exactly as an external package would.
"""

from latent_residual import hookimpl


@hookimpl
def register_backbones(register):
    register("gru-v0", "lr_testplugin.gru:GRUWorldModel", description="Tiny recurrent test backbone.")


@hookimpl
def register_envs(register):
    register(
        "testplug/drift-v0",
        "lr_testplugin.drift:DriftEnv",
        description="A point drifting under its action.",
        max_episode_steps=40,
    )


_REDRAW_CONFIG = "latent_residual.workflow.adaptation.residual:ResidualMethodConfig"


@hookimpl
def register_methods(register):
    register(
        "testplug-zero-start",
        "lr_testplugin.methods:ZeroStartResidual",
        config=_REDRAW_CONFIG,
        description="A residual that starts at zero.",
    )
    register("testplug-narrow", "lr_testplugin.narrow:NarrowResidual", config="lr_testplugin.narrow:NarrowConfig")

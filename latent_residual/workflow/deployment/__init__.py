"""What goes onto the robot: the deployable policy, loading saved models and policies, and ONNX export.

The onboard runner itself is ``latent_residual/onnx_policy.py`` (no library import)."""

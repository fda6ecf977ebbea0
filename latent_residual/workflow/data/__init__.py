"""Target and simulation data: episode datasets on disk, recording an interaction loop, running a behaviour
to collect episodes, and stored Gymnasium spaces. Training on the data is ``training/``."""

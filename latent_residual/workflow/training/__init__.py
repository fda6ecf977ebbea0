"""Training in simulation and in imagination: online and offline world-model pretraining, source recipes,
Plan2Explore, the replay, torchrun data parallelism and policy training. Adapting to a target is ``adaptation/``."""

"""zerotune training: the `train:` section, fit() on Ray Train + DeepSpeed, the checkpoint contract.

Import fit from trainers.launch; this package's __init__ stays light so that importing the
config (e.g. to validate a spec) does not import torch or Ray.
"""

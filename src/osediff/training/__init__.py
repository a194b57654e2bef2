"""OSEDiff training: config, data, models, losses per step, checkpoints and the Accelerate loop.

>>> from osediff.training import TrainConfig, train
>>> result = train(TrainConfig.from_yaml("configs/train_osediff.yaml"), resume="latest")
"""

from .config import ConfigError, TrainConfig
from .loop import Trainer, TrainResult, train

__all__ = ["ConfigError", "TrainConfig", "TrainResult", "Trainer", "train"]

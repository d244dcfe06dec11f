"""The analog crossbar tile (IBM HWA supplement, Table 1) as a forward for training and Monte Carlo."""

from models.analog.context import AnalogDraws, AnalogTiles, active_tiles, analog_tiles
from models.analog.tile import PRESETS, AnalogTileConfig, analog_config

__all__ = ["PRESETS", "AnalogDraws", "AnalogTileConfig", "AnalogTiles", "active_tiles", "analog_config", "analog_tiles"]

"""Training methods as plugins: importing this package registers every method of models/methods/ in `METHODS`."""

from models.methods import (  # noqa: F401 - imported so that their methods register
    correctnet,
    dat,
    ibm_hwa,
    mtrd,
    neft,
    noise_injection,
    trice,
    vanilla,
)
from models.methods.base import TrainContext, TrainingMethod
from models.methods.options import MethodOptions, option, parse_options
from models.methods.registry import METHODS, available_methods, get_method, get_method_class

__all__ = [
    "METHODS",
    "MethodOptions",
    "TrainContext",
    "TrainingMethod",
    "available_methods",
    "get_method",
    "get_method_class",
    "option",
    "parse_options",
]

"""Training methods as plugins: each module here registers its TrainingMethod subclasses on import."""
from models.methods.base import TrainContext, TrainingMethod
from models.methods.registry import available_methods, get_method, get_method_class, register

__all__ = ["TrainContext", "TrainingMethod", "available_methods", "get_method", "get_method_class", "register"]

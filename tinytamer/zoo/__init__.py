"""Model zoo: a registry of reference models, user models by import path, and counting.

``create("resnet20")`` builds a registered model; ``create("pkg.mod:factory")``
builds a user's own.  ``count(model, (C, H, W))`` gives parameters, non-zero
parameters and MACs, in total and per layer.
"""

from tinytamer.zoo import cifar_resnet, dscnn, lenet, mobilenetv2, resnet, shufflenetv2  # noqa: F401  (registers)
from tinytamer.zoo import vggish as _vggish  # noqa: F401  (registers)
from tinytamer.zoo import vit as _vit  # noqa: F401  (registers)
from tinytamer.zoo import yolofastest as _yolofastest  # noqa: F401  (registers)
from tinytamer.zoo.count import Counts, count
from tinytamer.zoo.registry import ModelInfo, create, list_models, model_info, register_model

__all__ = [
    "Counts",
    "ModelInfo",
    "count",
    "create",
    "list_models",
    "model_info",
    "register_model",
]

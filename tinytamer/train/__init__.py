"""Training: the Caffe-style Solver, learning-rate policies, optimizers, SWA and DDP."""

from tinytamer.train.config import SolverConfig, read_prototxt
from tinytamer.train.lr import learning_rate
from tinytamer.train.solver import Solver, evaluate

__all__ = ["Solver", "SolverConfig", "evaluate", "learning_rate", "read_prototxt"]

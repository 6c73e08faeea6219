"""``from esper.kasmina.host import CNNHost, MorphogeneticModel``: the hosts and the model."""

from ..nn.host import CNNHost as CNNHost
from ..nn.host import TransformerHost as TransformerHost
from ..nn.model import MorphogeneticModel as MorphogeneticModel

__all__ = ["CNNHost", "MorphogeneticModel", "TransformerHost"]

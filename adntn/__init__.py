"""adntn: nonlinear tensor-network weight generators (TTN, aTTN, MERA) as drop-in torch layers."""

from adntn.compress import CompressionReport, compress
from adntn.errors import AdntnError
from adntn.generator import Generator
from adntn.generators import ATTNGenerator, MERAGenerator, TTNGenerator, make_generator
from adntn.layers import TNConv2d, TNLinear
from adntn.tensorize import Tensorization, tensorize

__all__ = [
    "ATTNGenerator",
    "AdntnError",
    "CompressionReport",
    "Generator",
    "MERAGenerator",
    "TNConv2d",
    "TNLinear",
    "TTNGenerator",
    "Tensorization",
    "compress",
    "make_generator",
    "tensorize",
]

"""The attention modules, one file each (as timm's `layers/`): identity, se, bam, cbam,
ge_theta_plus, double_attention (Att-DARTS's candidates), eca, coord_attention, simam.

Each file holds one module class, its factory (named like the DSL token, with the signature
``factory(channels, *, spatial, **settings) -> nn.Module``) and its grouped rule; the catalog
(`attdarts.language.catalog`) names the factory by its dotted path, e.g.
``attdarts.networks.attentions.eca:eca``. `base` holds what they share (`MaskingAttention`).
Adding an attention is this one file plus its catalog entry (README, "Extending attdarts").
"""

from attdarts.networks.attentions.bam import BottleneckAttention
from attdarts.networks.attentions.base import MaskingAttention, attach_grouped_rules
from attdarts.networks.attentions.cbam import ConvBlockAttention
from attdarts.networks.attentions.coord_attention import CoordinateAttention
from attdarts.networks.attentions.double_attention import DoubleAttention
from attdarts.networks.attentions.eca import EfficientChannelAttention, adaptive_kernel_size
from attdarts.networks.attentions.ge_theta_plus import GatherExcite
from attdarts.networks.attentions.identity import IdentityAttention
from attdarts.networks.attentions.se import SqueezeExcitation
from attdarts.networks.attentions.simam import SimAM

__all__ = [
    "BottleneckAttention",
    "ConvBlockAttention",
    "CoordinateAttention",
    "DoubleAttention",
    "EfficientChannelAttention",
    "GatherExcite",
    "IdentityAttention",
    "MaskingAttention",
    "SimAM",
    "SqueezeExcitation",
    "adaptive_kernel_size",
    "attach_grouped_rules",
]

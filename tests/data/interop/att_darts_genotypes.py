# The Att-DARTS authors' genotypes.py layout: (operation, input, attention) 3-tuples and a
# bottleneck attention per cell ('' for none). Transcribed from the paper (Figure 4).
from collections import namedtuple

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat normal_bottleneck reduce_bottleneck')

ATTN_PRIMIVIVES = [
    'Identity',
    'SE',
    'BAM',
    'CBAM',
    'GE_theta-plus',
    'DoubleAttention'
]

DARTS_V2 = Genotype(
    normal=[('sep_conv_3x3', 0, ''), ('sep_conv_3x3', 1, ''), ('sep_conv_3x3', 0, ''), ('sep_conv_3x3', 1, ''),
            ('sep_conv_3x3', 1, ''),
            ('skip_connect', 0, ''), ('skip_connect', 0, ''), ('dil_conv_3x3', 2, '')],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0, ''), ('max_pool_3x3', 1, ''), ('skip_connect', 2, ''), ('max_pool_3x3', 1, ''),
            ('max_pool_3x3', 0, ''),
            ('skip_connect', 2, ''), ('skip_connect', 2, ''), ('max_pool_3x3', 1, '')],
    reduce_concat=[2, 3, 4, 5],
    normal_bottleneck='', reduce_bottleneck='')

Att_DARTS = Genotype(
    normal=[('sep_conv_3x3', 0, 'DoubleAttention'), ('sep_conv_3x3', 1, 'CBAM'), ('sep_conv_3x3', 0, 'CBAM'),
            ('skip_connect', 2, 'CBAM'), ('skip_connect', 0, 'CBAM'), ('sep_conv_3x3', 1, 'CBAM'),
            ('skip_connect', 0, 'CBAM'), ('skip_connect', 2, 'CBAM')], normal_concat=range(2, 6),
    reduce=[('max_pool_3x3', 0, 'BAM'), ('dil_conv_3x3', 1, 'DoubleAttention'), ('avg_pool_3x3', 0, 'BAM'),
            ('skip_connect', 2, 'CBAM'), ('skip_connect', 2, 'CBAM'), ('avg_pool_3x3', 0, 'BAM'),
            ('skip_connect', 2, 'CBAM'), ('avg_pool_3x3', 0, 'BAM')], reduce_concat=range(2, 6),
    normal_bottleneck='', reduce_bottleneck='')

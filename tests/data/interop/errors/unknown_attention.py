ATT = Genotype(
    normal=[('sep_conv_3x3', 0, 'CBAN'), ('sep_conv_3x3', 1, 'cbam')],
    normal_concat=[2],
    reduce=[('CBAM', 0, ''), ('max_pool_3x3', 1, 'Identity')],
    reduce_concat=[2],
    normal_bottleneck='GE_theta_plus',
    reduce_bottleneck='',
)

HALF = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)],
    normal_concat=[2],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)],
    reduce_concat=[2],
    normal_bottelneck='CBAM',
)
NO_REDUCE = Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1)], normal_concat=[2])

ODD = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 0)],
    normal_concat=[2],
    reduce=[[('max_pool_3x3', 0), ('max_pool_3x3', 1)], ('skip_connect', 2)],
    reduce_concat=[2],
)

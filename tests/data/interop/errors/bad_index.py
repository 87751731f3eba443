BAD = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('skip_connect', 4), ('sep_conv_3x3', -1)],
    normal_concat=[2, 3, 6],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', True)],
    reduce_concat=[2, 2],
)

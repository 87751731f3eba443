# A value that would run code if the file were evaluated: it must be refused, not run.
BAIT = Genotype(
    normal=__import__('os').system('echo pwned'),
    normal_concat=range(2, 3),
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)],
    reduce_concat=[2],
)

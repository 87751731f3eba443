"""attdarts plug-in: `gct`, the gated channel transformation (Yang et al., CVPR 2020), as an
attention candidate.

Imported when attdarts starts, so it stays torch-free: it registers the name, its keyword
argument and the dotted path of its torch factory, which attdarts imports when a network is built.
"""

from attdarts.language.catalog import Entry, Parameter, register

register(Entry("gct", "attention", {"epsilon": Parameter(float, 1e-5)},
               factory="attdarts_gct.gct:gct", label="GCT"))

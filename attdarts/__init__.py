"""attdarts: differentiable neural architecture search with attention (Att-DARTS).

The package is a pipeline of stages (see STYLE.md): text -> grammar -> transform -> IR, and the IR
goes on to the printer, the discrete network, the supernet, rendering, diffing and interop. This
module imports nothing heavy, so `attdarts fmt` and `attdarts check` start without torch.
"""

__version__ = "0.1.0"

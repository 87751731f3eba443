"""attdarts: differentiable neural architecture search with attention (Att-DARTS).

The package is a pipeline of stages (README, "Layout"): text -> grammar -> transform -> IR, and the IR
goes on to the printer, the discrete network, the supernet, rendering, diffing and interop. This
module imports nothing heavy, so `attdarts fmt` and `attdarts check` start without torch.

The Python API is reachable from here (`attdarts.create_network("darts_v2")`,
`attdarts.load_network`, `attdarts.search`, `attdarts.train`, `attdarts.export_model`,
`attdarts.predict`): each
name is looked up in `attdarts.api` on first use (PEP 562), and torch is imported only when one of
them runs. Plug-ins (`attdarts.plugins`) are loaded on first use of one of these names.
"""

__version__ = "0.1.0"

# the names of attdarts.api offered at the top level
API = ("create_network", "load_network", "search", "train", "export_model", "predict",
       "resolve_genotype", "zoo_names", "zoo_dir")


def __getattr__(name: str):
    if name in API:
        from attdarts import api, plugins

        plugins.load()  # installed plug-ins and $ATTDARTS_PLUGINS, once (attdarts.plugins)
        return getattr(api, name)
    raise AttributeError(f"module 'attdarts' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})

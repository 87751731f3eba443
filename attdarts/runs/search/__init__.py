"""The bilevel architecture search (DARTS, Liu et al. 2019; Att-DARTS, Nakai et al. 2020).

The public names live in `loop` today; the package re-exports them so that callers import
`attdarts.runs.search` and do not depend on how the package is split into modules.
"""

from attdarts.runs.search.loop import *  # noqa: F401,F403
from attdarts.runs.search.loop import __all__  # noqa: F401

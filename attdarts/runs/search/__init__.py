"""The bilevel architecture search (DARTS, Liu et al. 2019; Att-DARTS, Nakai et al. 2020).

Modules: `config` (settings, results, file names), `bilevel` (one iteration: the architecture
and weight steps, written once over a leading seed axis), `seeds` (one seed's supernet or S
seeds' values stacked), `loop` (one seed's run: steps, epochs, save / restore), `outputs` (the
run directory's files), `together` (several seeds' run directories as one model) and `entry`
(launch, run, resume, several seeds). Callers import this package.
"""

from attdarts.runs.runtime import set_threads
from attdarts.runs.search.bilevel import Bilevel, hessian_vector_product, virtual_step
from attdarts.runs.search.config import (
    FINAL_GENOTYPE, RECIPE_SETTINGS, RECIPES, RESUMABLE_SETTINGS, RequestError, SearchConfig,
    SearchError,
    SearchResult, SettingChanged, check_seeds, cosine_lr, load_space, read_config, recipe_config,
    with_bam_combine,
)
from attdarts.runs.search.entry import (
    default_run_dir, launch, resume_search, run_search, run_seeds,
)
from attdarts.runs.search.loop import SearchRun
from attdarts.runs.search.outputs import summarise

__all__ = [
    "Bilevel",
    "FINAL_GENOTYPE",
    "RECIPE_SETTINGS",
    "RECIPES",
    "RESUMABLE_SETTINGS",
    "RequestError",
    "SearchConfig",
    "SearchError",
    "SearchResult",
    "SearchRun",
    "SettingChanged",
    "check_seeds",
    "cosine_lr",
    "default_run_dir",
    "hessian_vector_product",
    "launch",
    "load_space",
    "read_config",
    "recipe_config",
    "resume_search",
    "run_search",
    "run_seeds",
    "set_threads",
    "summarise",
    "virtual_step",
    "with_bam_combine",
]

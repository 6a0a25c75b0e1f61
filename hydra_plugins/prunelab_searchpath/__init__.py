"""Adds prunelab's experiments/ folder to Hydra's search path, so ``+experiment=NAME`` works
from any working directory (the path is absolute: checkout or installed wheel)."""

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin


class PrunelabSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from prunelab.paths import experiments_dir

        search_path.append(provider="prunelab-experiments", path=f"file://{experiments_dir()}")

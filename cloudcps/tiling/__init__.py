"""Cut 4-band scenes into 8-bit RGB training tiles with aligned labels, a manifest and split lists.

The tiler reads each scene window by window (memory does not grow with the scene), maps the
selected bands to 8 bits with one stretch shared by the whole dataset, drops NIR, and records in
``manifest.json`` everything a model trained on the tiles needs to read a new scene the same way
(band order, stretch, normalisation, class names), plus each tile's georeferencing.

Submodules, in the order a run uses them:

- ``options``: :class:`TileOptions` (the flags of ``cloudcps tile``, validated) and
  :class:`TileSummary` (what a run wrote, and its lines for people).
- ``gather``: the input scenes checked before anything is written (that they exist: the check
  shared with predict, :func:`cloudcps.scenes.missing.check_scenes_exist`;
  ``--clear``, distinct ids, labels found and valid, scenes too small for a tile).
- ``scene``: one scene (:class:`SceneInfo`, :func:`inspect_scene`): its bands, its label raster
  and that raster's grid and values.
- ``labels``: labels of single tiles (suggest's rounds), pasted over the scene labels.
- ``splits``: whole validation scenes and the labelled subset of the training tiles.
- ``stretch``: the dataset's one stretch, fixed or from percentiles of all scenes.
- ``windows``: the tile grid.
- ``cut``: cutting one scene into image, valid-mask and label tiles (in worker processes).
- ``manifest``: the data contract and ``manifest.json``.
- ``run``: :func:`tile_scenes`, a whole run written into a temporary folder renamed when done.
"""

from __future__ import annotations

from cloudcps.scenes.missing import check_scenes_exist as check_scenes_exist
from cloudcps.tiling.options import TileOptions as TileOptions
from cloudcps.tiling.options import TileSummary as TileSummary
from cloudcps.tiling.options import summary_dict as summary_dict
from cloudcps.tiling.options import summary_lines as summary_lines
from cloudcps.tiling.run import tile_scenes as tile_scenes
from cloudcps.tiling.scene import SceneInfo as SceneInfo
from cloudcps.tiling.scene import check_label_values as check_label_values
from cloudcps.tiling.scene import inspect_scene as inspect_scene
from cloudcps.tiling.splits import assign_val_scenes as assign_val_scenes
from cloudcps.tiling.splits import choose_labeled as choose_labeled
from cloudcps.tiling.stretch import resolve_stretch as resolve_stretch
from cloudcps.tiling.windows import grid_offsets as grid_offsets
from cloudcps.tiling.windows import tile_windows as tile_windows

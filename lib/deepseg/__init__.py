"""DeepSeg: tiled segmentation inference over continent-sized raster mosaics."""

__version__ = "0.1.0"

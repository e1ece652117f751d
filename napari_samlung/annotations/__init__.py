"""Reviewed regions and exports, headless (the napari widget calls these).

- :mod:`.review`: review drafts (edit a class-map box on disk, apply it, recover after crashes)
- :mod:`.training_set`: reviewed regions to image/label tiles with a manifest for fine-tuning
- :mod:`.geojson`: the class map as QuPath GeoJSON (level-0 pixel coordinates)
- :mod:`.label_tiff`: the class map as a pyramidal label TIFF
- :mod:`.cli`: the ``samlung export`` subcommand's arguments and runner
"""

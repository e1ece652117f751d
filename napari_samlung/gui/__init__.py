"""The napari plugin: reader, writers, sample slide and the SAM-Lung dock widget.

Qt and napari are imported here only; the modules without a leading underscore (layers, settings,
state, bug_log, model_cache) import neither Qt nor napari and are unit-tested headless.
"""

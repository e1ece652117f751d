"""napari-samlung: SAM-Lung tumor segmentation for whole-slide H&E images.

The package is importable without napari or Qt: the model, slide, inference, annotation and
data modules are headless; only ``napari_samlung.gui`` touches napari.
"""

__version__ = "0.1.0"

"""The `samlung` commands, one module each; `napari_samlung.cli` only dispatches."""

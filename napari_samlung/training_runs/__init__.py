"""The contract between the fine-tuning program (`training/`) and those who start it (widget, demo)."""

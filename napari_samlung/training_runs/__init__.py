"""Fine-tuning runs seen from the outside: the widget and the demo start ``samlung-finetune``.

``contract`` fixes what both sides share (options, output file names, metrics events);
``launcher`` starts the program as a separate process, follows it and cancels it.
"""

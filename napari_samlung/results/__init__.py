"""The results of a slide: the class map on disk, its folder, reviewed regions and review drafts.

Every other part reads and writes this format: the engine fills the class map, the widget and
`samlung export` read it, review drafts are written back into it.
"""

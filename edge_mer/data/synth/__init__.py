"""Synthetic micro-expressions rendered on real face photographs.

``faces``: the photos and the subjects derived from them; ``aus``: action units
as displacement fields and emotions as AU sets; ``render``: one frame;
``timeline``: events, head motion and sequences; ``datasets`` and ``video``: the
files written in the real datasets' layouts.
"""

"""Synthetic micro-expressions rendered on real face photographs.

``faces``: the photos and the subjects derived from them; ``aus``: action units
as displacement fields and emotions as AU sets; ``render``: one frame;
``timeline``: events, head motion and sequences; ``video``: long videos and their
truth; ``sheets``: the spreadsheets they are written with.

Both sides use it: the device's ``demo://`` source and the flow stage's test pairs
render with it, and the host's dataset writer (``edge_mer.data.synthetic``) writes
its clips in the real datasets' layouts. So it imports neither side.
"""

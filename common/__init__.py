"""Vocabulary and rules that are not math, written once and imported by both sides and lab/.

The errors and input checks, the network plans, the choice lists (predictions, objectives, processes,
grids) and the samplers' table. Standard library and numpy only: no array math of either side lives here.
"""

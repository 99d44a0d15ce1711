"""Moved to :mod:`medsam3.orientation` (below io, data and predict, which all use it); this name
stays for code written against the old path."""

from medsam3.orientation import AXES, PLANES, SliceOrientation, choose_orientation, physical_axes, physical_axes_unique

__all__ = ["AXES", "PLANES", "SliceOrientation", "choose_orientation", "physical_axes",
           "physical_axes_unique"]

"""Schedulers behind one interface: heuristics now, the learned EAT policy beside them."""

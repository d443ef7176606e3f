"""Deployment: one self-verified export file (:mod:`.export`) and HTTP serving (:mod:`.serve`,
with its micro-batcher :mod:`.batcher` and page :mod:`.page`)."""

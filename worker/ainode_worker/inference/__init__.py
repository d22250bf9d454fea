"""The worker's inference engine: registry entries run as nnU-Net, TotalSegmentator, ONNX or
BiomedParse models, alone or in cascades, with post-processing.

Import from the modules (``pipeline``, ``errors``, ``prediction``, ...): the package itself loads
nothing, so that importing its errors does not load torch (the delivery worker never does)."""

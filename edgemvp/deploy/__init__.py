"""Deployment: from a trained model to checked ONNX files held to a device's latency budget.

* :mod:`edgemvp.deploy.onnx`: ONNX export with an explicit exporter, ``onnx.checker`` and parity with PyTorch.
* :mod:`edgemvp.deploy.quantize`: int8 copies with onnxruntime quantization (static QDQ or dynamic).
* :mod:`edgemvp.deploy.devices`: device profiles (YAML): validation, registry, aliases, detection.
* :mod:`edgemvp.deploy.costmodel`: the latency cost model (per-node work of the optimised graph, fitted constants).
* :mod:`edgemvp.deploy.latency`: latency measured with onnxruntime here or estimated by a device's cost model.
* :mod:`edgemvp.deploy.budget`: the budget gate (latency and model size) and ``edgemvp check``.
* :mod:`edgemvp.deploy.calibrate`: ``edgemvp devices calibrate``: measure a device's suite, write a fitted profile.
* :mod:`edgemvp.deploy.export`: ``edgemvp export``: load a run or base folder, export, int8, report.
"""

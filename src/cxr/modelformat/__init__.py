"""The stored forms of a cxr model file, below the API of :mod:`cxr.modelfile`.

- :mod:`~cxr.modelformat.header`: the one validation of a model header (the format and its
  version, spec, thresholds, training summary, calibration, gate), used by both file formats;
- :mod:`~cxr.modelformat.safetensors_file`: the ``cxr-model`` format (safetensors weights and
  a JSON header; its SHA-256 digest, signature and atomic write);
- :mod:`~cxr.modelformat.onnx_metadata`: cxr's metadata in an exported ``.onnx`` file
  (:class:`~cxr.modelformat.onnx_metadata.HeadWeights`, the header, the integrity seal),
  read with the protobuf walker of :mod:`~cxr.modelformat.protobuf`;
- :mod:`~cxr.modelformat.atomic`: writing a file atomically (temporary file, then rename).

Nothing is imported here, so that reading an ONNX header imports no torch (the safetensors
format needs it for its tensors).
"""

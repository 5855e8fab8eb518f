"""Export trained runs to verified ONNX in a Triton-style model repository (needs torch).

onnx_export: the conversion and the atomic write into the repository; checks: structural checks
of an ONNX file; verify: ONNX Runtime against PyTorch; quantize: INT8/FP16 variants;
golden: the lecture's worked examples as fixed-weight modules.
"""

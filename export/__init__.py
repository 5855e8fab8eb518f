"""Export trained runs to verified ONNX in a Triton-style model repository (needs torch).

onnx_export: the conversion and the atomic write into the repository; onnx_checks: structural
checks of an ONNX file; verify: ONNX Runtime against PyTorch; quantize: INT8/FP16 variants;
cpu_inference: ONNX Runtime CPU sessions for the export-side checks; selftest_writer: the golden
inputs and logits a server checks a version against when it loads it.
"""

"""edgetier's export side: ONNX export and parity checks, int8 quantization, bundles, measurement.

Kept import-light on purpose: importing `export` loads nothing, so `import export.runtime` on
a device pulls in only numpy and onnxruntime. Import the submodule you need:
`export.onnx` (needs torch), `export.quantize`, `export.bundle`, `export.measure`,
`export.report`, and `export.runtime` (the device side).
"""

"""glassfinder_export: torch -> ONNX / TFLite / CoreML, quantization, parity gates, PQ gallery, bundle."""

"""edgekit quantize: model variants (GGUF types, ONNX int8) with cards."""

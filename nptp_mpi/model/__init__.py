"""The model: a graph of spatial and head nodes, from the zoo or an ONNX file, with its weights."""

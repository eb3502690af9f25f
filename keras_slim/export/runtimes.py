"""The runtimes that run exported files: LiteRT and ONNX Runtime, set up once.

Every reader of an exported file (verification after export, `run_tflite`,
`run_onnx`, `run_cascade`, latency measurements) opens it here, so thread
counts, logging and errors for a missing file are the same everywhere.
"""

import os


def litert_interpreter(model, num_threads=None):
    """A LiteRT interpreter for a `.tflite` path or flatbuffer bytes.

    Args:
        model: A path or the flatbuffer as bytes.
        num_threads: Interpreter threads (None: LiteRT's default).

    Returns:
        An `ai_edge_litert.interpreter.Interpreter` (tensors not allocated).

    Raises:
        ValueError: for a path that is not a file, or another kind of input.

    Example:

    >>> interpreter = litert_interpreter("out/net_w0.5.tflite", num_threads=1)
    """
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model, (bytes, bytearray)):
        return Interpreter(model_content=bytes(model), num_threads=num_threads)
    if isinstance(model, (str, os.PathLike)):
        if not os.path.isfile(model):
            raise ValueError(f"No TFLite file at '{os.fspath(model)}'.")
        return Interpreter(model_path=os.fspath(model),
                           num_threads=num_threads)
    raise ValueError(
        "Pass a .tflite path or TFLite flatbuffer bytes; got "
        f"{type(model).__name__}."
    )


def onnx_session(path, num_threads=None):
    """An ONNX Runtime session (CPU, quiet) for an `.onnx` file.

    Args:
        path: The `.onnx` file.
        num_threads: Intra-op threads (None: ONNX Runtime's default).

    Example:

    >>> session = onnx_session("out/net_w0.5.onnx")
    >>> logits = session.run(None, {"input": x})[0]
    """
    import onnxruntime as ort

    if not os.path.isfile(path):
        raise ValueError(f"No ONNX file at '{os.fspath(path)}'.")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if num_threads is not None:
        options.intra_op_num_threads = num_threads
        options.inter_op_num_threads = 1
    return ort.InferenceSession(
        os.fspath(path), options, providers=["CPUExecutionProvider"]
    )

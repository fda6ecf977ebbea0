"""Graph-level work on an exported policy's ONNX graph: the exact rewrites export_policy applies, and the opt-in
fp16 and int8 variants. Not here: exporting, checking and policy.json (export.py), running (onnx_policy.py)."""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

#: Precisions ``export_policy`` can write: "fp32" keeps the torch parity; the others trade it for speed or size.
PRECISIONS = ("fp32", "fp16", "int8")

_SHAPE_OPS = ("Reshape", "Cast", "Identity", "Flatten")


# ----------------------------------------------------------------------------------------------
# Graph plumbing
# ----------------------------------------------------------------------------------------------


def _attributes(node: Any) -> dict[str, Any]:
    import onnx

    return {item.name: onnx.helper.get_attribute_value(item) for item in node.attribute}


def _subgraph_names(graph: Any) -> set[str]:
    """Every tensor name a node's subgraph (If, Loop, Scan) reads: such a tensor is not rewritten or removed."""
    import onnx

    names: set[str] = set()
    for node in graph.node:
        for item in node.attribute:
            subgraphs = [item.g] if item.type == onnx.AttributeProto.GRAPH else list(item.graphs)
            for sub in subgraphs:
                names.update(name for inner in sub.node for name in inner.input)
                names.update(_subgraph_names(sub))
    return names


def _consumers(graph: Any) -> dict[str, list[Any]]:
    found: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            found.setdefault(name, []).append(node)
    return found


def _producers(graph: Any) -> dict[str, Any]:
    return {name: node for node in graph.node for name in node.output}


def _constant(graph: Any, name: str) -> np.ndarray | None:
    """The value of an initializer or a Constant node's output, else None."""
    from onnx import numpy_helper

    for item in graph.initializer:
        if item.name == name:
            return numpy_helper.to_array(item)
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            value = next((item for item in node.attribute if item.name == "value"), None)
            return None if value is None else numpy_helper.to_array(value.t)
    return None


def _drop_value_info(graph: Any, names: set[str]) -> None:
    """Forget the recorded shapes of tensors whose shape a rewrite changed (shape inference recomputes them)."""
    kept = [item for item in graph.value_info if item.name not in names]
    del graph.value_info[:]
    graph.value_info.extend(kept)


def _tidy(graph: Any) -> None:
    """Drop nodes and initializers nothing needs any more, then put the nodes back in topological order."""
    producers = _producers(graph)
    needed = {item.name for item in graph.output} | _subgraph_names(graph)
    todo, alive = list(needed), set()
    while todo:  # the rewrites leave nodes out of order, so walk back by producer rather than by position
        node = producers.get(todo.pop())
        if node is not None and id(node) not in alive:
            alive.add(id(node))
            todo.extend(node.input)
            needed.update(node.input)
    live = [node for node in reversed(list(graph.node)) if id(node) in alive]
    inputs = {item.name for item in graph.input}
    initializers = [item for item in graph.initializer if item.name in needed or item.name in inputs]
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    known = inputs | {item.name for item in graph.initializer} | {""}
    ordered: list[Any] = []
    pending = list(reversed(live))
    while pending:
        ready = [node for node in pending if all(name in known for name in node.input)]
        if not ready:  # a cycle cannot come from these rewrites; keep the order as it was rather than loop
            ordered.extend(pending)
            break
        for node in ready:
            ordered.append(node)
            known.update(node.output)
        pending = [node for node in pending if all(node is not item for item in ready)]
    del graph.node[:]
    graph.node.extend(ordered)


def _dims(value: Any) -> list[int | str | None]:
    return [
        dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else None)
        for dim in value.type.tensor_type.shape.dim
    ]


def _shapes(model: Any) -> dict[str, list[int | str | None]]:
    """Each tensor's inferred dims (an int, a symbolic name, or None where unknown)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {value.name: _dims(value) for value in values if value.type.HasField("tensor_type")}


# ----------------------------------------------------------------------------------------------
# Exact rewrites
# ----------------------------------------------------------------------------------------------


def silu_before_transpose(model: Any) -> int:
    """``Transpose -> x * sigmoid(x)`` becomes ``x * sigmoid(x) -> Transpose`` (the same numbers: SiLU works
    element by element). The image encoder's channel norm ends in a transpose back to NCHW before each
    SiLU; with the transpose right in front of the next convolution, onnxruntime folds it into the
    convolution's own layout change (a channels-last ReorderInput), so three transposes of the paper-size
    encoder disappear. Returns how many were moved."""
    graph = model.graph
    consumers = _consumers(graph)
    fixed = {item.name for item in graph.output} | _subgraph_names(graph)
    moved = 0
    for transpose in list(graph.node):
        if transpose.op_type != "Transpose" or transpose.output[0] in fixed:
            continue
        users = consumers.get(transpose.output[0], [])
        sigmoids = [node for node in users if node.op_type == "Sigmoid"]
        muls = [node for node in users if node.op_type == "Mul"]
        if len(users) != 2 or len(sigmoids) != 1 or len(muls) != 1:
            continue
        sigmoid, mul = sigmoids[0], muls[0]
        if sorted(mul.input) != sorted([transpose.output[0], sigmoid.output[0]]):
            continue
        if consumers.get(sigmoid.output[0], []) != [mul] or sigmoid.output[0] in fixed:
            continue
        source, result = transpose.input[0], mul.output[0]
        _drop_value_info(graph, {sigmoid.output[0], result})
        sigmoid.input[0] = source
        mul.input[:] = [source, sigmoid.output[0]]
        mul.output[0] = f"{result}_before_transpose"
        transpose.input[0] = mul.output[0]
        transpose.output[0] = result
        moved += 1
    if moved:
        _tidy(graph)
    return moved


def _one_hot_of(graph: Any, node: Any) -> tuple[str, int] | None:
    """If ``node`` makes a one-hot over a new last axis, ``Equal(Unsqueeze(index, -1), arange(C))`` as the dynamo
    exporter writes it, return (the class indices' name, the number of classes C). (TorchScript's OneHot takes
    its depth from the graph's shapes at run time, so its graph is left as it is.)"""
    producers = _producers(graph)
    if node.op_type != "Equal":
        return None
    constants = [_constant(graph, item) for item in node.input]
    side = 1 if constants[1] is not None else 0 if constants[0] is not None else None
    if side is None:
        return None
    classes = constants[side].size
    if not np.array_equal(constants[side].reshape(-1), np.arange(classes)):
        return None
    unsqueeze = producers.get(node.input[1 - side])
    if unsqueeze is None or unsqueeze.op_type != "Unsqueeze" or len(unsqueeze.input) < 2:
        return None
    axes = _constant(graph, unsqueeze.input[1])
    if axes is None or [int(axis) for axis in axes.reshape(-1)] not in ([-1], [2]):
        return None
    return unsqueeze.input[0], classes


def _one_hot_source(graph: Any, name: str, shapes: dict[str, list[Any]]) -> tuple[str, int, int] | None:
    """If ``name`` is a flattened one-hot of an ArgMax over the last axis (batch, G, C) -> (batch, G * C), cast to
    float, return (the argmax's name, G, C)."""
    producers = _producers(graph)
    node = producers.get(name)
    while node is not None and node.op_type in _SHAPE_OPS:
        node = producers.get(node.input[0])
    found = None if node is None else _one_hot_of(graph, node)
    if found is None:
        return None
    index, classes = found
    argmax = producers.get(index)
    if argmax is None or argmax.op_type != "ArgMax" or classes < 2:
        return None
    options = _attributes(argmax)
    if options.get("axis", 0) not in (-1, 2) or options.get("keepdims", 1) != 0:
        return None
    # Every index is then in [0, C): the argmax runs over the scores' last axis, of C classes.
    scores, index_dims = shapes.get(argmax.input[0]), shapes.get(index)
    one_hot, flat = shapes.get(node.output[0]), shapes.get(name)
    if not (scores and index_dims and one_hot and flat) or len(scores) != 3 or scores[2] != classes:
        return None
    groups = index_dims[1] if len(index_dims) == 2 else None
    if not isinstance(groups, int):
        return None
    # The batch axis must pass through untouched: (batch, G, C) one-hot, (batch, G * C) flattened.
    if one_hot != [index_dims[0], groups, classes] or flat != [index_dims[0], groups * classes]:
        return None
    return index, groups, classes


def one_hot_matmul_as_gather(model: Any) -> int:
    """A Gemm whose input is a one-hot (the posterior's mode feeding the actor) becomes a Gather of the weight
    rows the one-hot selects, summed by a MatMul with ones: it reads G of the G * C rows (a quarter of the
    actor's first weight matrix for 4 classes) instead of multiplying by zeros. The products are the same
    (1 * w and 0 * w are exact); only the order of the sum changes (a few 1e-7). Returns how many were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    graph = model.graph
    shapes = _shapes(model)
    initializers = {item.name: item for item in graph.initializer}
    rewritten = 0
    for gemm in list(graph.node):
        if gemm.op_type != "Gemm" or gemm.input[1] not in initializers:
            continue
        options = _attributes(gemm)
        if options.get("transA", 0) or options.get("alpha", 1.0) != 1.0 or options.get("beta", 1.0) != 1.0:
            continue
        source = _one_hot_source(graph, gemm.input[0], shapes)
        if source is None:
            continue
        weight = numpy_helper.to_array(initializers[gemm.input[1]])
        if weight.ndim != 2 or weight.dtype != np.float32:
            continue
        index, groups, classes = source
        rows = weight.T if options.get("transB", 0) else weight  # (G * C, N)
        if rows.shape[0] != groups * classes:
            continue
        prefix = f"{gemm.name or gemm.output[0]}_one_hot"
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ascontiguousarray(rows), f"{prefix}_rows"),
                numpy_helper.from_array(np.arange(groups, dtype=np.int64) * classes, f"{prefix}_offsets"),
                numpy_helper.from_array(np.ones((1, groups), np.float32), f"{prefix}_ones"),
                numpy_helper.from_array(np.array([-1, rows.shape[1]], np.int64), f"{prefix}_shape"),
            ]
        )
        summed = f"{prefix}_sum" if len(gemm.input) > 2 else gemm.output[0]
        nodes = [
            # Row g * C + argmax_g of the (G * C, N) weight: the one the one-hot's group g selects.
            helper.make_node("Add", [index, f"{prefix}_offsets"], [f"{prefix}_index"], name=f"{prefix}_index"),
            helper.make_node(
                "Gather", [f"{prefix}_rows", f"{prefix}_index"], [f"{prefix}_picked"], name=f"{prefix}_gather", axis=0
            ),
            # (1, G) @ (batch, G, N) -> (batch, 1, N): the sum over the groups. onnxruntime's ReduceSum over
            # the middle axis is slower than this MatMul (measured).
            helper.make_node(
                "MatMul", [f"{prefix}_ones", f"{prefix}_picked"], [f"{prefix}_sum3"], name=f"{prefix}_matmul"
            ),
            helper.make_node("Reshape", [f"{prefix}_sum3", f"{prefix}_shape"], [summed], name=f"{prefix}_reshape"),
        ]
        if len(gemm.input) > 2 and gemm.input[2]:
            nodes.append(helper.make_node("Add", [summed, gemm.input[2]], [gemm.output[0]], name=f"{prefix}_bias"))
        elif len(gemm.input) > 2:  # an empty bias name: no bias
            nodes[-1].output[0] = gemm.output[0]
        position = list(graph.node).index(gemm)
        graph.node.remove(gemm)
        for offset, node in enumerate(nodes):
            graph.node.insert(position + offset, node)
        rewritten += 1
    if rewritten:
        _tidy(graph)
        onnx.checker.check_model(model)
    return rewritten


#: The exact rewrites, in the order they run: name -> (function(model) -> how many places it rewrote, the
#: precisions it is applied for). The gather costs an int8 graph more than the quantised matrix it replaces
#: (which already reads a quarter of the float32 bytes): 0.46 against 0.43 ms for the paper-size state policy.
REWRITES: dict[str, tuple[Callable[[Any], int], tuple[str, ...]]] = {
    "silu_before_transpose": (silu_before_transpose, PRECISIONS),
    "one_hot_matmul_as_gather": (one_hot_matmul_as_gather, ("fp32", "fp16")),
}


def optimise_graph(data: bytes, precision: str = "fp32") -> tuple[bytes, dict[str, int]]:
    """Apply the exact rewrites (:data:`REWRITES`) that help a graph headed for ``precision`` to a serialised ONNX
    model; return the new bytes and how many places each rewrite changed (rewrites that found nothing are left out).

    What is left to onnxruntime: constant folding, the SiLU and LayerNormalization fusions and the NCHWc
    convolution layout happen when a session loads the graph, on the robot's own hardware; a graph saved
    after them would be tied to this CPU's vector width and to onnxruntime's own operators.
    """
    import onnx

    model = onnx.load_from_string(data)
    applied = {name: rewrite(model) for name, (rewrite, precisions) in REWRITES.items() if precision in precisions}
    applied = {name: count for name, count in applied.items() if count}
    return (model.SerializeToString() if applied else data), applied


# ----------------------------------------------------------------------------------------------
# Reduced precision
# ----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence onnxruntime.quantization's advice and per-node log lines, which it sends to the root logger
    (and without a handler there ``logging.warning`` would install one on the application's behalf)."""
    root = logging.getLogger()
    names = ("onnxruntime.quantization", "onnxruntime")
    loggers = [logging.getLogger(name) for name in names]
    levels = [item.level for item in loggers]

    def keep(record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname

    guard = logging.NullHandler() if not root.handlers else None
    try:
        if guard is not None:
            root.addHandler(guard)
        root.addFilter(keep)
        for item in loggers:
            item.setLevel(logging.ERROR)
        yield
    finally:
        root.removeFilter(keep)
        if guard is not None:
            root.removeHandler(guard)
        for item, level in zip(loggers, levels):
            item.setLevel(level)


def _unweighted_matmuls(model: Any) -> list[str]:
    """Names of the MatMul and Gemm nodes whose second input is not a float32 weight initializer (the sum over
    a one-hot's picked rows): quantising those would quantise two activations."""
    import onnx

    weights = {item.name for item in model.graph.initializer if item.data_type == onnx.TensorProto.FLOAT}
    return [
        node.name
        for node in model.graph.node
        if node.op_type in ("MatMul", "Gemm") and (len(node.input) < 2 or node.input[1] not in weights)
    ]


def _int8(model: Any) -> Any:
    """onnxruntime's dynamic quantisation of the MatMul and Gemm weights: int8 per output channel, the
    activations quantised to uint8 at run time (standard ONNX: DynamicQuantizeLinear and MatMulInteger,
    which onnxruntime fuses). Convolutions stay float32: onnxruntime's ConvInteger is slower than its
    float convolution on CPUs."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as directory, _quiet_quantizer():
        source, target = Path(directory) / "fp32.onnx", Path(directory) / "int8.onnx"
        onnx.save(model, source)
        quantize_dynamic(
            source,
            target,
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul", "Gemm"],
            nodes_to_exclude=_unweighted_matmuls(model),
        )
        return onnx.load(target)


def _fp16(model: Any) -> Any:
    """Float32 weights and activations to float16, the graph's inputs and outputs kept as they are
    (onnxruntime.transformers' converter; the operators it keeps in float32 get casts around them)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with _quiet_quantizer():
        converted = convert_float_to_float16(model, keep_io_types=True)
    _tidy(converted.graph)  # the converter appends the inputs' casts after the nodes that read them
    return converted


def reduce_precision(data: bytes, precision: str) -> bytes:
    """The serialised ONNX model at ``precision`` ("fp32" returns it unchanged; see :data:`PRECISIONS`)."""
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"Unknown precision {precision!r}; choose one of {list(PRECISIONS)}.")
    if precision == "fp32":
        return data
    convert = {"fp16": _fp16, "int8": _int8}[precision]
    return convert(onnx.load_from_string(data)).SerializeToString()


def max_output_difference(reference: bytes, other: bytes, feeds: dict[str, np.ndarray], output: str) -> float:
    """The largest absolute difference between two graphs' ``output`` on the same feeds, in onnxruntime on the CPU."""
    import onnxruntime

    results = []
    for data in (reference, other):
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
        results.append(session.run([output], feeds)[0].astype(np.float64))
    return float(np.max(np.abs(results[0] - results[1])))

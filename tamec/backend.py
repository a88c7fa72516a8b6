"""tamec as an ONNX backend (`onnx.backend.base.Backend`), so onnx's own node tests can run on it.

    from tamec.backend import TamecBackend
    rep = TamecBackend.prepare(model)          # import + compile once
    y, = rep.run([x])                          # outputs in graph output order

The model is imported with tamec's frontend and run through `tamec.Session`, compiled with
`PIPELINE` (canonicalize only): the backend answers what the ONNX graph computes, and the
optimizing BNN passes (binarize-weights, fold-thresholds, bounds) are for BNN graphs; pass
`pipeline=` to prepare/run_model/run_node to choose others ([] is the bare import). Feeds are
checked, never cast, exactly as by Session: a feed of the wrong dtype or shape, or a real feed
holding NaN/inf, is an `InputError`. Only the CPU device exists.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx.backend.base import Backend, BackendRep, Device, DeviceType, namedtupledict

from tamec.errors import InputError, UsageError

# The default pipeline: canonicalize keeps a graph's semantics bit for bit (it folds constants and
# normalizes forms); the optimizing BNN passes are left out.
PIPELINE: tuple[str, ...] = ("canonicalize",)


class TamecRep(BackendRep):
    """A prepared model: `run(inputs)` feeds a list (graph input order) or a dict by name."""

    def __init__(self, session, input_names: list[str], output_names: list[str]):
        self.session = session
        self.input_names, self.output_names = input_names, output_names
        self._outputs = namedtupledict("Outputs", output_names)

    def run(self, inputs: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Outputs as a namedtuple in graph output order (also indexable by output name)."""
        feed = self._feed(inputs)
        return self._outputs(*self.session.run(self.output_names, feed))

    def _feed(self, inputs: Any) -> dict[str, np.ndarray]:
        names = self.input_names
        if isinstance(inputs, dict):
            return {k: _array(v) for k, v in inputs.items()}
        if isinstance(inputs, np.ndarray):
            inputs = [inputs]
        inputs = list(inputs)
        if len(inputs) != len(names):
            raise InputError(f"got {len(inputs)} inputs, the model takes {len(names)}",
                             hint="feed one array per graph input, in order: " + ", ".join(names))
        return {n: _array(a) for n, a in zip(names, inputs)}


def _array(a: Any) -> Any:
    """A numpy scalar (onnx's runner feeds 0-d tensors as those) as the 0-d array it stands for;
    its dtype is kept, so this is no cast. Anything else goes to Session's checks unchanged."""
    return np.asarray(a) if isinstance(a, np.generic) else a


class TamecBackend(Backend):
    """onnx.backend.base.Backend over `tamec.Session` (CPU only)."""

    @classmethod
    def is_compatible(cls, model: onnx.ModelProto, device: str = "CPU", **kwargs: Any) -> bool:
        return cls.supports_device(device)

    @classmethod
    def prepare(cls, model: onnx.ModelProto | str | bytes, device: str = "CPU", pipeline=None,
                **kwargs: Any) -> TamecRep:
        """Import and compile `model` once (`pipeline` defaults to the semantics-preserving one)."""
        from tamec.api import Session

        if not cls.supports_device(device):
            raise UsageError(f"device {device!r} is not supported", hint="tamec runs on CPU only")
        if isinstance(model, onnx.ModelProto):
            data = model.SerializeToString()  # Session's import copies a proto anyway; bytes is cheapest
        elif isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
        else:
            data = None
        pipe = list(PIPELINE) if pipeline is None else pipeline
        session = Session(model if data is None else data, pipeline=pipe)  # refuses bad models clearly
        if isinstance(model, onnx.ModelProto):
            proto = model
        else:  # readable: Session just imported it
            proto = onnx.load_from_string(data) if data is not None else onnx.load(model, load_external_data=False)
        # feed order: the graph inputs that are not initializers (tamec treats those as weights)
        inits = {t.name for t in proto.graph.initializer}
        return TamecRep(session, [vi.name for vi in proto.graph.input if vi.name not in inits],
                        [vi.name for vi in proto.graph.output])

    @classmethod
    def run_model(cls, model, inputs: Any, device: str = "CPU", **kwargs: Any) -> tuple[Any, ...]:
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node: onnx.NodeProto, inputs: Any, device: str = "CPU",
                 outputs_info: Sequence[tuple[np.dtype, tuple[int, ...]]] | None = None,
                 **kwargs: Any) -> tuple[Any, ...]:
        """Run one node on `inputs` (a list in node input order, or a dict by input name)."""
        opset = int(kwargs.pop("opset_version", onnx.defs.onnx_opset_version()))
        names = [n for n in node.input if n]
        arrays = [inputs[n] for n in names] if isinstance(inputs, dict) else list(inputs)
        if len(arrays) != len(names):
            raise InputError(f"node {node.op_type} has {len(names)} named inputs, got {len(arrays)} arrays")
        ins = [onnx.helper.make_tensor_value_info(n, onnx.helper.np_dtype_to_tensor_dtype(np.asarray(a).dtype),
                                                  list(np.shape(a))) for n, a in zip(names, arrays)]
        outs = [o for o in node.output if o]
        graph = onnx.helper.make_graph([node], "run_node", ins, [onnx.ValueInfoProto(name=o) for o in outs])
        model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
        # graph outputs need a type: take ONNX's inferred one, or outputs_info where given
        inferred = {vi.name: vi for vi in onnx.shape_inference.infer_shapes(model).graph.value_info}
        del model.graph.output[:]
        for k, o in enumerate(outs):
            if outputs_info and k < len(outputs_info):
                dt, shape = outputs_info[k]
                vi = onnx.helper.make_tensor_value_info(o, onnx.helper.np_dtype_to_tensor_dtype(np.dtype(dt)),
                                                        list(shape))
            elif o in inferred:
                vi = inferred[o]
            else:
                raise UsageError(f"ONNX shape inference gives no type for output {o!r} of {node.op_type}",
                                 hint="pass outputs_info=[(dtype, shape), ...]")
            model.graph.output.append(vi)
        return cls.prepare(model, device, **kwargs).run([np.asarray(a) for a in arrays])

    @classmethod
    def supports_device(cls, device: str) -> bool:
        """True for "CPU" (with or without a device id) and nothing else."""
        try:
            return Device(device).type == DeviceType.CPU
        except (AttributeError, ValueError):
            return False


prepare = TamecBackend.prepare
run_model = TamecBackend.run_model
run_node = TamecBackend.run_node
supports_device = TamecBackend.supports_device

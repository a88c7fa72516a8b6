"""ONNX/QONNX -> graph IR: load a model, refuse bad files with clear errors, infer shapes, build a Graph.

`import_onnx` runs these steps in order; each step may assume the earlier ones passed, and every
error it raises names the file, the node and what to do:

 1. load a path, bytes or ModelProto                          -> ModelLoadError
 2. IR version and opset (9 and newer)                         -> UnsupportedModelError
 3. every op supported; all unsupported nodes listed at once   -> UnsupportedModelError
 4. sizes: dims, element counts, raw data lengths, BEFORE any tensor is materialized
                                                               -> ModelStructureError
 5. external data, read only from inside the model's folder    -> ModelLoadError
 6. names: duplicate definitions, undefined inputs, cycles     -> ModelStructureError
 7. `onnx.checker` on the topologically sorted model           -> ModelStructureError
 8. strict shape inference; QONNX and tamec ops are stood in for by standard ops of the same
    shape, and small shape tensors (Shape -> Gather -> Concat -> Reshape) are folded so Reshape
    targets become known                                       -> ModelStructureError
    then every tensor's element type is one tamec computes in (float16/32/64, bfloat16,
    int8-64, uint8-64, bool; not string, complex, float8, 4- or 2-bit types); all others
    listed at once                                             -> UnsupportedModelError
 9. the Graph: one Op per node (Constant nodes become constant values), initializers become
    constant values, graph inputs become real-valued inputs; the domains tamec's own files
    declare (`domain=` doc strings) are read back, and value-preserving ops (Reshape, MaxPool,
    Where, ...) give undeclared outputs their inputs' domains (tamec/ir/domains.py).

Initializers that are also listed as graph inputs (the legacy exporters' habit, and what
`ir_version < 4` demands) are treated as constants and dropped from `graph.inputs`: ONNX lets a
caller override such an input at run time, tamec treats it as a weight. Element types that stay
unknown after inference default to float32, which is what every BNN exporter writes.
"""
from __future__ import annotations

import heapq
import json
import math
import os
import re
from collections import Counter
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tamec import ops as tops
from tamec.errors import (ModelLoadError, ModelStructureError, TamecError, UnsupportedModelError, UsageError,
                          VerificationError)
from tamec.ir.domains import infer_domains
from tamec.ir.graph import BIN01, REAL, Graph, Op, Value
from tamec.verifier import verify_graph

MIN_OPSET = 9
_DEFAULT_DOMAINS = ("", "ai.onnx")
_CUSTOM_DOMAINS = (*tops.QONNX_DOMAINS, tops.TAMEC_DOMAIN)
# Constants up to this many elements are kept in the shape-inference copy and folded through
# shape arithmetic; bigger ones only contribute their type and shape.
_SMALL = 4096
_SUBBYTE_BITS = {TensorProto.INT4: 4, TensorProto.UINT4: 4, TensorProto.FLOAT4E2M1: 4,
                 TensorProto.INT2: 2, TensorProto.UINT2: 2,
                 TensorProto.FLOAT6E2M3: 6, TensorProto.FLOAT6E3M2: 6}
_REEXPORT = "re-export the model from its framework, or fix the file"
# Element types tamec computes in (numpy-native, plus bfloat16 through ml_dtypes).
_DTYPES = frozenset({TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.FLOAT16, TensorProto.BFLOAT16,
                     TensorProto.INT8, TensorProto.INT16, TensorProto.INT32, TensorProto.INT64,
                     TensorProto.UINT8, TensorProto.UINT16, TensorProto.UINT32, TensorProto.UINT64,
                     TensorProto.BOOL})


def import_onnx(model: str | os.PathLike | bytes | onnx.ModelProto, *,
                max_elements: int = 2**28) -> Graph:
    """Read an ONNX/QONNX model (path, serialized bytes or ModelProto) into a tamec Graph.

    Raises only TamecError subclasses: ModelLoadError, UnsupportedModelError, ModelStructureError
    (and UsageError for bad arguments). `max_elements` caps the element count of any tensor the
    model declares; larger ones are refused before anything is allocated.
    """
    if isinstance(max_elements, bool) or not isinstance(max_elements, int) or max_elements < 1:
        raise UsageError(f"max_elements must be a positive int, not {max_elements!r}")
    src = _source_name(model)
    try:
        proto, folder = _load(model, src)
        g = _Importer(proto, folder, src, max_elements).run()
    except TamecError as e:
        raise e.at(file=src)
    except (Exception, RecursionError) as e:  # a bug or an onnx corner no step anticipated
        err = ModelStructureError(
            f"unexpected failure while importing: {type(e).__name__}: {_first_line(e)}", file=src,
            hint="the model is probably corrupt; " + _REEXPORT + ", and report this message to tamec")
        err.internal = True  # the fuzz tests fail on these: each one is a missing check
        raise err from e
    g.source = src
    return g


# -- 1. loading ---------------------------------------------------------------------------------
def _source_name(model) -> str:
    if isinstance(model, onnx.ModelProto):
        return "<ModelProto>"
    if isinstance(model, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(model, (str, os.PathLike)):
        p = os.fspath(model)
        return p.decode(errors="replace") if isinstance(p, bytes) else p
    raise UsageError(f"import_onnx takes a path, bytes or an onnx.ModelProto, not {type(model).__name__}")


def _load(model, src: str) -> tuple[onnx.ModelProto, str | None]:
    """The model as a private ModelProto (safe to mutate) and its folder (None without a file)."""
    if isinstance(model, onnx.ModelProto):
        m, folder = onnx.ModelProto(), None
        m.CopyFrom(model)
    elif isinstance(model, (bytes, bytearray, memoryview)):
        m, folder = _parse(bytes(model), src), None
    else:
        path = os.fspath(model)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if "\0" in path or not os.path.exists(path):
            raise ModelLoadError("no such file", file=src, hint="check the path")
        if os.path.isdir(path):
            raise ModelLoadError("is a directory, not an ONNX file", file=src,
                                 hint="pass the path of the .onnx file inside it")
        try:
            m = onnx.load(path, load_external_data=False)
        except OSError as e:
            raise ModelLoadError(f"cannot read the file: {e.strerror or e}", file=src,
                                 hint="check that the file exists and is readable") from None
        except Exception as e:  # protobuf DecodeError and friends: the bytes are not a model
            raise ModelLoadError(f"not a readable ONNX model ({_first_line(e)})", file=src,
                                 hint="the file is truncated or not an ONNX protobuf; " + _REEXPORT) from None
        folder = os.path.dirname(os.path.abspath(path))
    _check_text(m, src)
    if not m.HasField("graph") or (not m.graph.node and not m.graph.output):
        raise ModelLoadError("the file holds no ONNX graph (empty, or not an ONNX model)", file=src,
                             hint="the file is truncated or not an ONNX protobuf; " + _REEXPORT)
    return m, folder


def _parse(data: bytes, src: str) -> onnx.ModelProto:
    m = onnx.ModelProto()
    try:
        m.ParseFromString(data)
    except Exception as e:
        raise ModelLoadError(f"not a readable ONNX model ({_first_line(e)})", file=src,
                             hint="the bytes are truncated or not an ONNX protobuf; " + _REEXPORT) from None
    return m


def _check_text(m: onnx.ModelProto, src: str) -> None:
    """Refuse invalid UTF-8 in string fields now: protobuf parses it, then hands out bytes
    (or raises) where every later step expects str."""
    def walk(msg, path: str) -> None:
        for fd, value in msg.ListFields():
            rep = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED
            if fd.type == fd.TYPE_MESSAGE:
                for k, sub in enumerate(value if rep else [value]):
                    walk(sub, f"{path}.{fd.name}[{k}]")
            elif fd.type == fd.TYPE_STRING and not all(isinstance(x, str) for x in (value if rep else [value])):
                raise UnicodeError(f"{path}.{fd.name}")
    try:
        walk(m, "model")
    except UnicodeError as e:  # UnicodeDecodeError included
        raise ModelLoadError(f"the model holds a name or text field that is not valid UTF-8 ({e})",
                             file=src, hint="the file is corrupt; " + _REEXPORT) from None


def _first_line(e: BaseException) -> str:
    s = str(e).strip()
    return s.splitlines()[0] if s else type(e).__name__


# -- the importer -------------------------------------------------------------------------------
def _origin_or(n: onnx.NodeProto, default: tuple[str, ...]) -> tuple[str, ...]:
    """The provenance tamec's own ONNX dumps write into a node's doc_string, else `default`."""
    if not n.doc_string.startswith("origin="):
        return default
    try:
        names = json.loads(n.doc_string[len("origin="):])
    except ValueError:
        return default
    return tuple(names) if isinstance(names, list) and all(isinstance(x, str) for x in names) else default


def _domains_from_docs(g: Graph, graph: onnx.GraphProto) -> int:
    """Domains tamec's dumps record as `domain=...` on values (kept only if the data agree);
    returns how many it set."""
    from tamec.ir.text import _parse_domain, _Tokens

    n = 0
    for item in list(graph.value_info) + list(graph.input) + list(graph.output) + list(graph.initializer):
        m = re.search(r"(?:^| )domain=(\S+)", item.doc_string)
        v = g.values.get(item.name)
        if not m or v is None:
            continue
        try:
            d = _parse_domain(_Tokens(m.group(1), 0))
        except TamecError:
            continue
        if v.const is None or d.contains(v.const):
            v.domain = d
            n += 1
    return n


class _Importer:
    """One import; holds the model, its folder and where errors should point."""

    def __init__(self, m: onnx.ModelProto, folder: str | None, src: str, max_elements: int):
        self.m, self.folder, self.src, self.max = m, folder, src, max_elements
        self.nodes = list(m.graph.node)
        self.names = [n.name for n in self.nodes]  # the ONNX names, before steps rename nodes
        self.ids = _node_ids(self.nodes)

    def err(self, cls, msg: str, node: str | None = None, hint: str | None = None) -> TamecError:
        return cls(msg, file=self.src, node=node, hint=hint)

    def run(self) -> Graph:
        opset = self.check_versions()
        self.check_supported()
        self.check_sizes()
        self.resolve_external_data()
        self.check_names()
        self.sort_nodes()
        self.run_checker()
        types = self.infer_shapes()
        self.check_dtypes(types)
        return self.build(opset, types)

    # -- 2. versions ----------------------------------------------------------------------------
    def check_versions(self) -> dict[str, int]:
        m = self.m
        if m.ir_version > onnx.IR_VERSION:
            raise self.err(UnsupportedModelError, f"IR version {m.ir_version} is newer than this onnx "
                           f"package reads (up to {onnx.IR_VERSION})", hint="upgrade onnx, or re-export "
                           "with an older opset")
        # "ai.onnx" is the default domain by another name, which the checker does not accept.
        for o in m.opset_import:
            if o.domain == "ai.onnx":
                o.domain = ""
        for n in self.nodes:
            if n.domain == "ai.onnx":
                n.domain = ""
        opset: dict[str, int] = {}
        for o in m.opset_import:
            d = o.domain
            if d in opset and opset[d] != o.version:
                raise self.err(ModelStructureError, f"opset_import lists domain {d!r} twice, with "
                               f"versions {opset[d]} and {o.version}", hint=_REEXPORT)
            opset[d] = o.version
        v = opset.get("")
        if v is None:
            if any(n.domain in _DEFAULT_DOMAINS for n in self.nodes):
                raise self.err(ModelStructureError, "the model uses standard ONNX ops but declares no "
                               "opset for the default domain", hint="add opset_import {domain '', "
                               "version N}, or " + _REEXPORT)
        elif v < MIN_OPSET:
            raise self.err(UnsupportedModelError, f"opset {v} is older than {MIN_OPSET}, the oldest "
                           "tamec reads", hint="re-export with opset_version >= 9 (13 or newer is best), "
                           "or convert with onnx.version_converter.convert_version")
        elif v > onnx.defs.onnx_opset_version():
            raise self.err(UnsupportedModelError, f"opset {v} is newer than this onnx package knows "
                           f"(up to {onnx.defs.onnx_opset_version()})",
                           hint="upgrade onnx, or re-export with an older opset_version")
        # Legacy Brevitas exports use `onnx.brevitas` ops without declaring the domain.
        for n in self.nodes:
            if n.domain in _CUSTOM_DOMAINS and n.domain not in opset:
                opset[n.domain] = 1
                m.opset_import.add(domain=n.domain, version=1)
        return opset

    # -- 3. supported ops -----------------------------------------------------------------------
    def check_supported(self) -> None:
        bad = [(self.ids[k], n.op_type, n.domain) for k, n in enumerate(self.nodes)
               if not tops.is_supported(n.domain, n.op_type)]
        if bad:
            listing = "; ".join(f"{name!r} ({op}, domain {dom!r})" for name, op, dom in bad)
            e = self.err(UnsupportedModelError, f"{len(bad)} unsupported op(s): {listing}", node=bad[0][0],
                         hint="replace or remove these ops before importing; tamec supports "
                         + tops.supported_summary())
            e.unsupported = bad
            raise e
        for k, n in enumerate(self.nodes):
            # custom ops' input counts, which the ONNX checker cannot check, are the registry's
            arity = tops.REGISTRY[tops.qualname(n.domain, n.op_type)].arity
            if arity and not (arity[0] <= len(n.input) <= arity[1] and n.input[0] and len(n.output) == 1
                              and n.output[0]):
                want = f"{arity[0]}" if arity[0] == arity[1] else f"{arity[0]} to {arity[1]}"
                raise self.err(ModelStructureError, f"{n.op_type} takes {want} inputs (the first one "
                               f"named) and one named output, this node has {len(n.input)} and "
                               f"{len(n.output)}", node=self.ids[k], hint=_REEXPORT)

    # -- 4. sizes -------------------------------------------------------------------------------
    def check_sizes(self) -> None:
        for t, what, node in self.tensors():
            self.check_tensor(t, what, node)
        g = self.m.graph
        for kind, vis in (("graph input", g.input), ("graph output", g.output), ("value_info", g.value_info)):
            for vi in vis:
                self.check_declared(vi, kind)

    def tensors(self):
        """Every tensor stored in the model: initializers and tensor attributes, with a label."""
        g = self.m.graph
        if len(g.sparse_initializer):
            raise self.err(UnsupportedModelError, f"sparse initializer {g.sparse_initializer[0].values.name!r} "
                           "is not supported", hint="store it as a dense initializer")
        for t in g.initializer:
            yield t, f"initializer {t.name!r}", None
        for k, n in enumerate(self.nodes):
            for a in n.attribute:
                if a.HasField("t"):
                    yield a.t, f"tensor attribute {a.name!r}", self.ids[k]
                for t in a.tensors:
                    yield t, f"tensor attribute {a.name!r}", self.ids[k]

    def check_tensor(self, t: TensorProto, what: str, node: str | None) -> None:
        node = node or (t.name if what.startswith("initializer") else None)
        if t.HasField("segment"):
            raise self.err(UnsupportedModelError, f"{what} is stored in segments", node=node,
                           hint="save the model without segments")
        if t.data_type == TensorProto.STRING:
            raise self.err(UnsupportedModelError, f"{what} is a string tensor", node=node,
                           hint="tamec handles numeric tensors only")
        if t.data_type == TensorProto.UNDEFINED or t.data_type not in TensorProto.DataType.values():
            raise self.err(ModelStructureError, f"{what} has an unknown element type {t.data_type}",
                           node=node, hint=_REEXPORT)
        n = self.count(list(t.dims), what, node)
        if t.data_location == TensorProto.EXTERNAL:
            return  # length checked when the external data is read
        if t.HasField("raw_data"):
            want = _nbytes(t.data_type, n)
            if len(t.raw_data) != want:
                raise self.err(ModelStructureError, f"{what} declares dims {list(t.dims)} ({n} elements, "
                               f"{want} bytes) but holds {len(t.raw_data)} bytes of raw data", node=node,
                               hint="the file is corrupt or truncated; " + _REEXPORT)
        else:
            field = helper.tensor_dtype_to_field(t.data_type)
            have = len(getattr(t, field))
            per = 2 if t.data_type in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
            want = math.ceil(n * _SUBBYTE_BITS[t.data_type] / 32) if t.data_type in _SUBBYTE_BITS else n * per
            # sub-byte types pack several elements per stored int; accept any packing up to one per int
            ok = (want <= have <= n) if t.data_type in _SUBBYTE_BITS else have == want
            if not ok:
                raise self.err(ModelStructureError, f"{what} declares dims {list(t.dims)} ({n} elements) but "
                               f"holds {have} values in {field}", node=node,
                               hint="the file is corrupt or truncated; " + _REEXPORT)

    def count(self, dims: list, what: str, node: str | None) -> int:
        """Element count of static dims, refusing negative dims and counts above max_elements."""
        if any(d < 0 for d in dims):
            raise self.err(ModelStructureError, f"{what} has a negative dim in {dims}", node=node,
                           hint=_REEXPORT)
        n = math.prod(dims)
        if n > self.max:
            raise self.err(ModelStructureError, f"{what} declares {n} elements (dims {dims}), more than "
                           f"max_elements={self.max}", node=node,
                           hint="the file is corrupt, or raise max_elements if the model really is this big")
        return n

    def check_declared(self, vi: onnx.ValueInfoProto, kind: str) -> None:
        which = vi.type.WhichOneof("value")
        if which != "tensor_type":
            if kind == "value_info":
                return  # inference ignores what it cannot use
            if which is None:
                raise self.err(ModelStructureError, f"{kind} {vi.name!r} has no type", node=vi.name,
                               hint="declare its element type and shape; " + _REEXPORT)
            article = "an" if which[0] in "aeiou" else "a"
            raise self.err(UnsupportedModelError, f"{kind} {vi.name!r} is {article} {which}, not a tensor",
                           node=vi.name, hint="tamec handles tensor inputs and outputs only")
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            dims = [d.dim_value for d in tt.shape.dim if d.HasField("dim_value")]
            self.count(dims, f"{kind} {vi.name!r}", vi.name)

    # -- 5. external data -----------------------------------------------------------------------
    def resolve_external_data(self) -> None:
        for t, what, node in self.tensors():
            if t.data_location != TensorProto.EXTERNAL:
                continue
            node = node or t.name
            if self.folder is None:
                raise self.err(ModelLoadError, f"{what} keeps its data in an external file, but the model "
                               f"was given as {self.src}, so there is no folder to read it from", node=node,
                               hint="pass the path of the .onnx file, or load it with onnx.load(path) first")
            info = {e.key: e.value for e in t.external_data}
            path = self.external_path(info.get("location", ""), what, node)
            try:
                offset = int(info.get("offset", "0"))
                length = int(info["length"]) if "length" in info else None
            except ValueError:
                raise self.err(ModelLoadError, f"{what} has a non-integer external data offset or length",
                               node=node, hint=_REEXPORT) from None
            want = _nbytes(t.data_type, math.prod(t.dims))
            try:
                size = os.path.getsize(path)
            except OSError as e:
                raise self.err(ModelLoadError, f"cannot read external data of {what}: {e.strerror or e}",
                               node=node, hint="check the file's permissions") from None
            if offset < 0 or (length is not None and length != want) or offset + want > size:
                raise self.err(ModelLoadError, f"{what} needs {want} bytes at offset {offset} of "
                               f"{info['location']!r} (length field {length}), but the file has {size} bytes",
                               node=node, hint="the external data file is truncated or belongs to another "
                               "model; save the model and its data again")
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    data = f.read(want)
            except OSError as e:
                raise self.err(ModelLoadError, f"cannot read external data of {what}: {e.strerror or e}",
                               node=node, hint="check the file's permissions") from None
            t.raw_data = data
            t.data_location = TensorProto.DEFAULT
            del t.external_data[:]

    def external_path(self, loc: str, what: str, node: str) -> str:
        """The real path of an external data file, refused unless it lies inside the model's folder."""
        def refuse(why: str) -> TamecError:
            return self.err(ModelLoadError, f"{what} points to external data {loc!r}, which {why}", node=node,
                            hint="external data must be a relative path inside the model's folder; "
                            "move the data file next to the model and fix the location")
        if not loc or "\0" in loc:
            raise refuse("is not a valid file name")
        if os.path.isabs(loc) or loc.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", loc):
            raise refuse("is an absolute path")
        if ".." in re.split(r"[/\\]", loc):
            raise refuse("leaves the model's folder through '..'")
        base = os.path.realpath(self.folder)
        path = os.path.realpath(os.path.join(base, loc))
        if os.path.commonpath([base, path]) != base:
            raise refuse("resolves (through a symlink) to a file outside the model's folder")
        if not os.path.isfile(path):
            raise refuse(f"does not exist in {self.folder}")
        return path

    # -- 6. names -------------------------------------------------------------------------------
    def check_names(self) -> None:
        g = self.m.graph
        defined: dict[str, str] = {}
        for vi in g.input:
            if not vi.name:
                raise self.err(ModelStructureError, "a graph input has an empty name", hint=_REEXPORT)
            if vi.name in defined:
                raise self.err(ModelStructureError, f"graph input {vi.name!r} is listed twice",
                               node=vi.name, hint=_REEXPORT)
            defined[vi.name] = "graph input"
        inits: set[str] = set()
        for t in g.initializer:
            if not t.name:
                raise self.err(ModelStructureError, "an initializer has an empty name", hint=_REEXPORT)
            if t.name in inits:
                raise self.err(ModelStructureError, f"initializer {t.name!r} is defined twice",
                               node=t.name, hint=_REEXPORT)
            inits.add(t.name)
            defined.setdefault(t.name, "initializer")
        self.producer: dict[str, int] = {}
        for k, n in enumerate(self.nodes):
            for o in n.output:
                if not o:
                    continue
                if o in defined:
                    raise self.err(ModelStructureError, f"output {o!r} of node {self.ids[k]!r} is already "
                                   f"defined by {defined[o]}", node=self.ids[k],
                                   hint="every value must have exactly one definition; " + _REEXPORT)
                defined[o] = f"node {self.ids[k]!r}"
                self.producer[o] = k
        for k, n in enumerate(self.nodes):
            for i in n.input:
                if i and i not in defined:
                    raise self.err(ModelStructureError, f"input {i!r} of node {self.ids[k]!r} ({n.op_type}) is "
                                   "never defined (no node, initializer or graph input has that name)",
                                   node=self.ids[k], hint="the file is corrupt, or a node was deleted; " + _REEXPORT)
        for vi in g.output:
            if vi.name not in defined:
                raise self.err(ModelStructureError, f"graph output {vi.name!r} is never defined",
                               node=vi.name, hint=_REEXPORT)

    def sort_nodes(self) -> None:
        """Order nodes topologically (file order among ready nodes); refuse cycles."""
        n = len(self.nodes)
        succ: list[list[int]] = [[] for _ in range(n)]
        indeg = [0] * n
        for k, node in enumerate(self.nodes):
            for i in set(node.input):
                p = self.producer.get(i)
                if p is not None:
                    succ[p].append(k)
                    indeg[k] += 1
        ready = [k for k in range(n) if indeg[k] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            k = heapq.heappop(ready)
            order.append(k)
            for s in succ[k]:
                indeg[s] -= 1
                if indeg[s] == 0:
                    heapq.heappush(ready, s)
        if len(order) < n:
            cycle = self.find_cycle(succ, {k for k in range(n) if indeg[k] > 0})
            names = [self.ids[k] for k in cycle]
            raise self.err(ModelStructureError, "the graph has a cycle through nodes "
                           + " -> ".join(repr(x) for x in names + names[:1]), node=names[0],
                           hint="ONNX graphs must be acyclic; the file is corrupt or was edited by hand")
        self.nodes = [self.nodes[k] for k in order]
        self.names = [self.names[k] for k in order]
        self.ids = [self.ids[k] for k in order]
        self.producer = {o: j for j, node in enumerate(self.nodes) for o in node.output if o}
        g = self.m.graph
        del g.node[:]
        g.node.extend(self.nodes)
        self.nodes = list(g.node)
        for node, i in zip(self.nodes, self.ids):
            node.name = i  # checker and inference messages then name tamec's ids

    @staticmethod
    def find_cycle(succ: list[list[int]], left: set[int]) -> list[int]:
        """One cycle among the nodes Kahn's algorithm could not order (each has a predecessor in `left`)."""
        pred = {k: None for k in left}
        for p in sorted(left):
            for s in succ[p]:
                if s in left and pred[s] is None:
                    pred[s] = p
        k, seen = min(left), {}
        while k not in seen:  # walk predecessors until one repeats: that closes a cycle
            seen[k] = len(seen)
            k = pred[k]
        path = list(seen)[seen[k]:]
        return path[::-1]

    # -- 7. checker -----------------------------------------------------------------------------
    def run_checker(self) -> None:
        try:
            onnx.checker.check_model(self.m)
        except Exception as e:
            msg = str(e)
            # Custom domains have no schemas; the checker may still complain about them.
            if any(f"domain '{d}'" in msg or f"domain: {d}" in msg for d in _CUSTOM_DOMAINS):
                return
            raise self.err(ModelStructureError, f"onnx.checker rejects the model: {_first_line(e)}",
                           node=_checker_node(msg), hint=_REEXPORT) from None

    # -- 8. shapes ------------------------------------------------------------------------------
    def infer_shapes(self) -> dict[str, tuple[int, list | None]]:
        """name -> (ONNX elem type, dims or None), by strict ONNX shape inference on a stand-in model."""
        consts = self.small_consts()
        self.named_inputs = self.name_unknown_dims()
        folded = {k: v for k, v in consts.items() if k in self.producer}  # Constant nodes' values
        for _ in range(len(self.nodes) + 1):
            types = _collect_types(self.infer_once(folded))
            new = _fold_shapes(self.nodes, {**consts, **folded}, types)
            if not new:
                break
            folded.update(new)
        for k, node in enumerate(self.nodes):
            for o in node.output:
                if o in types and types[o][1] is not None:
                    dims = [d for d in types[o][1] if isinstance(d, int)]
                    self.count(dims, f"output {o!r} of node {self.ids[k]!r}", self.ids[k])
        return types

    def name_unknown_dims(self) -> list[onnx.ValueInfoProto]:
        """The real graph inputs with every unknown dim given a fresh symbolic name, so that
        inference carries the same name to the tensors that share that dim."""
        g = self.m.graph
        used = {d.dim_param for vi in (*g.input, *g.output, *g.value_info)
                for d in vi.type.tensor_type.shape.dim if d.dim_param}
        fresh, out, inits = _FreshDims(used), [], {t.name for t in g.initializer}
        for vi in g.input:
            if vi.name in inits:
                continue
            vi2 = onnx.ValueInfoProto()
            vi2.CopyFrom(vi)
            for d in vi2.type.tensor_type.shape.dim:
                if not d.HasField("dim_value") and not d.dim_param:
                    d.dim_param = fresh()
            out.append(vi2)
        return out

    def small_consts(self) -> dict[str, np.ndarray]:
        """Small integer initializers and Constant node values: the seeds of shape folding."""
        out = {}
        for t in self.m.graph.initializer:
            if math.prod(t.dims) <= _SMALL and _is_int_type(t.data_type):
                out[t.name] = self.to_array(t, f"initializer {t.name!r}", t.name)
        for k, n in enumerate(self.nodes):
            if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS and n.output:
                a = self.constant_value(n, self.ids[k])
                if a.size <= _SMALL and a.dtype.kind in "iu":
                    out[n.output[0]] = a
        return out

    def infer_once(self, folded: dict[str, np.ndarray]) -> onnx.ModelProto:
        src_g = self.m.graph
        g = onnx.GraphProto(name=src_g.name)
        for t in src_g.initializer:
            if math.prod(t.dims) <= _SMALL:
                g.initializer.append(t)
            else:  # only its type and shape matter here; copying megabytes per round would not
                g.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        g.input.extend(self.named_inputs)
        for name, a in folded.items():
            g.initializer.append(numpy_helper.from_array(a, name))
        for n in self.nodes:
            if n.output and n.output[0] in folded:
                continue  # replaced by its folded value
            g.node.extend(_stand_in(n))
        g.output.extend(src_g.output)
        g.value_info.extend(src_g.value_info)
        m = onnx.ModelProto(ir_version=self.m.ir_version, graph=g)
        m.opset_import.extend(self.m.opset_import)
        try:
            return onnx.shape_inference.infer_shapes(m, strict_mode=True)
        except Exception as e:
            node, msg = _inference_error(str(e))
            raise self.err(ModelStructureError, f"inconsistent shapes or types: {msg}", node=node,
                           hint="the model's tensors do not fit together; " + _REEXPORT) from None

    def check_dtypes(self, types: dict[str, tuple[int, list | None]]) -> None:
        """Refuse tensors of element types tamec does not compute in, all of them at once."""
        bad = {name: elem for name, (elem, _) in types.items() if elem and elem not in _DTYPES}
        if not bad:
            return
        by_name = {o: self.ids[k] for k, n in enumerate(self.nodes) for o in n.output if o}
        first = next(iter(bad))
        known = TensorProto.DataType.values()
        listing = "; ".join(f"{name!r} ({TensorProto.DataType.Name(e) if e in known else f'unknown type {e}'})"
                            for name, e in list(bad.items())[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        e = self.err(UnsupportedModelError, f"{len(bad)} tensor(s) of an element type tamec does not "
                     f"compute in: {listing}{more}", node=by_name.get(first, first),
                     hint="tamec handles float16/32/64, bfloat16, int8-64, uint8-64 and bool tensors; "
                     "cast the others in the exporting framework")
        e.dtypes = bad
        raise e

    # -- 9. the graph ---------------------------------------------------------------------------
    def build(self, opset: dict[str, int], types: dict) -> Graph:
        m = self.m
        g = Graph(m.graph.name or "graph", opset)
        inits = {t.name for t in m.graph.initializer}
        fresh = _FreshDims(d for _, dims in types.values() if dims for d in dims if isinstance(d, str))
        for vi in m.graph.input:
            if vi.name in inits:
                continue
            dtype, shape = _declared(vi, types, fresh)
            g.add_value(Value(vi.name, shape, dtype, BIN01 if dtype == "bool" else REAL))
            g.inputs.append(vi.name)
        with np.errstate(all="ignore"):  # Domain.of_array on NaN-holding float8 data etc.
            for t in m.graph.initializer:
                g.add_const(t.name, self.to_array(t, f"initializer {t.name!r}", t.name))
            for k, n in enumerate(self.nodes):
                if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS:
                    g.add_const(n.output[0], self.constant_value(n, self.ids[k]))
        for k, n in enumerate(self.nodes):
            if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS:
                continue
            outs = _named_outputs(n, self.ids[k], g)
            for o in outs:
                if o not in g.values:
                    dtype, shape = _inferred(o, types, fresh)
                    g.add_value(Value(o, shape, dtype, BIN01 if dtype == "bool" else REAL))
            g.add_op(Op(self.ids[k], n.op_type, list(n.input), outs, self.attrs(n, self.ids[k]),
                        tops.normalize_domain(n.domain), _origin_or(n, (self.names[k] or self.ids[k],))))
        g.outputs = [vi.name for vi in m.graph.output]
        plain = {name: v.domain for name, v in g.values.items()}
        declared = _domains_from_docs(g, m.graph)
        # values a file leaves undeclared (the Wheres of tamec's standard Threshold) get what
        # their inputs carry, so the declared domains after them verify
        infer_domains(g, keep_declared=True)
        if declared:
            try:
                verify_graph(g)
            except VerificationError:
                # declared domains are claims (an older tamec's, or edited by hand): when the ops
                # contradict them, read the file as if it declared none; the passes infer again
                for name, d in plain.items():
                    g.values[name].domain = d
                infer_domains(g, keep_declared=True)
        return g

    def attrs(self, n: onnx.NodeProto, node: str) -> dict[str, Any]:
        out = {}
        for a in n.attribute:
            out[a.name] = self.attr_value(a, node)
        return out

    def attr_value(self, a: onnx.AttributeProto, node: str):
        A = onnx.AttributeProto
        if a.ref_attr_name:
            raise self.err(UnsupportedModelError, f"attribute {a.name!r} refers to a function attribute",
                           node=node, hint="inline the model's functions first (onnx.inliner.inline_local_functions)")
        if a.type in (A.GRAPH, A.GRAPHS):
            raise self.err(UnsupportedModelError, f"attribute {a.name!r} holds a subgraph", node=node,
                           hint="tamec does not import control flow; unroll or remove it")
        if a.type in (A.SPARSE_TENSOR, A.SPARSE_TENSORS, A.TYPE_PROTO, A.TYPE_PROTOS):
            raise self.err(UnsupportedModelError, f"attribute {a.name!r} has unsupported type "
                           f"{A.AttributeType.Name(a.type)}", node=node, hint=_REEXPORT)
        what = f"attribute {a.name!r}"
        try:
            if a.type == A.FLOAT:
                return float(a.f)
            if a.type == A.INT:
                return int(a.i)
            if a.type == A.STRING:
                return a.s.decode("utf-8")
            if a.type == A.TENSOR:
                return self.to_array(a.t, what, node)
            if a.type == A.FLOATS:
                return [float(x) for x in a.floats]
            if a.type == A.INTS:
                return [int(x) for x in a.ints]
            if a.type == A.STRINGS:
                return [s.decode("utf-8") for s in a.strings]
            if a.type == A.TENSORS:
                return [self.to_array(t, what, node) for t in a.tensors]
        except UnicodeDecodeError:
            raise self.err(ModelStructureError, f"{what} is not valid UTF-8 text", node=node,
                           hint=_REEXPORT) from None
        raise self.err(ModelStructureError, f"{what} has an unknown type {a.type}", node=node, hint=_REEXPORT)

    def constant_value(self, n: onnx.NodeProto, node: str) -> np.ndarray:
        """The value of a Constant node as a numpy array."""
        if len(n.attribute) != 1:
            raise self.err(ModelStructureError, f"Constant needs exactly one value attribute, has "
                           f"{len(n.attribute)}", node=node, hint=_REEXPORT)
        a = n.attribute[0]
        v = self.attr_value(a, node)
        if a.name == "value":
            return np.asarray(v)
        if a.name in ("value_float", "value_floats"):
            return np.asarray(v, dtype=np.float32)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(v, dtype=np.int64)
        raise self.err(UnsupportedModelError, f"Constant with attribute {a.name!r} is not supported",
                       node=node, hint="use a numeric 'value' tensor")

    def to_array(self, t: TensorProto, what: str, node: str | None) -> np.ndarray:
        """A tensor as numpy; its size and data length were checked in `check_sizes`."""
        try:
            return numpy_helper.to_array(t)
        except Exception as e:
            raise self.err(ModelStructureError, f"{what} cannot be decoded: {_first_line(e)}", node=node,
                           hint="the file is corrupt; " + _REEXPORT) from None


# -- helpers ------------------------------------------------------------------------------------
def _node_ids(nodes) -> list[str]:
    """Stable op ids: the node's name when non-empty and unique, else `<op_type>_<index>`."""
    counts = Counter(n.name for n in nodes if n.name)
    taken = {name for name, c in counts.items() if c == 1}
    ids = []
    for k, n in enumerate(nodes):
        if n.name and counts[n.name] == 1:
            ids.append(n.name)
            continue
        base = cand = f"{n.op_type or 'op'}_{k}"
        j = 1
        while cand in taken:
            cand, j = f"{base}.{j}", j + 1
        taken.add(cand)
        ids.append(cand)
    return ids


def _nbytes(data_type: int, n: int) -> int:
    bits = _SUBBYTE_BITS.get(data_type)
    if bits is None:
        bits = 8 * np.dtype(helper.tensor_dtype_to_np_dtype(data_type)).itemsize
    return (n * bits + 7) // 8


def _is_int_type(data_type: int) -> bool:
    return data_type in (TensorProto.INT64, TensorProto.INT32, TensorProto.INT16, TensorProto.INT8,
                         TensorProto.UINT64, TensorProto.UINT32, TensorProto.UINT16, TensorProto.UINT8)


def _checker_node(msg: str) -> str | None:
    m = re.search(r"Name: (\S+) OpType", msg)
    return m.group(1) if m else None


def _inference_error(msg: str) -> tuple[str | None, str]:
    """(node, message) from an onnx InferenceError's text."""
    m = re.search(r"\(op_type:([^,]*), node name: ([^)]*)\): (.*)", msg)
    if m:
        return m.group(2) or None, f"{m.group(1)}: {m.group(3).strip()}"
    return None, _first_line(Exception(msg))


def _stand_in(n: onnx.NodeProto) -> list[onnx.NodeProto]:
    """Nodes ONNX shape inference understands with the same output shape as `n`."""
    d = tops.normalize_domain(n.domain)
    if d == tops.QONNX_DOMAIN:  # QONNX quantizers compute in float32 and keep x's shape
        return [helper.make_node("Cast", [n.input[0]], [n.output[0]], name=n.name, to=TensorProto.FLOAT)]
    if d == tops.TAMEC_DOMAIN and n.op_type == "Threshold" and n.input and n.output:
        return [helper.make_node("Identity", [n.input[0]], [n.output[0]], name=n.name)]
    if d == tops.TAMEC_DOMAIN and n.op_type == "Linear" and len(n.input) >= 2 and n.output:
        has_b = len(n.input) > 2 and n.input[2]
        wt, xw = f"__tamec_shape__{n.name}__wt", f"__tamec_shape__{n.name}__xw"
        out = [helper.make_node("Transpose", [n.input[1]], [wt], name=n.name),
               helper.make_node("MatMul", [n.input[0], wt], [xw if has_b else n.output[0]], name=n.name)]
        if has_b:
            out.append(helper.make_node("Add", [xw, n.input[2]], [n.output[0]], name=n.name))
        return out
    return [n]


def _collect_types(m: onnx.ModelProto) -> dict[str, tuple[int, list | None]]:
    """name -> (elem type, dims or None) of every tensor an inferred model describes."""
    out: dict[str, tuple[int, list | None]] = {}
    for vi in (*m.graph.input, *m.graph.value_info, *m.graph.output):
        if vi.type.WhichOneof("value") != "tensor_type":
            continue
        tt = vi.type.tensor_type
        dims = None
        if tt.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tt.shape.dim]
        elem, old = tt.elem_type, out.get(vi.name, (0, None))
        out[vi.name] = (elem or old[0], old[1] if dims is None else dims)
    for t in m.graph.initializer:
        out[t.name] = (t.data_type, list(t.dims))
    return out


class _FreshDims:
    """Fresh names for unknown dims, avoiding every symbolic name the model already uses."""

    def __init__(self, used):
        self.used, self.k = set(used), 0

    def __call__(self) -> str:
        while f"unk__{self.k}" in self.used:
            self.k += 1
        self.used.add(f"unk__{self.k}")
        return f"unk__{self.k}"


def _dtype_name(elem_type: int) -> str:
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:
        return "float32"  # unknown after inference: what every BNN exporter writes


def _shape(dims: list | None, fresh: _FreshDims) -> tuple | None:
    if dims is None:
        return None
    return tuple(fresh() if d is None else d for d in dims)


def _declared(vi: onnx.ValueInfoProto, types: dict, fresh: _FreshDims) -> tuple[str, tuple | None]:
    elem, dims = types.get(vi.name, (vi.type.tensor_type.elem_type, None))
    return _dtype_name(elem), _shape(dims, fresh)


def _inferred(name: str, types: dict, fresh: _FreshDims) -> tuple[str, tuple | None]:
    elem, dims = types.get(name, (0, None))
    return _dtype_name(elem), _shape(dims, fresh)


def _named_outputs(n: onnx.NodeProto, op_id: str, g: Graph) -> list[str]:
    """Output names with trailing unnamed (omitted optional) outputs dropped and inner ones named."""
    outs = list(n.output)
    while outs and not outs[-1]:
        outs.pop()
    return [o or g.fresh_name(f"{op_id}:out{i}") for i, o in enumerate(outs)]


# -- folding small shape tensors ----------------------------------------------------------------
def _fold_shapes(nodes, consts: dict[str, np.ndarray], types: dict) -> dict[str, np.ndarray]:
    """Values of the integer shape arithmetic ONNX inference does not fold for old opsets.

    Best effort: a node whose value cannot be computed here is left to ONNX inference, which
    then reports an unknown shape, never a wrong one.
    """
    known = dict(consts)
    out = {}
    for n in nodes:
        if n.domain not in _DEFAULT_DOMAINS or len(n.output) != 1 or not n.output[0] or n.output[0] in known:
            continue
        try:
            with np.errstate(all="ignore"):
                v = _fold_node(n, known, types)
        except Exception:  # noqa: BLE001 -- folding is optional; inference reports the real problem
            v = None
        if v is not None and v.dtype.kind in "iu" and v.size <= _SMALL:
            known[n.output[0]] = out[n.output[0]] = v
    return out


def _fold_node(n: onnx.NodeProto, known: dict, types: dict) -> np.ndarray | None:
    a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
    ins = list(n.input)
    if n.op_type in ("Shape", "Size"):
        dims = types.get(ins[0], (0, None))[1] if ins else None
        if dims is None or not all(isinstance(d, int) for d in dims):
            return None
        if n.op_type == "Size":
            return np.array(math.prod(dims), dtype=np.int64)
        return np.array(dims[a.get("start", 0):a.get("end", len(dims))], dtype=np.int64)
    if not ins or not all(i in known for i in ins if i):
        return None
    x = [known[i] if i else None for i in ins]
    op = n.op_type
    if op == "Identity":
        return x[0]
    if op == "Cast":
        return x[0].astype(helper.tensor_dtype_to_np_dtype(a["to"]))
    if op == "Gather":
        return np.take(x[0], x[1], axis=a.get("axis", 0))
    if op == "Concat":
        return np.concatenate(x, axis=a["axis"])
    if op == "Unsqueeze":
        axes = a.get("axes", x[1] if len(x) > 1 else None)
        return np.expand_dims(x[0], tuple(int(i) for i in np.ravel(axes)))
    if op == "Squeeze":
        axes = a.get("axes", x[1] if len(x) > 1 and x[1] is not None else None)
        return np.squeeze(x[0], None if axes is None else tuple(int(i) for i in np.ravel(axes)))
    if op in ("Add", "Sub", "Mul") and len(x) == 2 and x[0].dtype == x[1].dtype:
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply}[op](x[0], x[1])
    if op == "Slice":
        return _fold_slice(x, a)
    return None


def _fold_slice(x: list, a: dict) -> np.ndarray | None:
    data = x[0]
    if "starts" in a:  # opset < 10: attributes
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = list(x[1]), list(x[2])
        axes = list(x[3]) if len(x) > 3 and x[3] is not None else None
        steps = list(x[4]) if len(x) > 4 and x[4] is not None else None
    axes = list(range(len(starts))) if axes is None else axes
    steps = [1] * len(starts) if steps is None else steps
    idx = [slice(None)] * data.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps):
        ax, s, e, st = int(ax) % data.ndim, int(s), int(e), int(st)
        dim = data.shape[ax]
        if st == 0:
            return None
        s, e = s + dim if s < 0 else s, e + dim if e < 0 else e
        if st > 0:
            s, e = min(max(s, 0), dim), min(max(e, 0), dim)
        else:
            s, e = min(max(s, 0), dim - 1), min(max(e, -1), dim - 1)
        idx[ax] = slice(s, e if e >= 0 else None, st)
    return data[tuple(idx)]

"""The harness's Session property on BNNs written by real exporters: torch.onnx (TorchScript and
dynamo) and Brevitas (QONNX). Slow; skipped when torch (the `export` extra) is absent."""
from __future__ import annotations

import io

import numpy as np
import onnx
import pytest
from hypothesis import strategies as st

import tamec
from tests.generated.harness import SEEDS, oracle, run_property
from tests.generated.strategies import KNOWN_GAPS, examples

pytestmark = pytest.mark.slow
torch = pytest.importorskip("torch")
seeds = pytest.mark.parametrize("seed", list(SEEDS.values()), ids=list(SEEDS))


@st.composite
def torch_specs(draw, heads=("logits", "relu", "hardtanh")):
    """(widths, first, act, head, seed): a torch sign MLP's structure."""
    wide = draw(st.sampled_from([False] * 5 + [True]))
    width = st.sampled_from([63, 65, 129, 1025]) if wide and "threshold-unpacked-over-64" not in KNOWN_GAPS \
        else st.integers(1, 12)
    widths = tuple(draw(st.lists(width, min_size=1, max_size=2)))
    return (draw(st.integers(1, 16)), widths, draw(st.sampled_from(["real", "binary"])),
            draw(st.sampled_from(["sign", "ste", "larq"])), draw(st.sampled_from(heads)),
            draw(st.integers(0, 2**31 - 1)))


def torch_model(spec):
    """A torch sign MLP: Sign(W) weights, BatchNorm with random running statistics (ties among
    them), the activation idiom, and the head."""
    k, widths, first, act, head, seed = spec
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)

    def sign(x):
        if act == "ste":
            return x + (torch.sign(x) - x).detach()
        if act == "larq":
            return torch.sign(torch.sign(x) + 0.25)
        return torch.sign(x)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            dims = (k,) + widths
            self.w = torch.nn.ParameterList(torch.nn.Parameter(torch.randn(b, a, generator=g)) for a, b in zip(dims, dims[1:]))
            self.bn = torch.nn.ModuleList(torch.nn.BatchNorm1d(b) for b in widths)
            for bn in self.bn:
                n = bn.num_features
                bn.running_mean.copy_(torch.from_numpy(rng.integers(-3, 4, n).astype(np.float32)))
                bn.running_var.copy_(torch.full((n,), 1 - 1e-5))
                bn.weight.data.copy_(torch.from_numpy(rng.choice([-1.0, 0.0, 0.5, 1.0], n).astype(np.float32)))
                bn.bias.data.zero_()
            self.head = torch.nn.Parameter(torch.randn(10, dims[-1], generator=g))

        def forward(self, x):
            if first == "binary":
                x = torch.sign(x - 0.5)
            for i, (w, bn) in enumerate(zip(self.w, self.bn)):
                wq = w if i == 0 and first == "real" else torch.sign(w)
                x = sign(bn(torch.nn.functional.linear(x, wq)))
            y = torch.nn.functional.linear(x, torch.sign(self.head))
            return {"logits": y, "relu": torch.relu(y), "hardtanh": torch.nn.functional.hardtanh(y)}[head]

    return Net().eval()


def export(net, k: int, how: str) -> onnx.ModelProto:
    x = torch.rand(2, k)
    f = io.BytesIO()
    if how == "torchscript":
        torch.onnx.export(net, (x,), f, dynamo=False, opset_version=17, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})
        return onnx.load_model_from_string(f.getvalue())
    prog = torch.onnx.export(net, (x,), dynamo=True, input_names=["x"], output_names=["y"],
                             dynamic_shapes=({0: torch.export.Dim("N")},))
    return prog.model_proto


def check_agree(m: onnx.ModelProto, x: np.ndarray) -> None:
    """numba Session, reference evaluator and the oracle agree on every output (within 1e-5)."""
    sess = tamec.Session(m)
    ref = tamec.Session(sess.module, engine="reference")
    inp = sess.get_inputs()[0].name
    fixed = sess.get_inputs()[0].shape[0] == 1
    batches = [x[i:i + 1] for i in range(len(x))] if fixed else [x]
    for b in batches:
        want = oracle(m, b)
        for engine, s in (("numba", sess), ("reference", ref)):
            for o, y in zip(s.graph.outputs, s.run(None, {inp: b})):
                np.testing.assert_allclose(y, want[o], rtol=1e-5, atol=1e-5, err_msg=f"{engine}: {o}")


def dyadic(k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([np.zeros((1, k)), np.ones((1, k)), np.full((1, k), 0.5),
                           rng.integers(0, 65, (5, k)) / 64]).astype(np.float32)


@pytest.mark.parametrize("how", ["torchscript", "dynamo"])
@seeds
def test_torch_onnx_exports_agree(seed, how):
    """torch.onnx exports (TorchScript and dynamo) of sign MLPs: tamec's engines equal onnxruntime."""
    def prop(spec):
        check_agree(export(torch_model(spec), spec[0], how), dyadic(spec[0], spec[-1]))

    # dynamo export takes ~10 s a model: fewer of them
    run_property(prop, torch_specs(), examples(3 if how == "dynamo" else 6), seed, f"torch_onnx and {how}")


def brevitas_model(spec):
    """A Brevitas binary MLP: binary weights and activations (BipolarQuant in QONNX), BatchNorm."""
    nn = pytest.importorskip("brevitas.nn")
    from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst

    k, widths, _, _, _, seed = spec
    torch.manual_seed(seed)
    layers = [nn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)]
    dims = (k,) + widths
    for a, b in zip(dims, dims[1:]):
        bn = torch.nn.BatchNorm1d(b)
        bn.running_mean.copy_(torch.randint(-3, 4, (b,)).float())
        bn.weight.data.copy_(torch.randn(b))
        layers += [nn.QuantLinear(a, b, bias=False, weight_quant=SignedBinaryWeightPerTensorConst), bn,
                   nn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)]
    layers.append(nn.QuantLinear(dims[-1], 10, bias=False, weight_quant=SignedBinaryWeightPerTensorConst))
    return torch.nn.Sequential(*layers).eval()


@seeds
def test_brevitas_exports_agree(seed):
    """Brevitas QONNX exports of binary MLPs: tamec's engines equal the QONNX executor."""
    pytest.importorskip("brevitas")
    from brevitas.export import export_qonnx

    def prop(spec):
        net = brevitas_model(spec)
        m = export_qonnx(net, torch.rand(1, spec[0]), export_path=None)  # a ModelProto, batch 1
        check_agree(m, dyadic(spec[0], spec[-1]) * 2 - 1)

    run_property(prop, torch_specs(heads=("logits",)), examples(6), seed, "brevitas")

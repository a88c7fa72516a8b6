"""Brevitas CNV (brevitas_examples.bnn_pynq CNV, W1A1, 8-bit input) at reduced width, exported
with export_qonnx (TorchScript path), with random BN statistics (about 25 % negative gammas).
Width w gives convs w, w, 2w, 2w, 4w, 4w and FCs 8w, 8w, 10: the CNV topology, small enough to
commit. The batch dim is symbolic ("N"), so the flatten is Shape->Gather->Concat->Reshape. Needs torch + brevitas (the export env, never the runtime):

    python tests/data/make_cnv.py 8 tests/data/cnv_w1a1_8.onnx
"""
import sys, torch
import brevitas_examples.bnn_pynq.models.CNV as C
from brevitas.export import export_qonnx
w = int(sys.argv[1]) if len(sys.argv) > 1 else 16
C.CNV_OUT_CH_POOL = [(w, False), (w, True), (2*w, False), (2*w, True), (4*w, False), (4*w, False)]
C.INTERMEDIATE_FC_FEATURES = [(4*w, 8*w), (8*w, 8*w)]
C.LAST_FC_IN_FEATURES = 8*w
torch.manual_seed(0)
m = C.CNV(num_classes=10, weight_bit_width=1, act_bit_width=1, in_bit_width=8, in_ch=3)
g = torch.Generator().manual_seed(1)
for mod in m.modules():
    if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
        n = mod.num_features
        mod.running_mean.copy_(torch.randn(n, generator=g) * 3)
        mod.running_var.copy_(torch.rand(n, generator=g) * 50 + 5)
        mod.weight.data.copy_((torch.rand(n, generator=g) + 0.5) * torch.where(torch.rand(n, generator=g) < 0.25, -1., 1.))
        mod.bias.data.copy_(torch.randn(n, generator=g) * 0.3)
m.eval()
export_qonnx(m, args=torch.rand(1, 3, 32, 32), export_path=sys.argv[2], dynamo=False, input_names=["x"],
             output_names=["y"], dynamic_axes={"x": {0: "N"}, "y": {0: "N"}})  # symbolic batch, as deployed
print("ok")

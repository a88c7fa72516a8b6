"""Cold start (issue 11): the first Session.run pays Numba's JIT for every kernel specialization a
plan reaches, seconds each, so a plan must compile each kernel once and only the kernels it uses.
Checked by counting the specializations in a fresh process, not by a timer."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a fresh interpreter on an empty NUMBA_CACHE_DIR (a fresh install's cold start): one
# model's first run, then every runtime dispatcher's compiled signatures. The cache must be empty:
# a kernel loaded from the cache never types its callees, so their specializations would not show.
_PROBE = r"""
import json, sys
import numpy as np
import tamec
from numba.core.registry import CPUDispatcher
from tamec.runtime import bits, kernels

path, batch = sys.argv[1], int(sys.argv[2])
sess = tamec.Session(path)
inp = sess.get_inputs()[0]
x = np.random.default_rng(0).random([batch] + [int(d) for d in inp.shape[1:]], dtype=np.float32)
sess.run(None, {inp.name: x})
out = {"steps": [st.kernel for st in sess.plan.steps], "compiled": {}}
for mod in (kernels, bits):
    for name, f in vars(mod).items():
        if isinstance(f, CPUDispatcher) and f.signatures:
            out["compiled"][f"{mod.__name__.rsplit('.', 1)[1]}.{name}"] = [str(s) for s in f.signatures]
print(json.dumps(out))
"""


def compiled_after_first_run(model: Path, cache_dir: Path, batch: int = 1) -> dict:
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    r = subprocess.run([sys.executable, "-c", _PROBE, str(model), str(batch)], capture_output=True, text=True,
                       env=env, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_mlp_plan_compiles_each_kernel_once(tmp_path):
    """A Larq-style MLP plan (real first layer by BLAS fused to bits, bgemm chain, pointwise head)
    compiles one signature per kernel, none for a literal argument, and no conv/pool kernel it
    does not use."""
    got = compiled_after_first_run(ROOT / "models" / "larq_sign.onnx", tmp_path)
    assert got["steps"] == ["sgemm(BLAS)+pointwise+threshold->bits", "bgemm-chain x2", "pointwise->float32"]
    compiled = got["compiled"]
    assert {"kernels.bgemm_chain", "kernels.bgemm", "kernels.pointwise"} <= set(compiled)
    literal = {k: s for k, s in compiled.items() if any("Literal" in x for x in s)}
    assert not literal, f"literal-argument specializations (a callee compiled once more): {literal}"
    several = {k: s for k, s in compiled.items() if len(s) > 1}
    assert not several, f"kernels compiled for more than one signature: {several}"
    unused = {"kernels.im2col", "kernels.im2col_f32", "kernels.maxpool", "kernels.maxpool_f32", "kernels.maxpool_map",
              "kernels.conv1_pointwise", "bits.pack"} & set(compiled)
    assert not unused, f"kernels compiled that the plan does not use: {unused}"


def test_session_imports_only_the_pipelines_passes():
    """A Session with the default pipeline imports only those passes' modules, not dualize (scipy.sparse)
    or the MIP passes: imports are seconds of a cold start."""
    probe = ("import sys, tamec; tamec.Session(sys.argv[1], engine='reference'); "
             "print(sorted(m for m in sys.modules if m.startswith('tamec.passes.')))")
    r = subprocess.run([sys.executable, "-c", probe, str(ROOT / "models" / "mlp_sign.onnx")], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = set(json.loads(r.stdout.strip().splitlines()[-1].replace("'", '"')))
    assert {"tamec.passes.canonicalize", "tamec.passes.bounds"} <= loaded
    assert not loaded & {"tamec.passes.dualize", "tamec.passes.lower_mip", "tamec.passes.tame_check",
                         "tamec.passes.partition"}, loaded

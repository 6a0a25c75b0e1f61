"""Read a run's hand-over folder (``model/``) the way a user without prunelab would: PyTorch,
NumPy and ONNX Runtime only (importing prunelab fails here), and report what each file computes.

    python scripts/read_handover.py FOLDER INPUTS.pt OUTPUTS.pt

INPUTS.pt holds ``x`` (raw inputs) and optionally ``y`` (labels). OUTPUTS.pt gets the logits of
``program.pt2`` (``logits``; ``one`` for the first input alone) and, with labels, the accuracy of
``program.pt2`` (``accuracy``), of ``model.onnx`` / ``model.int8.onnx`` under their file names, and of
``weights.compact`` decoded by the code in ``README.md``, run as it is written there. The tests and
benchmarks run it in a fresh process.
"""

import sys

sys.modules["prunelab"] = None  # any import of prunelab now fails
import os
import re

import torch

folder, inputs, outputs = map(os.path.abspath, sys.argv[1:4])
data = torch.load(inputs, weights_only=True)
os.chdir(folder)


def accuracy(logits):
    return int((logits.argmax(1) == data["y"]).sum()) / len(data["y"])  # as the run computes it


net = torch.export.load("program.pt2").module()
with torch.no_grad():
    out = {"logits": net(data["x"]), "one": net(data["x"][:1])}
if "y" in data:
    out["accuracy"] = accuracy(out["logits"])
    import onnxruntime as ort

    for name in ("model.onnx", "model.int8.onnx"):
        if os.path.exists(name):
            session = ort.InferenceSession(name, providers=["CPUExecutionProvider"])
            (logits,) = session.run(["logits"], {"pixels": data["x"].numpy()})
            out[name] = accuracy(torch.from_numpy(logits))
    if os.path.exists("weights.compact"):  # the decoder and the loading lines of README.md, as they are
        with open("README.md") as f:
            readme = f.read()
        (code,) = [c for c in re.findall(r"```python\n(.*?)```", readme, re.S) if "def decode" in c]
        scope = {}
        exec(code, scope)
        with torch.no_grad():
            out["weights.compact"] = accuracy(scope["net"](data["x"]))
torch.save(out, outputs)

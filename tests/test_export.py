"""A converted ResNet-18 exports with torch.export and to ONNX, and gives the same outputs; every
adaptive activation traces with torch.jit."""

import pytest
import torch

import adaptact
from adaptact.models.catalogue import resnet18

ADAPTIVE = adaptact.available("adaptive")
# ONNX (a dynamo export, then onnxruntime: seconds each) once per implementation: ACON-A/B are
# ACON-C's Function with fixed parameters, DY-ReLU-A DY-ReLU-B's with one piece set per sample,
# Meta-ACON-C without BatchNorm its generator less two layers (torch.export above takes them all)
ONNX = [n for n in ADAPTIVE if n not in ("acon_a", "acon_b", "dy_relu_a", "meta_acon_c_nobn")]


def _converted(name):
    torch.manual_seed(0)
    model = resnet18(num_classes=10, in_channels=1, cifar_stem=True)
    adaptact.replace_activations(model, name)
    model.train()(torch.randn(4, 1, 16, 16))  # non-trivial BN statistics
    return model.eval()


@pytest.mark.parametrize("name", ADAPTIVE)
def test_torch_export(name):
    model = _converted(name)
    x = torch.randn(2, 1, 16, 16)
    exported = torch.export.export(model, (x,))
    x2 = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(exported.module()(x2), model(x2), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit.trace", "ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", ADAPTIVE)
def test_torch_jit_trace_keeps_the_parameters_as_parameters(name):
    """Traced on one small input (the small inference form's ground), the trace computes from the
    module's parameters: weights loaded into the traced module after tracing are the ones used
    (before: AReLU's alpha and beta were traced as constants)."""
    torch.manual_seed(0)
    nn = torch.nn
    act = adaptact.create(name, channels=8)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), act, nn.Flatten(), nn.Linear(128, 4)).eval()
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 6, 6), check_trace=False)
        state = {k: v + 0.3 * torch.randn_like(v) if v.is_floating_point() else v
                 for k, v in model.state_dict().items()}
        model.load_state_dict(state)
        traced.load_state_dict(state)
        x = torch.randn(5, 3, 6, 6)
        torch.testing.assert_close(traced(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ONNX)
def test_onnx_in_onnxruntime(name, tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _converted(name)
    x = torch.randn(2, 1, 16, 16)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(model, (x,), str(path), input_names=["x"], output_names=["y"], dynamo=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x2 = torch.randn(2, 1, 16, 16)
    (y,) = session.run(None, {"x": x2.numpy()})
    expected = model(x2).detach().numpy()
    # float32 rounding grows with the logits' scale (AReLU's gain of ~1.9 per layer makes them ~1e2)
    assert abs(y - expected).max() <= 1e-4 * max(1.0, abs(expected).max())

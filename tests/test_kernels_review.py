"""The kernels executor at its edges: higher-order autograd, NaN, wrong cores, torch.func, damaged caches."""

import json
import platform
import re

import pytest
import torch
import torch.autograd.forward_ad as fwad
from torch.func import functional_call, grad, vmap

import adntn
from adntn.errors import AdntnError
from kernels import KernelsError, calibrate, numba_weight


def _generator(executor, activation="tanh", dtype=torch.float64, **kwargs):
    torch.manual_seed(0)
    return adntn.TTNGenerator(16, 16, bond_dim=2, activation=activation, executor=executor, **kwargs).to(dtype)


@pytest.mark.parametrize("activation", ["tanh", "relu"])
@pytest.mark.parametrize("blas", [False, True])
def test_second_order_gradients_through_the_kernels_match_torch(activation, blas, monkeypatch):
    def penalty_grads(g):
        # A gradient-norm penalty: its gradient is a Hessian-vector product of the weight's loss.
        params = list(g.cores.values())
        w = numba_weight(g, blas) if g.executor == "numba" else g()
        first = torch.autograd.grad(w.square().sum(), params, create_graph=True)
        return torch.autograd.grad(sum(f.square().sum() for f in first), params)

    def jvp(g):
        names = [k for k, _ in g.named_parameters()]
        cores = tuple(p.detach() for p in g.parameters())

        def loss(*c):
            return functional_call(g, dict(zip(names, c, strict=True)), ()).square().sum()

        return torch.autograd.functional.jvp(loss, cores, tuple(torch.ones_like(c) for c in cores))[1]

    reference, kernels = _generator("torch", activation), _generator("numba", activation)
    for a, b in zip(penalty_grads(reference), penalty_grads(kernels), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jvp(kernels), jvp(reference), rtol=1e-10, atol=1e-10)
    # A first-order backward keeps the kernels' own adjoints: it never runs the torch programs.
    monkeypatch.setattr(type(kernels), "padded_weight", lambda *a, **k: pytest.fail("torch programs ran"))
    numba_weight(kernels, blas).square().sum().backward()
    assert all(p.grad is not None for p in kernels.cores.values())


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "tanh", "gelu"])
@pytest.mark.parametrize("blas", [False, True])
def test_nan_in_a_core_propagates_as_in_torch(activation, blas):
    g = _generator("torch", activation)
    with torch.no_grad():
        next(iter(g.cores.values())).view(-1)[0] = float("nan")
    grad = torch.randn(g.out_padded, g.in_padded, dtype=torch.float64)
    w_ref = g.padded_weight()
    ref = torch.autograd.grad((w_ref * grad).sum(), list(g.cores.values()))
    w = numba_weight(g, blas)
    got = torch.autograd.grad((w * grad).sum(), list(g.cores.values()))
    assert int(w_ref.isnan().sum()) > 0
    assert torch.equal(w.isnan(), w_ref.isnan())
    for a, b in zip(got, ref, strict=True):
        assert torch.equal(a.isnan(), b.isnan())


def test_relu_and_its_derivative_treat_nan_as_torch_does():
    from kernels.numba_cpu import LEAKY_RELU, NEGATIVE_SLOPE, RELU, activation, derivative

    nan = float("nan")
    z = torch.tensor([nan], requires_grad=True)
    torch.relu(z).backward()
    assert activation(nan, RELU) != activation(nan, RELU)  # NaN, as torch.relu(NaN)
    assert derivative(nan, nan, RELU) == float(z.grad)  # 1: threshold_backward passes the gradient
    assert derivative(nan, nan, LEAKY_RELU) == NEGATIVE_SLOPE


@pytest.mark.parametrize("wrong", ["smaller", "larger", "swapped"])
def test_cores_of_the_wrong_shape_are_refused_before_the_kernels_run(wrong):
    g = _generator("torch", "relu")
    cores = [p.detach().clone() for p in g.cores.values()]
    expected = tuple(cores[0].shape)
    cores[0] = {
        "smaller": torch.randn(2, dtype=torch.float64),
        "larger": torch.randn(cores[0].numel() * 3, dtype=torch.float64),
        "swapped": cores[-1],
    }[wrong]
    message = f"core 'g0_leaf0' has shape {tuple(cores[0].shape)}; the generator's steps expect {expected}"
    with pytest.raises(KernelsError, match=re.escape(message)):
        numba_weight(g, False, cores)
    with pytest.raises(KernelsError, match="3 cores given; the generator has 4"):
        numba_weight(g, False, cores[:-1])


@pytest.mark.parametrize("size", [2, 96])
def test_a_layer_whose_core_data_was_swapped_fails_clearly(size):
    torch.manual_seed(0)
    layer = adntn.TNLinear(16, 16, "ttn", bond_dim=3, mode="materialize", executor="numba")
    layer.generator.cores["g1_root2"].data = torch.randn(size)
    with pytest.raises(KernelsError, match=rf"core 'g1_root2' has shape \({size},\); .* expect \(3, 3\)"):
        layer(torch.randn(4, 16))


@pytest.mark.parametrize("executor", ["auto", "numba"])
def test_torch_func_transforms_run_the_torch_programs(executor):
    torch.manual_seed(0)
    layer = adntn.TNLinear(16, 16, "ttn", bond_dim=2, mode="materialize", executor=executor).double()
    reference = adntn.TNLinear(16, 16, "ttn", bond_dim=2, mode="materialize", executor="torch").double()
    reference.load_state_dict(layer.state_dict())
    assert layer.generator.uses_kernels()
    x = torch.randn(4, 16, dtype=torch.float64)

    def results(module):
        params = {k: v.detach() for k, v in module.named_parameters()}

        def loss(p, rows):
            return functional_call(module, p, (rows,)).square().sum()

        per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x.unsqueeze(1))
        return grad(loss)(params, x), per_sample

    for got, want in zip(results(layer), results(reference), strict=True):
        for key in want:
            torch.testing.assert_close(got[key], want[key], rtol=1e-10, atol=1e-10, msg=key)
    with pytest.raises(KernelsError, match=r"torch\.func transforms"):
        grad(lambda c: numba_weight(layer.generator, None, [c, *list(layer.generator.cores.values())[1:]]).sum())(
            next(iter(layer.generator.cores.values())).detach()
        )


def test_forward_mode_ad_runs_the_torch_programs():
    tangents = {}
    for executor in ("torch", "numba"):
        g = _generator(executor)
        with fwad.dual_level():
            duals = {f"cores.{k}": fwad.make_dual(p.detach(), torch.ones_like(p)) for k, p in g.cores.items()}
            tangents[executor] = fwad.unpack_dual(functional_call(g, duals, ())).tangent
    torch.testing.assert_close(tangents["numba"], tangents["torch"], rtol=1e-10, atol=1e-10)


def test_mixed_core_dtypes_fall_back_or_fail_clearly():
    for executor in ("auto", "numba"):
        g = _generator(executor, "relu")
        list(g.cores.values())[1].data = list(g.cores.values())[1].data.float()
        if executor == "auto":
            assert not g.uses_kernels()  # the torch programs, which say what they make of it
        else:
            with pytest.raises(AdntnError, match="float32/float64 parameters of one dtype"):
                g()
        with pytest.raises(KernelsError, match=r"one dtype, float32 or float64; got torch\.float32, torch\.float64"):
            numba_weight(g)


@pytest.mark.parametrize(
    ("convert", "message"),
    [
        (lambda g: g.half(), "got torch.float16"),
        (lambda g: g.bfloat16(), "got torch.bfloat16"),
        (lambda g: g.to("meta"), "on one CPU or CUDA device; got meta"),
    ],
)
def test_numba_weight_refuses_dtypes_and_devices_it_cannot_run(convert, message):
    g = convert(_generator("torch", dtype=torch.float32))
    with pytest.raises(KernelsError, match=message):
        numba_weight(g)


def _fake_calibration():
    return {
        "version": calibrate.VERSION, "machine": platform.machine(), "threads": torch.get_num_threads(),
        **{side: dict.fromkeys(calibrate.KEYS, 1e-9) for side in ("numba", "blas", "direct")},
    }  # fmt: skip


@pytest.mark.parametrize("damage", ["infinite", "other machine", "no machine", "deeply nested"])
def test_a_damaged_or_foreign_calibration_is_measured_again(damage, monkeypatch):
    monkeypatch.setattr(calibrate, "_MEMO", {})
    monkeypatch.setattr(calibrate, "measure", _fake_calibration)
    path = calibrate.cache_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    stale = {**_fake_calibration(), "numba": dict.fromkeys(calibrate.KEYS, 2e-9)}
    if damage == "infinite":
        stale["blas"] = dict.fromkeys(calibrate.KEYS, float("inf"))
    elif damage == "other machine":
        stale["machine"] = "not-" + platform.machine()
    elif damage == "no machine":
        del stale["machine"]
    path.write_text("[" * 100_000 + "]" * 100_000 if damage == "deeply nested" else json.dumps(stale))
    assert calibrate.calibration() == _fake_calibration()
    assert json.loads(path.read_text()) == _fake_calibration()  # rewritten whole
    monkeypatch.setattr(calibrate, "_MEMO", {})
    path.write_text(json.dumps(stale | {"blas": _fake_calibration()["blas"], "machine": platform.machine()}))
    assert calibrate.calibration()["numba"]["8"] == 2e-9  # a sound file of this machine is read, not measured


def test_a_deeply_nested_timing_cache_is_measured_again(tmp_path):
    path = tmp_path / "entries.json"
    path.write_text("[" * 100_000 + "]" * 100_000)
    entry = calibrate.cached_entry({}, path, 1, "step", ("fused",), lambda: {"fused": 1.5})
    assert entry == {"fused": 1.5} and json.loads(path.read_text())["entries"] == {"step": {"fused": 1.5}}


def test_a_layer_built_under_inference_mode_trains_on_the_kernels():
    # The double-backward change saved the cores with save_for_backward, which refuses inference tensors.
    with torch.inference_mode():
        layer = adntn.TNLinear(37, 29, "ttn", bond_dim=3, mode="materialize", executor="numba")
    assert layer.generator.uses_kernels()
    layer(torch.randn(3, 37)).sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_core_changed_in_place_before_backward_is_refused_as_by_torch(create_graph):
    # The kernels keep the cores' memory for the backward; without autograd's version check the
    # gradient would silently be taken at the changed values.
    g = _generator("numba")
    w = numba_weight(g)
    with torch.no_grad():
        next(iter(g.cores.values())).mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(w.sum(), list(g.cores.values()), create_graph=create_graph)
    # A fresh forward after the change trains.
    grads = torch.autograd.grad(numba_weight(g).sum(), list(g.cores.values()))
    reference = torch.autograd.grad(g.padded_weight().sum(), list(g.cores.values()))
    for a, b in zip(grads, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_inference_cores_changed_in_place_keep_the_gradient_of_the_forward():
    # Inference tensors have no version counter, so the kernels copy them for the backward.
    with torch.inference_mode():
        g = _generator("numba")
    cores = list(g.cores.values())
    before = [c.clone() for c in cores]
    w = numba_weight(g)
    with torch.inference_mode():
        cores[0].mul_(2.0)
    grads = torch.autograd.grad((w * w).sum(), cores)
    fresh = _generator("torch")
    with torch.no_grad():
        for c, b in zip(fresh.cores.values(), before, strict=True):
            c.copy_(b)
    reference = torch.autograd.grad((fresh.padded_weight() ** 2).sum(), list(fresh.cores.values()))
    for a, b in zip(grads, reference, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_the_kernels_weight_frees_its_intermediates_and_refuses_a_second_backward():
    g = _generator("numba")
    loss = numba_weight(g).square().sum()
    loss.backward(retain_graph=True)
    first = [p.grad.clone() for p in g.cores.values()]
    loss.backward()  # retained: runs again and accumulates
    for p, f in zip(g.cores.values(), first, strict=True):
        torch.testing.assert_close(p.grad, 2 * f)
    with pytest.raises(RuntimeError, match="backward through the graph a second time"):
        loss.backward()


def test_the_kernels_weight_can_be_changed_in_place_where_torch_allows_it():
    g = _generator("numba", activation="identity")
    reference = _generator("torch", activation="identity")
    w, ref = numba_weight(g), reference.padded_weight()
    w.mul_(3.0)
    ref.mul_(3.0)
    grads = torch.autograd.grad(w.square().sum(), list(g.cores.values()))
    expected = torch.autograd.grad(ref.square().sum(), list(reference.cores.values()))
    for a, b in zip(grads, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("arch", ["ttn", "attn"])
def test_a_backward_under_autocast_runs_in_the_cores_dtype(arch):
    torch.manual_seed(0)
    make = {"ttn": adntn.TTNGenerator, "attn": adntn.ATTNGenerator}[arch]
    kernels, reference = (make(48, 64, bond_dim=3, activation="gelu", executor=e) for e in ("numba", "torch"))
    reference.load_state_dict(kernels.state_dict())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        w = numba_weight(kernels)
        grads = torch.autograd.grad(w.square().sum(), list(kernels.cores.values()))
    expected = torch.autograd.grad(reference.padded_weight().square().sum(), list(reference.cores.values()))
    assert w.dtype == torch.float32
    for a, b in zip(grads, expected, strict=True):  # bfloat16 steps would be off by ~1e-2
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def _blas_step_in_forked_child():
    import os

    g = _generator("numba")
    with torch.no_grad():
        numba_weight(g, True)
    from kernels import numba_cpu

    os._exit(0 if numba_cpu._blas_users == 0 else 3)


def test_a_child_forked_while_another_thread_runs_the_kernels_does_not_hang():
    import multiprocessing
    import threading

    from kernels import numba_cpu

    numba_weight(_generator("numba"), True)  # compiled before the fork
    held, release = threading.Event(), threading.Event()

    def busy():  # as a thread inside a kernel step at the moment of the fork
        with numba_cpu._BLAS_LOCK:
            held.set()
            release.wait()

    thread = threading.Thread(target=busy)
    thread.start()
    held.wait()
    try:
        child = multiprocessing.get_context("fork").Process(target=_blas_step_in_forked_child)
        child.start()
        child.join(timeout=120)
        hung = child.is_alive()
        if hung:
            child.kill()
    finally:
        release.set()
        thread.join()
    assert not hung and child.exitcode == 0


def test_timing_files_name_their_version_machine_and_threads(tmp_path, monkeypatch):
    import platform

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("ADNTN_CACHE_DIR", "~/timings")
    assert calibrate.cache_dir() == tmp_path / "timings"  # "~" expanded, as TNPLAN_CACHE_DIR's
    a, b = calibrate.cache_path("kernel-steps", 1), calibrate.cache_path("kernel-steps", 2)
    assert a != b and a.parent == tmp_path / "timings"
    assert platform.machine() in a.name and a.name.endswith(f"-{torch.get_num_threads()}t.json")


def test_a_thread_that_forks_inside_a_blas_step_leaves_its_child_counting_from_zero():
    from kernels import numba_cpu

    with numba_cpu._one_blas_thread():
        numba_cpu._after_fork_in_child()  # what the child of a fork here runs; it then leaves the step
    assert numba_cpu._blas_users == 0 and numba_cpu._blas_limit is None
    with numba_cpu._one_blas_thread():  # limits BLAS again, and restores it on leaving
        assert numba_cpu._blas_users == 1 and numba_cpu._blas_limit is not None
    assert numba_cpu._blas_users == 0 and numba_cpu._blas_limit is None


@pytest.mark.parametrize("create_graph", [False, True])
def test_a_non_contiguous_core_changed_in_place_before_backward_is_refused(create_graph):
    # The kernels read a contiguous copy of such a core, whose version counter is its own: the change
    # went unnoticed, and the graph-building backward read the changed values (4.3 off the forward's).
    g = _generator("numba")
    for p in g.cores.values():
        if p.dim() >= 2:
            p.data = p.data.mT.contiguous().mT
    assert not all(p.is_contiguous() for p in g.cores.values())
    w = numba_weight(g)
    with torch.no_grad():
        for p in g.cores.values():
            p.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(w.sum(), list(g.cores.values()), create_graph=create_graph)


@pytest.mark.parametrize("create_graph", [False, True])
def test_tied_cores_get_the_gradient_torch_gives(create_graph):
    # With create_graph=True one tensor held as two cores got its whole gradient in both places (2x).
    grads = {}
    for executor in ("torch", "numba"):
        g = _generator(executor)
        keys = list(g.cores)
        same = [k for k in keys if g.cores[k].shape == g.cores[keys[0]].shape and k != keys[0]]
        g.cores[same[0]] = g.cores[keys[0]]
        w = g()
        (grads[executor],) = torch.autograd.grad((w * w).sum(), g.cores[keys[0]], create_graph=create_graph)
    torch.testing.assert_close(grads["numba"], grads["torch"], rtol=1e-10, atol=1e-10)


def test_batched_gradients_through_the_kernels_match_torch():
    # is_grads_batched (and jacobian(vectorize=True)) met the kernels' backward, which has no batching rule.
    found = {}
    for executor in ("torch", "numba"):
        g = _generator(executor)
        w = g()
        basis = torch.eye(w.numel(), dtype=w.dtype).reshape(-1, *w.shape)
        found[executor] = torch.autograd.grad(w, list(g.cores.values()), basis, is_grads_batched=True)
    for a, b in zip(found["numba"], found["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_kron_stream_names_an_argument_that_is_no_tensor():
    from kernels.kronsum import kron_stream

    a = b = torch.ones(1, 1, 1)
    with pytest.raises(KernelsError, match="x is a list"):
        kron_stream([[[1.0]]], a, b)

import os

import pytest
import torch

torch.set_num_threads(1)  # project rule: tests pin torch to one thread
if not torch.cuda.is_available():
    # The Triton kernels (kernels/kronsum.py) run on CPU tensors in Triton's interpreter. Triton reads
    # this when triton.language is first imported, so it is set before any test can import it.
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _private_plan_cache(tmp_path, monkeypatch) -> None:
    """Every test gets its own empty default plan cache, never the user's."""
    monkeypatch.setenv("TNPLAN_CACHE_DIR", str(tmp_path / "tnplan-cache"))
    monkeypatch.setenv("ADNTN_CACHE_DIR", str(tmp_path / "adntn-cache"))


@pytest.fixture(scope="session", autouse=True)
def _compiled_exact_search() -> None:
    """Compile the numba exact-search kernel once, up front.

    Planning calls with a time budget never wait for a compilation (they fall back to heuristics
    while a background process compiles), so tests that check optimality need it ready.
    """
    from tnplan.optimal import kernel_ready

    kernel_ready(block=True)


@pytest.fixture
def pin_calibration(monkeypatch):
    """A function fixing the kernels' cost model to per-flop costs (``pin(numba=1.0, blas=4.0)``): the
    fused-loop/BLAS choice then follows the model, not the timings this process happened to measure
    (on a tiny generator they may go either way)."""
    from kernels import calibrate

    def pin(numba: float, blas: float) -> None:
        sides = (("numba", numba), ("blas", blas), ("direct", blas))
        cal = {side: dict.fromkeys(calibrate.KEYS, v) for side, v in sides}
        monkeypatch.setattr(calibrate, "_MEMO", {torch.get_num_threads(): cal})

    return pin


@pytest.fixture
def torch_reference():
    """A function giving a generator's weight and core gradients by torch's einsum programs (the
    reference the kernels must match): ``w, grads = torch_reference(generator, grad_of_w)``."""

    def reference(g, grad):
        g.zero_grad()
        w = g.run_groups()[-1].reshape(g.out_padded, g.in_padded)
        (w * grad).sum().backward()
        return w.detach(), {k: p.grad.clone() for k, p in g.cores.items()}

    return reference

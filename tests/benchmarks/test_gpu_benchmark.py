"""benchmarks/gpu.py runs end to end on a CPU with a tiny shape (the smoke test of the GPU benchmark)."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_tiny_shape_on_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_benchmark", ROOT / "benchmarks" / "gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "gpu.json"
    results = module.main(["--shape", "tiny", "--device", "cpu", "--questions", "2", "--cap", "16", "--seq-len", "32",
                           "--update-rows", "6", "--ref-rows", "8", "--eval-questions", "2", "--eval-k", "3",
                           "--micro-sizes", "1", "2", "--mean-length", "10", "--step-length", "4",
                           "--set", "micro_batch_size=2", "rollout_max_rows=5", "--out", str(out)])
    assert json.loads(out.read_text())["shape"] == "tiny"
    for name in ("step", "update", "micro", "eval"):
        assert "error" not in results[name], results[name]
    assert results["step"]["new_tokens"] > 0 and results["update"]["finite_loss"]
    assert results["config"]["micro_batch_size"] == 2 and results["config"]["algorithm"] == "ib_tpo"
    assert results["eval"]["questions"] == 2 and 0 < results["eval"]["response_length"] <= 16

"""The recorded GRPO reference applies only to runs that share every setting but the algorithm."""

import json

from ibtpo.config.schema import build_config
from ibtpo.training.reference import lookup, shared_settings


def test_lookup_matches_only_comparable_runs(tmp_path):
    grpo = build_config(None, {"max_tokens": 1000, "algorithm": "grpo"})
    path = tmp_path / "ref.json"
    path.write_text(json.dumps({"mean": 0.6, "ci95": 0.02, "seeds": [0, 1, 2], "source": "r",
                                "settings": shared_settings(grpo)}))
    assert lookup(build_config(None, {"max_tokens": 1000, "algorithm": "ib_tpo"}), path)["mean"] == 0.6
    assert lookup(build_config(None, {"max_tokens": 1000, "algorithm": "ib_tpo", "seed": 5}), path) is not None
    assert lookup(build_config(None, {"max_tokens": 2000, "algorithm": "ib_tpo"}), path) is None  # other budget
    assert lookup(build_config(None, {"max_tokens": 1000, "algorithm": "ib_tpo", "learning_rate": 3e-4}), path) is None
    assert lookup(grpo, path) is None  # GRPO itself is not compared with its own reference
    assert lookup(grpo, tmp_path / "missing.json") is None
